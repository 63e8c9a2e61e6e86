"""The plan engine: what happens when a stage opens, the timeline if nobody replies, the next step.

:func:`stage_plan`, :func:`timeline` and :func:`next_step` are pure: no I/O, no clock; they
return UTC-aware datetimes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from escalations.routing.policy.directory import Recipient, Unresolved, panel_members, recipient, recipients
from escalations.routing.policy.model import (
    Agency,
    DecisionMaker,
    FormRequirement,
    Interpretation,
    Partnership,
    Route,
    SecureMail,
    Stage,
    SuggestedAction,
    Timescale,
)

#: The index :func:`stage_plan` and :func:`next_step` use for the immediate-risk step.
IMMEDIATE = -1


@dataclass(frozen=True)
class StagePlan:
    """What happens when a stage opens: who is asked and notified, by when, and which clause says so."""

    partnership_id: str
    policy_version: str
    route_id: str
    #: Index into the route's stages; :data:`IMMEDIATE` for the immediate-risk step.
    stage_index: int
    #: 1-based position in the ladder; 0 for the immediate-risk step.
    number: int
    stage_id: str
    name: str
    label: str | None
    action: str
    clause: str
    asked_parties: tuple[str, ...]
    asked: tuple[Recipient, ...]
    #: Parties whose address comes from the referral, not the directory (the practitioners).
    from_referral: tuple[str, ...]
    notified_parties: tuple[str, ...]
    notified: tuple[Recipient, ...]
    notification_clauses: tuple[str, ...]
    unresolved: tuple[Unresolved, ...]
    coordinator: tuple[Recipient, ...]
    opens: datetime | None
    due: datetime | None
    #: The policy's own deadline before the referral's needed_by was applied.
    policy_due: datetime | None
    due_rule: str
    due_clause: str | None
    shortened_by_needed_by: bool
    needed_by_passed: bool
    escalate_by: datetime | None
    suggested_actions: tuple[SuggestedAction, ...]
    forms: tuple[FormRequirement, ...]
    decision_maker: DecisionMaker | None
    panel: tuple[Recipient, ...]
    panel_shortfall: str | None
    next_stage_index: int | None
    interpretations: tuple[Interpretation, ...]
    secure_mail: SecureMail | None

    @property
    def is_final(self) -> bool:
        return self.next_stage_index is None


AgencyArg = Agency | str | None


def _resolve_agency(p: Partnership, value: AgencyArg, borough: str | None) -> Agency | None:
    if value is None or isinstance(value, Agency):
        return value
    return p.agency(value) or p.find_agency(value, borough=borough)



def _as_utc(t: datetime, tz: ZoneInfo) -> datetime:
    return (t.replace(tzinfo=tz) if t.tzinfo is None else t).astimezone(UTC)


def stage_plan(
    partnership: Partnership,
    route_id: str | None,
    stage_index: int,
    opened_at: datetime | None,
    *,
    child_status: str | None = None,
    immediate_risk: bool = False,
    needed_by: date | datetime | None = None,
    raising_agency: AgencyArg = None,
    other_agency: AgencyArg = None,
    borough: str | None = None,
    scope: str | None = None,
    previous_due: datetime | None = None,
) -> StagePlan:
    """The plan for stage ``stage_index`` of route ``route_id`` opening at ``opened_at``.

    ``stage_index`` is 0-based (:data:`IMMEDIATE` for the immediate-risk step). Naive datetimes are
    local time. ``needed_by`` (the "timescale that protects the child") replaces the policy deadline
    when sooner and never lengthens it. ``previous_due`` is when the previous stage fell due, from
    which ``reach_within`` ("escalate within 24 hours") is counted (default: ``opened_at``).
    ``borough``/``scope`` pick per-area partnership contacts (Tri-borough boroughs, Sutton subgroups).
    """
    p = partnership
    b = p.find_borough(borough)
    area = scope or (b.id if b else None)
    raising = _resolve_agency(p, raising_agency, b.id if b else borough)
    other = _resolve_agency(p, other_agency, b.id if b else borough)
    opens = _as_utc(opened_at, p.tz) if opened_at is not None else None
    at = _locate(p, p.route(route_id), stage_index)
    stage = at.stage
    parties = _parties(p, stage, child_status, immediate_risk, raising, other, area)
    due = _deadline(p, stage, opens, needed_by)
    escalate_by = None
    if stage.reach_within and opens is not None:
        base = _as_utc(previous_due, p.tz) if previous_due is not None else opens
        escalate_by = p.calendar.deadline(base, stage.reach_within.amount, stage.reach_within.unit)
    panel: list[Recipient] = []
    shortfall = None
    if stage.decision_maker and stage.decision_maker.panel:
        panel, shortfall = panel_members(p, stage.decision_maker.panel, raising, other)
    ts = _timescale(stage)
    interps = [i for i in (stage.interpretation, ts.interpretation if ts else None,
                           stage.reach_within.interpretation if stage.reach_within else None) if i]
    coordinator = [recipient(p, f"partnership.{p.coordinator_role}", c, None) for c in p.coordinator()]
    return StagePlan(
        partnership_id=p.id, policy_version=p.policy_version, route_id=at.route.id, stage_index=stage_index,
        number=at.number, stage_id=stage.id, name=stage.name, label=stage.label, action=stage.action,
        clause=stage.clause, asked_parties=tuple(stage.asked), asked=tuple(parties.asked),
        from_referral=tuple(dict.fromkeys(parties.referral)), notified_parties=tuple(parties.notified_parties),
        notified=tuple(parties.notified), notification_clauses=tuple(parties.note_clauses),
        unresolved=tuple(parties.unresolved), coordinator=tuple(coordinator), opens=opens, due=due.due,
        policy_due=due.policy_due, due_rule=due.rule, due_clause=due.clause,
        shortened_by_needed_by=due.shortened, needed_by_passed=due.passed,
        escalate_by=escalate_by, suggested_actions=tuple(stage.suggested_actions), forms=tuple(stage.forms),
        decision_maker=stage.decision_maker, panel=tuple(panel), panel_shortfall=shortfall,
        next_stage_index=at.next_index, interpretations=tuple(interps), secure_mail=p.secure_mail,
    )


@dataclass(frozen=True)
class _At:
    """Where a stage index points: the stage, the route it is on, what follows, its 1-based number."""

    stage: Stage
    route: Route
    next_index: int | None
    number: int


def _locate(p: Partnership, route: Route, stage_index: int) -> _At:
    if stage_index != IMMEDIATE:
        if not 0 <= stage_index < len(route.stages):
            raise IndexError(f"route {route.id!r} of {p.id} has {len(route.stages)} stages; no index {stage_index}")
        nxt = stage_index + 1 if stage_index + 1 < len(route.stages) else None
        return _At(route.stages[stage_index], route, nxt, stage_index + 1)
    ir = p.immediate_risk
    if ir is None:
        raise ValueError(f"{p.id} encodes no immediate-risk step")
    stage = Stage(id="immediate-risk", name="Immediate risk", asked=ir.asked, action=ir.action,
                  clause=ir.clause, timescale=ir.timescale, interpretation=ir.interpretation)
    default_ids = [s.id for s in p.default_route.stages]
    target = ir.bypass_to if ir.bypass_mandatory and ir.bypass_to else ir.continue_at
    return _At(stage, p.default_route, default_ids.index(target) if target else 0, 0)


@dataclass
class _Parties:
    asked: list[Recipient] = field(default_factory=list)
    referral: list[str] = field(default_factory=list)
    unresolved: list[Unresolved] = field(default_factory=list)
    notified_parties: list[str] = field(default_factory=list)
    notified: list[Recipient] = field(default_factory=list)
    note_clauses: list[str] = field(default_factory=list)


def _parties(p: Partnership, stage: Stage, child_status: str | None, immediate_risk: bool,
             raising: Agency | None, other: Agency | None, area: str | None) -> _Parties:
    """Who is asked, and who is notified under the notifications that apply to this referral."""
    out = _Parties()
    for party in stage.asked:
        r, f, u = recipients(p, party, raising, other, area)
        out.asked += r
        out.referral += f
        out.unresolved += u
    for note in stage.notifications:
        if note.when_child_status and child_status not in note.when_child_status:
            continue
        if note.when_immediate_risk is not None and note.when_immediate_risk != immediate_risk:
            continue
        out.note_clauses.append(note.clause)
        for party in note.notify:
            out.notified_parties.append(party)
            r, f, u = recipients(p, party, raising, other, area)
            out.notified += r
            out.referral += f
            out.unresolved += u
    return out


def _timescale(stage: Stage) -> Timescale | None:
    return stage.timescale or (stage.decision_maker.decision_within if stage.decision_maker else None)


@dataclass(frozen=True)
class _Due:
    due: datetime | None
    policy_due: datetime | None
    rule: str
    clause: str | None
    shortened: bool = False
    passed: bool = False


def _deadline(p: Partnership, stage: Stage, opens: datetime | None, needed_by: date | datetime | None) -> _Due:
    """The stage's timescale (or its decision maker's), then the child's timescale if sooner."""
    ts = _timescale(stage)
    policy_due = p.calendar.deadline(opens, ts.amount, ts.unit) if (ts and opens) else None
    plain = _Due(policy_due, policy_due, ts.describe() if ts else "no timescale set by the policy",
                 ts.clause if ts else None)
    protective = bool(ts and ts.or_protective) or bool(p.child_safety and p.child_safety.applies_to_all_stages)
    if needed_by is None or opens is None or not protective:
        return plain
    nb = p.calendar.needed_by_at(needed_by)
    if plain.due is not None and nb >= plain.due:
        return plain
    why = ts.clause if (ts and ts.or_protective) else (p.child_safety.clause if p.child_safety else "")
    clause = f"{plain.clause}; {why}" if plain.clause and why != plain.clause else why
    return _Due(max(nb, opens), policy_due,
                plain.rule + " — shortened to the referral's timescale that protects the child",
                clause, shortened=True, passed=nb <= opens)


def _next_open(p: Partnership, plan: StagePlan, next_stage: Stage) -> datetime | None:
    """When the next stage opens if nobody resolves this one (see docs/policies.md, "Timeline")."""
    if plan.due is None:
        return None
    if p.auto_escalate or next_stage.reach_within is None:
        return plan.due
    return p.calendar.deadline(plan.due, next_stage.reach_within.amount, next_stage.reach_within.unit)


def timeline(
    partnership: Partnership,
    opened_at: datetime,
    *,
    route_id: str | None = None,
    child_status: str | None = None,
    immediate_risk: bool = False,
    needed_by: date | datetime | None = None,
    raising_agency: AgencyArg = None,
    other_agency: AgencyArg = None,
    borough: str | None = None,
    scope: str | None = None,
    start_stage: int = 0,
) -> list[StagePlan]:
    """Every stage, in order, if nobody resolves anything: each opens when the previous falls due.

    With ``immediate_risk`` the partnership's immediate-risk step comes first (number 0), and the
    ladder continues where the policy says (``continue_at`` / a mandatory ``bypass_to``), alongside
    it (``parallel``) or once it falls due. A stage without a deadline leaves the later ones
    unscheduled (opens/due None): they follow when its decision maker says so.
    """
    p = partnership
    kw: dict[str, Any] = {"child_status": child_status, "immediate_risk": immediate_risk,
                          "needed_by": needed_by, "raising_agency": raising_agency,
                          "other_agency": other_agency, "borough": borough, "scope": scope}
    plans: list[StagePlan] = []
    route = p.route(route_id)
    index = start_stage
    t: datetime | None = _as_utc(opened_at, p.tz)
    prev_due: datetime | None = None
    if immediate_risk and p.immediate_risk is not None:
        ir_plan = stage_plan(p, route.id, IMMEDIATE, t, **kw)
        plans.append(ir_plan)
        route = p.default_route
        index = ir_plan.next_stage_index or 0
        ir = p.immediate_risk
        if not (ir.parallel and not (ir.bypass_mandatory and ir.bypass_to)):
            t = ir_plan.due
            prev_due = ir_plan.due
    while index < len(route.stages):
        plan = stage_plan(p, route.id, index, t, previous_due=prev_due, **kw)
        plans.append(plan)
        if index + 1 < len(route.stages):
            t = _next_open(p, plan, route.stages[index + 1])
        prev_due = plan.due
        index += 1
    return plans


Event = Literal["opened", "unresolved", "deadline_passed", "resolved"]


def next_step(
    partnership: Partnership,
    route_id: str | None,
    current_index: int | None,
    event: Event,
    at: datetime,
    **context: Any,
) -> StagePlan | None:
    """Given the case's current stage and an event at time ``at``: the stage that opens next, or None.

    - ``opened``: the immediate-risk step if ``immediate_risk`` is set and the policy has one, else
      stage ``current_index`` (the stage the referral says it has reached, default the first).
    - ``unresolved`` / ``deadline_passed``: the next stage (after the immediate-risk step, the one the
      policy continues at); None at the final stage (the decision there is final).
    - ``resolved``: None.
    """
    p = partnership
    if event == "resolved":
        return None
    if event == "opened":
        if context.get("immediate_risk") and p.immediate_risk is not None:
            return stage_plan(p, route_id, IMMEDIATE, at, **context)
        return stage_plan(p, route_id, current_index or 0, at, **context)
    if current_index is None:
        raise ValueError("an escalation needs the current stage")
    route = p.default_route if current_index == IMMEDIATE else p.route(route_id)
    if current_index == IMMEDIATE:
        ir = p.immediate_risk
        if ir is None:
            raise ValueError(f"{p.id} encodes no immediate-risk step")
        target = ir.bypass_to if ir.bypass_mandatory and ir.bypass_to else ir.continue_at
        nxt = [s.id for s in route.stages].index(target) if target else 0
    else:
        nxt = current_index + 1
    if nxt >= len(route.stages):
        return None
    return stage_plan(p, route.id, nxt, at, **context)
