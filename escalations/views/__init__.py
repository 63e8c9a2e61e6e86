"""Read models shared by the CLI and the web interface: what a person sees of cases, mail, timers,
quarantine and the service's health. Read-only; values are JSON-ready (ISO times in UTC) except where
a row is for a table (then local London time).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, inspect
from sqlmodel import col, select

from escalations.cases.models import Case, InboundMessage, MailboxHealth, OutboxMessage, Timer
from escalations.cases.store import Store, make_engine
from escalations.clock import SystemClock, iso, local
from escalations.errors import SetupError
from escalations.settings import Settings

if TYPE_CHECKING:
    from escalations.app import App
    from escalations.routing.policy.model import Partnership


def case_rows(store: Store, partnership: str | None = None, status: str | None = None) -> list[tuple[str, ...]]:
    """Reference, partnership, status, stage, opened (London), missing fields, acknowledgement status
    of the cases of ``partnership`` with ``status`` (None: all)."""
    cases = store.list_cases(partnership, status)
    acks = store.acknowledgement_statuses(c.id for c in cases if c.id is not None)
    return [(case.reference, case.partnership, case.status, str(case.stage or "-"), local(case.opened_at),
             ", ".join(case.missing) or "-", "ack " + acks.get(case.id or 0, "-"))
            for case in cases]


def party_json(p: dict[str, Any]) -> dict[str, Any]:
    deputy = bool(p.get("using_deputy") and p.get("deputy_email"))
    return {"email": p.get("deputy_email") if deputy else p.get("email"),
            "name": p.get("deputy_name") if deputy else p.get("name"),
            "role": p.get("role_name"), "party": p.get("party"), "side": p.get("side"),
            "asked": bool(p.get("asked", True)), "deputy_for": p.get("email") if deputy else None}


def case_record(store: Store, case: Case) -> dict[str, Any]:
    assert case.id is not None
    events = store.case_events(case.id)
    outbox = store.outbox_of_case(case.id)
    # When the partnership received each message (the event's time) and when we processed it.
    inbound = {i: store.get_inbound(i) for i in {e.inbound_id for e in events} | {case.origin_inbound_id}
               if i is not None}
    origin = inbound.get(case.origin_inbound_id) if case.origin_inbound_id is not None else None

    def times(inbound_id: int | None) -> dict[str, str | None]:
        row = inbound.get(inbound_id) if inbound_id is not None else None
        return {"received_at": iso(row.received_at) if row else None,
                "processed_at": iso(row.processed_at) if row else None}

    return {
        "reference": case.reference,
        "partnership": case.partnership,
        "status": case.status,
        "stage": case.stage,
        "route": case.route,
        "opened_at": iso(case.opened_at),
        "received_at": iso(origin.received_at) if origin else None,
        "processed_at": iso(origin.processed_at) if origin else None,
        "updated_at": iso(case.updated_at),
        "due_at": iso(case.due_at),
        "immediate_risk": case.immediate_risk,
        "raised_by_email": case.raised_by_email,
        "missing": case.missing,
        "policy_version": case.policy_version,
        # the people the case involves at its current stage (deputies in place of absent contacts)
        "parties": [party_json(p) for p in case.parties],
        "mailed": sorted({r for o in outbox for r in o.recipients}),
        "fields": case.fields,
        "events": [{"at": iso(e.at), "kind": e.kind, "actor": e.actor, "clause": e.clause, "detail": e.detail,
                    "inbound_id": e.inbound_id, **times(e.inbound_id)} for e in events],
        # Mail kept on the case but never applied (no valid reply code, ambiguous sender, DMARC fail...).
        "unverified_correspondence": [
            {"at": iso(e.at), "from": e.detail.get("from"), "reason": e.detail.get("reason"),
             "command": e.detail.get("command"), "text": e.detail.get("text"), "inbound_id": e.inbound_id,
             **times(e.inbound_id)}
            for e in events if e.kind == "reply_not_applied"],
        "mail": [{"message_id": o.message_id, "template": o.template, "to": o.recipients, "status": o.status,
                  "subject": o.subject, "created_at": iso(o.created_at), "sent_at": iso(o.sent_at)} for o in outbox],
    }




def outbox_rows(store: Store, status: str | None = None) -> list[dict[str, Any]]:
    return [{"id": o.id, "case_id": o.case_id, "template": o.template, "to": o.recipients, "subject": o.subject,
             "status": o.status, "attempts": o.attempts, "next_attempt_at": iso(o.next_attempt_at),
             "sent_at": iso(o.sent_at), "last_error": o.last_error, "message_id": o.message_id}
            for o in store.list_outbox(status)]


def timer_rows(store: Store, case_id: int | None = None, status: str | None = None) -> list[dict[str, Any]]:
    refs = {c.id: c.reference for c in store.list_cases()}
    return [{"id": t.id, "case": refs.get(t.case_id), "stage": t.stage, "kind": t.kind, "due_at": iso(t.due_at),
             "status": t.status, "fired_at": iso(t.fired_at)} for t in store.list_timers(case_id, status)]


def quarantine_rows(store: Store) -> list[dict[str, Any]]:
    return [{"id": r.id, "source": r.source, "received_at": iso(r.received_at), "message_id": r.message_id,
             "partnership": r.partnership, "size": r.size, "attempts": r.attempts,
             "reason": (r.error or "").split("\n", 1)[0]} for r in store.list_inbound("quarantined")]


@dataclass(frozen=True)
class _Counts:
    """What ``status`` reads from the database, in one reading session."""

    health: dict[str, MailboxHealth]
    waiting: dict[str | None, int]
    quarantined: list[str | None]
    outbox: dict[str, int]
    timers: dict[str, int]
    next_timers: list[tuple[datetime, str, str]]


def _read_counts(settings: Settings) -> _Counts:
    url = settings.effective_database_url
    if url.startswith("sqlite:///") and not settings.database_url and \
            not (settings.data_dir / "escalations.sqlite3").exists():
        raise SetupError("ESCALATIONS_DATA_DIR (--data-dir)", f"no database in {settings.data_dir}: start the "
                                                              "service (escalations run) or point to its data folder")
    engine = make_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
        with Store(engine, SystemClock()).reading() as s:
            return _Counts(
                {h.name: h for h in s.exec(select(MailboxHealth)).all()} if "mailbox_health" in tables else {},
                dict(s.exec(select(InboundMessage.account, func.count()).where(
                    InboundMessage.status == "pending").group_by(InboundMessage.account)).all()),
                list(s.exec(select(InboundMessage.error).where(InboundMessage.status == "quarantined")).all()),
                dict(s.exec(select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status)).all()),
                dict(s.exec(select(Timer.status, func.count()).group_by(Timer.status)).all()),
                [(due, kind, ref) for due, kind, ref in s.exec(
                    select(Timer.due_at, Timer.kind, Case.reference).join(Case, col(Case.id) == col(Timer.case_id))
                    .where(Timer.status == "pending").order_by(col(Timer.due_at)).limit(5)).all()])
    finally:
        engine.dispose()


def _mailbox_rows(settings: Settings, c: _Counts, now: datetime, problems: list[str]) -> list[dict[str, Any]]:
    alert_after = settings.mailbox_alert_after_minutes * 60
    rows = []
    for m in settings.mailboxes:
        h = c.health.get(m.name)
        last_ok = h.last_ok_at if h else None
        silent = (now - (last_ok or h.since_at)).total_seconds() if h else None
        alerting = bool(h and h.down_alerted_at) or (silent is not None and silent >= alert_after)
        rows.append({"name": m.name, "host": m.host, "folder": m.folder, "last_ok_at": iso(last_ok),
                     "seconds_since_ok": round(silent) if silent is not None and last_ok else None,
                     "mode": None if not h or h.idle is None else ("idle" if h.idle else "polling"),
                     "last_error_code": h.last_error_code if h else None,
                     "last_error_at": iso(h.last_error_at) if h else None,
                     "waiting": int(c.waiting.get(m.name, 0)), "no_contact_alert": alerting})
        if alerting:
            problems.append(f"mailbox {m.name}: no successful contact for over "
                            f"{settings.mailbox_alert_after_minutes:g} minutes")
    return rows


def _secret_rows(settings: Settings, now: datetime, problems: list[str]) -> list[dict[str, Any]]:
    from escalations.mailer.oauth import secret_expiry_note

    accounts = [(m.name, m.auth) for m in settings.mailboxes] + ([("relay", settings.relay.auth)]
                                                                  if settings.relay else [])
    rows = []
    for name, auth in accounts:
        if auth.secret_expires_on is not None:
            note = secret_expiry_note(auth, now.date())
            rows.append({"account": name, "expires_on": auth.secret_expires_on.isoformat(),
                         "days_left": (auth.secret_expires_on - now.date()).days, "warning": note})
            if note:
                problems.append(f"{name}: {note}")
    return rows


def health(settings: Settings, now: datetime) -> dict[str, Any]:
    """Health for people and monitoring, read without writing anything (no schema, no claims)."""
    from escalations.cases.operations import quarantine_code  # and the outbox with it: not for `cases list`

    c = _read_counts(settings)
    problems: list[str] = []
    mailboxes = _mailbox_rows(settings, c, now, problems)
    by_code: dict[str, int] = {}
    for error in c.quarantined:
        code = quarantine_code(error)
        by_code[code] = by_code.get(code, 0) + 1
    secrets = _secret_rows(settings, now, problems)
    if c.outbox.get("failed"):
        problems.append(f"outbox: {c.outbox['failed']} message(s) failed for good (escalations outbox list --status failed)")
    if c.timers.get("failed"):
        problems.append(f"timers: {c.timers['failed']} failed (escalations timers list --status failed)")
    r = settings.relay
    return {
        "now": now.isoformat(),
        "ok": not problems,
        "problems": problems,
        "relay": {"host": r.host, "port": r.port, "security": r.security} if r else None,
        "sent_dir": None if r else str(settings.sent_dir),
        "mailboxes": mailboxes,
        "inbound_waiting": int(sum(c.waiting.values())),
        "quarantine": {"count": len(c.quarantined), "by_reason": dict(sorted(by_code.items()))},
        "outbox": {k: int(c.outbox.get(k, 0)) for k in ("pending", "sending", "sent", "failed")},
        "timers": {"pending": int(c.timers.get("pending", 0)), "failed": int(c.timers.get("failed", 0)),
                   "next": [{"case": ref, "kind": kind, "due_at": iso(due)} for due, kind, ref in c.next_timers]},
        "secrets": secrets,
    }


def case_policy(app: App, case_id: int) -> Partnership | None:
    """The policy the case runs under (its stored version; a later YAML edit applies to new cases only),
    or None when its partnership is no longer configured."""
    try:
        with app.store.reading() as s:
            case = s.get(Case, case_id)
            return app.workflow.policy_of(s, case) if case is not None else None
    except KeyError:
        return None
