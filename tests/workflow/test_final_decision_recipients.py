"""Who gets a final decision when the case never reached the stages whose people the policy says hear
it: Wiltshire's imminent-risk referral goes direct to Stage Three ("Timescales" ¶1), past Stage Two's
senior managers, and the WSCB representative's decision "will be communicated to all parties" (Stage
Three), which the YAML's ``outcome_to`` names as both agencies' senior managers and the other worker.

The state machine (``test_state_machine``) once took those people for strangers; these are its
falsifying examples written out as explicit event sequences, with the checks that its invariant still
refuses them anywhere but in a final decision's closing record.
"""

from __future__ import annotations

import re
from datetime import datetime

import pytest

from escalations.routing.workflow.authority import ReplyFacts, TokenVerdict
from escalations.routing.workflow.events import Opened, Replied, TimerFired
from escalations.routing.workflow.state import CaseChange, CaseStatus, OutgoingMail, Step, TimerKind
from tests.workflow.profiles import OPENED, WILTSHIRE, at
from tests.workflow.test_state_machine import CaseMachine, machine_for
from tests.workflow.test_transition import new_case

W = WILTSHIRE
DSL = "wil.police.safeguarding-lead@example.org"
NOMINATED = "wscb.nominated-person@example.org"
SENIOR_MANAGERS = ("wil.police.senior-manager@example.org", "wil.csc.senior-manager@example.org")
LINE_MANAGERS = ("wil.police.line-manager@example.org", "wil.csc.line-manager@example.org")
DECISION = "Decision: CSC completes an assessment within 10 days."


def reply(sender: str, command: str, token_stage: int, argument: str = "") -> Replied:
    facts = ReplyFacts(sender=sender, claimed_sender=sender, token=TokenVerdict.VALID, token_case_id=1,
                       token_stage_index=token_stage, dmarc_failed=False, notes_today=0)
    return Replied(sender=sender, command=command, argument=argument, message_id="<m@example.org>",
                   authority="party", side=None, info=None, facts=facts)


class Driven:
    """The Wiltshire state machine driven by hand: every step goes through its ``check``."""

    def __init__(self, variant: dict[str, object] | None = None) -> None:
        self.m: CaseMachine = machine_for(W)()
        self.m.state = new_case(W, **(variant or {}))
        self.ever: set[str] = set()
        self.step(Opened(), OPENED)

    def step(self, event: Opened | Replied | TimerFired, now: datetime) -> Step:
        self.m.now = now
        step = self.m.step(event)
        self.ever |= {x.email for x in self.m.state.parties}
        return step


def closing_to(step: Step) -> set[str]:
    return {a for m in step.mails if m.template == "case_closed.txt.j2" for a in m.to}


def test_imminent_risk_direct_to_stage_three_decision_reaches_all_parties() -> None:
    """The hypothesis database's example: the other worker's URGENT at pre-escalation, the raiser's
    ESCALATE of the DSL consultation (straight to Stage Three), the WSCB representative's decision."""
    run = Driven()
    assert run.m.state.stage_index == 0
    run.step(reply(W.other_practitioner_email, "NOTE", 0, "We disagree."), at(3, 11))
    run.step(reply(W.other_practitioner_email, "URGENT", 0), at(3, 12))
    assert run.m.state.stage_index == -1 and {x.email for x in run.m.state.parties} == {DSL, W.raiser}
    run.step(reply(W.raiser, "ESCALATE", -1, "CSC still disagrees."), at(3, 13))
    assert run.m.state.stage_index == 3  # Stage Three, Stage One and Stage Two skipped
    run.step(reply(W.raiser, "NOTE", 3, "More detail."), at(3, 14))
    step = run.step(reply(W.decision_maker, "RESOLVED", 3, DECISION), at(4, 9))

    assert run.m.state.status == CaseStatus.CLOSED
    # Never parties of this case: asked at the skipped Stage Two, told only the decision.
    assert not run.ever & set(SENIOR_MANAGERS)
    assert closing_to(step) == {W.decision_maker, NOMINATED, W.raiser, W.other_practitioner_email, *SENIOR_MANAGERS}
    assert not closing_to(step) & {DSL, *LINE_MANAGERS}
    shared = next(e for e in step.events if e.kind == "outcome_shared")
    assert shared.clause == "Wiltshire: Stage Three" and set(shared.detail["to"]) == closing_to(step)
    assert not shared.detail["not_found"]


def test_referral_opened_urgent_decision_reaches_the_other_worker_never_asked() -> None:
    """The second example more exploration found: an urgent referral, the DSL's deadline passing (the
    ladder continues at Stage Three), the decision; the other worker was never asked anything."""
    run = Driven({"immediate_risk": True})
    assert run.m.state.stage_index == -1 and W.other_practitioner_email not in run.ever
    run.step(TimerFired(TimerKind.ESCALATE, -1), at(3))
    assert run.m.state.stage_index == 3
    step = run.step(reply(W.decision_maker, "RESOLVED", 3, DECISION), at(4, 9))
    assert W.other_practitioner_email not in run.ever and not run.ever & set(SENIOR_MANAGERS)
    assert {W.other_practitioner_email, *SENIOR_MANAGERS} <= closing_to(step)


def at_stage_three() -> Driven:
    run = Driven({"immediate_risk": True})
    run.step(reply(W.raiser, "ESCALATE", -1, "CSC still disagrees."), at(3, 13))
    assert run.m.state.stage_index == 3
    return run


def fake(template: str, to: str) -> OutgoingMail:
    return OutgoingMail(template=template, to=(to,), subject="s", context={}, dedupe_key="k", reason="r")


@pytest.mark.parametrize("template", ["stage_request.txt.j2", "stage_copy.txt.j2"])
def test_the_invariant_still_refuses_outcome_parties_in_any_other_mail(template: str) -> None:
    run = at_stage_three()
    step = Step(mails=(fake(template, SENIOR_MANAGERS[1]),))
    with pytest.raises(AssertionError, match=re.escape(SENIOR_MANAGERS[1])):
        run.m.check(run.m.state, reply(W.raiser, "NOTE", 3), step)


@pytest.mark.parametrize("status", [CaseStatus.WITHDRAWN, None])
def test_the_invariant_refuses_a_closing_record_to_them_without_a_decision(status: CaseStatus | None) -> None:
    """A withdrawal is not a decision to communicate to the other agency (nor is a step that closes nothing)."""
    run = at_stage_three()
    step = Step(change=CaseChange(status=status), mails=(fake("case_closed.txt.j2", SENIOR_MANAGERS[0]),))
    with pytest.raises(AssertionError, match=re.escape(SENIOR_MANAGERS[0])):
        run.m.check(run.m.state, reply(W.raiser, "WITHDRAW", 3), step)


def test_the_invariant_refuses_a_closing_record_to_a_stranger() -> None:
    run = at_stage_three()
    step = Step(change=CaseChange(status=CaseStatus.CLOSED), mails=(fake("case_closed.txt.j2", LINE_MANAGERS[1]),))
    with pytest.raises(AssertionError, match=re.escape(LINE_MANAGERS[1])):
        run.m.check(run.m.state, reply(W.decision_maker, "RESOLVED", 3), step)
