"""``Opened`` carries the parse: the acknowledgement and the first step are one transition."""

from __future__ import annotations

from dataclasses import replace

import pytest

from escalations.parsers.fields import ReferralFields, ReferralParse
from escalations.policy_files import load_config
from escalations.routing.policy.model import PolicyConfig
from escalations.routing.workflow.events import NewReferral, Opened
from escalations.routing.workflow.state import CaseStatus
from escalations.routing.workflow.transition import transition
from tests.conftest import CONFIG_DIR
from tests.workflow.profiles import CH, OPENED
from tests.workflow.test_transition import new_case


@pytest.fixture(scope="module")
def config() -> PolicyConfig:
    return load_config(CONFIG_DIR)


def intake(fields: ReferralFields, missing: tuple[str, ...] = (), **kw: object) -> NewReferral:
    parse = ReferralParse(fields=fields, missing=missing, sources=("body",), labelled_count=5, **kw)  # type: ignore[arg-type]
    return NewReferral(parse=parse, sender=CH.raiser, origin_message_id="<o-1@example.org>")


def test_a_complete_referral_is_acknowledged_and_opened_in_one_step(config: PolicyConfig) -> None:
    p = config.partnerships[CH.id]
    state = new_case(CH)
    step = transition(state, Opened(intake(state.fields)), p, OPENED)
    templates = [m.template for m in step.mails]
    assert templates[0] == "referral_acknowledged.txt.j2" and "stage_request.txt.j2" in templates
    kinds = [e.kind for e in step.events]
    assert kinds[0] == "case_opened" and "acknowledgement_queued" in kinds and "stage_opened" in kinds
    assert step.change.status == CaseStatus.OPEN and step.change.stage_index == 0 and step.timers


def test_an_incomplete_referral_waits(config: PolicyConfig) -> None:
    p = config.partnerships[CH.id]
    state = replace(new_case(CH, outcome_sought=None), missing=("outcome_sought",))
    step = transition(state, Opened(intake(state.fields, ("outcome_sought",))), p, OPENED)
    assert [m.template for m in step.mails] == ["referral_incomplete.txt.j2"]
    assert step.change.status == CaseStatus.AWAITING_INFORMATION and not step.timers


def test_free_text_opens_incomplete_and_tells_the_coordinator(config: PolicyConfig) -> None:
    p = config.partnerships[CH.id]
    fields = ReferralFields(concern="I want to escalate our disagreement with CSC.", other_agency="CSC")
    missing = ("child_names", "outcome_sought")
    state = replace(new_case(CH), fields=fields, missing=missing, immediate_risk=False)
    step = transition(state, Opened(intake(fields, missing, free_text=True)), p, OPENED)
    (ack,) = step.mails
    assert ack.template == "referral_incomplete.txt.j2" and ack.to == (CH.raiser,)
    assert ack.context["free_text"] is True and ack.context["concern_summary"] == ""
    assert "Role of referrer" in ack.context["missing"]
    assert step.change.status == CaseStatus.INCOMPLETE
    assert [n.kind for n in step.notices] == ["free_text_referral"]


def test_free_text_at_immediate_risk_alerts_the_coordinator_at_once(config: PolicyConfig) -> None:
    p = config.partnerships[CH.id]
    fields = ReferralFields(concern="A child is at immediate risk.", immediate_risk=True)
    missing = ("child_names", "other_agency", "outcome_sought")
    state = replace(new_case(CH), fields=fields, missing=missing, immediate_risk=True)
    step = transition(state, Opened(intake(fields, missing, free_text=True)), p, OPENED)
    alerts = [m for m in step.mails if m.template == "referral_urgent_alert.txt.j2"]
    assert [m.to for m in alerts] == [(c.email,) for c in p.coordinator()]
    assert any(e.kind == "immediate_risk_route" for e in step.events)
    assert step.notices[0].detail == {"immediate_risk": True}


def test_an_unread_timescale_is_asked_for_and_noticed(config: PolicyConfig) -> None:
    p = config.partnerships[CH.id]
    state = new_case(CH)
    step = transition(state, Opened(intake(state.fields, timescale_unread="before Ava's review")), p, OPENED)
    ack = step.mails[0]
    assert ack.context["timescale_unread"] == "before A. review"
    assert ack.context["missing"] == ["Timescale that protects the child (date)"]
    assert [n.kind for n in step.notices] == ["timescale_unread"]
    assert not any("Ava" in str(e.detail) for e in step.events)
