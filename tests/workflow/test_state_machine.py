"""Random runs of ``transition`` for each partnership: referrals opened, replies (every command, from
everyone and from strangers, with random token verdicts), timers and automated mail, checking after
every step that

* every mail goes to a known address (the configuration's contacts, the case's parties past and
  present, the raiser, addresses the coordinator confirmed), and a final decision's closing record
  also to the parties the closing stage's ``outcome_to`` names, whether or not the case ever reached
  their stage (Wiltshire Stage Three: "communicated to all parties", even after an imminent-risk
  referral went direct to Stage Three past the senior managers of Stage Two);
* a closed or withdrawn case never changes status again;
* the timers a step sets are unique by (case, stage, kind, due);
* every deadline set is the policy engine's (``plan_for(...).due`` for the stage), and deadline
  timers fall on it;
* a reply ``authority()`` refuses changes nothing (no case change, no timers).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from escalations.parsers.referral import ReferralFields
from escalations.policy_files import load_config
from escalations.routing.policy.model import Partnership, PolicyConfig
from escalations.routing.workflow.authority import (
    ReplyFacts,
    TokenVerdict,
    authority,
    config_addresses,
    staff_addresses,
)
from escalations.routing.workflow.commands import COMMANDS
from escalations.routing.workflow.events import Automated, Opened, Replied, TimerFired, WorkflowEvent
from escalations.routing.workflow.stages import plan_for
from escalations.routing.workflow.state import (
    TERMINAL,
    CaseChange,
    CaseState,
    CaseStatus,
    Step,
    TimerKind,
    TimerSpec,
)
from escalations.routing.workflow.transition import transition
from tests.conftest import CONFIG_DIR
from tests.workflow.profiles import OPENED, PROFILES, Profile
from tests.workflow.test_transition import apply, new_case

_CONFIG: PolicyConfig | None = None
STRANGER = "someone@elsewhere.example.com"
CLOSED_RECORD = "case_closed.txt.j2"
COMMAND_WORDS: tuple[str | None, ...] = (*COMMANDS, None)
#: Stats over the whole run (printed by the last test).
STEPS: dict[str, int] = {"steps": 0, "runs": 0}
KINDS: dict[str, int] = {}


def config() -> PolicyConfig:
    global _CONFIG
    if _CONFIG is None:
        _CONFIG = load_config(CONFIG_DIR)
    return _CONFIG


class CaseMachine(RuleBasedStateMachine):
    profile: Profile

    def __init__(self) -> None:
        super().__init__()
        self.p: Partnership = config().partnerships[self.profile.id]
        self.state: CaseState = new_case(self.profile)
        self.now: datetime = OPENED
        self.pending: dict[tuple[Any, ...], TimerSpec] = {}
        self.known: set[str] = config_addresses(self.p) | {self.profile.raiser.lower()}
        #: Told the final decision without ever being a party (``outcome_to``): they may write back.
        self.told: set[str] = set()
        STEPS["runs"] += 1

    # ---- driving -------------------------------------------------------------------------------

    def step(self, event: WorkflowEvent) -> Step:
        before = self.state
        step = transition(before, event, self.p, self.now)
        self.check(before, event, step)
        self.state = apply(before, step)
        if step.change.confirmed_addresses is not None:
            self.state = replace(self.state, confirmed_addresses=step.change.confirmed_addresses)
        for x in self.state.parties:
            self.known |= {x.email.lower(), *([x.deputy_email.lower()] if x.deputy_email else [])}
        if step.change.status == CaseStatus.CLOSED:
            self.told |= {a.lower() for m in step.mails if m.template == CLOSED_RECORD for a in m.to} - self.known
            self.known |= self.told
        if step.cancel_timers:
            self.pending.clear()
        for t in step.timers:
            self.pending[(t.stage_index, t.kind, t.due_at)] = t
        STEPS["steps"] += 1
        for e in step.events:
            KINDS[e.kind] = KINDS.get(e.kind, 0) + 1
        return step

    def addresses(self) -> list[str]:
        """Everyone who might write: the raiser, every party, staff, someone told, a stranger."""
        out = {self.profile.raiser, STRANGER, *staff_addresses(self.p), *self.told}
        for x in self.state.parties:
            out.add(x.email)
            if x.deputy_email:
                out.add(x.deputy_email)
        return sorted(out)

    @initialize(variant=st.sampled_from(["plain", "urgent", "cp_plan", "stage2", "unknown_agency"]))
    def open_case(self, variant: str) -> None:
        fields: dict[str, Any] = {"plain": {}, "urgent": {"immediate_risk": True},
                                  "cp_plan": {"child_status": "cp_plan"}, "stage2": {"stage": 2},
                                  "unknown_agency": {"other_agency": "Nowhere Agency"}}[variant]
        self.state = new_case(self.profile, **fields)
        self.step(Opened())

    @rule(hours=st.integers(0, 24 * 6))
    def wait(self, hours: int) -> None:
        self.now += timedelta(hours=hours)

    @rule(data=st.data())
    def reply(self, data: st.DataObject) -> None:
        sender = data.draw(st.sampled_from(self.addresses()), label="sender")
        command = data.draw(st.sampled_from(COMMAND_WORDS), label="command")
        known = sender.lower() in self.known
        # Only someone we wrote to can hold a valid token (mostly they reply to our latest mail).
        tokens = [TokenVerdict.VALID] * 8 + list(TokenVerdict) if known else \
            [TokenVerdict.NONE, TokenVerdict.INVALID, TokenVerdict.EXPIRED]
        stage = self.state.stage_index
        facts = ReplyFacts(
            sender=data.draw(st.sampled_from([sender] * 5 + [None]), label="strict sender"),
            claimed_sender=sender,
            token=data.draw(st.sampled_from(tokens), label="token"),
            token_case_id=data.draw(st.sampled_from([self.state.id] * 5 + [2]), label="token case"),
            token_stage_index=data.draw(st.sampled_from([stage] * 6 + [-1, 0, 1, 3]), label="token stage"),
            dmarc_failed=data.draw(st.sampled_from([False] * 7 + [True]), label="dmarc failed"),
            notes_today=data.draw(st.sampled_from([0] * 5 + [20]), label="notes today"),
        )
        argument = data.draw(st.sampled_from(["", "Agreed a strategy meeting.", self.profile.other_practitioner_email,
                                              STRANGER]), label="argument")
        info = data.draw(st.sampled_from([None, ReferralFields.from_json({"actions_taken": "Met them."}),
                                          ReferralFields.from_json({"immediate_risk": True})]), label="info")
        event = Replied(sender=sender, command=command, argument=argument, message_id="<m@example.org>",
                        authority="party", side=None, info=info, facts=facts)
        self.step(event)

    @precondition(lambda self: bool(self.pending))
    @rule(data=st.data())
    def fire_timer(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.pending, key=str)), label="timer")
        t = self.pending.pop(key)
        self.now = max(self.now, t.due_at)
        late = self.state.due_at is not None and self.state.due_at <= self.now and t.due_at < self.state.due_at
        self.step(TimerFired(t.kind, t.stage_index, late=late))

    @rule(kind=st.sampled_from(list(TimerKind)), stage=st.sampled_from([None, -1, 0, 1, 2, 3]))
    def stray_timer(self, kind: TimerKind, stage: int | None) -> None:
        self.step(TimerFired(kind, stage))

    @rule(data=st.data())
    def automated(self, data: st.DataObject) -> None:
        address = data.draw(st.sampled_from(self.addresses()), label="address")
        self.step(Automated(kind=data.draw(st.sampled_from(["auto_reply", "bounce"]), label="kind"),
                            address=address, permanent=data.draw(st.booleans(), label="permanent"),
                            verified=data.draw(st.booleans(), label="verified")))

    # ---- the invariants --------------------------------------------------------------------------

    def outcome_parties(self, state: CaseState) -> set[str]:
        """Who the YAML's ``outcome_to`` for the case's stage names, looked up here from the directory:
        the agencies' contacts for the roles named (and their deputies), the partnership's role
        contacts, and the referral's other worker for ``receiving.practitioner``."""
        if state.stage_index is None or state.stage_index < 0:
            return set()
        notice = self.p.route(state.route).stages[state.stage_index].outcome_to
        if notice is None:
            return set()
        f = state.fields
        b = self.p.find_borough(f.borough)
        borough = b.id if b else f.borough
        agencies = {"raising": self.p.find_agency(f.raised_by_agency, borough=borough),
                    "receiving": self.p.find_agency(f.other_agency, borough=borough)}
        out: set[str] = set()
        for party in notice.parties:
            side, role = party.split(".", 1)
            if side == "partnership":
                r = self.p.roles.get(role)
                out |= {c.email.lower() for c in (r.contacts if r else [])}
                continue
            for s in (["raising", "receiving"] if side == "both" else [side]):
                if role == "practitioner":
                    out.add((self.profile.raiser if s == "raising" else self.profile.other_practitioner_email).lower())
                    continue
                agency = agencies[s]
                c = agency.contacts.get(role) if agency else None
                if c is not None:
                    out |= {c.email.lower(), *([c.deputy.email.lower()] if c.deputy else [])}
        return out

    def check(self, before: CaseState, event: WorkflowEvent, step: Step) -> None:
        after = apply(before, step)
        known = self.known | {x.email.lower() for x in after.parties} | \
            {x.deputy_email.lower() for x in after.parties if x.deputy_email} | \
            {a.lower() for a in (step.change.confirmed_addresses or before.confirmed_addresses)}
        # A final decision (not a withdrawal) is communicated to all parties, whether or not the case
        # reached their stage: the closing record only, at the stage it closes at.
        decided = self.outcome_parties(before) if step.change.status == CaseStatus.CLOSED else set()
        for m in step.mails:
            for a in (*m.to, *m.cc):
                assert a.lower() in known or (m.template == CLOSED_RECORD and a.lower() in decided), \
                    (m.template, a)
        if before.status in TERMINAL:
            assert step.change.status is None and after.status == before.status
        keys = [(before.id, t.stage_index, t.kind, t.due_at) for t in step.timers]
        assert len(keys) == len(set(keys)), keys
        self.check_deadlines(before, after, step)
        if isinstance(event, Replied) and event.facts is not None and \
                not authority(before, event.facts, self.p, event.command).allowed:
            assert step.change == CaseChange() and not step.timers and not step.cancel_timers

    def check_deadlines(self, before: CaseState, after: CaseState, step: Step) -> None:
        c = step.change
        if c.due_at is None:
            return
        assert after.stage_index is not None and c.stage_opened_at is not None
        expected = {plan_for(replace(after, route=route), self.p, after.stage_index, c.stage_opened_at,
                             previous_due=prev).due
                    for route in {after.route, before.route} for prev in (None, before.due_at)}
        assert c.due_at in expected, (c.due_at, expected)
        for t in step.timers:
            if t.kind in (TimerKind.ESCALATE, TimerKind.REMIND_DUE):
                assert t.due_at == c.due_at

    @invariant()
    def status_is_known(self) -> None:
        assert self.state.status in {"awaiting_information", "open", "needs_routing", "awaiting_confirmation",
                                     "closed", "withdrawn"}


def machine_for(profile: Profile) -> type[CaseMachine]:
    return type(f"Machine_{profile.prefix}", (CaseMachine,), {"profile": profile})


_SETTINGS = settings(max_examples=100, stateful_step_count=25, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

TestCityAndHackney = machine_for(PROFILES[0]).TestCase
TestHavering = machine_for(PROFILES[1]).TestCase
TestWiltshire = machine_for(PROFILES[2]).TestCase
TestTriBorough = machine_for(PROFILES[3]).TestCase
TestSutton = machine_for(PROFILES[4]).TestCase
for _case in (TestCityAndHackney, TestHavering, TestWiltshire, TestTriBorough, TestSutton):
    _case.settings = _SETTINGS
del _case


def test_zz_machines_ran() -> None:
    """Printed with -s: how many runs and steps the machines above took."""
    print(f"state machine: {STEPS['runs']} runs, {STEPS['steps']} transitions; events: {sorted(KINDS.items())}")
