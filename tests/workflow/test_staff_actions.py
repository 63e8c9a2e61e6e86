"""Staff actions from the web interface, through the pure ``transition`` (``routing/workflow/staff.py``):
each action, and that only coordinators and administrators may act — decided in the pure layer."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from escalations.policy_files import load_config
from escalations.routing.policy.model import Partnership, PolicyConfig
from escalations.routing.workflow.events import Opened, StaffAction
from escalations.routing.workflow.staff import ACTIONS, Action, quarantine_refusal
from escalations.routing.workflow.state import CaseChange, CaseState, Step
from escalations.routing.workflow.transition import transition
from tests.conftest import CONFIG_DIR
from tests.workflow.profiles import CH, OPENED, at
from tests.workflow.test_transition import Run, new_case

COORDINATOR = "chscp.business-manager@example.org"


@pytest.fixture(scope="module")
def config() -> PolicyConfig:
    return load_config(CONFIG_DIR)


@pytest.fixture
def ch(config: PolicyConfig) -> Partnership:
    return config.partnerships["city-and-hackney"]


def opened(p: Partnership, **fields: Any) -> Run:
    run = Run(p, new_case(CH, **fields))
    run(Opened(), OPENED)
    return run


def act(run: Run, action: Action, reason: str = "checked with both agencies", *, role: str = "coordinator",
        who: str = COORDINATOR, **arguments: str) -> Step:
    return run(StaffAction(who=who, role=role, action=action, reason=reason, arguments=arguments), at(4, 11))


def kinds(step: Step) -> list[str]:
    return [e.kind for e in step.events]


def test_a_note_is_recorded_with_the_member_of_staff_and_reason(ch: Partnership) -> None:
    run = opened(ch)
    step = act(run, Action.NOTE, "spoke to the line manager", text="They will call the school today")
    assert kinds(step) == ["staff_note"]
    record = step.events[0]
    assert record.actor == COORDINATOR
    assert record.detail["reason"] == "spoke to the line manager"
    assert record.detail["text"] == "They will call the school today"
    assert record.detail["role"] == "coordinator"
    assert step.change == CaseChange() and not step.mails


@pytest.mark.parametrize("role", ["viewer", "practitioner", ""])
@pytest.mark.parametrize("action", list(ACTIONS))
def test_viewers_and_practitioners_cannot_act(ch: Partnership, role: str, action: Action) -> None:
    run = opened(ch)
    before = run.state
    step = act(run, action, role=role, text="x", outcome="x", field="concern", value="x", agency="Hackney CSC",
               address="someone@csc.example.org")
    assert kinds(step) == [f"staff_{action}", "staff_action_refused"]
    assert "not act" in step.events[1].detail["why"]
    assert step.change == CaseChange() and not step.mails and not step.timers and not step.cancel_timers
    assert run.state == before


def test_a_reason_is_required(ch: Partnership) -> None:
    step = act(opened(ch), Action.ESCALATE, "  ")
    assert kinds(step) == ["staff_escalate", "staff_action_refused"]
    assert step.change == CaseChange() and not step.mails


def test_an_unknown_action_is_refused(ch: Partnership) -> None:
    step = act(opened(ch), "delete_everything")  # type: ignore[arg-type]
    assert step.events[-1].kind == "staff_action_refused" and step.change == CaseChange()


def test_escalate_now_opens_the_next_stage_and_tells_those_asked(ch: Partnership) -> None:
    run = opened(ch)
    step = act(run, Action.ESCALATE, "no answer by phone either")
    assert kinds(step)[:2] == ["staff_escalate", "escalated"]
    assert "no answer by phone either" in step.events[1].detail["because"]
    assert run.state.stage_index == 1
    assert {a for m in step.mails if m.template == "stage_request.txt.j2" for a in m.to} >= {
        "ch.education.line-manager@example.org", "ch.csc.line-manager@example.org"}
    assert step.cancel_timers and step.timers


def test_record_a_resolution_closes_the_case_as_decided_by_staff(ch: Partnership) -> None:
    run = opened(ch)
    step = act(run, Action.RECORD_RESOLUTION, "agreed at the strategy meeting", outcome="assessment agreed")
    assert kinds(step)[0] == "staff_record_resolution"
    assert run.state.status == "closed"
    closed = next(e for e in step.events if e.kind == "closed")
    assert closed.detail["outcome"] == "assessment agreed" and "partnership staff" in closed.detail["how"]
    assert CH.raiser in {a for m in step.mails for a in m.to}


def test_close_and_withdraw(ch: Partnership) -> None:
    run = opened(ch)
    step = act(run, Action.CLOSE, "resolved outside the process", outcome="plan agreed")
    assert run.state.status == "closed" and "closed by partnership staff" in step.events[1].detail["how"]
    # A finished case takes no more actions but notes and holds.
    again = act(run, Action.ESCALATE)
    assert again.events[-1].kind == "staff_action_refused" and again.change == CaseChange()
    assert kinds(act(run, Action.NOTE, "filed")) == ["staff_note"]
    other = opened(ch)
    step = act(other, Action.WITHDRAW, "the referrer asked by phone")
    assert other.state.status == "withdrawn" and kinds(step)[0] == "staff_withdraw"


def test_correct_a_field_keeps_childs_details_out_of_the_record(ch: Partnership) -> None:
    run = opened(ch)
    step = act(run, Action.CORRECT_FIELD, "typo in the form", field="child_names", value="Poppy Testchild; Sam Testchild")
    assert run.state.fields.child_names == ("Poppy Testchild", "Sam Testchild")
    assert "Testchild" not in repr(step.events)
    step = act(run, Action.CORRECT_FIELD, "clarified", field="outcome_sought", value="A strategy discussion")
    assert run.state.fields.outcome_sought == "A strategy discussion"
    assert step.events[0].detail["value"] == "A strategy discussion"
    refused = act(run, Action.CORRECT_FIELD, "change raiser", field="raised_by_email", value="x@example.org")
    assert refused.events[-1].kind == "staff_action_refused" and refused.change == CaseChange()


def test_set_the_other_agency_routes_a_waiting_case(ch: Partnership) -> None:
    run = opened(ch, other_agency="Acme Tutoring Ltd")
    assert run.state.status == "needs_routing"
    unknown = act(run, Action.SET_AGENCY, "routing", agency="Nobody Ltd")
    assert unknown.events[-1].kind == "staff_action_refused"
    step = act(run, Action.SET_AGENCY, "it is the council's CSC", agency="Hackney Children's Social Care")
    assert kinds(step)[0] == "staff_set_agency"
    assert run.state.status == "open"
    chosen = ch.find_agency("Hackney Children's Social Care")
    assert chosen is not None and run.state.fields.other_agency == chosen.name  # the directory's name for it
    assert any(e.kind == "stage_opened" for e in step.events)


def test_confirm_an_address_asks_the_other_worker(ch: Partnership) -> None:
    run = opened(ch, other_practitioner="Sam Smith <sam@unknown-domain.example.com>")
    assert "sam@unknown-domain.example.com" not in {a for m in run.mails for a in m.to}
    bad = act(run, Action.CONFIRM_ADDRESS, "checked", address="not an address")
    assert bad.events[-1].kind == "staff_action_refused" and not bad.mails
    step = act(run, Action.CONFIRM_ADDRESS, "phoned to check", address="sam@unknown-domain.example.com")
    assert kinds(step)[:2] == ["staff_confirm_address", "address_confirmed"]
    assert [m.to for m in step.mails] == [("sam@unknown-domain.example.com",)]


def test_resend_sends_the_stages_mails_again_with_the_same_deadline(ch: Partnership) -> None:
    run = opened(ch)
    first = {m.to[0]: m for m in run.mails if m.template in ("stage_request.txt.j2", "stage_copy.txt.j2")}
    step = act(run, Action.RESEND, "the school's mail server lost it")
    again = {m.to[0]: m for m in step.mails}
    assert set(again) == set(first)
    for address, m in again.items():
        assert m.dedupe_key != first[address].dedupe_key
        assert m.context["due_local"] == first[address].context["due_local"]
    assert kinds(step) == ["staff_resend", "stage_mails_resent"]
    assert step.change == CaseChange()


def test_legal_hold_set_and_lift(ch: Partnership) -> None:
    state = replace(opened(ch).state, status="closed")
    step = transition(state, StaffAction(COORDINATOR, "admin", Action.SET_LEGAL_HOLD, "litigation"), ch, at(5))
    assert step.change == CaseChange(legal_hold=True) and kinds(step) == ["staff_set_legal_hold"]
    held: CaseState = replace(state, legal_hold=True)
    twice = transition(held, StaffAction(COORDINATOR, "admin", Action.SET_LEGAL_HOLD, "again"), ch, at(5))
    assert twice.events[-1].kind == "staff_action_refused" and twice.change == CaseChange()
    lift = transition(held, StaffAction(COORDINATOR, "coordinator", Action.LIFT_LEGAL_HOLD, "ended"), ch, at(6))
    assert lift.change == CaseChange(legal_hold=False)


def test_quarantine_actions_need_a_coordinator() -> None:
    assert quarantine_refusal("coordinator", Action.REPLAY_QUARANTINED) is None
    assert quarantine_refusal("admin", Action.DISCARD_QUARANTINED) is None
    assert quarantine_refusal("viewer", Action.REPLAY_QUARANTINED)
    assert quarantine_refusal("practitioner", Action.DISCARD_QUARANTINED)
    assert quarantine_refusal("coordinator", Action.NOTE)
