"""The pure state machine (``routing/workflow/transition.transition``): legal and illegal moves, and every workflow
template rendered from the contexts real transitions produce."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from escalations.mailer.outbox import Renderer
from escalations.parsers.referral import ReferralFields
from escalations.policy_files import load_config
from escalations.routing.policy.model import Partnership, PolicyConfig
from escalations.routing.workflow.authority import ReplyFacts, TokenVerdict
from escalations.routing.workflow.digest import DigestItem, compose_digest
from escalations.routing.workflow.events import Automated, Opened, Replied, TimerFired, WorkflowEvent
from escalations.routing.workflow.state import CaseState, OutgoingMail, Step
from escalations.routing.workflow.transition import transition
from tests.conftest import CONFIG_DIR
from tests.workflow.profiles import CH, HAVERING, OPENED, WILTSHIRE, Profile, at

TEMPLATES = Path(__file__).resolve().parents[2] / "escalations" / "templates"


@pytest.fixture(scope="module")
def config() -> PolicyConfig:
    return load_config(CONFIG_DIR)


def new_case(p: Profile, **fields: Any) -> CaseState:
    data: dict[str, Any] = {
        "child_names": ["Poppy Testchild"], "child_dobs": ["2015-03-02"], "raised_by_name": p.raiser_name,
        "raised_by_agency": p.raising_agency, "raised_by_email": p.raiser, "other_agency": p.other_agency,
        "other_practitioner": f"{p.other_practitioner} <{p.other_practitioner_email}>",
        "concern": "No assessment.", "outcome_sought": "An assessment.", "borough": p.borough,
    }
    data.update(fields)
    f = ReferralFields.from_json(data)
    return CaseState(id=1, reference=f"{p.prefix}-2026-0001", partnership=p.id, status="open", route=None,
                     stage_index=None, opened_at=OPENED, stage_opened_at=None, due_at=None,
                     immediate_risk=bool(f.immediate_risk), fields=f, missing=(), raiser=p.raiser)


def apply(state: CaseState, step: Step) -> CaseState:
    """What Workflow.apply does to the case row, on the pure state."""
    c = step.change
    values: dict[str, Any] = {}
    for name in ("status", "route", "stage_index", "stage_opened_at", "due_at", "immediate_risk", "parties",
                 "resolution", "fields", "missing"):
        v = getattr(c, name)
        if v is not None:
            values[name] = v
    if c.clear_due:
        values["due_at"] = None
    if c.clear_resolution and c.resolution is None:
        values["resolution"] = None
    return replace(state, **values)


class Run:
    """A case driven through transitions, keeping every mail (rendered, so templates are checked)."""

    def __init__(self, p: Partnership, state: CaseState) -> None:
        self.p, self.state = p, state
        self.mails: list[OutgoingMail] = []
        self.steps: list[Step] = []
        self.renderer = Renderer()
        self.rendered: dict[str, str] = {}

    def __call__(self, event: WorkflowEvent, now: datetime) -> Step:
        step = transition(self.state, event, self.p, now)
        self.state = apply(self.state, step)
        self.steps.append(step)
        for m in step.mails:
            self.rendered[m.template] = self.renderer.render(m.template, m.context)
        self.mails.extend(step.mails)
        return step

    def reply(self, sender: str, command: str | None, argument: str = "", *, authority: str = "party",
              side: str | None = None, now: datetime | None = None) -> Step:
        return self(Replied(sender=sender, command=command, argument=argument, message_id=None,
                            authority=authority, side=side), now or at(4, 9))


def to(step: Step, template: str | None = None) -> list[str]:
    return sorted(a for m in step.mails if template is None or m.template == template for a in m.to)


def kinds(step: Step) -> list[str]:
    return [e.kind for e in step.events]


def test_every_workflow_template_renders(config: PolicyConfig) -> None:
    ch = config.partnerships["city-and-hackney"]
    run = Run(ch, new_case(CH, child_status="cp_plan"))
    run(Opened(), OPENED)                                            # stage_request
    run(TimerFired("remind_before", 0), at(9))                       # reminder
    run(TimerFired("escalate", 0), at(10))                           # stage_copy, stage_escalated, notification
    run(Automated("auto_reply", "ch.csc.line-manager@example.org"), at(11, 9))  # deputy_takeover
    run.reply(CH.raiser, None, "hello", authority="raiser", side="raising")     # reply_help
    run.reply("ch.csc.line-manager-deputy@example.net", "RESOLVED", "agreed", side="receiving", now=at(11, 10))
    run(TimerFired("confirm_reminder", 1), at(12))                   # resolution_confirm_request
    run(TimerFired("confirm_close", 1), at(13))                      # case_closed
    assert run.state.status == "closed"
    manual = Run(Partnership.model_validate({**ch.model_dump(), "auto_escalate": False}), new_case(CH))
    manual(Opened(), OPENED)
    manual(TimerFired("remind_due", 0), at(10))                      # escalation_confirm_request
    routing = Run(ch, new_case(CH, other_agency="Acme Tutoring Ltd"))
    routing(Opened(), OPENED)                                        # case_needs_routing
    urgent = Run(config.partnerships["tri-borough"], new_case(CH, immediate_risk=True, other_agency=
                                                              "Westminster Children's Services",
                                                              raised_by_agency="CLCH", borough="Westminster"))
    urgent(Opened(), OPENED)
    # A forged reply (no reply code) from the raiser's address: the genuine raiser gets a fresh copy;
    # an old-stage code from a verified sender: they are told directly.
    forged = Run(ch, run.state)
    forged.state = replace(run.state, status="open")
    forged(Replied(sender=CH.raiser, command="WITHDRAW", argument="", message_id=None, authority="party",
                   side=None, facts=ReplyFacts(sender=CH.raiser, claimed_sender=CH.raiser)), at(13, 11))
    forged(Replied(sender=CH.raiser, command="NOTE", argument="", message_id=None, authority="party",
                   side=None, facts=ReplyFacts(sender=CH.raiser, claimed_sender=CH.raiser,
                                               token=TokenVerdict.VALID, token_case_id=run.state.id,
                                               token_stage_index=-1)), at(13, 12))
    unknown = Run(ch, new_case(CH, other_practitioner="Sam Smith <sam@unknown-domain.example.com>"))
    unknown(Opened(), OPENED)                                        # address_confirm_request
    rendered = {**run.rendered, **manual.rendered, **routing.rendered, **urgent.rendered, **forged.rendered,
                **unknown.rendered}
    digest = compose_digest(ch, [DigestItem("reply_not_applied", "CH-2026-0001", at(13, 11),
                                            {"reason": "no_token", "from": CH.raiser})], at(13, 12))
    rendered["coordinator_digest.txt.j2"] = Renderer().render(digest[0].template, digest[0].context)
    # the service's own mail (tests/ops has their content)
    from escalations.routing.workflow.operations import (
        DailyDigest,
        compose_daily_digest,
        compose_mailbox_alert,
    )

    alert = compose_mailbox_alert(mailbox="hackney", admins=("it@council.example.org",), down=True,
                                  last_ok_at=at(13, 10), since=at(13, 9), error_code="login_failed",
                                  now=at(13, 11), tz=ch.tz, incident="x")
    rendered[alert.template] = Renderer().render(alert.template, alert.context)
    daily = compose_daily_digest(ch, DailyDigest([(at(13, 9), "not_a_referral")], [], [], []), at(13, 12))
    rendered[daily[0].template] = Renderer().render(daily[0].template, daily[0].context)
    workflow_templates = {t.name for t in TEMPLATES.glob("*.txt.j2") if not t.name.startswith("_")
                          and not t.name.startswith("referral_")}
    assert workflow_templates <= set(rendered), workflow_templates - set(rendered)
    for name, text in rendered.items():
        assert "Testchild" not in text, name
        assert "None" not in text.replace("(none recorded)", ""), name


def test_stage_one_asks_the_practitioners_named_in_the_referral(config: PolicyConfig) -> None:
    ch = config.partnerships["city-and-hackney"]
    step = Run(ch, new_case(CH))(Opened(), OPENED)
    assert to(step, "stage_request.txt.j2") == sorted([CH.raiser, CH.other_practitioner_email])
    other = next(p for p in step.change.parties or () if p.party == "receiving.practitioner")
    assert (other.name, other.side) == ("Sam Smith", "receiving")
    # Without an address for the other worker only the raiser is asked; their RESOLVED then stands alone.
    run = Run(ch, new_case(CH, other_practitioner="Sam Smith"))
    step = run(Opened(), OPENED)
    assert to(step, "stage_request.txt.j2") == [CH.raiser]
    step = run.reply(CH.raiser, "RESOLVED", "agreed", authority="raiser", side="raising")
    assert run.state.status == "closed"
    assert "nobody on the other side" in step.events[-1].detail["how"]


def test_illegal_moves_are_recorded_and_answered(config: PolicyConfig) -> None:
    ch = config.partnerships["city-and-hackney"]
    run = Run(ch, new_case(CH))
    run(Opened(), OPENED)
    for sender, cmd, authority, side, why in [
        (CH.other_practitioner_email, "ACCEPT", "party", "receiving", "no resolution waiting"),
        (CH.other_practitioner_email, "WITHDRAW", "party", "receiving", "only the practitioner who raised"),
    ]:
        step = run.reply(sender, cmd, authority=authority, side=side)
        assert kinds(step) == [f"reply_{cmd.lower()}", "illegal_command"] and why in step.events[1].detail["why"]
        assert to(step) == [sender] and step.mails[0].template == "reply_help.txt.j2"
        assert run.state.status == "open" and run.state.stage_index == 0
    run.reply(CH.raiser, "RESOLVED", "agreed", authority="raiser", side="raising")
    assert run.state.status == "awaiting_confirmation"
    step = run.reply(CH.raiser, "RESOLVED", "agreed again", authority="raiser", side="raising")
    assert "illegal_command" in kinds(step) and run.state.status == "awaiting_confirmation"
    step = run.reply(CH.raiser, "ESCALATE", authority="raiser", side="raising")
    assert "illegal_command" in kinds(step) and run.state.stage_index == 0
    step = run.reply(CH.raiser, "ACCEPT", authority="raiser", side="raising")
    assert "illegal_command" in kinds(step)
    # The other side may disagree: ESCALATE instead of confirming.
    step = run.reply(CH.other_practitioner_email, "ESCALATE", "not what we agreed", side="receiving")
    assert run.state.stage_index == 1 and run.state.status == "open" and run.state.resolution is None
    # A closed case changes no more.
    run.reply(CH.raiser, "WITHDRAW", "sorted locally", authority="raiser", side="raising")
    assert run.state.status == "withdrawn"
    step = run.reply(CH.raiser, "ESCALATE", authority="raiser", side="raising")
    assert "illegal_command" in kinds(step) and "already withdrawn" in step.events[1].detail["why"]


def test_withdrawn_by_the_raiser(config: PolicyConfig) -> None:
    run = Run(config.partnerships["havering"], new_case(HAVERING))
    run(Opened(), OPENED)
    step = run.reply(HAVERING.raiser, "WITHDRAW", "resolved with a phone call", authority="raiser", side="raising")
    assert run.state.status == "withdrawn" and step.cancel_timers
    assert to(step, "case_closed.txt.j2") == sorted([HAVERING.raiser, HAVERING.other_practitioner_email])
    assert "Stage reached:    stage 1" in run.rendered["case_closed.txt.j2"]


def test_final_stage_resolution_is_confirmed_by_the_decision_maker(config: PolicyConfig) -> None:
    ch = config.partnerships["city-and-hackney"]
    run = Run(ch, new_case(CH, stage=4))
    step = run(Opened(), OPENED)
    # The panel is proposed to the Commissioner, not asked (C&H 2.12-2.14: they decide whether to convene).
    assert to(step, "stage_request.txt.j2") == ["chscp.icsc@example.org"]
    assert to(step, "stage_copy.txt.j2") == [CH.raiser]
    assert "ch-panel.csc@example.org" in run.rendered["stage_request.txt.j2"]
    assert not any(x.party == "partnership.resolution_panel" for x in run.state.parties)
    step = run.reply(CH.raiser, "RESOLVED", "agreed at the meeting", authority="raiser", side="raising")
    assert to(step, "resolution_confirm_request.txt.j2") == ["chscp.icsc@example.org"]
    step = run.reply("chscp.icsc@example.org", "ACCEPT", "recorded", authority="decision_maker", side="partnership")
    assert run.state.status == "closed"
    # People are named by name and role in the record, never by bare address.
    assert step.events[-1].detail["how"].startswith(f"resolved by {CH.raiser_name}, the practitioner who raised")


def test_timers_for_another_stage_or_a_closed_case_do_nothing(config: PolicyConfig) -> None:
    run = Run(config.partnerships["city-and-hackney"], new_case(CH))
    run(Opened(), OPENED)
    step = run(TimerFired("remind_before", 3), at(9))
    assert kinds(step) == ["timer_ignored"] and not step.mails
    step = run(TimerFired("remind_before", 0, late=True), at(9))
    assert kinds(step) == ["reminder_skipped"] and not step.mails
    run.reply(CH.raiser, "WITHDRAW", authority="raiser", side="raising")
    step = run(TimerFired("escalate", 0), at(10))
    assert kinds(step) == ["timer_ignored"] and not step.mails and run.state.status == "withdrawn"


def test_deputies_and_bounces(config: PolicyConfig) -> None:
    ch = config.partnerships["city-and-hackney"]
    lm, deputy = CH.other_line_manager, CH.other_line_manager_deputy
    run = Run(ch, new_case(CH, stage=2))
    run(Opened(), OPENED)
    step = run(Automated("auto_reply", lm), at(3, 11))
    assert "deputy_took_over" in kinds(step) and deputy in to(step, "stage_request.txt.j2")
    # The line manager's auto-reply to another mail changes nothing more.
    step = run(Automated("auto_reply", lm), at(3, 12))
    assert "automated_ignored" in kinds(step) and not step.mails
    # The deputy is away too: the coordinator is told, nobody else is mailed.
    step = run(Automated("auto_reply", deputy), at(3, 13))
    assert to(step) == [CH.coordinator] and "also unavailable" in run.rendered["deputy_takeover.txt.j2"]
    # A hard bounce from a contact flags it for the administrator and hands over to the deputy.
    run2 = Run(ch, new_case(CH, stage=2))
    run2(Opened(), OPENED)
    step = run2(Automated("bounce", "ch.education.line-manager@example.org", permanent=True), at(3, 11))
    assert kinds(step)[:2] == ["bounce", "contact_flagged"] and "deputy_took_over" in kinds(step)
    # A temporary failure is only recorded.
    step = run2(Automated("bounce", lm, permanent=False), at(3, 12))
    assert kinds(step) == ["bounce"] and not step.mails


def test_without_auto_escalation_the_deadline_asks_the_raiser(config: PolicyConfig) -> None:
    wil = Partnership.model_validate({**config.partnerships["wiltshire"].model_dump(), "auto_escalate": False})
    run = Run(wil, new_case(WILTSHIRE))
    step = run(Opened(), OPENED)
    assert sorted(t.kind for t in step.timers) == ["remind_before", "remind_due"]
    step = run(TimerFired("remind_due", 0), at(8, 10))
    assert to(step, "escalation_confirm_request.txt.j2") == [WILTSHIRE.raiser]
    assert WILTSHIRE.other_practitioner_email in to(step, "reminder.txt.j2")
    assert run.state.stage_index == 0
    run.reply(WILTSHIRE.raiser, "ESCALATE", "no agreement", authority="raiser", side="raising", now=at(9, 9))
    assert run.state.stage_index == 1


def test_urgent_on_an_urgent_case_bypasses_only_where_the_policy_allows(config: PolicyConfig) -> None:
    ch = config.partnerships["city-and-hackney"]
    run = Run(ch, new_case(CH, immediate_risk=True))
    run(Opened(), OPENED)
    step = run.reply(CH.raiser, "URGENT", "still at risk", authority="raiser", side="raising")
    assert kinds(step) == ["reply_urgent"] and not step.mails and run.state.stage_index == 0
    # Wiltshire: an URGENT reply at stage 2 goes back to the same-day DSL step, then to Stage Three.
    wil = config.partnerships["wiltshire"]
    run = Run(wil, new_case(WILTSHIRE, stage=2))
    run(Opened(), OPENED)
    step = run.reply(WILTSHIRE.raiser, "URGENT", "new injuries", authority="raiser", side="raising", now=at(3, 11))
    assert run.state.stage_index == -1 and run.state.due_at == at(3)
    step = run(TimerFired("escalate", -1), at(3))
    assert run.state.stage_index == 3 and "wscb.nominated-person@example.org" in to(step)


def test_confirmation_window_is_two_working_days(config: PolicyConfig) -> None:
    run = Run(config.partnerships["havering"], new_case(HAVERING))
    run(Opened(), OPENED)
    # RESOLVED on a Friday afternoon: reminder on Monday, closes on Tuesday (working days only).
    step = run.reply(HAVERING.raiser, "RESOLVED", "agreed", authority="raiser", side="raising", now=at(6, 15))
    assert {t.kind: t.due_at for t in step.timers} == {"confirm_reminder": at(9), "confirm_close": at(10)}
    assert run.state.resolution is not None and run.state.resolution.confirm_by == (HAVERING.other_practitioner_email,)
    # The other side confirms with RESOLVED too.
    step = run.reply(HAVERING.other_practitioner_email, "RESOLVED", "yes", side="receiving", now=at(9, 9))
    assert run.state.status == "closed" and "confirmed in writing" in step.events[-1].detail["how"]
    assert (at(9, 9) - OPENED) == timedelta(days=5, hours=23)


def test_a_deputy_who_takes_over_can_confirm(config: PolicyConfig) -> None:
    ch = config.partnerships["city-and-hackney"]
    run = Run(ch, new_case(CH, stage=2))
    run(Opened(), OPENED)
    run.reply("ch.education.line-manager@example.org", "RESOLVED", "agreed", side="raising")
    assert run.state.resolution is not None and run.state.resolution.confirm_by == (CH.other_line_manager,)
    step = run(Automated("auto_reply", CH.other_line_manager), at(4, 11))
    assert CH.other_line_manager_deputy in to(step, "resolution_confirm_request.txt.j2")
    step = run(TimerFired("confirm_reminder", 1), at(5))
    assert to(step) == [CH.other_line_manager_deputy]  # the reminder follows the deputy
    run.reply(CH.other_line_manager_deputy, "ACCEPT", side="receiving", now=at(5, 18))
    assert run.state.status == "closed"
