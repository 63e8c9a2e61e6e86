"""Raw inbound mail: its identity (keys, fingerprints), storing it once, IMAP cursors, quarantine,
and each mailbox's health. Mixed into :class:`~escalations.cases.store.Store`."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from email.utils import getaddresses
from typing import Protocol

import structlog
from sqlalchemy import bindparam, func, insert, literal, union_all
from sqlalchemy import select as core_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from escalations.cases.engine import in_chunks
from escalations.cases.models import ImapCursor, InboundAlias, InboundMessage, MailboxHealth
from escalations.cases.prepared import Prepared
from escalations.cases.repository import SessionSource
from escalations.cases.wakeups import INBOUND, announce

log = structlog.get_logger("escalations.store")

_HEADER_SPLIT = re.compile(rb"\r?\n\r?\n")
_FINGERPRINT_HEADERS = (b"message-id", b"from", b"date", b"subject")
#: The sender_key column's width (RFC 5321: a path is at most 256 octets; room to spare).
_SENDER_KEY_MAX = 320
#: From values longer than this in all (a display name and an address are far shorter) give no key.
_FROM_MAX = 4096


def split_raw(raw: bytes) -> tuple[bytes, bytes]:
    parts = _HEADER_SPLIT.split(raw, maxsplit=1)
    return (parts[0], parts[1] if len(parts) > 1 else b"")


def _header_values(header_block: bytes) -> dict[bytes, bytes]:
    # the pieces of each value are joined once at the end: added to a bytes value line by line, a
    # header folded a few hundred thousand times took seconds (the time grew with its square)
    found: dict[bytes, list[bytes]] = {}
    current: bytes | None = None
    for line in header_block.splitlines():
        if line[:1] in (b" ", b"\t") and current is not None:
            found[current].append(line.strip())
            continue
        name, sep, value = line.partition(b":")
        current = None
        if sep:
            key = name.strip().lower()
            if key in _FINGERPRINT_HEADERS and key not in found:
                found[key] = [value.strip()]
                current = key
    return {key: b" ".join(parts) for key, parts in found.items()}


def fingerprint(raw: bytes) -> str:
    """Identity of a message independent of transit headers and line-ending changes."""
    header_block, body = split_raw(raw)
    values = _header_values(header_block)
    h = hashlib.sha256()
    if not values:  # not a recognisable message: only its exact bytes identify it
        h.update(b"raw=" + raw)
    for name in _FINGERPRINT_HEADERS:
        h.update(name + b"=" + b" ".join(values.get(name, b"").split()) + b"\n")
    h.update(b"\n".join(line.rstrip() for line in body.replace(b"\r\n", b"\n").split(b"\n")).rstrip())
    return h.hexdigest()


def _from_values(header_block: bytes) -> list[bytes] | None:
    """Every From header's value, unfolded; None when they are longer than :data:`_FROM_MAX` in all.
    A line scan of the header block, not a header parser: it runs in the watcher's thread for every
    message stored, and a hostile megabyte-long From took a parser seconds."""
    values: list[bytearray] = []
    size = 0
    in_from = False
    for line in header_block.splitlines():
        if line[:1] in (b" ", b"\t"):
            if in_from:
                size += len(line)
                if size > _FROM_MAX:
                    return None
                values[-1] += b" " + line.strip()
            continue
        name, sep, value = line.partition(b":")
        in_from = bool(sep) and name.strip().lower() == b"from"
        if in_from:
            size += len(value)
            if size > _FROM_MAX:
                return None
            values.append(bytearray(value.strip()))
    return [bytes(v) for v in values]


def sender_key_of(raw: bytes) -> str | None:
    """The From address, lower-cased, from the header block alone (the claim's fresh lane orders mail
    of one sender by it). None when there is not exactly one readable address: such mail never jumps
    the queue."""
    values = _from_values(split_raw(raw)[0])
    if values is None or len(values) != 1:
        return None
    try:
        found = getaddresses([values[0].decode("ascii", "surrogateescape")])
    except (ValueError, TypeError, LookupError):
        return None
    if len(found) != 1:
        return None
    address = found[0][1].strip().lower()
    local, at, domain = address.rpartition("@")
    if not (local and at and domain) or len(address) > _SENDER_KEY_MAX or not address.isprintable() \
            or " " in address or not _encodable(address):
        return None
    return address


def _encodable(text: str) -> bool:
    """No lone surrogates (8-bit header bytes read as ASCII): the database stores UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def message_id_of(raw: bytes) -> str | None:
    mid = _header_values(split_raw(raw)[0]).get(b"message-id")
    if not mid:
        return None
    return mid.decode("ascii", "replace").strip().strip("<>").strip() or None


def content_key(raw: bytes) -> str:
    """Idempotency key for mail that did not come from IMAP: SHA-256 of the bytes plus Message-ID."""
    return f"sha256:{hashlib.sha256(raw).hexdigest()}|mid:{message_id_of(raw) or '-'}"


def imap_key(account: str, folder: str, uidvalidity: int, uid: int) -> str:
    return f"imap:{account}:{folder}:{uidvalidity}:{uid}"


@dataclass(frozen=True)
class StoredInbound:
    id: int
    created: bool


#: The fallback lease: a claim this old is free whoever holds it (an owner on another host that


class InboundArrival(Protocol):
    """What :meth:`InboundRecords.store_inbound_many` needs of each message (an intake Arrival)."""

    @property
    def raw(self) -> bytes: ...
    @property
    def source(self) -> str: ...
    @property
    def idempotency_key(self) -> str: ...
    @property
    def received_at(self) -> datetime | None: ...
    @property
    def account(self) -> str | None: ...
    @property
    def folder(self) -> str | None: ...
    @property
    def envelope_sender(self) -> str | None: ...
    @property
    def envelope_recipients(self) -> Sequence[str]: ...
    @property
    def imap_cursor(self) -> tuple[int, int] | None: ...


@dataclass(frozen=True)
class _Arrival:
    """store_inbound's arguments as an InboundArrival."""

    raw: bytes
    source: str
    idempotency_key: str
    received_at: datetime | None
    account: str | None
    folder: str | None
    envelope_sender: str | None
    envelope_recipients: Sequence[str]
    imap_cursor: tuple[int, int] | None


@dataclass
class InboundRow:
    """A stored message as the processor reads it (see :meth:`InboundRecords.inbound_for_processing`)."""

    id: int
    status: str
    kind: str | None
    raw: bytes
    received_at: datetime | None
    envelope_recipients: list[str]
    envelope_sender: str | None
    source: str
    account: str | None
    #: Set by the processor once it knows the partnership (written when the message is finished).
    partnership: str | None


_FOR_PROCESSING = Prepared(core_select(*(col(getattr(InboundMessage, f.name)) for f in fields(InboundRow)))
                           .where(col(InboundMessage.id) == bindparam("wanted")))


class InboundRecords(SessionSource):
    def store_inbound(
        self,
        raw: bytes,
        *,
        source: str,
        idempotency_key: str | None = None,
        account: str | None = None,
        folder: str | None = None,
        envelope_sender: str | None = None,
        envelope_recipients: Sequence[str] = (),
        received_at: datetime | None = None,
        imap_cursor: tuple[int, int] | None = None,
    ) -> StoredInbound:
        """Commit the raw bytes once. Returns the existing row for a key or fingerprint seen before.

        ``imap_cursor=(uidvalidity, uid)`` advances the folder's cursor in the same transaction.
        """
        arrival = _Arrival(raw, source, idempotency_key or content_key(raw), received_at, account, folder,
                           envelope_sender, tuple(envelope_recipients), imap_cursor)
        for _attempt in range(5):
            try:
                with self.session() as s:
                    stored = self._store_in(s, arrival)
                    if imap_cursor and account and folder:
                        self._advance_cursor(s, account, folder, *imap_cursor)
                    if stored.created:
                        announce(s.connection(), INBOUND)
                    s.commit()
                    return stored
            except IntegrityError:
                continue  # a concurrent writer stored it first: look again
        raise RuntimeError("could not store inbound message after concurrent conflicts")

    def store_inbound_many(self, arrivals: Sequence[InboundArrival]) -> list[StoredInbound]:
        """Commit several messages in one transaction (an IMAP fetch batch), each as
        :meth:`store_inbound` would, in order; an IMAP cursor advances to the last one's. If a
        concurrent writer stored one of them first, the batch is stored one by one instead."""
        if not arrivals:
            return []
        try:
            with self.session() as s:
                results = [self._store_in(s, a) for a in arrivals]
                cursors = [(a.account, a.folder, *a.imap_cursor) for a in arrivals
                           if a.imap_cursor and a.account and a.folder]
                if cursors:
                    self._advance_cursor(s, *cursors[-1])
                if any(r.created for r in results):
                    announce(s.connection(), INBOUND)
                s.commit()
                return results
        except IntegrityError:
            return [self.store_inbound(a.raw, source=a.source, idempotency_key=a.idempotency_key,
                                       account=a.account, folder=a.folder, envelope_sender=a.envelope_sender,
                                       envelope_recipients=a.envelope_recipients, received_at=a.received_at,
                                       imap_cursor=a.imap_cursor) for a in arrivals]

    def _store_in(self, s: Session, a: InboundArrival) -> StoredInbound:
        """One message in the caller's transaction: the row stored under its key or fingerprint before
        (its key made an alias of it), or a new row, inserted at once so the next lookup in it sees it."""
        key = a.idempotency_key or content_key(a.raw)
        fp = fingerprint(a.raw)
        existing = self._find_inbound(s, key, fp)
        if existing is not None:
            existing_id, existing_key = existing
            if existing_key != key and s.get(InboundAlias, key) is None:
                s.add(InboundAlias(idempotency_key=key, inbound_id=existing_id, created_at=self.clock.now()))
                s.flush()
            return StoredInbound(existing_id, False)
        new_id = _INSERT_INBOUND.execute(s.connection(), {
            "source": a.source, "idempotency_key": key, "fingerprint": fp, "account": a.account, "folder": a.folder,
            "message_id": message_id_of(a.raw), "envelope_sender": a.envelope_sender,
            "envelope_recipients": list(a.envelope_recipients), "sender_key": sender_key_of(a.raw), "raw": a.raw,
            "size": len(a.raw), "received_at": a.received_at or self.clock.now(), "status": "pending", "kind": None,
            "partnership": None, "case_id": None, "attempts": 0, "claimed_at": None, "claimed_by": None,
            "processed_at": None, "error": None}).fetchone()[0]
        return StoredInbound(int(new_id), True)

    @staticmethod
    def _find_inbound(s: Session, key: str, fp: str) -> tuple[int, str] | None:
        """(id, idempotency key) of the row stored under this key, an alias of it, or this fingerprint:
        one query, ids and keys only (never the raw bytes)."""
        found = _FIND_INBOUND.all(s.connection(), {"key": key, "fp": fp})
        if not found:
            return None
        best = min(found)
        return int(best[1]), str(best[2])

    def has_inbound_key(self, key: str) -> bool:
        with self.reading() as s:
            if s.exec(select(InboundMessage.id).where(InboundMessage.idempotency_key == key)).first():
                return True
            return s.get(InboundAlias, key) is not None

    def stored_imap_uids(self, account: str, folder: str, uidvalidity: int, uids: Sequence[int]) -> set[int]:
        """Which of these UIDs of a folder are stored (under their own key or as an alias)."""
        found: set[int] = set()
        with self.reading() as s:
            for chunk in in_chunks(uids):
                keys = {imap_key(account, folder, uidvalidity, u): u for u in chunk}
                hits = [*s.exec(select(InboundMessage.idempotency_key)
                                .where(col(InboundMessage.idempotency_key).in_(list(keys)))).all(),
                        *s.exec(select(InboundAlias.idempotency_key)
                                .where(col(InboundAlias.idempotency_key).in_(list(keys)))).all()]
                found.update(keys[k] for k in hits)
        return found

    def _advance_cursor(self, s: Session, account: str, folder: str, uidvalidity: int, uid: int) -> None:
        cur = s.exec(select(ImapCursor).where(ImapCursor.account == account, ImapCursor.folder == folder)).first()
        now = self.clock.now()
        if cur is None:
            s.add(ImapCursor(account=account, folder=folder, uidvalidity=uidvalidity, last_uid=uid, updated_at=now))
        elif cur.uidvalidity != uidvalidity:
            cur.uidvalidity, cur.last_uid, cur.updated_at = uidvalidity, uid, now
        elif uid > cur.last_uid:
            cur.last_uid, cur.updated_at = uid, now

    def imap_cursor(self, account: str, folder: str) -> tuple[int, int] | None:
        with self.reading() as s:
            cur = s.exec(
                select(ImapCursor).where(ImapCursor.account == account, ImapCursor.folder == folder)
            ).first()
            return (cur.uidvalidity, cur.last_uid) if cur else None

    def reset_imap_cursor(self, account: str, folder: str, uidvalidity: int) -> None:
        """UIDVALIDITY changed: start the folder again; fingerprints stop re-stored mail duplicating."""
        with self.session() as s:
            cur = s.exec(
                select(ImapCursor).where(ImapCursor.account == account, ImapCursor.folder == folder)
            ).first()
            if cur is None:
                s.add(ImapCursor(account=account, folder=folder, uidvalidity=uidvalidity, last_uid=0,
                                 updated_at=self.clock.now()))
            else:
                cur.uidvalidity, cur.last_uid, cur.updated_at = uidvalidity, 0, self.clock.now()
            s.commit()

    def record_mailbox_contact(self, name: str, *, idle: bool | None = None, error_code: str | None = None) -> None:
        """A watcher's successful contact (``error_code`` None) or failure, for status and alerts."""
        now = self.lease_clock.now()  # about the process and the server, not a case's deadlines
        for _ in range(2):  # a concurrent first insert: update the row it made
            with self.session() as s:
                row = s.get(MailboxHealth, name)
                if row is None:
                    row = MailboxHealth(name=name, since_at=now)
                if error_code is None:
                    row.last_ok_at, row.idle = now, idle
                else:
                    row.last_error_at, row.last_error_code = now, error_code[:64]
                s.add(row)
                try:
                    s.commit()
                    return
                except IntegrityError:
                    s.rollback()

    def pending_inbound_count(self) -> int:
        with self.reading() as s:
            return s.exec(
                select(func.count()).select_from(InboundMessage).where(InboundMessage.status == "pending")
            ).one()

    def quarantine(self, inbound_id: int, error: str) -> None:
        with self.session() as s:
            row = s.get(InboundMessage, inbound_id)
            if row is None:
                return
            row.status, row.error, row.claimed_at, row.claimed_by = "quarantined", error, None, None
            row.processed_at = self.clock.now()
            s.commit()

    def list_inbound(self, status: str | None = None) -> list[InboundMessage]:
        with self.reading() as s:
            q = select(InboundMessage).order_by(col(InboundMessage.id))
            if status:
                q = q.where(InboundMessage.status == status)
            return list(s.exec(q).all())

    def get_inbound(self, inbound_id: int) -> InboundMessage | None:
        with self.reading() as s:
            return s.get(InboundMessage, inbound_id)

    def inbound_for_processing(self, inbound_id: int) -> InboundRow | None:
        """What the processor reads of a stored message, in one Core query (no ORM session or object:
        they cost several times the query)."""
        with self.reading_connection() as conn:
            found = _FOR_PROCESSING.first(conn, {"wanted": inbound_id})
        return InboundRow(*found) if found is not None else None


#: A new inbound row (every column given, as the ORM's insert gave them), its id back.
_INSERT_INBOUND_COLUMNS = tuple(c.key for c in InboundMessage.__table__.columns if c.key != "id")  # type: ignore[attr-defined]
_INSERT_INBOUND = Prepared(insert(InboundMessage).returning(col(InboundMessage.id)), _INSERT_INBOUND_COLUMNS)

#: Key first, then an alias of the key, then the fingerprint (rank 0, 1, 2); prepared once (run through
#: Connection.execute it cost more than the INSERT after it).
_FIND_INBOUND = Prepared(union_all(
    core_select(literal(0).label("rank"), col(InboundMessage.id), col(InboundMessage.idempotency_key))
    .where(col(InboundMessage.idempotency_key) == bindparam("key")),
    core_select(literal(1), col(InboundMessage.id), col(InboundMessage.idempotency_key))
    .join(InboundAlias, col(InboundAlias.inbound_id) == col(InboundMessage.id))
    .where(col(InboundAlias.idempotency_key) == bindparam("key")),
    core_select(literal(2), col(InboundMessage.id), col(InboundMessage.idempotency_key))
    .where(col(InboundMessage.fingerprint) == bindparam("fp")),
))
