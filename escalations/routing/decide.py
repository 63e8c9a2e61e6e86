"""Pure decisions: given what arrived and the partnership's policy, what should happen.

``decide_*`` functions never touch the database, the network or the clock; the processor
applies a :class:`Decision` in one transaction (ARCHITECTURE: "Decide, don't do").
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from escalations.routing.redact import initials
from escalations.routing.workflow.authority import (
    REFUSAL_TEXT,
    VERIFIED_REFUSALS,
    Authority,
    Refusal,
    ReplyFacts,
    Verdict,
    acts_as,
    authority,
    role_of,
)
from escalations.routing.workflow.recipients import mailable

if TYPE_CHECKING:
    from escalations.parsers.referral import ReferralFields, ReferralParse
    from escalations.routing.policy import Partnership, StagePlan

#: Outbox priorities: case mail always goes before notices about mail that was not applied.
CASE_MAIL = 0
NOTICE_MAIL = 1

#: How required fields are named to a practitioner (and in the acknowledgement).
FIELD_LABELS: Mapping[str, str] = {
    "child_names": "Name of child(ren)",
    "child_dobs": "Date of birth",
    "child_id": "Mosaic ID no.",
    "child_status": "Child status (CP plan / looked after / child in need / none)",
    "raised_by_name": "Name of referrer",
    "raised_by_role": "Role of referrer",
    "raised_by_agency": "Referrer's agency",
    "raised_by_email": "Referrer's email",
    "other_agency": "Agency with which there is a concern",
    "other_practitioner": "Name of practitioner with whom there is a concern",
    "concern": "Brief description of nature of concern",
    "actions_taken": "Action taken to resolve the issue",
    "outcome_sought": "Outcome sought",
    "needed_by": "Timescale that protects the child (date)",
    "immediate_risk": "Is the child at immediate risk? (yes/no)",
    "stage": "Stage already reached (1-4)",
    "borough": "Borough",
}


@dataclass(frozen=True)
class OutgoingMail:
    """A message the dispatcher must queue: template + recipients + context, and why."""

    template: str
    to: tuple[str, ...]
    subject: str
    context: Mapping[str, Any]
    #: Unique per logical send: a second Decision asking for the same key queues nothing.
    dedupe_key: str
    reason: str
    cc: tuple[str, ...] = ()
    in_reply_to: str | None = None
    #: RFC 3834: "auto-replied" for answers to a message, "auto-generated" otherwise.
    auto_submitted: str = "auto-generated"
    #: Sign a reply token for the recipient at this stage index (Reply-To, Message-ID, footer).
    token_stage: int | None = None
    #: Lower is sent first (CASE_MAIL, NOTICE_MAIL).
    priority: int = CASE_MAIL


@dataclass(frozen=True)
class EventRecord:
    kind: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    clause: str | None = None
    actor: str | None = None


@dataclass(frozen=True)
class Notice:
    """Something the coordinator should know but need not act on at once (mail that was not
    applied, an address to confirm later): gathered into one digest an hour, never a mail each."""

    kind: str
    detail: Mapping[str, Any] = field(default_factory=dict)


def summarise(text: str | None, limit: int = 240) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def case_subject(reference: str, what: str) -> str:
    """Subjects carry the case reference only, never a name."""
    return f"[{reference}] {what}"


def decide_new_referral(
    parse: ReferralParse,
    partnership: Partnership,
    *,
    reference: str,
    sender: str | None,
    origin_message_id: str | None,
    may_answer: bool,
    practitioner: str | None = None,
    sender_problem: str | None = None,
) -> Step:
    """A referral opened a case: acknowledge it and ask for what is missing.

    ``sender`` is the strictly parsed From address (None when From was ambiguous), ``practitioner``
    the referral's own ``Email:`` when the service may write to it (see ``recipients.mailable``). A
    forwarded referral is acknowledged to the forwarder and to the practitioner.
    """
    f = parse.fields
    missing = list(parse.missing)
    status = "awaiting_information" if missing else "open"
    events: list[EventRecord] = [
        EventRecord(
            "case_opened",
            {"missing": missing, "sources": list(parse.sources), "partnership": partnership.id,
             # fixed codes of what was skipped as over a limit (never a name from the message)
             **({"limits_hit": list(parse.limits_hit)} if parse.limits_hit else {})},
            clause=None,
            actor=sender,
        )
    ]
    notices: list[Notice] = []
    if sender_problem:
        events.append(EventRecord("sender_not_verified", {"reason": sender_problem}))
        notices.append(Notice("sender_not_verified", {"reason": sender_problem}))
    if f.raised_by_email and practitioner is None and (sender or "").lower() != f.raised_by_email.lower():
        # An address in the text whose domain is no agency's: not mailed until the coordinator confirms.
        events.append(EventRecord("address_unconfirmed", {"field": "raised_by_email"}))
        notices.append(Notice("address_unconfirmed", {"field": "raised_by_email"}))
    mails: list[OutgoingMail] = []
    recipients = list(dict.fromkeys(a for a in (sender, practitioner) if a))
    for n, raiser in enumerate(recipients if may_answer else []):
        template = "referral_incomplete.txt.j2" if missing else "referral_acknowledged.txt.j2"
        context: dict[str, Any] = {
            "reference": reference,
            "partnership_name": partnership.name,
            "mailbox": partnership.primary_mailbox,
            "child_initials": initials(f.child_names),
            "child_count": len(f.child_names),
            "other_agency": f.other_agency or "",
            "other_practitioner": f.other_practitioner or "",
            "concern_summary": summarise(f.concern),
            "outcome_sought": summarise(f.outcome_sought),
            "immediate_risk": bool(f.immediate_risk),
            "missing": [FIELD_LABELS.get(m, m) for m in missing],
            "raised_by_name": f.raised_by_name or "",
        }
        subject = case_subject(reference, "Information needed for your escalation" if missing
                               else "Escalation referral received")
        mails.append(
            OutgoingMail(
                template=template,
                to=(raiser,),
                subject=subject,
                context=context,
                dedupe_key=f"ack:{reference}" if n == 0 else f"ack:{reference}:{raiser}",
                reason="acknowledge referral; ask for missing required fields" if missing
                else "acknowledge referral",
                in_reply_to=origin_message_id,
                auto_submitted="auto-replied",
                # The raiser may answer with INFO before any stage opens.
                token_stage=ACK_TOKEN_STAGE,
            )
        )
        events.append(EventRecord("acknowledgement_queued", {"template": template, "to": [raiser]}))
    if not may_answer:
        events.append(EventRecord("acknowledgement_suppressed", {"reason": "automated sender"}))
    return Step(change=CaseChange(status=status), events=tuple(events), mails=tuple(mails),
                notices=tuple(notices))


#: The stage index the acknowledgement's reply token is issued for (before any stage opens).
ACK_TOKEN_STAGE = -1


# =====================================================================================================
# The case workflow (issue 5): one pure transition function defines every legal move.
# =====================================================================================================

COMMANDS_HELP: tuple[tuple[str, str], ...] = (
    ("RESOLVED <agreed outcome>", "the disagreement is resolved; say what was agreed and how outstanding "
                                  "issues will be pursued (the other side is asked to confirm)"),
    ("ESCALATE <reason>", "not resolved: move the case to the next stage now"),
    ("ACCEPT (or AGREE)", "confirm a resolution the other side has recorded"),
    ("NOTE <text>", "add a note to the case record"),
    ("URGENT <reason>", "the child is at immediate risk: follow the immediate-risk route now"),
    ("WITHDRAW <reason>", "withdraw the escalation (the practitioner who raised it only)"),
    ("INFO", "answer a request for missing information: one 'Label: value' per line"),
    ("CONFIRM <address>", "partnership staff: confirm an address written in the referral may be mailed"),
)

#: How long the other side has to confirm a RESOLVED before the case closes on the first side's word
#: (after a reminder). The policies require written confirmation between the parties (C&H 3.1,
#: Wiltshire "Documenting discussions", Tri-borough §4, Sutton 7.6) but set no timescale for it.
CONFIRMATION_WORKING_DAYS = 2
RECORD_CLAUSES: Mapping[str, str] = {
    "city-and-hackney": "C&H 3.1",
    "havering": "Havering 3.1",
    "wiltshire": "Wiltshire: Documenting discussions and decisions",
    "tri-borough": "Tri-borough §4 Additional Notes",
    "sutton": "Sutton 7.6",
}


@dataclass(frozen=True)
class Party:
    """Someone involved in the case at its current stage (from the directory or the referral)."""

    email: str
    name: str
    role_name: str
    party: str  # e.g. "raising.line_manager", "partnership.coordinator", "raiser"
    side: str  # raising | receiving | partnership | notified
    asked: bool = True
    deputy_email: str | None = None
    deputy_name: str | None = None
    using_deputy: bool = False
    #: Asked by the immediate-risk step that runs alongside the stage (not reminded of its deadline).
    immediate: bool = False

    @property
    def active_email(self) -> str:
        return self.deputy_email if self.using_deputy and self.deputy_email else self.email

    @property
    def active_name(self) -> str:
        return (self.deputy_name or self.deputy_email or "") if self.using_deputy else self.name

    def to_json(self) -> dict[str, Any]:
        return {"email": self.email, "name": self.name, "role_name": self.role_name, "party": self.party,
                "side": self.side, "asked": self.asked, "deputy_email": self.deputy_email,
                "deputy_name": self.deputy_name, "using_deputy": self.using_deputy, "immediate": self.immediate}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Party:
        return cls(email=str(d["email"]), name=str(d.get("name") or ""), role_name=str(d.get("role_name") or ""),
                   party=str(d.get("party") or ""), side=str(d.get("side") or ""), asked=bool(d.get("asked", True)),
                   deputy_email=d.get("deputy_email"), deputy_name=d.get("deputy_name"),
                   using_deputy=bool(d.get("using_deputy", False)), immediate=bool(d.get("immediate", False)))


@dataclass(frozen=True)
class CaseState:
    id: int
    reference: str
    partnership: str
    status: str
    route: str | None
    stage_index: int | None
    opened_at: datetime
    stage_opened_at: datetime | None
    due_at: datetime | None
    immediate_risk: bool
    fields: ReferralFields
    missing: tuple[str, ...]
    raiser: str | None
    parties: tuple[Party, ...] = ()
    resolution: Mapping[str, Any] = field(default_factory=dict)
    #: Addresses from the referral's text that the coordinator confirmed may be mailed.
    confirmed_addresses: tuple[str, ...] = ()

    def party_for(self, address: str) -> Party | None:
        a = address.lower()
        return next((p for p in self.parties if a in (p.email.lower(), (p.deputy_email or "").lower())), None)


@dataclass(frozen=True)
class TimerSpec:
    kind: str  # remind_before | remind_due | escalate | routing_reminder | confirm_reminder | confirm_close
    due_at: datetime
    stage_index: int | None


@dataclass(frozen=True)
class CaseChange:
    """Column updates for the case row (None: unchanged)."""

    status: str | None = None
    route: str | None = None
    stage_index: int | None = None
    stage_number: int | None = None
    stage_opened_at: datetime | None = None
    due_at: datetime | None = None
    clear_due: bool = False
    parties: tuple[Party, ...] | None = None
    resolution: Mapping[str, Any] | None = None
    fields: ReferralFields | None = None
    missing: tuple[str, ...] | None = None
    immediate_risk: bool | None = None
    raising_agency: str | None = None
    other_agency: str | None = None
    closed_at: datetime | None = None
    confirmed_addresses: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Step:
    """What one transition does: case changes, history, mail, timers (applied in one transaction)."""

    change: CaseChange = field(default_factory=CaseChange)
    events: tuple[EventRecord, ...] = ()
    mails: tuple[OutgoingMail, ...] = ()
    timers: tuple[TimerSpec, ...] = ()
    cancel_timers: bool = False
    notices: tuple[Notice, ...] = ()


# ---- events the workflow reacts to -----------------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    """A referral became a case (complete, or incomplete but urgent)."""


@dataclass(frozen=True)
class Replied:
    sender: str
    command: str | None
    argument: str
    message_id: str | None
    #: raiser | party | staff | decision_maker
    authority: str
    side: str | None
    info: ReferralFields | None = None
    #: What the processor found out about the reply; with it, transition decides who may act.
    facts: ReplyFacts | None = None


@dataclass(frozen=True)
class TimerFired:
    kind: str
    stage_index: int | None
    #: The tick runs after the stage's deadline (the service was down): a "deadline tomorrow"
    #: reminder would be wrong, so it is recorded and not sent.
    late: bool = False


@dataclass(frozen=True)
class Automated:
    kind: str  # auto_reply | bounce
    address: str
    permanent: bool = False
    #: It answers one of our mails to ``address`` (the reply token in the Message-ID it refers to
    #: verified for that address). Only then may it hand the address's part to a deputy.
    verified: bool = True


WorkflowEvent = Opened | Replied | TimerFired | Automated


# ---- helpers -----------------------------------------------------------------------------------------

TERMINAL = ("closed", "withdrawn")


def _local(t: datetime | None, p: Partnership) -> str:
    from escalations.routing.calendar import format_local

    return format_local(t, p.tz) if t else "no deadline set by the policy"


def _duration(start: datetime, end: datetime) -> str:
    secs = max(0, int((end - start).total_seconds()))
    days, rem = divmod(secs, 86400)
    hours = rem // 3600
    parts = [f"{days} day{'s' if days != 1 else ''}"] if days else []
    parts.append(f"{hours} hour{'s' if hours != 1 else ''}")
    return " ".join(parts)


def _working_day_before(p: Partnership, t: datetime) -> datetime:
    """The day end of the working day before ``t``'s local date (for "one working day before")."""
    from datetime import timedelta

    cal = p.calendar
    d = cal.local(t).date() - timedelta(days=1)
    while not cal.is_working_day(d):
        d -= timedelta(days=1)
    return cal.day_end_at(d)


def _next_day_end(p: Partnership, t: datetime) -> datetime:
    """The end of the next working day after ``t``'s local date (daily reminders)."""
    cal = p.calendar
    return cal.day_end_at(cal.next_working_day(cal.local(t).date()))


def plan_for(state: CaseState, p: Partnership, index: int, at: datetime,
             previous_due: datetime | None = None) -> StagePlan:
    from escalations.routing.policy import stage_plan

    f = state.fields
    return stage_plan(
        p, state.route, index, at,
        child_status=f.child_status, immediate_risk=state.immediate_risk, needed_by=f.needed_by,
        raising_agency=f.raised_by_agency, other_agency=f.other_agency, borough=f.borough,
        previous_due=previous_due,
    )


def _side(party: str) -> str:
    side = party.split(".", 1)[0]
    return {"both": "partnership"}.get(side, side)


def _base_context(state: CaseState, p: Partnership) -> dict[str, Any]:
    f = state.fields
    return {
        "reference": state.reference,
        "partnership_name": p.name,
        "mailbox": p.primary_mailbox,
        "child_initials": initials(f.child_names),
        "child_count": len(f.child_names),
        "other_agency": f.other_agency or "",
        "other_practitioner": f.other_practitioner or "",
        "concern_summary": summarise(f.concern),
        "outcome_sought": summarise(f.outcome_sought),
        "immediate_risk": state.immediate_risk,
        "commands": COMMANDS_HELP,
        "secure_mail": p.secure_mail.means if p.secure_mail else "",
        "record_clause": RECORD_CLAUSES.get(p.id, ""),
    }


def _stage_context(state: CaseState, p: Partnership, plan: StagePlan) -> dict[str, Any]:
    ctx = _base_context(state, p)
    ctx.update({
        "stage_number": plan.number,
        "stage_name": plan.name,
        "stage_label": plan.label or "",
        "stage_action": plan.action,
        "stage_clause": plan.clause,
        "due_local": _local(plan.due, p),
        "due_rule": plan.due_rule,
        "due_clause": plan.due_clause or "",
        "is_final": plan.is_final,
        "suggested_actions": [f"{a.text} ({a.clause})" for a in plan.suggested_actions],
        "forms": [f"{fm.name}: {fm.note or fm.when.replace('_', ' ')} ({fm.clause})" for fm in plan.forms],
        "decision_maker": plan.decision_maker.note if plan.decision_maker else "",
        "notification_clauses": list(plan.notification_clauses),
        # The directory's proposal, should the decision maker convene a Resolution Panel (C&H 2.14,
        # Havering 2.12): they decide whether to; the panel is not asked until they do.
        "panel": [f"{r.name}, {r.agency_id} <{r.email}>" for r in plan.panel],
        "panel_clause": plan.decision_maker.panel.clause if plan.decision_maker and plan.decision_maker.panel
        else "",
        "panel_shortfall": plan.panel_shortfall or "",
        "bypass": "",
        "immediate_note": "",
    })
    return ctx


def _mail(template: str, to: str, subject: str, ctx: Mapping[str, Any], key: str, reason: str,
          *, token_stage: int | None = None, recipient_name: str = "", role: str = "") -> OutgoingMail:
    context = dict(ctx)
    context.update({"recipient_name": recipient_name, "recipient_role": role})
    return OutgoingMail(template=template, to=(to,), subject=subject, context=context, dedupe_key=key,
                        reason=reason, token_stage=token_stage)


_EMAIL_RE = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def _referral_practitioner(text: str | None) -> tuple[str, str] | None:
    """(name, address) of the other practitioner when the referral gives their e-mail address."""
    if not text:
        return None
    m = _EMAIL_RE.search(text)
    if m is None:
        return None
    name = (text[:m.start()] + text[m.end():]).replace("<", " ").replace(">", " ").replace("()", " ")
    name = " ".join(name.replace(",", " ").split()).strip(" -;:")
    return name, m.group(0)


def _other_practitioner(state: CaseState, p: Partnership, plan: StagePlan) -> tuple[str, str] | None:
    """(name, address) of the other worker, asked where the stage asks practitioners and the referral
    gives an address the service may write to (an agency's domain, or confirmed by the coordinator)."""
    if "receiving.practitioner" not in plan.from_referral:
        return None
    other = _referral_practitioner(state.fields.other_practitioner)
    if other is None:
        return None
    address = mailable(other[1], p, state.confirmed_addresses)
    if address is None or address == (state.raiser or "").lower():
        return None
    return other[0], address


def _unconfirmed_practitioner(state: CaseState, p: Partnership, plan: StagePlan) -> str | None:
    """The other worker's address as written, when the stage would ask them but it may not be mailed yet."""
    if "receiving.practitioner" not in plan.from_referral:
        return None
    other = _referral_practitioner(state.fields.other_practitioner)
    if other is None or _other_practitioner(state, p, plan) is not None:
        return None
    return other[1] if mailable(other[1], p, state.confirmed_addresses) is None else None


def _stage_parties(state: CaseState, p: Partnership, plan: StagePlan) -> list[Party]:
    """Who is involved at ``plan``'s stage: the directory's contacts, the practitioners named in the
    referral, those the policy says to notify, and the raiser (copied on every step)."""
    parties: list[Party] = []
    for r in plan.asked:
        if not any(x.email == r.email and x.party == r.party for x in parties):
            parties.append(Party(email=r.email, name=r.name, role_name=r.role_name, party=r.party,
                                 side=_side(r.party), deputy_email=r.deputy_email, deputy_name=r.deputy_name))
    # The practitioners come from the referral, not the directory: the raiser is always known; the
    # other worker only when the referral gives their address (else only the raiser is asked).
    other = _other_practitioner(state, p, plan)
    if other is not None and not any(x.email.lower() == other[1] for x in parties):
        parties.append(Party(email=other[1], name=other[0], role_name="Practitioner (other agency)",
                             party="receiving.practitioner", side="receiving"))
    for r in plan.notified:
        if not any(x.email.lower() == r.email.lower() for x in parties):
            parties.append(Party(email=r.email, name=r.name, role_name=r.role_name, party=r.party,
                                 side="notified", asked=False, deputy_email=r.deputy_email,
                                 deputy_name=r.deputy_name))
    if state.raiser and not any(x.email.lower() == state.raiser.lower() for x in parties):
        parties.append(Party(email=state.raiser, name=state.fields.raised_by_name or "",
                             role_name="Practitioner who raised the concern", party="raiser", side="raising"))
    return parties


def _stage_subject(state: CaseState, plan: StagePlan) -> str:
    return case_subject(state.reference, f"Stage {plan.number}: {plan.name}" if plan.number
                        else "Immediate risk: action needed now")


def open_stage(state: CaseState, p: Partnership, plan: StagePlan, now: datetime, *, because: str,
               extra_events: Sequence[EventRecord] = ()) -> Step:
    """Open ``plan``'s stage: ask its parties, copy the raiser, notify, set the deadline's timers."""
    parties = _stage_parties(state, p, plan)
    # Unknown other agency -> the coordinator routes it (the case waits in needs_routing).
    f = state.fields
    other = p.find_agency(f.other_agency, borough=f.borough)
    raising = p.find_agency(f.raised_by_agency, borough=f.borough)
    status = "needs_routing" if other is None else "open"
    raiser_asked = "raising.practitioner" in plan.from_referral
    ctx = _stage_context(state, p, plan)
    ctx["because"] = because
    idx = plan.stage_index
    subject = _stage_subject(state, plan)
    mails: list[OutgoingMail] = []
    for party in parties:
        if party.party == "raiser":
            mails.append(_mail("stage_request.txt.j2" if raiser_asked else "stage_copy.txt.j2", party.email,
                               subject, ctx,
                               f"{state.reference}:s{idx}:copy:{party.email}", "copy the raiser (" +
                               (RECORD_CLAUSES.get(p.id) or "record") + ")", token_stage=idx,
                               recipient_name=party.name, role=party.role_name))
        elif party.asked:
            mails.append(_mail("stage_request.txt.j2", party.active_email, subject, ctx,
                               f"{state.reference}:s{idx}:request:{party.active_email}", plan.clause,
                               token_stage=idx, recipient_name=party.active_name, role=party.role_name))
        else:
            mails.append(_mail("stage_notification.txt.j2", party.active_email,
                               case_subject(state.reference, "For information: escalation involving a child "
                                                             "you are responsible for"),
                               ctx, f"{state.reference}:s{idx}:notify:{party.active_email}",
                               "; ".join(plan.notification_clauses), token_stage=idx,
                               recipient_name=party.active_name, role=party.role_name))
    if plan.unresolved or status == "needs_routing":
        for c in plan.coordinator:
            rctx = dict(ctx)
            rctx["unresolved"] = [u.reason for u in plan.unresolved] or \
                [f"the other agency ({f.other_agency or 'not given'}) is not in the agencies directory"]
            rctx["blocking"] = status == "needs_routing"
            mails.append(_mail("case_needs_routing.txt.j2", c.email,
                               case_subject(state.reference, "Routing needed" if status == "needs_routing"
                                            else "Contacts missing for a stage"),
                               rctx, f"{state.reference}:s{idx}:routing:{c.email}",
                               "the directory cannot name every party", token_stage=idx, recipient_name=c.name,
                               role=c.role_name))
    unconfirmed = _unconfirmed_practitioner(state, p, plan)
    extra: list[EventRecord] = []
    if unconfirmed is not None:
        from escalations.parsers.sender import valid_address

        shown = valid_address(unconfirmed) or "(not a valid address)"
        extra.append(EventRecord("address_unconfirmed", {"field": "other_practitioner", "address": shown}))
        for c in plan.coordinator:
            cctx = dict(ctx)
            cctx["address"] = shown
            mails.append(_mail("address_confirm_request.txt.j2", c.email,
                               case_subject(state.reference, "Address to confirm"), cctx,
                               f"{state.reference}:s{idx}:confirm-address:{shown}:{c.email}",
                               "recipients come from the directory", token_stage=idx, recipient_name=c.name,
                               role=c.role_name))
    timers: list[TimerSpec] = []
    if status == "needs_routing":
        timers.append(TimerSpec("routing_reminder", _next_day_end(p, now), idx))
    elif plan.due is not None:
        before = _working_day_before(p, plan.due)
        if before > now:
            timers.append(TimerSpec("remind_before", before, idx))
        if plan.is_final or not p.auto_escalate:
            timers.append(TimerSpec("remind_due", plan.due, idx))
        else:
            timers.append(TimerSpec("escalate", plan.due, idx))
    events = [
        *extra_events,
        EventRecord("stage_opened", {
            "stage": plan.number, "stage_index": idx, "name": plan.name, "route": plan.route_id,
            "due": plan.due.isoformat() if plan.due else None, "due_rule": plan.due_rule,
            "asked": [x.active_email for x in parties if x.asked and x.party != "raiser"],
            "notified": [x.active_email for x in parties if not x.asked],
            "unresolved": [u.reason for u in plan.unresolved], "because": because,
            "shortened_by_needed_by": plan.shortened_by_needed_by,
        }, clause=plan.clause),
    ]
    if plan.due_clause:
        events.append(EventRecord("deadline_set", {"due": plan.due.isoformat() if plan.due else None},
                                  clause=plan.due_clause))
    if plan.notification_clauses:
        events.append(EventRecord("notified", {"to": [x.active_email for x in parties if not x.asked]},
                                  clause="; ".join(plan.notification_clauses)))
    if status == "needs_routing":
        events.append(EventRecord("needs_routing", {"unresolved": [u.reason for u in plan.unresolved]}))
    events.extend(extra)
    change = CaseChange(status=status, route=plan.route_id, stage_index=idx, stage_number=plan.number,
                        stage_opened_at=now, due_at=plan.due, clear_due=plan.due is None, parties=tuple(parties),
                        resolution={}, raising_agency=raising.id if raising else None,
                        other_agency=other.id if other else None)
    return Step(change=change, events=tuple(events), mails=tuple(mails), timers=tuple(timers), cancel_timers=True)


def _initial_step(state: CaseState, p: Partnership, now: datetime, because: str) -> Step:
    if state.immediate_risk and p.immediate_risk is not None:
        return _immediate_step(state, p, now, because + " — the child is at immediate risk")
    route = p.route(state.route) if state.route else p.choose_route(state.fields.concern)
    state = replace(state, route=route.id)
    n = len(route.stages)
    reached = state.fields.stage
    index = reached - 1 if reached and 1 <= reached <= n else 0
    return open_stage(state, p, plan_for(state, p, index, now), now, because=because)


def _immediate_step(state: CaseState, p: Partnership, now: datetime, because: str) -> Step:
    """The partnership's immediate-risk route (C&H/Havering 1.5, Wiltshire Timescales ¶1, Tri-borough
    §2 ¶1, Sutton 5/7.3), from a referral or an URGENT reply.

    Where the policy runs it alongside the ladder (``parallel``), the ladder stands at the stage it
    continues at (or stays where it is if already further up) and the immediate step's people are
    asked at once beside it. Otherwise (Wiltshire: a mandatory direct referral) the immediate step is
    the case's stage and, when it falls due, the ladder continues where the policy says.
    """
    from escalations.routing.policy import IMMEDIATE

    ir = p.immediate_risk
    assert ir is not None
    urgent = replace(state, immediate_risk=True)
    ir_plan = plan_for(urgent, p, IMMEDIATE, now)
    default = p.default_route
    target = ir_plan.next_stage_index if ir_plan.next_stage_index is not None else 0
    current = state.stage_index if state.route in (None, default.id) else None
    ev = EventRecord("immediate_risk_route", {
        "asked": [r.email for r in ir_plan.asked], "due": ir_plan.due.isoformat() if ir_plan.due else None,
        "parallel": ir.parallel, "continue_at": ir.continue_at, "bypass_to": ir.bypass_to,
        "bypass_mandatory": ir.bypass_mandatory}, clause=ir_plan.clause)
    sequential = not ir.parallel or (ir.bypass_mandatory and ir.bypass_to)
    if sequential and (current is None or current == IMMEDIATE or current < target):
        step = open_stage(replace(urgent, route=default.id), p, ir_plan, now, because=because, extra_events=(ev,))
        return replace(step, change=replace(step.change, immediate_risk=True))
    if current is not None and current != IMMEDIATE and current >= target:
        # Already at (or past) where the policy continues: stay, and ask the immediate step's people now.
        base = Step(change=CaseChange(immediate_risk=True), events=(ev,))
        stage_state = urgent
        stage_index = current
    else:
        stage_state = replace(urgent, route=default.id)
        plan = plan_for(stage_state, p, target, now)
        base = open_stage(stage_state, p, plan, now,
                          because=f"{because}; the escalation continues at this stage alongside ({ir.clause})",
                          extra_events=(ev,))
        base = replace(base, change=replace(base.change, immediate_risk=True))
        stage_index = target
    parties = list(base.change.parties if base.change.parties is not None else stage_state.parties)
    already = {x.active_email.lower() for x in parties if x.asked}
    ctx = _stage_context(stage_state, p, ir_plan)
    ctx["because"] = because
    ids = [s.id for s in default.stages]
    if ir.bypass_to and not ir.bypass_mandatory and ir.bypass_to in ids:
        ctx["bypass"] = (f"{ir.bypass_note or 'You may bypass the structures.'} If the risks are so great and "
                         f"immediate, reply URGENT again to go straight to stage {ids.index(ir.bypass_to) + 1} "
                         f"({default.stages[ids.index(ir.bypass_to)].name}).")
    # Someone asked both at the stage and by the immediate step gets one mail that says both.
    immediate_note = f"{ir_plan.action} ({ir_plan.clause}); by {ctx['due_local']}."
    both = {r.email.lower() for r in ir_plan.asked}
    mails = [replace(m, context={**m.context, "immediate_note": immediate_note, "bypass": ctx["bypass"]})
             if m.to[0].lower() in both or m.to[0].lower() == (state.raiser or "").lower() else m
             for m in base.mails]
    for r in ir_plan.asked:
        if r.email.lower() in already:
            continue  # asked at the stage itself: one mail, whose "why now" says the child is at risk
        parties.append(Party(email=r.email, name=r.name, role_name=r.role_name, party=r.party, side=_side(r.party),
                             deputy_email=r.deputy_email, deputy_name=r.deputy_name, immediate=True))
        mails.append(_mail("stage_request.txt.j2", r.email, _stage_subject(state, ir_plan), ctx,
                           f"{state.reference}:immediate:request:{r.email}", ir_plan.clause,
                           token_stage=stage_index, recipient_name=r.name, role=r.role_name))
    if state.raiser and base.change.parties is None:  # the raiser is copied on every step
        mails.append(_mail("stage_copy.txt.j2", state.raiser, _stage_subject(state, ir_plan), ctx,
                           f"{state.reference}:immediate:copy:{state.raiser}", "copy the raiser",
                           token_stage=stage_index, recipient_name=state.fields.raised_by_name or "",
                           role="Practitioner who raised the concern"))
    return replace(base, change=replace(base.change, parties=tuple(parties)), mails=tuple(mails))


def _bypass(state: CaseState, p: Partnership, now: datetime, sender: str) -> Step | None:
    """Tri-borough §2 ¶7: where the risks are so great and immediate, the referring agency may bypass the
    structures to the senior officer. Asked for with a second URGENT on an immediate-risk case."""
    ir = p.immediate_risk
    if ir is None or not ir.bypass_to or ir.bypass_mandatory:
        return None
    route = p.default_route
    ids = [s.id for s in route.stages]
    if ir.bypass_to not in ids or (state.route not in (None, route.id)):
        return None
    target = ids.index(ir.bypass_to)
    if state.stage_index is not None and state.stage_index >= target:
        return None
    moved = replace(state, route=route.id)
    plan = plan_for(moved, p, target, now, previous_due=state.due_at)
    because = f"{sender} asked to bypass to the senior officer: {ir.bypass_note or 'the risks are immediate'}"
    return open_stage(moved, p, plan, now, because=because,
                      extra_events=(EventRecord("bypassed", {"from_stage_index": state.stage_index,
                                                             "to_stage": plan.number, "by": sender},
                                                clause=ir.clause),))


def _escalate(state: CaseState, p: Partnership, now: datetime, because: str, clause: str | None) -> Step | None:
    from escalations.routing.policy import IMMEDIATE, next_step

    if state.stage_index is None:
        return None
    f = state.fields
    nxt = next_step(p, state.route, state.stage_index, "deadline_passed", now,
                    child_status=f.child_status, immediate_risk=state.immediate_risk, needed_by=f.needed_by,
                    raising_agency=f.raised_by_agency, other_agency=f.other_agency, borough=f.borough,
                    previous_due=state.due_at)
    if nxt is None:
        return None
    if state.stage_index == IMMEDIATE:
        because = f"{because}; after the immediate-risk step the policy continues at stage {nxt.number}"
    step = open_stage(state, p, nxt, now, because=because,
                      extra_events=(EventRecord("escalated", {"from_stage_index": state.stage_index,
                                                              "to_stage": nxt.number, "because": because},
                                                clause=clause),))
    # Everyone asked at the stage that ends is told why it moved on, and that they no longer need to act.
    new = {x.active_email.lower() for x in (step.change.parties or ())}
    ctx = _base_context(state, p)
    ctx.update({"from_stage_number": state.stage_index + 1 if state.stage_index >= 0 else 0,
                "to_stage_number": nxt.number, "to_stage_name": nxt.name, "to_stage_clause": nxt.clause,
                "because": because, "due_local": _local(nxt.due, p),
                "asked_now": sorted({r.role_name for r in nxt.asked})})
    told = tuple(_mail("stage_escalated.txt.j2", x.active_email,
                       case_subject(state.reference, f"Escalated to stage {nxt.number}"), ctx,
                       f"{state.reference}:s{state.stage_index}:escalated:{x.active_email}", clause or nxt.clause,
                       recipient_name=x.active_name, role=x.role_name)
                 for x in state.parties if x.asked and x.active_email.lower() not in new)
    return replace(step, mails=(*step.mails, *told))


def _answer(state: CaseState, p: Partnership, to: str, template: str, key: str, extra: Mapping[str, Any],
            subject: str) -> OutgoingMail:
    ctx = _base_context(state, p)
    ctx.update(extra)
    # With a reply code for the current stage: an answer tells people how to reply, so they can.
    return OutgoingMail(template=template, to=(to,), subject=case_subject(state.reference, subject), context=ctx,
                        dedupe_key=key, reason="answer to a reply", auto_submitted="auto-replied",
                        token_stage=state.stage_index if state.stage_index is not None else ACK_TOKEN_STAGE)


def _close(state: CaseState, p: Partnership, now: datetime, *, outcome: str, how: str, by: str,
           status: str = "closed", clause: str | None = None) -> Step:
    ctx = _base_context(state, p)
    ctx.update({"outcome": outcome, "how": how, "stage_number": state.stage_index + 1
                if state.stage_index is not None and state.stage_index >= 0 else 0,
                "time_taken": _duration(state.opened_at, now), "closed_status": status,
                "forms": []})
    try:
        if state.stage_index is not None:
            plan = plan_for(state, p, state.stage_index, state.stage_opened_at or now)
            ctx["stage_number"] = plan.number
            ctx["stage_name"] = plan.name
            ctx["forms"] = [f"{fm.name}: {fm.note or 'complete it now'} ({fm.clause})" for fm in plan.forms
                            if fm.when == "on_resolution"]
    except (KeyError, IndexError, ValueError):
        pass
    ctx.setdefault("stage_name", "")
    recipients = sorted({x.active_email for x in state.parties} | ({state.raiser} if state.raiser else set()))
    mails = [_mail("case_closed.txt.j2", r, case_subject(state.reference, "Escalation closed" if status == "closed"
                                                            else "Escalation withdrawn"),
                   ctx, f"{state.reference}:closed:{r}", clause or RECORD_CLAUSES.get(p.id, "record"))
             for r in recipients]
    events = (EventRecord(status, {"outcome": outcome, "how": how, "time_taken": ctx["time_taken"]},
                          clause=clause or RECORD_CLAUSES.get(p.id), actor=by),)
    return Step(change=CaseChange(status=status, closed_at=now, clear_due=True, resolution={}), events=events,
                mails=tuple(mails), cancel_timers=True)


def _reminder(state: CaseState, p: Partnership, kind: str, now: datetime) -> Step:
    if state.stage_index is None:
        return Step()
    plan = plan_for(state, p, state.stage_index, state.stage_opened_at or now)
    ctx = _stage_context(state, p, plan)
    ctx["due_local"] = _local(state.due_at, p)
    ctx["kind"] = kind
    ctx["auto_escalate"] = p.auto_escalate and not plan.is_final
    subject = case_subject(state.reference, f"Reminder: stage {plan.number} deadline {_local(state.due_at, p)}"
                           if kind == "remind_before" else f"Stage {plan.number} deadline reached")
    mails = []
    for x in state.parties:
        if not x.asked or x.immediate:
            continue
        # auto_escalate: false (YAML) -> at the deadline the raiser is asked to confirm the escalation.
        template = "escalation_confirm_request.txt.j2" if (kind == "remind_due" and x.party == "raiser"
                                                            and not p.auto_escalate and not plan.is_final) \
            else "reminder.txt.j2"
        mails.append(_mail(template, x.active_email, subject, ctx,
                           f"{state.reference}:s{state.stage_index}:{kind}:{x.active_email}",
                           plan.due_clause or plan.clause, token_stage=state.stage_index,
                           recipient_name=x.active_name, role=x.role_name))
    return Step(events=(EventRecord("reminder_sent", {"kind": kind, "to": [m.to[0] for m in mails]},
                                    clause=plan.due_clause),), mails=tuple(mails))


def transition(state: CaseState, event: WorkflowEvent, p: Partnership, now: datetime) -> Step:
    """Every legal move of a case. Illegal events are recorded and answered, never applied."""
    if isinstance(event, Opened):
        return _initial_step(state, p, now, "a referral was received")
    if isinstance(event, TimerFired):
        return _on_timer(state, event, p, now)
    if isinstance(event, Automated):
        return _on_automated(state, event, p, now)
    return _on_reply(state, event, p, now)


def _on_timer(state: CaseState, t: TimerFired, p: Partnership, now: datetime) -> Step:
    stale = t.stage_index != state.stage_index or state.status in TERMINAL
    if stale:
        return Step(events=(EventRecord("timer_ignored", {"kind": t.kind, "stage_index": t.stage_index}),))
    if t.kind == "remind_before" and t.late:
        return Step(events=(EventRecord("reminder_skipped", {"kind": t.kind, "why": "the deadline had already "
                                                             "passed when the timer ran"}),))
    if t.kind in ("remind_before", "remind_due") and state.status == "open":
        return _reminder(state, p, t.kind, now)
    if t.kind == "escalate" and state.status == "open" and state.stage_index is not None:
        plan = plan_for(state, p, state.stage_index, state.stage_opened_at or now)
        because = ("the immediate-risk step's deadline passed" if plan.number == 0
                   else f"the deadline for stage {plan.number} passed without a confirmed resolution")
        step = _escalate(state, p, now, because, plan.due_clause)
        return step or _reminder(state, p, "remind_due", now)
    if t.kind == "routing_reminder" and state.status == "needs_routing":
        coord = [c.email for c in p.coordinator()]
        day = p.calendar.local(now).date().isoformat()
        mails = tuple(_answer(state, p, c, "case_needs_routing.txt.j2", f"{state.reference}:routing:{day}:{c}",
                              {"unresolved": ["the case is still waiting to be routed"], "blocking": True,
                               "recipient_name": "", "recipient_role": "", "because": "daily reminder",
                               "stage_number": "", "stage_name": "", "due_local": "", "stage_action": ""},
                              "Reminder: routing needed") for c in coord)
        return Step(events=(EventRecord("routing_reminder", {"to": coord}),), mails=mails,
                    timers=(TimerSpec("routing_reminder", _next_day_end(p, now), state.stage_index),))
    if t.kind == "confirm_reminder" and state.status == "awaiting_confirmation":
        return _ask_confirmation(state, p, now, reminder=True)
    if t.kind == "confirm_close" and state.status == "awaiting_confirmation":
        r = state.resolution
        return _close(state, p, now, outcome=str(r.get("outcome") or ""), by=str(r.get("by") or ""),
                      how=f"resolved by {r.get('by')}; not confirmed or disputed within "
                          f"{CONFIRMATION_WORKING_DAYS} working days of the request and a reminder, so the "
                          "resolution stands as recorded")
    return Step(events=(EventRecord("timer_ignored", {"kind": t.kind, "status": state.status}),))


def _confirming(state: CaseState) -> list[Party]:
    """The parties asked to confirm the pending resolution (whoever acts for them now)."""
    wanted = {str(a).lower() for a in state.resolution.get("confirm_by", [])}
    return [x for x in state.parties if acts_as(x) & wanted]


def _decision_maker_parties(state: CaseState, plan: StagePlan | None) -> list[Party]:
    if plan is None or plan.decision_maker is None:
        return []
    dm = plan.decision_maker.party
    return [x for x in state.parties if x.asked and x.party == dm]


def _confirmers(state: CaseState, p: Partnership, resolver: str, side: str | None) -> list[Party]:
    """Who must confirm a RESOLVED: the stage's decision maker where the policy names one (C&H 2.12,
    Havering 2.10, Wiltshire Stage Three, Tri-borough ¶6, Sutton 7.4), else everyone asked on the other
    side (C&H 3.1, Wiltshire "Documenting discussions", Tri-borough §4, Sutton 7.6)."""
    plan = plan_for(state, p, state.stage_index, state.stage_opened_at or state.opened_at) \
        if state.stage_index is not None else None
    resolver = resolver.lower()
    dms = [x for x in _decision_maker_parties(state, plan) if x.active_email.lower() != resolver]
    if dms:
        return dms
    return [x for x in state.parties if x.asked and not x.immediate and x.side not in (side, "notified")
            and x.active_email.lower() != resolver]


def _ask_confirmation(state: CaseState, p: Partnership, now: datetime, *, reminder: bool = False) -> Step:
    r = state.resolution
    other = _confirming(state)
    ctx = _base_context(state, p)
    ctx.update({"outcome": r.get("outcome", ""), "resolved_by": r.get("by", ""), "reminder": reminder,
                "confirm_days": CONFIRMATION_WORKING_DAYS})
    kind = "confirm_reminder" if reminder else "confirm_request"
    mails = tuple(_mail("resolution_confirm_request.txt.j2", x.active_email,
                        case_subject(state.reference, "Please confirm the resolution"), ctx,
                        f"{state.reference}:s{state.stage_index}:{kind}:{x.active_email}",
                        RECORD_CLAUSES.get(p.id, "record"), token_stage=state.stage_index,
                        recipient_name=x.active_name, role=x.role_name) for x in other)
    timers: tuple[TimerSpec, ...] = ()
    if not reminder:
        timers = (TimerSpec("confirm_reminder", p.calendar.add_working_days(now, 1), state.stage_index),
                  TimerSpec("confirm_close", p.calendar.add_working_days(now, CONFIRMATION_WORKING_DAYS),
                            state.stage_index))
    return Step(events=(EventRecord(kind, {"to": [m.to[0] for m in mails]},
                                    clause=RECORD_CLAUSES.get(p.id)),), mails=mails, timers=timers)


def _on_automated(state: CaseState, a: Automated, p: Partnership, now: datetime) -> Step:
    """An out-of-office or a bounce from someone on the case: never answered (no loops); a stage
    contact's deputy takes over and the coordinator is told."""
    party = state.party_for(a.address)
    coord = [c.email for c in p.coordinator()]
    events: list[EventRecord] = [EventRecord(a.kind, {"address": a.address, "permanent": a.permanent},
                                             actor=a.address)]
    if a.kind == "bounce" and a.permanent:
        events.append(EventRecord("contact_flagged", {"address": a.address, "why": "hard bounce"}))
    if party is None or state.status in TERMINAL or (a.kind == "bounce" and not a.permanent):
        return Step(events=tuple(events))
    if not a.verified:
        # Anyone can write "Auto-Submitted: auto-replied": without our token it moves nobody.
        events.append(EventRecord("automated_unverified", {"address": a.address, "reason": "no_token"}))
        return Step(events=tuple(events))
    address = a.address.lower()
    takes_over = bool(party.deputy_email and not party.using_deputy and party.email.lower() == address
                      and party.asked)
    deputy_away = party.using_deputy and (party.deputy_email or "").lower() == address
    if party.using_deputy and not deputy_away:
        # The original contact's auto-reply to an older mail: their deputy already acts.
        events.append(EventRecord("automated_ignored", {"address": a.address, "why": "deputy already acting"}))
        return Step(events=tuple(events))
    mails: list[OutgoingMail] = []
    stage_number = state.stage_index + 1 if state.stage_index is not None and state.stage_index >= 0 else 0
    ctx = {"address": a.address, "kind": a.kind, "role": party.role_name,
           "deputy": party.deputy_email if takes_over else "", "deputy_away": deputy_away,
           "original": party.email if deputy_away else "", "stage_number": stage_number,
           "recipient_name": "", "recipient_role": ""}
    for c in coord:
        mails.append(_answer(state, p, c, "deputy_takeover.txt.j2",
                             f"{state.reference}:s{state.stage_index}:{a.kind}:{a.address}:{c}", ctx,
                             "Contact unavailable" if not takes_over else "Deputy now asked"))
    if not takes_over:
        return Step(events=tuple(events), mails=tuple(mails))
    parties = tuple(replace(x, using_deputy=True) if x is party else x for x in state.parties)
    new_party = replace(party, using_deputy=True)
    events.append(EventRecord("deputy_took_over", {"from": party.email, "to": new_party.active_email,
                                                   "role": party.role_name}))
    if state.stage_index is not None:
        plan = plan_for(state, p, state.stage_index, state.stage_opened_at or now)
        sctx = _stage_context(state, p, plan)
        sctx["due_local"] = _local(state.due_at, p)
        sctx["because"] = f"{party.name or party.email} is unavailable ({a.kind.replace('_', ' ')}); you are " \
                          f"their deputy"
        mails.append(_mail("stage_request.txt.j2", new_party.active_email,
                           case_subject(state.reference, f"Stage {plan.number}: {plan.name} (as deputy)"), sctx,
                           f"{state.reference}:s{state.stage_index}:request:{new_party.active_email}", plan.clause,
                           token_stage=state.stage_index, recipient_name=new_party.active_name,
                           role=party.role_name))
    if state.status == "awaiting_confirmation" and party in _confirming(state):
        # They were asked to confirm a resolution: the deputy is asked instead.
        ask = _ask_confirmation(replace(state, parties=parties), p, now)
        mails.extend(m for m in ask.mails if m.to[0].lower() == new_party.active_email.lower())
    return Step(change=CaseChange(parties=parties), events=tuple(events), mails=tuple(mails))


def _help(state: CaseState, p: Partnership, to: str, now: datetime, note: str) -> OutgoingMail:
    day = p.calendar.local(now).date().isoformat()
    return _answer(state, p, to, "reply_help.txt.j2", f"{state.reference}:help:{to}:{day}",
                   {"note": note, "status": state.status, "recipient_name": "", "recipient_role": ""},
                   "How to reply")


def _on_reply(state: CaseState, r: Replied, p: Partnership, now: datetime) -> Step:
    if r.facts is not None:
        verdict = authority(state, r.facts, p, r.command)
        if not verdict.allowed:
            return _refused(state, r, r.facts, verdict, p, now)
        assert verdict.authority is not None
        r = replace(r, authority=verdict.authority.value, side=verdict.side)
    return _on_verified_reply(state, r, p, now)


def _refused(state: CaseState, r: Replied, facts: ReplyFacts, verdict: Verdict, p: Partnership,
             now: datetime) -> Step:
    """A reply that may not act: kept on the case as unverified correspondence, never applied.

    Whom we tell: a sender whose token verified (wrong case, old stage, too many notes) is told
    directly; otherwise only the genuine party the From line names (an address the case or the
    configuration holds), with a fresh copy of their request, so a forger learns and gets nothing.
    Each at most once a day. The coordinator hears of it in the hourly digest.
    """
    assert verdict.refusal is not None
    code = verdict.refusal
    claimed = (facts.sender or facts.claimed_sender or "").lower()
    record = EventRecord("reply_not_applied", {
        "reason": code.value, "from": claimed, "command": r.command, "text": r.argument,
        "message_id": r.message_id, "unverified": code not in VERIFIED_REFUSALS,
        "sender_problem": facts.sender_problem}, actor=claimed or None)
    day = p.calendar.local(now).date().isoformat()
    mails: list[OutgoingMail] = []
    words = REFUSAL_TEXT[code]
    base = {"reason": words, "sender": claimed, "recipient_name": "", "recipient_role": ""}
    if code in VERIFIED_REFUSALS and facts.sender:
        mails.append(replace(_answer(state, p, facts.sender, "reply_not_applied.txt.j2",
                                     f"{state.reference}:notapplied:{facts.sender}:{code.value}:{day}", base,
                                     "Your reply was not applied"), priority=NOTICE_MAIL))
    elif claimed and role_of(state, p, claimed)[0] is not None and state.status not in TERMINAL:
        genuine = _genuine_address(state, claimed)
        ctx = _base_context(state, p)
        ctx.update(base)
        ctx.update({"status": state.status, "due_local": _local(state.due_at, p),
                    "stage_number": state.stage_index + 1 if state.stage_index is not None
                    and state.stage_index >= 0 else 0})
        mails.append(OutgoingMail(
            template="reply_not_verified.txt.j2", to=(genuine,),
            subject=case_subject(state.reference, "We could not verify a message from you"), context=ctx,
            dedupe_key=f"{state.reference}:unverified:{genuine}:{day}", reason="unverified reply",
            auto_submitted="auto-generated",
            token_stage=state.stage_index if state.stage_index is not None else ACK_TOKEN_STAGE,
            priority=NOTICE_MAIL))
    notices: tuple[Notice, ...] = (Notice("reply_not_applied", {"reason": code.value, "from": claimed}),)
    if code is Refusal.NOTE_LIMIT and facts.notes_refused_today > 0:
        notices = ()  # the coordinator was told when the limit was first reached
    return Step(events=(record,), mails=tuple(mails), notices=notices)


def _genuine_address(state: CaseState, claimed: str) -> str:
    """The address as the case or configuration spells it (never the spelling a forger chose)."""
    if state.raiser and state.raiser.lower() == claimed:
        return state.raiser
    for x in state.parties:
        for a in (x.email, x.deputy_email):
            if a and a.lower() == claimed:
                return a
    return claimed


def _on_confirm(state: CaseState, r: Replied, p: Partnership, now: datetime, record: EventRecord) -> Step:
    """Staff confirm that an address written in the referral may be mailed; the other worker is then
    asked at the current stage (its deadline unchanged)."""
    from escalations.parsers.sender import valid_address

    words = r.argument.split()
    address = valid_address(words[0].strip("<>,;")) if words else None
    if address is None:
        return Step(events=(record,), mails=(_help(state, p, r.sender, now,
                                                    "CONFIRM needs the address to confirm after it"),))
    confirmed = tuple(dict.fromkeys((*state.confirmed_addresses, address)))
    updated = replace(state, confirmed_addresses=confirmed)
    change = CaseChange(confirmed_addresses=confirmed)
    events = [record, EventRecord("address_confirmed", {"address": address}, actor=r.sender)]
    if state.stage_index is None or state.status in TERMINAL:
        return Step(change=change, events=tuple(events))
    plan = plan_for(updated, p, state.stage_index, state.stage_opened_at or now)
    other = _other_practitioner(updated, p, plan)
    if other is None or other[1] != address or any(address in acts_as(x) for x in state.parties):
        return Step(change=change, events=tuple(events))
    party = Party(email=address, name=other[0], role_name="Practitioner (other agency)",
                  party="receiving.practitioner", side="receiving")
    ctx = _stage_context(updated, p, plan)
    ctx["because"] = "the partnership confirmed your address for this case"
    ctx["due_local"] = _local(state.due_at, p)
    mail = _mail("stage_request.txt.j2", address, _stage_subject(state, plan), ctx,
                 f"{state.reference}:s{state.stage_index}:request:{address}", plan.clause,
                 token_stage=state.stage_index, recipient_name=party.name, role=party.role_name)
    return Step(change=replace(change, parties=(*state.parties, party)), events=tuple(events), mails=(mail,))


def _on_verified_reply(state: CaseState, r: Replied, p: Partnership, now: datetime) -> Step:
    cmd = r.command
    record = EventRecord(f"reply_{(cmd or 'none').lower()}", {"text": r.argument, "message_id": r.message_id,
                                                              "authority": r.authority}, actor=r.sender)
    sender = r.sender.lower()

    def illegal(why: str) -> Step:
        return Step(events=(record, EventRecord("illegal_command", {"command": cmd, "why": why},
                                                actor=r.sender)),
                    mails=(_help(state, p, r.sender, now, why),))

    if state.status in TERMINAL:
        return illegal(f"case {state.reference} is already {state.status}; nothing was changed")
    if cmd == "NOTE":
        return Step(events=(record,))
    if cmd == "CONFIRM":
        if r.authority != Authority.STAFF:
            return illegal("only partnership staff can confirm an address")
        return _on_confirm(state, r, p, now, record)
    if r.authority == "notified":
        # Told for information (CP Chair/IRO, partnership members): their comments are kept, nothing more.
        return illegal("you were told about this case for information: your message was kept as a note, "
                       "and only the people asked at this stage can change the case")
    if cmd == "WITHDRAW":
        if r.authority not in ("raiser", "staff"):
            return illegal("only the practitioner who raised the concern can withdraw it")
        return _with_record(record, _close(state, p, now, outcome=r.argument or "withdrawn by the referrer",
                                           how=f"withdrawn by {r.sender}", by=r.sender, status="withdrawn"))
    if cmd == "INFO" or (cmd is None and r.info is not None and state.status in ("awaiting_information",
                                                                               "needs_routing")):
        return _with_record(record, _on_info(state, r, p, now))
    if cmd == "URGENT":
        if p.immediate_risk is None:
            return Step(change=CaseChange(immediate_risk=True), events=(record,))
        if state.immediate_risk and state.status in ("open", "awaiting_confirmation"):
            bypass = _bypass(state, p, now, r.sender) if r.authority in ("raiser", "staff", "party") else None
            if bypass is None:
                return Step(events=(record,))  # already on the immediate-risk route
            return _with_record(record, replace(bypass, change=replace(bypass.change, immediate_risk=True)))
        step = _immediate_step(replace(state, immediate_risk=True), p, now, f"{r.sender} said URGENT: "
                               f"{r.argument or 'the child is at immediate risk'}")
        return _with_record(record, step)
    if state.status == "awaiting_information":
        return illegal("the case is waiting for missing information; reply with INFO and the missing fields")
    if state.status == "needs_routing":
        return illegal("the case is waiting for the partnership to route it to the other agency")
    plan = plan_for(state, p, state.stage_index, state.stage_opened_at or now) \
        if state.stage_index is not None else None
    is_dm = any(sender in acts_as(x) for x in _decision_maker_parties(state, plan))
    awaiting = state.status == "awaiting_confirmation"
    res = state.resolution
    confirmer = awaiting and any(sender in acts_as(x) for x in _confirming(state))
    if cmd == "ESCALATE":
        if awaiting and not confirmer and r.side == res.get("side"):
            return illegal("a resolution was recorded on your side; the other side has been asked to confirm it")
        escalated = _escalate(state, p, now, f"{r.sender} asked to escalate: {r.argument or 'no reason given'}",
                              None)
        if escalated is None:
            return illegal("this is the final stage: the decision maker's written decision closes the case")
        return _with_record(record, escalated)
    if cmd in ("RESOLVED", "ACCEPT") and awaiting and (confirmer or is_dm or r.authority == "staff"):
        outcome = str(res.get("outcome") or "")
        if cmd == "RESOLVED" and r.argument:
            outcome = f"{outcome}\nConfirmed with: {r.argument}" if outcome else r.argument
        elif r.argument:
            outcome = f"{outcome}\nOutstanding issues: {r.argument}" if outcome else r.argument
        how = ("decided by the decision maker" if is_dm and not confirmer else
               f"resolved by {res.get('by')} and confirmed in writing by {r.sender}")
        return _with_record(record, _close(state, p, now, outcome=outcome, by=r.sender, how=how,
                                           clause=plan.decision_maker.clause if is_dm and plan and
                                           plan.decision_maker else None))
    if cmd == "ACCEPT":
        if not awaiting:
            return illegal("there is no resolution waiting for confirmation")
        return illegal("the resolution must be confirmed by the people asked to confirm it")
    if cmd == "RESOLVED":
        if is_dm or r.authority == "staff":
            # The decision maker's written decision closes the case (Sutton 7.4: final; Wiltshire Stage
            # Three: communicated to all parties); partnership staff may record it on their behalf.
            clause = plan.decision_maker.clause if plan and plan.decision_maker and is_dm else None
            return _with_record(record, _close(state, p, now, outcome=r.argument, by=r.sender,
                                               how="decided by " + ("the decision maker" if is_dm
                                                                    else "partnership staff"), clause=clause))
        if awaiting:
            return illegal("a resolution was already recorded; the other side has been asked to confirm it")
        confirm = _confirmers(state, p, r.sender, r.side)
        if not confirm:
            # Nobody on the other side can be asked (e.g. stage 1 when the referral gives no address for
            # the other worker): the record stands on the sender's word and everyone gets it.
            return _with_record(record, _close(state, p, now, outcome=r.argument, by=r.sender,
                                               how=f"resolved by {r.sender} (nobody on the other side has an "
                                                   "address on the case to confirm it)"))
        resolution = {"by": r.sender, "side": r.side, "outcome": r.argument, "at": now.isoformat(),
                      "stage_index": state.stage_index, "confirm_by": [x.active_email for x in confirm]}
        pending = replace(state, status="awaiting_confirmation", resolution=resolution)
        ask = _ask_confirmation(pending, p, now)
        return Step(change=CaseChange(status="awaiting_confirmation", resolution=resolution),
                    events=(record, *ask.events), mails=ask.mails, timers=ask.timers)
    # No command: keep it as a note and tell the sender what they can say.
    return Step(events=(record,), mails=(_help(state, p, r.sender, now, "your message was recorded as a note"),))


def _with_record(record: EventRecord, step: Step) -> Step:
    return replace(step, events=(record, *step.events))


def _on_info(state: CaseState, r: Replied, p: Partnership, now: datetime) -> Step:
    if r.info is None:
        return Step(events=(EventRecord("info_empty", {}, actor=r.sender),),
                    mails=(_help(state, p, r.sender, now, "no 'Label: value' lines were found in your reply"),))
    fields = state.fields.merged_with(r.info) if state.status != "needs_routing" else r.info.merged_with(
        state.fields)
    missing = tuple(m for m in p.all_required_fields() if fields.is_empty(m))
    updated = replace(state, fields=fields, missing=missing,
                      immediate_risk=state.immediate_risk or bool(fields.immediate_risk))
    change = CaseChange(fields=fields, missing=missing, immediate_risk=updated.immediate_risk)
    ev = EventRecord("information_added", {"fields": sorted(k for k, v in r.info.to_json().items()
                                                            if v not in (None, [], "")),
                                           "still_missing": list(missing)}, actor=r.sender)
    if state.status == "awaiting_information" and missing:
        ctx = _base_context(updated, p)
        ctx.update({"missing": [FIELD_LABELS.get(m, m) for m in missing],
                    "raised_by_name": fields.raised_by_name or ""})
        ask = OutgoingMail(template="referral_incomplete.txt.j2", to=(r.sender,),
                           subject=case_subject(state.reference, "Information still needed"), context=ctx,
                           dedupe_key=f"{state.reference}:info:{'+'.join(missing)}", reason="missing fields",
                           auto_submitted="auto-replied")
        return Step(change=change, events=(ev,), mails=(ask,))
    if state.status in ("awaiting_information", "needs_routing"):
        step = _initial_step(updated, p, now, "the missing information was provided")
        return replace(step, change=replace(step.change, fields=fields, missing=missing,
                                            immediate_risk=updated.immediate_risk), events=(ev, *step.events))
    return Step(change=change, events=(ev,))
