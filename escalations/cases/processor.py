"""Processing of stored inbound mail: parse, classify, decide, apply — one message, one transaction.

A message that raises is quarantined with the error and the loop goes on; `quarantine replay`
puts it back. Nothing here sends mail: decisions become outbox rows in the same transaction.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Integer, String, bindparam, func, update
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col, select

from escalations.cases.dispatcher import Workflow
from escalations.cases.inbound import InboundRow
from escalations.cases.models import Case, CaseEvent, InboundMessage
from escalations.cases.prepared import Prepared
from escalations.cases.read_ahead import ReadAhead
from escalations.cases.store import INBOUND_BATCH, Store
from escalations.clock import Clock
from escalations.mailer.outbox import Renderer
from escalations.parsers.authresults import sender_fails_dmarc, trusted_verdict
from escalations.parsers.auto_reply import AutomatedInfo, detect_automated, must_not_answer
from escalations.parsers.classify import MIN_LABELLED_FIELDS, MailFacts, MailKind, classify
from escalations.parsers.fields import ReferralParse
from escalations.parsers.labels import LabelTable
from escalations.parsers.message import MessageParseError, ParsedMessage, parse_message
from escalations.parsers.referral import extract_fields_from_text
from escalations.parsers.reply import find_reference, parse_reply
from escalations.parsers.sender import StrictSender, raw_header_values, strict_sender
from escalations.routing.policy.model import Partnership, PolicyConfig
from escalations.routing.redact import redactor_for
from escalations.routing.tokens import (
    TokenError,
    TokenExpired,
    TokenMalformed,
    token_from_address,
    token_from_message_ids,
    token_from_text,
    verify_token,
)
from escalations.routing.workflow.authority import ReplyFacts, TokenVerdict
from escalations.routing.workflow.events import Automated, NewReferral, Opened, Replied
from escalations.routing.workflow.recipients import mailable
from escalations.routing.workflow.state import EventRecord, Step

log = structlog.get_logger("escalations.cases.processor")

__all__ = ["MIN_LABELLED_FIELDS", "DatabaseLost", "Outcome", "Processor", "Unprocessable", "partnership_for",
           "step_result"]


class DatabaseLost(Exception):
    """The database connection was lost while a message was processed (a server restart, a failover):
    nothing of it was committed, and it is handed back rather than quarantined."""


class Unprocessable(Exception):
    """The message cannot be processed as it stands; it is quarantined with this fixed reason code."""


@dataclass(frozen=True)
class Outcome:
    inbound_id: int
    kind: str
    status: str  # done | quarantined
    case_reference: str | None = None
    #: A fixed code (never text from the message): case_opened, applied:RESOLVED, refused:ACCEPT,
    #: not_applied:no_token, or the quarantine reason.
    detail: str = ""


@dataclass(frozen=True)
class _ReplyTarget:
    """The case a reply answers, and what its reply token said."""

    case: Case
    verdict: TokenVerdict
    token_case: int | None
    token_stage: int | None


def partnership_for(msg: ParsedMessage, envelope: Sequence[str], config: PolicyConfig) -> Partnership | None:
    """The partnership whose mailbox the message was delivered to (envelope first, then headers).

    Sub-addressed forms (``mailbox+token@domain``) count as the mailbox.
    """
    mailboxes = config.all_mailboxes()
    for addr in [*envelope, *msg.delivered_to, *msg.to, *msg.cc]:
        a = addr.strip().lower()
        local, _, domain = a.partition("@")
        candidates = [a, f"{local.split('+', 1)[0]}@{domain}"]
        for c in candidates:
            if c in mailboxes:
                return mailboxes[c]
    return None


def step_result(step: Step, command: str | None) -> str:
    """What the workflow really did with a reply, as a code for ``ingest --json`` and the logs."""
    kinds = {e.kind for e in step.events}
    if "reply_not_applied" in kinds:
        reason = next(str(e.detail.get("reason")) for e in step.events if e.kind == "reply_not_applied")
        return f"not_applied:{reason}"
    if "illegal_command" in kinds:
        return f"refused:{command or 'note'}"
    return f"applied:{command or 'note'}"


@contextmanager
def _limits_noted(codes: Sequence[str]) -> Iterator[None]:
    """A message quarantined after part of it was skipped says which limits (fixed codes only)."""
    try:
        yield
    except Unprocessable as exc:
        if codes and exc.args:
            exc.args = (f"{exc.args[0]} [limits: {', '.join(codes)}]", *exc.args[1:])
        raise


class Processor:
    def __init__(
        self,
        store: Store,
        config: PolicyConfig,
        renderer: Renderer,
        clock: Clock,
        *,
        message_id_domain: str,
        workflow: Workflow,
        auth_results: Mapping[str, str] | None = None,
        smtp_authserv_id: str | None = None,
        ingest_auth_results: str = "none",
        note_limit: int = 20,
        on_queued: Callable[[], None] = lambda: None,
        parser: Callable[[bytes], ParsedMessage] | None = None,
        labels: LabelTable | None = None,
        new_mail: threading.Event | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.renderer = renderer
        self.clock = clock
        self.message_id_domain = message_id_domain
        self.workflow = workflow
        #: Mailbox name -> which Authentication-Results to trust ("first", "none", an authserv-id).
        self.auth_results = dict(auth_results or {})
        self.smtp_authserv_id = smtp_authserv_id
        self.ingest_auth_results = ingest_auth_results
        self.note_limit = note_limit
        self.on_queued = on_queued
        #: bytes -> ParsedMessage; the service's is a BoundedParser (worker process, limits)
        self.parser = parser or parse_message
        #: The label vocabulary referrals and INFO replies are read with (None: the shipped one).
        self.labels = labels
        #: Each thread's next message, read and handed to the parse worker while one is dispatched.
        self.ahead = ReadAhead(store, clock, config, lambda: self.parser, lambda: self.labels)
        #: Set when new mail is stored (the service's wake_processor): a batch under way is cut short
        #: for it (see process_pending). None: batches always run to their end.
        self.new_mail = new_mail

    # ---- loop --------------------------------------------------------------------------

    def process_pending(self, limit: int | None = None, stop: threading.Event | None = None) -> list[Outcome]:
        """Process pending mail, claimed a batch at a time in the claim's order (its fresh lane, then
        oldest first; one transaction claims the batch, each message is then processed in its own), until
        none is left, ``limit`` are done or ``stop`` is set (checked between messages). Claims not begun
        when this stops early (a stop, an exception) are handed back at once.

        New mail does not wait for the rest of a batch: when ``new_mail`` is set between two messages,
        once the claim's fresh lane and its oldest message are done (its ``first_run``: so the backlog and
        earlier new mail move however fast new mail comes), the rest is handed back and the next claim
        puts the new message first. The event is cleared just before each claim, never after: mail signalled before
        the clear is committed and that claim sees it; mail signalled after sets it again."""
        outcomes: list[Outcome] = []
        while (limit is None or len(outcomes) < limit) and not (stop is not None and stop.is_set()):
            want = INBOUND_BATCH if limit is None else min(INBOUND_BATCH, limit - len(outcomes))
            if self.new_mail is not None:
                self.new_mail.clear()
            claim = self.store.claim_inbound(want)
            batch = claim.ids
            if not batch:
                break
            done = 0
            try:
                for position, inbound_id in enumerate(batch):
                    if stop is not None and stop.is_set():
                        break
                    if done >= claim.first_run and self.new_mail is not None and self.new_mail.is_set():
                        break
                    done += 1
                    following = batch[position + 1] if position + 1 < len(batch) else None
                    outcomes.append(self.process_one(inbound_id, following=following))
            finally:
                # the one under way when an exception escaped stays claimed (or, for DatabaseLost, was
                # handed back by process_one): it counts as an attempt
                self.store.release_inbound(batch[done:])
        return outcomes

    def process_one(self, inbound_id: int, *, following: int | None = None) -> Outcome:
        """Process one claimed message. ``following``: the id this worker processes next (its claim's
        next), whose row is read and handed to the parse worker while this one is dispatched."""
        try:
            outcome = self._process(inbound_id, following)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                return self._quarantine(inbound_id, exc)
            # Nothing of it was committed, and the message is not at fault: handed back at once (not
            # after the lease) for the next run on a new connection, its attempt still counted, so one
            # that somehow took the server down each time is quarantined after MAX_UNFINISHED_ATTEMPTS.
            log.warning("inbound.database_lost", inbound_id=inbound_id, error_type=type(exc.orig).__name__)
            try:
                self.store.release_inbound([inbound_id], keep_attempt=True)
            except Exception as still_down:  # it stays claimed: taken back once this worker's claim is stale
                log.warning("inbound.hand_back_failed", inbound_id=inbound_id,
                            error_type=type(still_down).__name__)
            raise DatabaseLost(inbound_id) from exc
        except Exception as exc:
            return self._quarantine(inbound_id, exc)
        log.info("inbound.processed", inbound_id=inbound_id, kind=outcome.kind, case=outcome.case_reference,
                 result=outcome.detail)
        if outcome.case_reference:
            self.on_queued()
        return outcome

    def _quarantine(self, inbound_id: int, exc: Exception) -> Outcome:
        # Only our own fixed codes and the exception type: an exception's text can quote a value
        # from the message (a header, a malformed date of birth).
        reason = str(exc.args[0]) if isinstance(exc, Unprocessable) and exc.args else "processing_error"
        # format_tb: file, line and source of each frame, never the exception's text.
        trace = "".join(traceback.format_tb(exc.__traceback__, limit=-8)) + type(exc).__name__
        self.store.quarantine(inbound_id, f"{reason}\n\n{trace}")
        log.warning("inbound.quarantined", inbound_id=inbound_id, reason=reason,
                    error_type=type(exc).__name__)
        return Outcome(inbound_id, "unknown", "quarantined", detail=reason)

    # ---- one message -------------------------------------------------------------------

    def _process(self, inbound_id: int, following: int | None = None) -> Outcome:
        # Read and parse before the write transaction: on SQLite that lock is the whole database's. The
        # row is read once, here (or, as the message before's ``following``, just before that one was
        # dispatched); the write transaction only ever updates it, and only while it is still pending
        # (see _finish), and this worker's claim keeps every other processor off it meanwhile.
        row = self.ahead.row(inbound_id)
        if row is None:
            raise Unprocessable("inbound_vanished")
        if row.status != "pending":
            return Outcome(inbound_id, row.kind or "unknown", row.status)
        raw = row.raw
        now = self.ahead.event_time(row)
        try:
            msg = self.ahead.parse(raw, now)
        except MessageParseError as exc:
            raise Unprocessable("not_email") from exc
        finally:
            self.ahead.hand_over(following)
        sender = strict_sender(raw_header_values(raw, "from"), raw_header_values(raw, "sender"))
        with self.store.session() as s, _limits_noted(msg.limits_hit):
            partnership = partnership_for(msg, row.envelope_recipients, self.config)
            if partnership is None:
                raise Unprocessable("no_partnership_mailbox")
            row.partnership = partnership.id

            return self._dispatch(s, row, raw, msg, sender, partnership, now)

    def _dispatch(self, s: Session, row: InboundRow, raw: bytes, msg: ParsedMessage, sender: StrictSender,
                  partnership: Partnership, now: datetime) -> Outcome:
        """Classify the message from what is known of it, then hand it on by its kind."""
        own = bool(msg.from_address and msg.from_address in self.config.all_mailboxes())
        automated = detect_automated(msg, row.envelope_sender)
        target = None if own or automated.kind != "none" else self._reply_target(s, row, msg, sender,
                                                                                 partnership, now)
        parse = None
        if not own and automated.kind == "none" and target is None:
            received = partnership.calendar.local(now).replace(tzinfo=None)
            parse = self.ahead.referral(msg, partnership, received)
        kind = classify(MailFacts(
            from_own_mailbox=own, automated=automated.kind, answers_case=target is not None,
            labelled_count=parse.labelled_count if parse else 0,
            has_text=bool(msg.text.strip() or msg.attachments or msg.embedded)))
        if kind is MailKind.OWN_MAIL:
            return self._finish(s, row, "own_mail", None, now, "own_mail_ignored")
        if kind in (MailKind.AUTO_REPLY, MailKind.BOUNCE):
            return self._automated(s, row, msg, automated, partnership, now)
        if kind is MailKind.REPLY and target is not None:
            return self._apply_reply(s, row, msg, sender, target, partnership, now)
        if kind in (MailKind.REFERRAL, MailKind.FREE_TEXT) and parse is not None:
            case = self._open_case(s, row, msg, sender, parse, partnership, now)
            return self._finish(s, row, "referral", case, now,
                                "case_opened:free_text" if kind is MailKind.FREE_TEXT else "case_opened")
        # A list's mail is nobody's escalation; mail with no text at all has nothing to open a case with.
        raise Unprocessable("mailing_list" if kind is MailKind.LIST else "not_a_referral")

    def _finish(self, s: Session, row: InboundRow, kind: str, case: Case | None, now: datetime,
                detail: str) -> Outcome:
        # processed_at is when we did it (the event itself happened at the received time). Only a row
        # still pending is finished: one quarantined or replayed meanwhile keeps what was done to it.
        done = _FINISH.execute(s.connection(), {
            "inbound": row.id, "kind_now": kind, "processed_now": self.clock.now(),
            "partnership_now": row.partnership, "case_now": case.id if case is not None else None})
        if done.rowcount != 1:
            s.rollback()
            with self.store.reading() as r:
                status = r.exec(select(InboundMessage.status).where(InboundMessage.id == row.id)).first()
            return Outcome(row.id or 0, kind, status or "vanished")
        s.commit()
        return Outcome(row.id or 0, kind, "done", case.reference if case else None, detail)

    def _automated(self, s: Session, row: InboundRow, msg: ParsedMessage, automated: AutomatedInfo,
                   partnership: Partnership, now: datetime) -> Outcome:
        kind = automated.kind
        case = self._case_for_automated(s, msg, automated.original_message_id, partnership)
        if case is None:
            # The detector's reason can quote a header (Auto-Submitted: ...): the code only.
            raise Unprocessable(f"automated_no_case:{kind}")
        addresses = list(automated.failed_recipients) if kind == "bounce" else \
            [msg.from_address] if msg.from_address else []
        if not addresses:
            self.workflow.apply(s, case, Step(events=(EventRecord(kind, {"reason": automated.reason}),)),
                                self.workflow.policy_of(s, case), now, row)
        token = token_from_message_ids([i for i in (automated.original_message_id, *msg.in_reply_to,
                                                    *msg.references) if i])
        for address in addresses:
            self.workflow.handle(s, case, Automated(kind, address.lower(), automated.permanent,
                                                    verified=self._token_verifies(token, address, case, now)),
                                 now, row)
        return self._finish(s, row, kind, case, now, kind)

    def _token_verifies(self, token: str | None, address: str, case: Case, now: datetime) -> bool:
        if not token:
            return False
        try:
            verified = verify_token(self.workflow.secret, token, recipient=address.lower(), now=now)
        except (TokenError, ValueError):
            return False
        return verified.case_id == case.id

    def _case_for_automated(self, s: Session, msg: ParsedMessage, original: str | None,
                            partnership: Partnership) -> Case | None:
        ids = [i for i in (original, *msg.in_reply_to, *msg.references) if i]
        return Store.case_for_message_ids(s, ids) or self._case_by_subject(s, msg, partnership)

    def _case_for_reply(self, s: Session, msg: ParsedMessage, partnership: Partnership) -> Case | None:
        return (Store.case_for_message_ids(s, [*msg.in_reply_to, *msg.references])
                or self._case_by_subject(s, msg, partnership))

    # ---- replies ---------------------------------------------------------------------------

    def _trust_for(self, row: InboundRow) -> str:
        if row.source == "imap":
            return self.auth_results.get(row.account or "", "first")
        if row.source == "smtp":
            return self.smtp_authserv_id or "none"
        return self.ingest_auth_results

    def _reply_target(self, s: Session, row: InboundRow, msg: ParsedMessage, sender: StrictSender,
                      partnership: Partnership, now: datetime) -> _ReplyTarget | None:
        """The case a reply is about, and what its reply token says (None: it answers no case)."""
        token = (next((t for a in [*row.envelope_recipients, *msg.delivered_to, *msg.to, *msg.cc]
                       if (t := token_from_address(a))), None)
                 or token_from_message_ids([*msg.in_reply_to, *msg.references])
                 or token_from_text(msg.text))
        verdict, token_case, token_stage = self._verdict(token, sender, now)
        subject_case = self._case_by_subject(s, msg, partnership)
        case = s.get(Case, token_case) if token_case is not None else None
        if case is None:
            case = self._case_for_reply(s, msg, partnership)
        if case is None:
            return None
        if case.partnership != partnership.id:
            raise Unprocessable("case_of_other_partnership")
        if verdict is TokenVerdict.VALID and subject_case is not None and subject_case.id != token_case:
            token_case = -1  # a token for one case in a mail about another acts on nothing
        return _ReplyTarget(case, verdict, token_case, token_stage)

    def _verdict(self, token: str | None, sender: StrictSender,
                 now: datetime) -> tuple[TokenVerdict, int | None, int | None]:
        if not token:
            return TokenVerdict.NONE, None, None
        try:
            verified = verify_token(self.workflow.secret, token, recipient=sender.address or "", now=now)
        except TokenExpired:
            return TokenVerdict.EXPIRED, None, None
        except TokenMalformed:
            return TokenVerdict.NONE, None, None
        except (TokenError, ValueError):
            return TokenVerdict.INVALID, None, None
        return TokenVerdict.VALID, verified.case_id, verified.stage - 1

    def _apply_reply(self, s: Session, row: InboundRow, msg: ParsedMessage, sender: StrictSender,
                     target: _ReplyTarget, partnership: Partnership, now: datetime) -> Outcome:
        """Gather the facts of a reply and let the workflow decide who may act."""
        case, token_case = target.case, target.token_case
        dmarc = trusted_verdict(msg.headers, self._trust_for(row))
        parsed = parse_reply(msg)
        info = extract_fields_from_text(parsed.new_text if parsed.command is None else parsed.argument,
                                        self.labels, received=partnership.calendar.local(now).replace(tzinfo=None))
        has_info = any(not info.is_empty(name) for name in info.to_json())
        facts = ReplyFacts(
            sender=sender.address, claimed_sender=(msg.from_address or "").lower() or None,
            sender_problem=sender.problem.value if sender.problem else None, token=target.verdict,
            token_case_id=case.id if token_case == case.id else token_case, token_stage_index=target.token_stage,
            dmarc_failed=sender_fails_dmarc(dmarc),
            note_limit=self.note_limit,
            **(self._notes_today(s, case, sender.address, partnership, now) if sender.address else {}))
        event = Replied(sender=sender.address or facts.claimed_sender or "", command=parsed.command,
                        argument=parsed.argument, message_id=msg.message_id, authority="party", side=None,
                        info=info if has_info else None, facts=facts)
        step = self.workflow.handle(s, case, event, now, row)
        return self._finish(s, row, "reply", case, now, step_result(step, parsed.command))

    @staticmethod
    def _notes_today(s: Session, case: Case, sender: str, p: Partnership, now: datetime) -> dict[str, int]:
        """Notes applied today from this sender on this case, and notes refused today for the limit."""
        start = p.calendar.local(now).replace(hour=0, minute=0, second=0, microsecond=0)
        today = (CaseEvent.case_id == case.id, CaseEvent.actor == sender, col(CaseEvent.at) >= start,
                 col(CaseEvent.at) < start + timedelta(days=1))
        applied = s.exec(select(func.count()).select_from(CaseEvent).where(
            *today, col(CaseEvent.kind).in_(["reply_note", "reply_none"]))).one()
        refused = s.exec(select(CaseEvent.detail).where(*today, CaseEvent.kind == "reply_not_applied")).all()
        over = sum(1 for d in refused if isinstance(d, dict) and d.get("reason") == "note_limit")
        return {"notes_today": int(applied), "notes_refused_today": over}

    @staticmethod
    def _case_by_subject(s: Session, msg: ParsedMessage, partnership: Partnership) -> Case | None:
        ref = find_reference(msg.subject)
        if not ref:
            return None
        return s.exec(select(Case).where(Case.reference == ref.upper(), Case.partnership == partnership.id)).first()

    # ---- referrals -------------------------------------------------------------------------

    def _open_case(self, s: Session, row: InboundRow, msg: ParsedMessage, sender: StrictSender,
                   parse: ReferralParse, partnership: Partnership, now: datetime) -> Case:
        """A new case row from the parse; the workflow decides its acknowledgement and first step."""
        local_year = partnership.calendar.local(now).year
        # The case's redactor, compiled now, before the write transaction (allocating the reference
        # begins it): its pattern is one of the larger pieces of CPU in opening a case, and meanwhile
        # every other writer waits, the outbox's commit of each mail it sent among them. Kept for the
        # case (redactor_for), so the opening step's mail finds it.
        redactor_for(parse.fields, partnership)
        reference = Store.allocate_reference(s, partnership.reference_prefix, local_year)
        f = parse.fields
        # The practitioner's own address from the text is used only where the service may write to it
        # (an agency's domain); the From address is the one that reached us.
        practitioner = mailable(f.raised_by_email, partnership)
        case = Case(
            reference=reference,
            partnership=partnership.id,
            status="open",  # the Opened step sets it
            stage=f.stage,
            opened_at=now,
            updated_at=now,
            raised_by_email=practitioner or sender.address,
            immediate_risk=bool(f.immediate_risk),
            fields=f.to_json(),
            missing=list(parse.missing),
            policy_version=partnership.policy_version or None,
            policy_version_id=self.workflow.versions.id_for(s, partnership, now),
            origin_inbound_id=row.id,
            origin_message_id=msg.message_id,
        )
        # not added to the session: the Opened step writes the row as it leaves it (Workflow.apply)
        intake = NewReferral(parse=parse, sender=sender.address, origin_message_id=msg.message_id,
                        may_answer=must_not_answer(msg, row.envelope_sender) is None, practitioner=practitioner,
                        sender_problem=sender.problem.value if sender.problem else None)
        self.workflow.handle(s, case, Opened(intake), now, row, new=True)
        return case


#: How a processed message is marked done, built once (the hot path's last statement).
_FINISH = Prepared(
    update(InboundMessage).where(col(InboundMessage.id) == bindparam("inbound"), col(InboundMessage.status) == "pending")
    .values(kind=bindparam("kind_now"), status="done", processed_at=bindparam("processed_now"), claimed_at=None,
            error=None, partnership=bindparam("partnership_now", type_=String),
            case_id=func.coalesce(bindparam("case_now", type_=Integer), InboundMessage.case_id)))
