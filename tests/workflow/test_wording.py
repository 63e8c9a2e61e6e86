"""Each mail says what is true for the person who gets it: every template rendered from real
transitions, read as each kind of recipient would (the raiser, a party asked, a final-stage decision
maker, someone told for information, partnership staff), per partnership where the policies differ.
And the final decision reaches every party of the case, both agencies included."""

from __future__ import annotations

from typing import Any

import pytest

from escalations.mailer.outbox import Renderer
from escalations.policy_files import load_config
from escalations.routing.policy.model import PolicyConfig
from escalations.routing.workflow.audience import AUTHORITY, Audience, StageKind
from escalations.routing.workflow.commands import COMMANDS, help_lines, may_use
from escalations.routing.workflow.digest import DigestItem, compose_digest
from escalations.routing.workflow.events import Opened, TimerFired
from escalations.routing.workflow.state import OutgoingMail, Step
from tests.conftest import CONFIG_DIR
from tests.workflow.profiles import CH, HAVERING, OPENED, PROFILES, TRI_BOROUGH, WILTSHIRE, Profile, at
from tests.workflow.test_transition import Run, new_case

by_partnership = pytest.mark.parametrize("prof", PROFILES, ids=[p.id for p in PROFILES])

#: The other agency's people who must get the final decision (the YAML's ``outcome_to``), by partnership.
OTHER_AGENCY_TOLD: dict[str, tuple[str, ...]] = {
    "city-and-hackney": ("ch.csc.senior-manager@example.org", "ch.csc.partnership-member@example.org"),
    "havering": ("hav.csc.senior-manager@example.org", "hav.csc.partnership-member@example.org"),
    "wiltshire": ("wil.csc.senior-manager@example.org", "kim.carer@csc.example.org"),
    "tri-borough": ("tri.wcc-csc.head-of-service@example.org",),
    "sutton": ("sut.csc.head-of-service@example.org", "sut.csc.partnership-member@example.org"),
}

GENERIC_ONLY = ("the other side is asked to confirm", "ESCALATE <reason>", "WITHDRAW <reason>")


@pytest.fixture(scope="module")
def config() -> PolicyConfig:
    return load_config(CONFIG_DIR)


def rendered(m: OutgoingMail) -> str:
    return Renderer().render(m.template, m.context)


def mail_to(step: Step, address: str, template: str | None = None) -> OutgoingMail:
    found = [m for m in step.mails if address.lower() in (a.lower() for a in m.to)
             and (template is None or m.template == template)]
    assert len(found) == 1, (address, template, [(m.template, m.to) for m in step.mails])
    return found[0]


def commands_block(text: str) -> str:
    return text.split("How to reply:", 1)[1].split("--\n", 1)[0] if "How to reply:" in text else ""


def final_stage(config: PolicyConfig, prof: Profile, **fields: Any) -> tuple[Run, Step]:
    run = Run(config.partnerships[prof.id], new_case(prof, stage=len(prof.ladder), **fields))
    step = run(Opened(), OPENED)
    assert run.state.stage_index == len(prof.ladder) - 1, run.state
    return run, step


# ---- item: the final decision reaches every party ---------------------------------------------------


@by_partnership
def test_final_decision_reaches_both_agencies_and_the_record_says_who_was_told(
        config: PolicyConfig, prof: Profile) -> None:
    run, _ = final_stage(config, prof)
    step = run.reply(prof.decision_maker, "RESOLVED", "Decision: CSC completes an assessment within 10 days.",
                     authority="decision_maker", side="partnership")
    assert run.state.status == "closed"
    told = {a for m in step.mails if m.template == "case_closed.txt.j2" for a in m.to}
    for address in (*OTHER_AGENCY_TOLD[prof.id], prof.raiser, prof.decision_maker):
        assert address in told, (address, sorted(told))
    closed = next(e for e in step.events if e.kind == "closed")
    assert {t["email"] for t in closed.detail["told"]} == told
    assert all(t["role"] for t in closed.detail["told"])
    shared = next(e for e in step.events if e.kind == "outcome_shared")
    assert shared.clause == config.partnerships[prof.id].route(None).stages[-1].outcome_to.clause  # type: ignore[union-attr]
    text = rendered(mail_to(step, OTHER_AGENCY_TOLD[prof.id][0], "case_closed.txt.j2"))
    assert "Sent to:" in text and "completes an assessment" in text
    assert "@" not in text.split("How:", 1)[1].split("\n", 1)[0]


def test_a_confirmed_resolution_at_the_final_stage_also_reaches_the_other_agency(config: PolicyConfig) -> None:
    run, _ = final_stage(config, WILTSHIRE)
    run.reply(WILTSHIRE.raiser, "RESOLVED", "agreed between us", authority="raiser", side="raising")
    assert run.state.status == "awaiting_confirmation"
    step = run.reply(WILTSHIRE.decision_maker, "ACCEPT", "", authority="party", side="raising")
    told = {a for m in step.mails for a in m.to}
    assert set(OTHER_AGENCY_TOLD["wiltshire"]) <= told


def test_a_withdrawal_is_not_sent_as_a_decision_to_the_other_agency(config: PolicyConfig) -> None:
    run, _ = final_stage(config, CH)
    step = run.reply(CH.raiser, "WITHDRAW", "sorted locally", authority="raiser", side="raising")
    assert run.state.status == "withdrawn"
    assert not set(OTHER_AGENCY_TOLD["city-and-hackney"]) & {a for m in step.mails for a in m.to}
    assert "outcome_shared" not in [e.kind for e in step.events]


# ---- the decision maker's request ----------------------------------------------------------------------


@by_partnership
def test_final_stage_decision_maker_gets_the_final_decision_commands(config: PolicyConfig, prof: Profile) -> None:
    _, step = final_stage(config, prof)
    text = rendered(mail_to(step, prof.decision_maker, "stage_request.txt.j2"))
    block = commands_block(text)
    assert "RESOLVED <your decision>" in block and "closes the case and is sent to every party" in block
    for wrong in GENERIC_ONLY:
        assert wrong not in block, (wrong, block)
    dm = config.partnerships[prof.id].route(None).stages[-1].decision_maker
    assert dm is not None and dm.asked
    what = text.split("What is asked:", 1)[1].split("Deadline:", 1)[0]
    assert " ".join(dm.asked.split())[:40] in " ".join(what.split())
    assert "concerned agency refers" not in what and "is referred to" not in what


def test_the_raiser_at_the_final_stage_is_offered_no_next_stage(config: PolicyConfig) -> None:
    _, step = final_stage(config, CH)
    block = commands_block(rendered(mail_to(step, CH.raiser, "stage_copy.txt.j2")))
    assert "ESCALATE" not in block and "the decision maker is asked to confirm" in block
    assert "WITHDRAW" in block


@pytest.mark.parametrize("prof", [CH, HAVERING], ids=["city-and-hackney", "havering"])
def test_the_decision_maker_asked_to_confirm_is_not_told_to_escalate(config: PolicyConfig, prof: Profile) -> None:
    run, _ = final_stage(config, prof)
    step = run.reply(prof.raiser, "RESOLVED", "agreed at the meeting", authority="raiser", side="raising")
    text = rendered(mail_to(step, prof.decision_maker, "resolution_confirm_request.txt.j2"))
    assert "ESCALATE" not in text and "RESOLVED    with your decision" in text


@by_partnership
def test_reminder_to_the_decision_maker_says_their_decision_closes_the_case(config: PolicyConfig,
                                                                             prof: Profile) -> None:
    run, _ = final_stage(config, prof, needed_by="2026-11-20")
    step = run(TimerFired("remind_due", run.state.stage_index), at(20))
    text = rendered(mail_to(step, prof.decision_maker, "reminder.txt.j2"))
    assert "your written decision closes the case" in text
    assert "ESCALATE" not in commands_block(text)


# ---- the raiser's copy, "Why now" ----------------------------------------------------------------------


@by_partnership
def test_raiser_copy_says_what_is_asked_and_of_whom(config: PolicyConfig, prof: Profile) -> None:
    run = Run(config.partnerships[prof.id], new_case(prof, stage=2))
    step = run(Opened(), OPENED)
    text = rendered(mail_to(step, prof.raiser))
    if "stage_copy" in mail_to(step, prof.raiser).template:
        assert "Who is asked:" not in text
        assert "What is asked:" in text and "Asked now:" in text
    assert "the other side is asked to confirm" in commands_block(text)
    assert "WITHDRAW" in commands_block(text) and "CONFIRM <address>" not in commands_block(text)
    assert "INFO" not in commands_block(text)


@by_partnership
def test_why_now_names_people_not_addresses(config: PolicyConfig, prof: Profile) -> None:
    run = Run(config.partnerships[prof.id], new_case(prof, stage=2))
    run(Opened(), OPENED)
    asker = prof.ladder[1].asked[-1]
    step = run.reply(asker, "ESCALATE", "we cannot agree", side="receiving")
    assert run.state.stage_index == 2
    why = [(m.template, line) for m in step.mails for line in rendered(m).splitlines()
           if line.startswith(("Why now:", "Why:"))]
    assert {t for t, _ in why} >= {"stage_request.txt.j2", "stage_escalated.txt.j2"}
    for template, line in why:
        assert "@" not in line, (template, line)
        assert "asked to escalate" in line and "(other agency)" in line


# ---- immediate risk ----------------------------------------------------------------------------------------


@by_partnership
def test_immediate_risk_mail_to_those_asked_does_not_tell_them_to_inform_themselves(
        config: PolicyConfig, prof: Profile) -> None:
    run = Run(config.partnerships[prof.id], new_case(prof, immediate_risk=True))
    step = run(Opened(), OPENED)
    ir = config.partnerships[prof.id].immediate_risk
    assert ir is not None and ir.asked_action
    for address in prof.immediate_asked:
        text = " ".join(rendered(mail_to(step, address, "stage_request.txt.j2")).split()).lower()
        assert "inform your" not in text and "inform the designated safeguarding lead in your agency" not in text
        assert "consult your designated" not in text and "raise the matter with your agency" not in text
        assert "escalate your concerns to a manager" not in text
        assert " ".join(ir.asked_action.split())[:50].lower() in text
    raiser = " ".join(rendered(mail_to(step, prof.raiser)).split())
    assert " ".join(ir.action.split())[:50] in raiser


# ---- those told for information --------------------------------------------------------------------------


def notification(step: Step, address: str) -> tuple[OutgoingMail, str]:
    m = mail_to(step, address, "stage_notification.txt.j2")
    return m, rendered(m)


@pytest.mark.parametrize("prof", [CH, HAVERING], ids=["city-and-hackney", "havering"])
def test_cp_chair_or_iro_is_told_about_a_child_they_are_responsible_for(config: PolicyConfig,
                                                                       prof: Profile) -> None:
    step = Run(config.partnerships[prof.id], new_case(prof, stage=2, child_status="cp_plan"))(Opened(), OPENED)
    m, text = notification(step, prof.cp_notified_at_stage_2[0])
    assert "you are responsible for" in m.subject
    assert "you hold responsibility for" in " ".join(text.split())
    assert "No action is required" in text and prof.cp_clause in text
    # Those told may only add notes: the mail offers that, and no command that would be refused.
    assert "Reply with NOTE" in text and not any(w in text for w in ("RESOLVED", "ESCALATE", "ACCEPT"))


@pytest.mark.parametrize("prof", [CH, HAVERING], ids=["city-and-hackney", "havering"])
def test_partnership_members_are_not_told_they_are_responsible_for_the_child(config: PolicyConfig,
                                                                             prof: Profile) -> None:
    step = Run(config.partnerships[prof.id], new_case(prof, stage=3))(Opened(), OPENED)
    for address in prof.ladder[2].notified:
        m, text = notification(step, address)
        assert "responsible for" not in m.subject and "responsibility for" not in text
        assert "What the policy expects of you:" in text and "engage with your agency's senior manager" in text
        assert "No action is required" not in text


def test_tri_borough_borough_contact_is_not_told_they_are_responsible_for_the_child(config: PolicyConfig) -> None:
    step = Run(config.partnerships["tri-borough"], new_case(TRI_BOROUGH, stage=3))(Opened(), OPENED)
    m, text = notification(step, TRI_BOROUGH.ladder[2].notified[0])
    assert "responsible for" not in m.subject and "responsibility for" not in text
    assert "Tri-borough §3" in text and "Support the safeguarding leads" in text


def test_wscb_nominated_persons_on_imminent_risk_are_asked_to_act(config: PolicyConfig) -> None:
    run = Run(config.partnerships["wiltshire"], new_case(WILTSHIRE, immediate_risk=True))
    run(Opened(), OPENED)
    step = run(TimerFired("escalate", run.state.stage_index), at(3))
    assert run.state.stage_index == 3
    m, text = notification(step, "wscb.nominated-person@example.org")
    assert "No action is required" not in text and "responsib" not in text + m.subject
    assert "What the policy expects of you:" in text and "imminent risk" in text
    assert "Wiltshire: Timescales ¶1" in text
    assert "RESOLVED" not in commands_block(text)


# ---- Havering: the confirmation request quotes what 3.1 says ---------------------------------------------


@by_partnership
def test_confirmation_request_quotes_the_policy_it_cites(config: PolicyConfig, prof: Profile) -> None:
    p = config.partnerships[prof.id]
    run = Run(p, new_case(prof))
    run(Opened(), OPENED)
    step = run.reply(prof.raiser, "RESOLVED", "agreed", authority="raiser", side="raising")
    text = rendered(mail_to(step, prof.other_practitioner_email, "resolution_confirm_request.txt.j2"))
    flat = " ".join(text.split())
    interp = p.resolution.confirm_within.interpretation
    assert interp is not None
    assert f'The policy says ({p.resolution.record_clause}): "{" ".join(interp.wording.split())}"' in flat
    if prof.id in ("havering", "city-and-hackney"):  # 3.1 says nothing about written confirmation
        assert "written confirmation" not in flat
    assert "ESCALATE    with your reason" in text
    assert "@" not in flat.split("has recorded escalation", 1)[0].split(",", 1)[1]


# ---- the coordinator's digest ------------------------------------------------------------------------------


def test_digest_flags_a_reply_from_a_look_alike_domain(config: PolicyConfig) -> None:
    ch = config.partnerships["city-and-hackney"]
    items = [DigestItem("reply_not_applied", "CH-2026-0001", at(4, 9), {"reason": "not_a_party",
                                                                       "from": "jo.bloggs@schoo1.examp1e.org"}),
             DigestItem("reply_not_applied", "CH-2026-0001", at(4, 9), {"reason": "no_token",
                                                                       "from": "ch.csc.line-manager@example.org"})]
    text = rendered(compose_digest(ch, items, at(4, 10))[0])
    flagged, plain = text.split("from jo.bloggs@schoo1.examp1e.org", 1)[1].split("from ch.csc.line-manager", 1)
    assert "POSSIBLE IMPERSONATION" in flagged and "example.org" in flagged
    assert "POSSIBLE IMPERSONATION" not in plain


# ---- the help offered and the authority checks agree -----------------------------------------------------


@pytest.mark.parametrize("audience", list(Audience))
@pytest.mark.parametrize("kind", list(StageKind))
def test_help_offers_only_what_the_checks_allow(audience: Audience, kind: StageKind) -> None:
    lines = help_lines(audience, kind)
    assert lines, "every kind of recipient can at least add a note"
    offered = {usage.split()[0] for usage, _ in lines}
    for name in offered:
        assert may_use(COMMANDS[name], AUTHORITY[audience]), (name, audience)
    if kind is StageKind.FINAL:
        assert "ESCALATE" not in offered  # the final stage has no next one: ESCALATE would be refused
    if audience is Audience.NOTIFIED:
        assert offered == {"NOTE"}
    if audience is Audience.DECISION_MAKER:
        assert not offered & {"ESCALATE", "WITHDRAW", "INFO", "CONFIRM"}
    if audience is not Audience.STAFF:
        assert "CONFIRM" not in offered
    if kind is StageKind.WAITING:  # only what a case waiting for information or routing accepts
        assert not offered & {"ESCALATE", "RESOLVED", "ACCEPT"}
        assert ("INFO" in offered) == (audience in (Audience.RAISER, Audience.STAFF))
    else:
        assert "INFO" not in offered  # there is no request for information to answer


def test_escalate_at_the_final_stage_is_refused_so_it_is_never_offered_there(config: PolicyConfig) -> None:
    run, _ = final_stage(config, CH)
    step = run.reply(CH.raiser, "ESCALATE", "no", authority="raiser", side="raising")
    assert "illegal_command" in [e.kind for e in step.events]


@by_partnership
def test_decision_maker_asking_to_escalate_is_told_their_decision_closes_it(config: PolicyConfig,
                                                                            prof: Profile) -> None:
    run, _ = final_stage(config, prof)
    step = run.reply(prof.decision_maker, "ESCALATE", "", authority="decision_maker", side="partnership")
    text = rendered(mail_to(step, prof.decision_maker, "reply_help.txt.j2"))
    assert "your written decision" in text and "the decision maker's written decision" not in text
    assert "RESOLVED <your decision>" in commands_block(text) and "ESCALATE" not in commands_block(text)


def test_reply_help_keeps_the_command_words_as_written(config: PolicyConfig) -> None:
    run = Run(config.partnerships["city-and-hackney"], new_case(CH))
    run(Opened(), OPENED)
    step = run.reply(CH.coordinator, "CONFIRM", "", authority="staff", side="partnership")
    text = rendered(mail_to(step, CH.coordinator, "reply_help.txt.j2"))
    assert "CONFIRM needs the address" in text
    assert "CONFIRM <address>" in commands_block(text)  # staff are offered what staff may do


def test_coordinator_is_told_the_deputys_name(config: PolicyConfig) -> None:
    from escalations.routing.workflow.events import Automated

    run = Run(config.partnerships["city-and-hackney"], new_case(CH, stage=2))
    run(Opened(), OPENED)
    step = run(Automated("auto_reply", CH.other_line_manager), at(4, 9))
    text = rendered(mail_to(step, CH.coordinator, "deputy_takeover.txt.j2"))
    assert f"<{CH.other_line_manager_deputy}>" in text
    assert "deputy, <" not in text and "deputy, " + CH.other_line_manager_deputy not in text


@pytest.mark.parametrize("prof", [p for p in PROFILES if p.id in ("wiltshire", "sutton")],
                         ids=["wiltshire", "sutton"])
def test_secure_mail_line_reads_once_and_cites_its_clause(config: PolicyConfig, prof: Profile) -> None:
    step = Run(config.partnerships[prof.id], new_case(prof, stage=2))(Opened(), OPENED)
    text = rendered(mail_to(step, prof.ladder[1].asked[-1], "stage_request.txt.j2"))
    secure = config.partnerships[prof.id].secure_mail
    assert secure is not None
    line = next(x for x in text.splitlines() if x.startswith("Personal information about the child:"))
    assert ".." not in line and f"({secure.clause})." in line and "secure means: Send" not in line


def test_reply_help_while_waiting_for_information_offers_info_not_decisions(config: PolicyConfig) -> None:
    from dataclasses import replace

    run = Run(config.partnerships["city-and-hackney"], replace(new_case(CH), status="awaiting_information",
                                                                missing=("child_dobs",)))
    step = run.reply(CH.raiser, None, "hello", authority="raiser", side="raising")
    block = commands_block(rendered(mail_to(step, CH.raiser, "reply_help.txt.j2")))
    assert "INFO" in block and "WITHDRAW" in block
    assert "RESOLVED" not in block and "ESCALATE" not in block and "ACCEPT" not in block
