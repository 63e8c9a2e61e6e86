"""Retention: what is past its time is deleted, per record class and partnership (``records.retention``
in its YAML; defaults and their reasons in docs/operations.md, "Retention").

A finished case (closed or withdrawn) keeps its raw mail for ``raw_mail_months`` after it closed, its
outgoing mail for ``outgoing_mail_months``, the mail that carried a form for ``forms_months``, and
the case record itself (the case, its history, timers, notices, and everything above) for
``case_record_months``. Mail that belongs to no case (quarantined, unmatched, digests, alerts) goes
``raw_mail_months`` / ``outgoing_mail_months`` after it was received or created. A case under legal
hold keeps everything; an open case, mail still waiting to be processed and mail still to be sent are
never touched. Each run writes one audit line: case references and counts only.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from escalations.cases.engine import in_chunks
from escalations.cases.models import (
    Case,
    CaseEvent,
    CoordinatorNotice,
    InboundAlias,
    InboundMessage,
    OutboxMessage,
    Timer,
)
from escalations.cases.store import Store
from escalations.records.models import FormCopy, LegalHold, PurgeRun
from escalations.routing.policy.model import PolicyConfig, Retention

__all__ = ["PurgeResult", "add_months", "purge"]

log = structlog.get_logger("escalations.retention")

FINISHED = ("closed", "withdrawn")
#: Outgoing mail in these states is never deleted (it has still to go).
UNSENT = ("pending", "sending")


def add_months(dt: datetime, months: int) -> datetime:
    """The same day and time ``months`` later (the month's last day where it has no such day)."""
    y, m = divmod(dt.month - 1 + months, 12)
    year, month = dt.year + y, m + 1
    return dt.replace(year=year, month=month, day=min(dt.day, calendar.monthrange(year, month)[1]))


@dataclass
class PurgeResult:
    dry_run: bool
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("cases", "raw_mail", "outgoing_mail", "forms", "events"), 0))
    #: Case references per record class deleted (or that would be).
    references: dict[str, list[str]] = field(default_factory=lambda: {
        "case_record": [], "raw_mail": [], "outgoing_mail": [], "forms": []})
    held: list[str] = field(default_factory=list)


@dataclass
class _Doomed:
    cases: set[int] = field(default_factory=set)
    inbound: set[int] = field(default_factory=set)
    outbox: set[int] = field(default_factory=set)


def _past(closed_at: datetime, months: int, now: datetime) -> bool:
    return add_months(closed_at, months) <= now


def _rules(config: PolicyConfig, pid: str | None) -> Retention:
    p = config.partnerships.get(pid or "")
    return p.records.retention if p is not None else Retention()


def _case_mail(s: Session, case_id: int) -> tuple[list[int], list[tuple[int, bool]]]:
    inbound = list(s.exec(select(InboundMessage.id).where(InboundMessage.case_id == case_id,
                                                          col(InboundMessage.status) != "pending")).all())
    forms = set(s.exec(select(FormCopy.outbox_id).where(FormCopy.case_id == case_id)).all())
    outbox = [(oid or 0, (oid or 0) in forms) for oid in s.exec(select(OutboxMessage.id).where(
        OutboxMessage.case_id == case_id, col(OutboxMessage.status).not_in(UNSENT))).all()]
    return [i or 0 for i in inbound], outbox


def _judge_case(s: Session, case: Case, rules: Retention, now: datetime, doomed: _Doomed,
                result: PurgeResult, busy: bool) -> None:
    assert case.closed_at is not None
    inbound, outbox = _case_mail(s, case.id or 0)
    ref = case.reference
    if not busy and _past(case.closed_at, rules.case_record_months, now):
        doomed.cases.add(case.id or 0)
        result.references["case_record"].append(ref)
        result.counts["cases"] += 1
    whole = (case.id or 0) in doomed.cases
    if inbound and (whole or _past(case.closed_at, rules.raw_mail_months, now)):
        doomed.inbound.update(inbound)
        result.references["raw_mail"].append(ref)
        result.counts["raw_mail"] += len(inbound)
    plain = [oid for oid, has_form in outbox if not has_form]
    with_form = [oid for oid, has_form in outbox if has_form]
    if plain and (whole or _past(case.closed_at, rules.outgoing_mail_months, now)):
        doomed.outbox.update(plain)
        result.references["outgoing_mail"].append(ref)
        result.counts["outgoing_mail"] += len(plain)
    if with_form and (whole or _past(case.closed_at, rules.forms_months, now)):
        doomed.outbox.update(with_form)
        result.references["forms"].append(ref)
        result.counts["forms"] += len(with_form)


def _judge_loose_mail(s: Session, config: PolicyConfig, now: datetime, doomed: _Doomed,
                      result: PurgeResult) -> None:
    """Mail that belongs to no case, by its own date."""
    for iid, pid, received in s.exec(select(InboundMessage.id, InboundMessage.partnership,
                                            InboundMessage.received_at).where(
            col(InboundMessage.case_id).is_(None), col(InboundMessage.status) != "pending")).all():
        if _past(received, _rules(config, pid).raw_mail_months, now):
            doomed.inbound.add(iid or 0)
            result.counts["raw_mail"] += 1
    default = Retention()
    months = max([p.records.retention.outgoing_mail_months for p in config.partnerships.values()] or
                 [default.outgoing_mail_months])
    for oid, created in s.exec(select(OutboxMessage.id, OutboxMessage.created_at).where(
            col(OutboxMessage.case_id).is_(None), col(OutboxMessage.status).not_in(UNSENT))).all():
        if _past(created, months, now):  # no case, no partnership: the longest of them
            doomed.outbox.add(oid or 0)
            result.counts["outgoing_mail"] += 1


def _delete(s: Session, doomed: _Doomed, result: PurgeResult) -> None:
    for chunk in in_chunks(sorted(doomed.outbox)):
        s.exec(delete(FormCopy).where(col(FormCopy.outbox_id).in_(chunk)))
        s.exec(delete(OutboxMessage).where(col(OutboxMessage.id).in_(chunk)))
    for chunk in in_chunks(sorted(doomed.inbound)):
        s.exec(update(CaseEvent).where(col(CaseEvent.inbound_id).in_(chunk)).values(inbound_id=None))
        s.exec(update(Case).where(col(Case.origin_inbound_id).in_(chunk)).values(origin_inbound_id=None))
        s.exec(delete(InboundAlias).where(col(InboundAlias.inbound_id).in_(chunk)))
        s.exec(delete(InboundMessage).where(col(InboundMessage.id).in_(chunk)))
    for chunk in in_chunks(sorted(doomed.cases)):
        # whatever of theirs is left: mail still to send or process is never doomed, so a case that
        # has some is not deleted either
        for table, column in ((FormCopy, FormCopy.case_id), (Timer, Timer.case_id),
                              (CoordinatorNotice, CoordinatorNotice.case_id)):
            s.exec(delete(table).where(col(column).in_(chunk)))
        events = s.exec(delete(CaseEvent).where(col(CaseEvent.case_id).in_(chunk)))
        result.counts["events"] += int(events.rowcount or 0)
        s.exec(delete(Case).where(col(Case.id).in_(chunk)))


def _still_busy(s: Session, case_ids: set[int]) -> set[int]:
    """Cases with mail still to process or to send (their record stays until that is done)."""
    if not case_ids:
        return set()
    busy = set(s.exec(select(InboundMessage.case_id).where(col(InboundMessage.case_id).in_(list(case_ids)),
                                                           InboundMessage.status == "pending")).all())
    busy |= set(s.exec(select(OutboxMessage.case_id).where(col(OutboxMessage.case_id).in_(list(case_ids)),
                                                           col(OutboxMessage.status).in_(UNSENT))).all())
    return {c for c in busy if c is not None}


def purge(store: Store, config: PolicyConfig, now: datetime, *, dry_run: bool = False) -> PurgeResult:
    """Delete (or, with ``dry_run``, only count) what is past retention, in one transaction."""
    result = PurgeResult(dry_run)
    doomed = _Doomed()
    with (store.reading() if dry_run else store.session()) as s:
        if not dry_run:
            s.connection()  # the write lock first: nothing changes under the judgement
        held = set(s.exec(select(LegalHold.case_id)).all())
        finished = list(s.exec(select(Case).where(col(Case.status).in_(FINISHED), col(Case.closed_at).is_not(None))
                               .order_by(col(Case.id))).all())
        busy = _still_busy(s, {c.id or 0 for c in finished})
        for case in finished:
            if case.id in held:
                result.held.append(case.reference)
                continue
            _judge_case(s, case, _rules(config, case.partnership), now, doomed, result, (case.id or 0) in busy)
        _judge_loose_mail(s, config, now, doomed, result)
        if dry_run:
            s.rollback()
        else:
            _delete(s, doomed, result)
            s.add(PurgeRun(at=now, dry_run=False, references=result.references, counts=result.counts))
            s.commit()
    log.info("retention.purge", dry_run=dry_run, counts=result.counts, references=result.references,
             held=result.held)
    return result
