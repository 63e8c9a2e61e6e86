"""The partnerships' forms, filled from a case: what each one asks (the seed form's own labels, so a
filled-in copy mailed back is read by the referral parser), as plain values.

* Tri-borough LSCB Escalation Protocol Monitoring Form (Tri-borough Appendix A);
* Sutton LSCP Escalation Referral Form (Sutton Appendix B);
* Wiltshire WSCB "Notification of an Escalation" (Wiltshire: Documenting discussions and decisions;
  the seed names the form but does not reproduce it, so its fields are what that paragraph requires:
  the level resolved at, the manager who resolved it, the agreed outcome and how outstanding issues
  will be pursued);
* a case record for the child's file (C&H 3.1, Havering 3.1: "actions and decisions must be recorded
  in writing on the child's file and shared with relevant personnel"): stages, actions, decisions and
  who was told.

Pure: a :class:`CaseRecord` and its :class:`Partnership` in, a :class:`Form` out. ``docx.py`` writes it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from escalations.records.read import CaseRecord, EventView
from escalations.routing.policy.model import Partnership
from escalations.routing.workflow.mail import duration

__all__ = ["Form", "FormKind", "Grid", "Heading", "Row", "fill_form", "long_date"]


class FormKind(StrEnum):
    TRI_BOROUGH_MONITORING = "tri-borough-monitoring"
    SUTTON_REFERRAL = "sutton-referral"
    WILTSHIRE_NOTIFICATION = "wiltshire-notification"
    CASE_RECORD = "case-record"


@dataclass(frozen=True)
class Row:
    """A labelled answer (a two-column table row: label | value)."""

    label: str
    value: str


@dataclass(frozen=True)
class Heading:
    """A section heading (the parser reads the "Name"/"Agency" rows below it as that person's)."""

    text: str


@dataclass(frozen=True)
class Grid:
    """A table with a row of column labels and a row per entry."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


Block = Row | Heading | Grid


@dataclass(frozen=True)
class Form:
    kind: FormKind
    title: str
    reference: str
    intro: str
    blocks: tuple[Block, ...]
    #: What to do with it (the policy's own instruction), with its clause.
    note: str

    @property
    def filename(self) -> str:
        return f"{self.reference}-{self.kind}.docx"

    def rows(self) -> dict[str, str]:
        """Every labelled answer, by label (repeated labels numbered: "Name", "Name (2)")."""
        out: dict[str, str] = {}
        for b in self.blocks:
            if isinstance(b, Row):
                label, n = b.label, 2
                while label in out:
                    label, n = f"{b.label} ({n})", n + 1
                out[label] = b.value
        return out

    def to_json(self) -> dict[str, Any]:
        blocks: list[dict[str, Any]] = []
        for b in self.blocks:
            if isinstance(b, Row):
                blocks.append({"label": b.label, "value": b.value})
            elif isinstance(b, Heading):
                blocks.append({"heading": b.text})
            else:
                blocks.append({"columns": list(b.columns), "rows": [list(r) for r in b.rows]})
        return {"form": str(self.kind), "title": self.title, "reference": self.reference, "note": self.note,
                "blocks": blocks}


# ---- values ----------------------------------------------------------------------------------------


def long_date(value: date | datetime | None, p: Partnership | None = None) -> str:
    """'3 November 2026' (local date for a datetime); '' for none."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        value = value.astimezone(p.tz).date() if p is not None else value.date()
    return f"{value.day} {value:%B %Y}"


def _agency_name(p: Partnership, agency_id: str | None, fallback: str | None = None) -> str:
    if agency_id:
        agency = p.agency(agency_id)
        if agency is not None:
            return agency.name
    return fallback or agency_id or ""


def _person(record: CaseRecord, side: str, prefer: tuple[str, ...], *, strict: bool = False
            ) -> Mapping[str, Any] | None:
    """The party on ``side`` who best fits ``prefer`` (party suffixes, in order), else (unless
    ``strict``) any asked on it."""
    on_side = [x for x in record.parties if x.get("side") == side]
    for suffix in prefer:
        for x in on_side:
            if str(x.get("party", "")).endswith(suffix):
                return x
    return None if strict else next((x for x in on_side if x.get("asked", True)), None)


def _name(x: Mapping[str, Any] | None) -> str:
    if x is None:
        return ""
    if x.get("using_deputy") and x.get("deputy_email"):
        return str(x.get("deputy_name") or x.get("deputy_email"))
    return str(x.get("name") or x.get("email") or "")


def _views(record: CaseRecord) -> list[str]:
    """What each party said in their replies, in order (RESOLVED, ESCALATE, NOTE... with text)."""
    out = []
    for e in record.events:
        text = str(e.detail.get("text") or "").strip()
        if e.kind.startswith("reply_") and text and e.kind != "reply_not_applied":
            out.append(f"{e.actor or 'unknown'} ({long_date(e.at)}): {text}")
    return out


def _summary(record: CaseRecord) -> str:
    f = record.fields
    parts = [f.concern or ""]
    if f.actions_taken:
        parts.append(f"Action taken: {f.actions_taken}")
    views = _views(record)
    if views:
        parts.append("Views of the agencies: " + "; ".join(views))
    return "\n".join(p for p in parts if p)


def _stage_name(record: CaseRecord) -> str:
    stages = record.stages
    if not stages:
        return ""
    last = stages[-1]
    return f"Stage {last.number}: {last.name}" if last.number is not None else last.name


def _agreed(record: CaseRecord) -> str:
    lines = [f"Escalated: {e.detail.get('because') or 'to the next stage'} ({long_date(e.at)})"
             for e in record.events if e.kind == "escalated"]
    if record.outcome:
        lines.append(f"Agreed outcome: {record.outcome}")
    return "\n".join(lines)


def _time_taken(record: CaseRecord) -> str:
    end = record.ending
    return duration(record.opened_at, end.at) if end is not None else ""


def _effectiveness(record: CaseRecord) -> str:
    if record.ending is None:
        return ""
    return f"{_stage_name(record)}. {len(record.stages)} stage(s) used; " \
           f"{sum(1 for e in record.events if e.kind == 'escalated')} escalation(s)."


# ---- the forms ---------------------------------------------------------------------------------------


def _manager(record: CaseRecord, p: Partnership, side: str, when: str) -> tuple[Block, ...]:
    x = _person(record, side, (".line_manager", ".head_of_service", ".safeguarding_lead", ".senior_manager"))
    agency = record.raising_agency if side == "raising" else record.other_agency
    fallback = record.fields.raised_by_agency if side == "raising" else record.fields.other_agency
    return (Row("Name", _name(x)), Row("Designation", str(x.get("role_name") or "") if x else ""),
            Row("Agency", _agency_name(p, agency, fallback)), Row("Date", when))


def tri_borough_monitoring(record: CaseRecord, p: Partnership, today: date) -> Form:
    f = record.fields
    when = long_date(today)
    blocks: tuple[Block, ...] = (
        Row("Child/Family Name", ", ".join(f.child_names)),
        Row("Summary of reason for dispute – include views of all agencies concerned", _summary(record)),
        Row("Agreed outcomes or actions if satisfactorily resolved – includes escalation to next stage if "
            "unresolved", _agreed(record)),
        Heading("Signature of referring manager"), *_manager(record, p, "raising", when),
        Heading("Signature of receiving manager"), *_manager(record, p, "receiving", when),
        Row("Stage at which resolution achieved, noting how effective the policy/practice was in resolving "
            "the issue", _effectiveness(record)),
        Row("Time taken to reach resolution", _time_taken(record)),
    )
    return Form(FormKind.TRI_BOROUGH_MONITORING, "Tri Borough Local Safeguarding Children Board — Escalation "
                "Protocol – Monitoring Form", record.reference,
                "A tool to record decisions and to monitor the effectiveness of the Escalation Protocol.", blocks,
                "A copy of this form is to be held on the child/family file in all agencies involved. If "
                f"escalating to the next stage, use it as a basis for reporting to the manager at the next stage. "
                f"Send a copy to the LSCB Team on completion: {p.primary_mailbox} (Tri-borough Appendix A).")


def _yes_no(value: object) -> str:
    return "" if value is None else ("Yes" if value else "No")


def _head_of_service(record: CaseRecord) -> str:
    # A field the referral parser reads where the form says it; older cases have none.
    return _yes_no(record.fields.to_json().get("head_of_service_contacted"))


def _dobs(record: CaseRecord) -> list[str]:
    return [long_date(d) for d in record.fields.child_dobs]


def sutton_referral(record: CaseRecord, p: Partnership, today: date) -> Form:
    f = record.fields
    names, dobs = list(f.child_names), _dobs(record)
    children = tuple((n, dobs[i] if i < len(dobs) else "") for i, n in enumerate(names)) or (("", ""),)
    adviser = _person(record, "raising", (".safeguarding_lead",), strict=True)
    resolved = record.ending is not None and record.status == "closed"
    return Form(FormKind.SUTTON_REFERRAL, "LSCP Escalation Referral Form", record.reference,
                "Sutton Local Safeguarding Children Partnership — escalation referral (Appendix B).", (
                    Row("Mosaic ID no.", f.child_id or ""),
                    Grid(("Name of child/ children", "Date of birth"), children),
                    Heading("Name of practitioner and agency with which there is a concern"),
                    Grid(("Name", "Agency"), ((f.other_practitioner or "",
                                               _agency_name(p, record.other_agency, f.other_agency)),)),
                    Row("Brief description of nature of concern", f.concern or ""),
                    Row("Outcomes sought", f.outcome_sought or ""),
                    Row("Actions agreed by safeguarding advisor (to be completed by referring SA)",
                        f.actions_taken or ""),
                    Row("Should the Head of Service be contacted? Yes/No", _head_of_service(record)),
                    Heading("Identify the following"),
                    Grid(("Who will do what?", "What will be undertaken?", "By when?"),
                         ((record.resolved_by or "", record.outcome, long_date(record.closed_at, p)),)),
                    Row("Outcome achieved following completion of actions", record.outcome if resolved else ""),
                    Row("Name of referrer", f.raised_by_name or ""),
                    Row("Department", f.raised_by_agency or _agency_name(p, record.raising_agency)),
                    Row("Date", long_date(record.opened_at, p)),
                    Row("Safeguarding advisor", _name(adviser)),
                    Row("Date", long_date(today) if adviser else ""),
                ),
                "The escalation referral form should be completed and sent by secure email to Sutton LSCP "
                "(Sutton Appendix B).")


def wiltshire_notification(record: CaseRecord, p: Partnership, today: date) -> Form:
    f = record.fields
    manager = record.resolved_by or ""
    resolver = next((x for x in record.parties if manager and manager.lower() in
                     {str(x.get("email", "")).lower(), str(x.get("deputy_email") or "").lower()}), None)
    return Form(FormKind.WILTSHIRE_NOTIFICATION, "WSCB Notification of an Escalation", record.reference,
                "Wiltshire Safeguarding Children Board — to be completed by the manager who resolved the concern, "
                "at the level the matter was resolved.", (
                    Row("Name of child(ren)", ", ".join(f.child_names)),
                    Row("Date of birth", ", ".join(_dobs(record))),
                    Row("Name of referrer", f.raised_by_name or ""),
                    Row("Referrer's agency", f.raised_by_agency or _agency_name(p, record.raising_agency)),
                    Row("Agency with which there is a concern", _agency_name(p, record.other_agency, f.other_agency)),
                    Row("Brief description of nature of concern", f.concern or ""),
                    Row("Stage at which the matter was resolved", _stage_name(record)),
                    Row("Manager who resolved the concern", _name(resolver) or manager),
                    Row("Manager's role", str(resolver.get("role_name") or "") if resolver else ""),
                    Row("Agreed outcome and how any outstanding issues will be pursued", record.outcome),
                    Row("Date resolved", long_date(record.closed_at, p)),
                    Row("Date", long_date(today)),
                ),
                f"Forward to the WSCB administration mailbox ({p.primary_mailbox}) by secure means (Wiltshire: "
                "Documenting discussions and decisions).")


def _event_line(e: EventView) -> tuple[str, ...]:
    detail = e.detail
    what = str(detail.get("text") or detail.get("outcome") or detail.get("because") or detail.get("name") or "")
    return (long_date(e.at), e.kind.replace("_", " "), e.actor or "", what, e.clause or "")


def case_record(record: CaseRecord, p: Partnership, today: date) -> Form:
    f = record.fields
    stages = tuple((str(s.number if s.number is not None else ""), s.name, long_date(s.opened_at),
                    (s.due or "")[:10], ", ".join(s.asked), ", ".join(s.notified)) for s in record.stages)
    actions = tuple(_event_line(e) for e in record.events if not e.kind.startswith(("acknowledgement", "timer_")))
    return Form(FormKind.CASE_RECORD, f"{p.name} — escalation case record", record.reference,
                "For the child's file: the stages, actions and decisions of this escalation, and who was told.", (
                    Row("Name of child(ren)", ", ".join(f.child_names)),
                    Row("Date of birth", ", ".join(_dobs(record))),
                    Row("Name of referrer", f.raised_by_name or ""),
                    Row("Referrer's agency", f.raised_by_agency or _agency_name(p, record.raising_agency)),
                    Row("Agency with which there is a concern", _agency_name(p, record.other_agency, f.other_agency)),
                    Row("Brief description of nature of concern", f.concern or ""),
                    Row("Outcome sought", f.outcome_sought or ""),
                    Row("Case status", record.status),
                    Row("Outcome of the escalation", record.outcome),
                    Heading("Stages"),
                    Grid(("Stage", "Stage name", "Opened", "Due", "Asked", "Told"), stages or (("",) * 6,)),
                    Heading("Actions and decisions"),
                    Grid(("When", "What happened", "By whom", "Detail", "Clause"), actions or (("",) * 5,)),
                    Row("Who was told", ", ".join(record.mailed)),
                    Row("Date", long_date(today)),
                ),
                f"Actions and decisions must be recorded in writing on the child's file and shared with relevant "
                f"personnel, to include the worker who raised the initial concern ({p.resolution.record_clause}).")


BUILDERS: Mapping[FormKind, Callable[[CaseRecord, Partnership, date], Form]] = {
    FormKind.TRI_BOROUGH_MONITORING: tri_borough_monitoring,
    FormKind.SUTTON_REFERRAL: sutton_referral,
    FormKind.WILTSHIRE_NOTIFICATION: wiltshire_notification,
    FormKind.CASE_RECORD: case_record,
}


def fill_form(kind: FormKind, record: CaseRecord, p: Partnership, today: date) -> Form:
    return BUILDERS[kind](record, p, today)
