"""Processing of stored inbound mail: parse, classify, decide, apply — one message, one transaction.

A message that raises is quarantined with the error and the loop goes on; `quarantine replay`
puts it back. Nothing here sends mail: decisions become outbox rows in the same transaction.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy.orm import defer
from sqlmodel import Session, select

from escalations.cases.models import Case, CaseEvent, InboundMessage
from escalations.cases.store import Store
from escalations.cases.workflow import Workflow, known_addresses, policy_of, staff_addresses
from escalations.clock import Clock
from escalations.mailer.outbox import Renderer, enqueue
from escalations.parsers.authresults import dmarc_verdict, sender_fails_dmarc
from escalations.parsers.auto_reply import detect_automated, must_not_answer
from escalations.parsers.message import MessageParseError, ParsedMessage, parse_message
from escalations.parsers.referral import ReferralParse, extract_fields_from_text, extract_referral
from escalations.parsers.reply import find_reference, parse_reply
from escalations.routing.decide import (
    Automated,
    Decision,
    EventRecord,
    Opened,
    OutgoingMail,
    Replied,
    Step,
    case_subject,
    decide_new_referral,
)
from escalations.routing.policy import Partnership, PolicyConfig
from escalations.routing.tokens import (
    TokenError,
    TokenExpired,
    token_from_address,
    token_from_message_ids,
    token_from_text,
    verify_token,
)

log = structlog.get_logger("escalations.processor")

#: How many labelled referral fields make a message "look like a referral" rather than stray mail.
MIN_LABELLED_FIELDS = 2


class Unprocessable(Exception):
    """The message cannot be processed as it stands; it is quarantined with this reason."""


@dataclass(frozen=True)
class Outcome:
    inbound_id: int
    kind: str
    status: str  # done | quarantined
    case_reference: str | None = None
    detail: str = ""


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
        trusted_authserv_ids: Sequence[str] = (),
        on_queued: Callable[[], None] = lambda: None,
        parser: Callable[[bytes], ParsedMessage] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.renderer = renderer
        self.clock = clock
        self.message_id_domain = message_id_domain
        self.workflow = workflow
        self.trusted_authserv_ids = tuple(trusted_authserv_ids)
        self.on_queued = on_queued
        #: bytes -> ParsedMessage; the service's is a BoundedParser (worker process, limits)
        self.parser = parser or parse_message

    # ---- loop --------------------------------------------------------------------------

    def process_pending(self, limit: int | None = None) -> list[Outcome]:
        outcomes: list[Outcome] = []
        while limit is None or len(outcomes) < limit:
            inbound_id = self.store.claim_next_inbound()
            if inbound_id is None:
                break
            outcomes.append(self.process_one(inbound_id))
        return outcomes

    def process_one(self, inbound_id: int) -> Outcome:
        try:
            outcome = self._process(inbound_id)
        except Exception as exc:
            # The error text may quote a header; keep the type and our own message, plus a trace
            # of code locations (no data values) for the administrator.
            reason = exc.args[0] if isinstance(exc, Unprocessable) and exc.args else type(exc).__name__
            # format_tb: file, line and source of each frame, never the exception's text (which can
            # quote a value from the message, e.g. a malformed date of birth).
            trace = "".join(traceback.format_tb(exc.__traceback__, limit=-8)) + type(exc).__name__
            self.store.quarantine(inbound_id, f"{reason}\n\n{trace}")
            log.warning("inbound.quarantined", inbound_id=inbound_id, reason=str(reason)[:200],
                        error_type=type(exc).__name__)
            return Outcome(inbound_id, "unknown", "quarantined", detail=str(reason))
        log.info("inbound.processed", inbound_id=inbound_id, kind=outcome.kind, case=outcome.case_reference)
        if outcome.case_reference:
            self.on_queued()
        return outcome

    # ---- one message -------------------------------------------------------------------

    def _process(self, inbound_id: int) -> Outcome:
        now = self.clock.now()
        # Parse before the write transaction: on SQLite that lock is the whole database's.
        with self.store.reading() as r:
            raw = r.exec(select(InboundMessage.raw).where(InboundMessage.id == inbound_id)).first()
        if raw is None:
            raise Unprocessable("inbound message vanished")
        try:
            msg = self.parser(raw)
        except MessageParseError as exc:
            raise Unprocessable(f"not an email message: {exc}") from exc
        with self.store.session() as s, _limits_noted(msg.limits_hit):
            # the raw bytes were read above; don't load them (possibly megabytes) a second time
            row = s.get(InboundMessage, inbound_id, options=[defer(InboundMessage.raw)])  # type: ignore[arg-type]  # sqlmodel types columns as values
            if row is None:
                raise Unprocessable("inbound message vanished")
            if row.status != "pending":
                return Outcome(inbound_id, row.kind or "unknown", row.status)

            partnership = partnership_for(msg, row.envelope_recipients, self.config)
            if partnership is None:
                raise Unprocessable("not addressed to any configured partnership mailbox")
            row.partnership = partnership.id

            if msg.from_address and msg.from_address in self.config.all_mailboxes():
                return self._finish(s, row, "own_mail", None, now, "our own mail came back; ignored")

            automated = detect_automated(msg, row.envelope_sender)
            if automated.kind in ("auto_reply", "bounce"):
                case = self._case_for_automated(s, msg, automated.original_message_id, partnership)
                if case is None:
                    raise Unprocessable(f"{automated.kind} that matches no case ({automated.reason})")
                addresses = list(automated.failed_recipients) if automated.kind == "bounce" else \
                    [msg.from_address] if msg.from_address else []
                if not addresses:
                    self._add_events(s, case, row, [EventRecord(automated.kind, {"reason": automated.reason})], now)
                for address in addresses:
                    self.workflow.handle(s, case, Automated(automated.kind, address.lower(), automated.permanent),
                                         now, row)
                return self._finish(s, row, automated.kind, case, now, automated.reason)
            if automated.kind == "list":
                raise Unprocessable(f"mailing-list message ({automated.reason})")

            reply = self._reply(s, row, msg, partnership, now)
            if reply is not None:
                return reply

            parse = extract_referral(msg, partnership.all_required_fields())
            if parse.labelled_count < MIN_LABELLED_FIELDS:
                raise Unprocessable(
                    f"not recognised as a referral or as a reply to a case "
                    f"({parse.labelled_count} referral fields found)"
                )
            case = self._open_case(s, row, msg, parse, partnership, now)
            return self._finish(s, row, "referral", case, now, "case opened")

    def _finish(self, s: Session, row: InboundMessage, kind: str, case: Case | None, now: datetime,
                detail: str) -> Outcome:
        row.kind, row.status, row.processed_at, row.claimed_at = kind, "done", now, None
        row.error = None
        if case is not None:
            row.case_id = case.id
        s.add(row)
        s.commit()
        return Outcome(row.id or 0, kind, "done", case.reference if case else None, detail)

    def _add_events(self, s: Session, case: Case, row: InboundMessage | None, events: Sequence[EventRecord],
                    now: datetime) -> None:
        for e in events:
            s.add(CaseEvent(case_id=case.id or 0, at=now, kind=e.kind, actor=e.actor,
                            inbound_id=row.id if row else None, clause=e.clause, detail=dict(e.detail)))
        case.updated_at = now
        s.add(case)

    def _case_for_automated(self, s: Session, msg: ParsedMessage, original: str | None,
                            partnership: Partnership) -> Case | None:
        ids = [i for i in (original, *msg.in_reply_to, *msg.references) if i]
        return Store.case_for_message_ids(s, ids) or self._case_by_subject(s, msg, partnership)

    def _case_for_reply(self, s: Session, msg: ParsedMessage, partnership: Partnership) -> Case | None:
        return (Store.case_for_message_ids(s, [*msg.in_reply_to, *msg.references])
                or self._case_by_subject(s, msg, partnership))

    # ---- replies (issue 5) ---------------------------------------------------------------------

    def _reply(self, s: Session, row: InboundMessage, msg: ParsedMessage, partnership: Partnership,
               now: datetime) -> Outcome | None:
        """Match a reply to its case (token, then headers, then subject), check who sent it, apply it."""
        sender = (msg.from_address or "").lower()
        token = (next((t for a in [*row.envelope_recipients, *msg.delivered_to, *msg.to, *msg.cc]
                       if (t := token_from_address(a))), None)
                 or token_from_message_ids([*msg.in_reply_to, *msg.references])
                 or token_from_text(msg.text))
        not_applied: str | None = None
        case: Case | None = None
        token_stage: int | None = None
        if token:
            try:
                verified = verify_token(self.workflow.secret, token, recipient=sender, now=now)
                case = s.get(Case, verified.case_id)
                token_stage = verified.stage - 1
            except TokenExpired:
                not_applied = "the reply code in this message has expired"
            except TokenError:
                not_applied = "the reply code in this message was issued to a different address"
        if case is None:
            case = self._case_for_reply(s, msg, partnership)
        if case is None:
            return None
        if case.partnership != partnership.id:
            raise Unprocessable("reply matched a case of another partnership")
        policy = policy_of(case, self.config)
        verdict = dmarc_verdict(msg.headers, trusted_authserv_ids=self.trusted_authserv_ids)
        if not_applied is None and sender_fails_dmarc(verdict):
            not_applied = f"the sender's domain failed DMARC ({verdict.header_from_domain or 'unknown domain'})"
        authority, side = self._authority(case, policy, sender)
        if not_applied is None and token_stage is not None and token_stage != case.stage_index \
                and case.status not in ("awaiting_information",):
            not_applied = "this message answers an earlier stage of the case; please reply to the latest message"
        if not_applied is None and authority is None:
            not_applied = "you are not one of the people the policy asks to act on this case at its current stage"
        if not_applied is not None:
            self._not_applied(s, case, row, policy, sender, not_applied, now)
            return self._finish(s, row, "reply", case, now, f"not applied: {not_applied}")
        parsed = parse_reply(msg)
        info = extract_fields_from_text(parsed.new_text if parsed.command is None else parsed.argument)
        has_info = any(not info.is_empty(name) for name in info.to_json())
        event = Replied(sender=sender, command=parsed.command, argument=parsed.argument,
                        message_id=msg.message_id, authority=authority or "party", side=side,
                        info=info if has_info else None)
        self.workflow.handle(s, case, event, now, row)
        return self._finish(s, row, "reply", case, now, f"applied: {parsed.command or 'note'}")

    @staticmethod
    def _authority(case: Case, policy: Partnership, sender: str) -> tuple[str | None, str | None]:
        if case.raised_by_email and sender == case.raised_by_email.lower():
            return "raiser", "raising"
        notified = False
        for party in case.parties:
            # Once a deputy has taken over, both act for the role: the contact may be back.
            addresses = {str(party["email"]).lower()}
            if party.get("using_deputy") and party.get("deputy_email"):
                addresses.add(str(party["deputy_email"]).lower())
            if sender not in addresses:
                continue
            if not party.get("asked", True):
                notified = True  # told for information (CP Chair/IRO...): may add a NOTE only
                continue
            if str(party.get("party", "")).startswith("partnership."):
                return "decision_maker", "partnership"
            return "party", str(party.get("side") or "")
        if sender in staff_addresses(policy):
            return "staff", "partnership"
        if notified:
            return "notified", "notified"
        return None, None

    def _not_applied(self, s: Session, case: Case, row: InboundMessage, policy: Partnership, sender: str,
                     reason: str, now: datetime) -> None:
        day = policy.calendar.local(now).date().isoformat()
        mails: list[OutgoingMail] = []
        ctx = {"reference": case.reference, "partnership_name": policy.name, "mailbox": policy.primary_mailbox,
               "reason": reason, "sender": sender, "recipient_name": "", "recipient_role": ""}
        # Explain once a day, and only to an address that came from config or the case.
        if sender and sender in known_addresses(case, policy):
            mails.append(OutgoingMail(template="reply_not_applied.txt.j2", to=(sender,),
                                      subject=case_subject(case.reference, "Your reply was not applied"),
                                      context=ctx, dedupe_key=f"{case.reference}:notapplied:{sender}:{day}",
                                      reason="unauthorised reply", auto_submitted="auto-replied"))
        for c in policy.coordinator():
            mails.append(OutgoingMail(template="reply_not_applied_coordinator.txt.j2", to=(c.email,),
                                      subject=case_subject(case.reference, "A reply was not applied"),
                                      context=ctx, dedupe_key=f"{case.reference}:notapplied:{sender}:{day}:{c.email}",
                                      reason="unauthorised reply"))
        step = Step(events=(EventRecord("reply_not_applied", {"from": sender, "reason": reason,
                                                              "message_id": row.message_id}, actor=sender),),
                    mails=tuple(mails))
        self.workflow.apply(s, case, step, policy, now, row)

    @staticmethod
    def _case_by_subject(s: Session, msg: ParsedMessage, partnership: Partnership) -> Case | None:
        ref = find_reference(msg.subject)
        if not ref:
            return None
        return s.exec(select(Case).where(Case.reference == ref.upper(), Case.partnership == partnership.id)).first()

    def _open_case(self, s: Session, row: InboundMessage, msg: ParsedMessage, parse: ReferralParse,
                   partnership: Partnership, now: datetime) -> Case:
        local_year = now.year
        reference = Store.allocate_reference(s, partnership.reference_prefix, local_year)
        refusal = must_not_answer(msg, row.envelope_sender)
        decision: Decision = decide_new_referral(
            parse, partnership, reference=reference, sender=msg.from_address,
            origin_message_id=msg.message_id, may_answer=refusal is None,
        )
        f = parse.fields
        case = Case(
            reference=reference,
            partnership=partnership.id,
            status=decision.status or "open",
            stage=decision.stage if decision.stage is not None else f.stage,
            opened_at=now,
            updated_at=now,
            due_at=decision.due_at,
            raised_by_email=f.raised_by_email or msg.from_address,
            immediate_risk=bool(f.immediate_risk),
            fields=f.to_json(),
            missing=list(parse.missing),
            policy_version=str(getattr(partnership, "policy_version", "") or "") or None,
            policy_snapshot=partnership.model_dump(mode="json"),
            origin_inbound_id=row.id,
            origin_message_id=msg.message_id,
        )
        s.add(case)
        s.flush()
        self._add_events(s, case, row, decision.events, now)
        for mail in decision.mails:
            enqueue(s, mail, renderer=self.renderer, from_address=partnership.primary_mailbox,
                    from_name=partnership.name, case_id=case.id, now=now,
                    message_id_domain=self.message_id_domain)
        # A complete referral goes to the stage's parties now; an urgent one even when incomplete
        # (the missing fields are asked for in parallel).
        if not parse.missing or f.immediate_risk:
            self.workflow.handle(s, case, Opened(), now, row)
        return case
