"""Which of a step's mails carry one of the partnership's forms, and the form copies a resolution
sends (the partnership's ``records.forms`` in its YAML).

A form holds the child's details, so it is attached only when every recipient of the mail is on
the partnership's secure route (``routing/redact.py``; Wiltshire NB, Sutton Appendix B); otherwise
the mail says the form is ready for staff to download. The dispatcher calls :func:`plan_forms` after
applying a step's changes and events, in the same transaction, and adds what it returns to the
outbox.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlmodel import Session

from escalations.cases.models import Case
from escalations.records.docx import render_docx
from escalations.records.forms import FormKind, fill_form
from escalations.records.models import FormCopy
from escalations.records.read import CaseRecord, record_in_session
from escalations.routing.policy.model import FormUse, Partnership
from escalations.routing.workflow.mail import case_subject
from escalations.routing.workflow.state import OutgoingMail, Step

if TYPE_CHECKING:
    from escalations.mailer.outbox import Queued

__all__ = ["DOCX_TYPE", "Attachment", "FormPlan", "MailForms", "plan_forms"]

DOCX_TYPE = ("application", "vnd.openxmlformats-officedocument.wordprocessingml.document")
COPY_TEMPLATE = "forms/form_copy.txt.j2"


@dataclass(frozen=True)
class Attachment:
    filename: str
    maintype: str
    subtype: str
    data: bytes
    form: str


@dataclass(frozen=True)
class MailForms:
    """What one mail gets: the forms attached (secure route) and the line its body ends with."""

    attachments: tuple[Attachment, ...]
    note: str


def _stage_position(p: Partnership, route: str | None, stage_index: int | None) -> tuple[str, list[str]] | None:
    if stage_index is None or stage_index < 0:
        return None
    try:
        stages = [s.id for s in p.route(route).stages]
    except KeyError:
        return None
    return (stages[stage_index], stages) if stage_index < len(stages) else None


def _for_stage_request(use: FormUse, p: Partnership, case: Case, mail: OutgoingMail) -> bool:
    if mail.template != "stage_request.txt.j2":
        return False
    where = _stage_position(p, case.route, mail.token_stage)
    if where is None:
        return False
    stage_id, stages = where
    if stage_id in use.stages:
        return True
    return use.from_stage is not None and use.from_stage in stages and \
        stages.index(stage_id) >= stages.index(use.from_stage)


def _for_closing(use: FormUse, case: Case, mail: OutgoingMail, resolver: str | None) -> bool:
    if mail.template != "case_closed.txt.j2" or case.status != "closed":
        return False
    return use.recipients == "all" or (resolver is not None and mail.to[0].lower() == resolver.lower())


def uses_for(mail: OutgoingMail, p: Partnership, case: Case, resolver: str | None) -> list[FormUse]:
    return [u for u in p.records.forms if
            (u.attach_to == "stage_request" and _for_stage_request(u, p, case, mail)) or
            (u.attach_to == "closing_record" and _for_closing(u, case, mail, resolver))]


def secure(p: Partnership, mail: OutgoingMail) -> bool:
    return p.secure_route is not None and p.secure_route.covers([*mail.to, *mail.cc])


def _note(uses: Sequence[FormUse], reference: str, attached: bool) -> str:
    lines = []
    for u in uses:
        if attached:
            lines.append(f"Attached: {u.name} ({u.clause}). {u.note}".rstrip())
        else:
            lines.append(f"{u.name} ({u.clause}): ready for partnership staff to download (the web interface, or "
                         f"escalations cases export {reference} --format docx). It is not attached because this "
                         f"mail does not go by a secure route. {u.note}".rstrip())
    return "\n".join(lines)


def _reached(use: FormUse, p: Partnership, case: Case) -> bool:
    """The case got as far as the stage the form is used from (no ``from_stage``: any case)."""
    if use.from_stage is None:
        return True
    where = _stage_position(p, case.route, case.stage_index)
    if where is None:
        return False
    stage_id, stages = where
    return use.from_stage in stages and stages.index(stage_id) >= stages.index(use.from_stage)


def _completion_copies(record: CaseRecord, p: Partnership, case: Case, step: Step
                       ) -> list[tuple[OutgoingMail, FormUse]]:
    if not any(e.kind == "closed" for e in step.events):
        return []
    out = []
    for use in p.records.forms:
        if use.attach_to != "completion_copy" or not use.send_to or not use.send_to.startswith("partnership.") \
                or not _reached(use, p, case):
            continue
        role = p.roles.get(use.send_to.removeprefix("partnership."))
        for contact in role.contacts if role else ():
            address = str(contact.email)
            ctx = {"reference": record.reference, "partnership_name": p.name, "mailbox": p.primary_mailbox,
                   "form_name": use.name, "clause": use.clause, "note": use.note, "recipient_name": contact.name,
                   "outcome_recorded": bool(record.outcome)}
            out.append((OutgoingMail(template=COPY_TEMPLATE, to=(address,), subject=case_subject(
                record.reference, "Escalation resolved: form for the partnership"), context=ctx,
                dedupe_key=f"{record.reference}:form:{use.form}:{address}", reason=use.clause), use))
    return out


@dataclass(frozen=True)
class FormPlan:
    """What a step's mails carry (by dedupe key), and the form copies it adds."""

    case_id: int
    copies: tuple[OutgoingMail, ...] = ()
    by_mail: Mapping[str, MailForms] = field(default_factory=dict)

    def extras(self, mail: OutgoingMail) -> dict[str, Any]:
        """Keyword arguments for ``outbox.enqueue``: the attachments and the note."""
        carried = self.by_mail.get(mail.dedupe_key)
        return {"attachments": carried.attachments, "note": carried.note} if carried else {}

    def enqueued(self, s: Session, mail: OutgoingMail, row: Queued | None, now: datetime) -> None:
        """Note which forms the outbox row carries (kept for the forms' retention, not the mail's)."""
        carried = self.by_mail.get(mail.dedupe_key)
        if row is None or carried is None or not carried.attachments:
            return
        s.flush()
        for a in carried.attachments:
            s.add(FormCopy(outbox_id=row.id or 0, form=a.form, case_id=self.case_id, created_at=now))


def plan_forms(s: Session, case: Case, step: Step, mails: Sequence[OutgoingMail], p: Partnership,
               now: datetime) -> FormPlan:
    """The form copies a step sends and what each of its mails carries."""
    closing = any(e.kind == "closed" for e in step.events)
    if not p.records.forms or not (closing or any(uses_for(m, p, case, None) for m in mails)):
        return FormPlan(case.id or 0)  # most steps: nothing to read
    record = record_in_session(s, case)
    today = now.astimezone(p.tz).date()
    resolver = record.resolved_by
    wanted = [(m, uses_for(m, p, case, resolver)) for m in mails]
    copies = _completion_copies(record, p, case, step)
    wanted.extend((m, [u]) for m, u in copies)
    docs: dict[FormKind, Attachment] = {}
    plan: dict[str, MailForms] = {}
    for m, uses in wanted:
        if not uses:
            continue
        attached = secure(p, m)
        files: list[Attachment] = []
        for kind in dict.fromkeys(FormKind(u.form) for u in uses) if attached else ():
            if kind not in docs:
                form = fill_form(kind, record, p, today)
                docs[kind] = Attachment(form.filename, *DOCX_TYPE, render_docx(form, created=now), str(kind))
            files.append(docs[kind])
        plan[m.dedupe_key] = MailForms(tuple(files), _note(uses, record.reference, attached))
    return FormPlan(case.id or 0, tuple(m for m, _ in copies), plan)
