"""Database tables (sqlmodel). Every datetime is stored as UTC and read back timezone-aware."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

from escalations.cases.deflate import deflate, inflate


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes on every backend: stored as UTC, returned with tzinfo=UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        """On SQLite, the text SQLAlchemy's DATETIME stores ("2026-12-04 21:50:00.000000", UTC) made in
        one C call: its own processor fills a ``%`` format from a dict of seven fields, in Python, for
        every datetime bound (a referral binds about twenty). The same string for every aware datetime
        (a test compares the two); elsewhere SQLAlchemy's processing as usual."""
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UTC column")
            # isoformat: the year in four digits, always six of microseconds; [:26] leaves "+00:00" off
            return value.astimezone(UTC).isoformat(" ", "microseconds")[:26]

        return process

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class CompressedBytes(TypeDecorator[bytes]):
    """Bytes stored deflated (a BLOB/bytea like any other; see :mod:`escalations.cases.deflate`):
    mail is mostly text, outgoing mail mostly our own, and small rows keep the database at a few KB
    per case. Lossless: the raw mail read back is byte for byte what was stored."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: bytes | None, dialect: Dialect) -> bytes | None:
        return None if value is None else deflate(value)

    def process_result_value(self, value: bytes | None, dialect: Dialect) -> bytes | None:
        return None if value is None else inflate(value)


def utc_column(*, nullable: bool = False, index: bool = False) -> Any:
    return Field(sa_column=Column(UTCDateTime(), nullable=nullable, index=index))


def nullable_utc(*, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=True, index=index))


def _plain_factory(kind: Callable[[], Any]) -> Callable[[], Any]:
    """``kind`` as a default factory with its signature given. Building a table model asks pydantic,
    for each default factory it calls, whether the factory takes the validated data; for a builtin
    such as ``list`` that is an ``inspect.signature`` parse of its text signature, about 0.2 ms each
    time: most of the cost of making a case row."""
    def make() -> Any:
        return kind()

    make.__signature__ = inspect.Signature()  # type: ignore[attr-defined]
    return make


def json_column(default_factory: Callable[[], Any], *, server_default: str | None = None) -> Any:
    return Field(default_factory=_plain_factory(default_factory),
                 sa_column=Column(JSON, nullable=False, server_default=server_default))


class InboundMessage(SQLModel, table=True):
    """Raw inbound mail, stored before any server is told we have it (ARCHITECTURE: raw first)."""

    __tablename__ = "inbound_message"
    #: The fresh lane's question, "has this sender an older unfinished message?", is one index range.
    __table_args__ = (Index("ix_inbound_message_sender_key_status_id", "sender_key", "status", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(sa_column=Column(String(16), nullable=False))  # imap | smtp | cli
    idempotency_key: str = Field(sa_column=Column(String(512), nullable=False, unique=True))
    #: SHA-256 over Message-ID, From, Date, Subject and body: the same mail seen over IMAP and
    #: SMTP, or after a UIDVALIDITY change, has the same fingerprint even though transit headers differ.
    fingerprint: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    account: str | None = Field(default=None, sa_column=Column(String(255)))
    folder: str | None = Field(default=None, sa_column=Column(String(255)))
    message_id: str | None = Field(default=None, sa_column=Column(String(998), index=True))
    envelope_sender: str | None = Field(default=None, sa_column=Column(String(998)))
    envelope_recipients: list[str] = json_column(list)
    #: The From address, lower-cased, read cheaply at store time (None: none could be read). Mail of one
    #: sender is processed in arrival order; only this orders the claim's fresh lane (see store.py).
    sender_key: str | None = Field(default=None, sa_column=Column(String(320)))
    raw: bytes = Field(sa_column=Column(CompressedBytes(), nullable=False))
    size: int = 0
    received_at: datetime = utc_column(index=True)
    #: pending -> done | quarantined ; claimed_at marks work in progress (stale claims are retaken).
    status: str = Field(default="pending", sa_column=Column(String(16), nullable=False, index=True))
    kind: str | None = Field(default=None, sa_column=Column(String(32)))
    partnership: str | None = Field(default=None, sa_column=Column(String(64)))
    case_id: int | None = Field(default=None, foreign_key="case.id", index=True)
    #: Processing attempts begun (counted at claim); reset by `quarantine replay`.
    attempts: int = 0
    claimed_at: datetime | None = nullable_utc()
    #: The worker (Worker.owner) whose claim claimed_at is.
    claimed_by: str | None = Field(default=None, sa_column=Column(String(255)))
    processed_at: datetime | None = nullable_utc()
    error: str | None = Field(default=None, sa_column=Column(Text))


class InboundAlias(SQLModel, table=True):
    """Further idempotency keys that resolve to an already stored message."""

    __tablename__ = "inbound_alias"

    idempotency_key: str = Field(sa_column=Column(String(512), primary_key=True))
    inbound_id: int = Field(foreign_key="inbound_message.id", index=True)
    created_at: datetime = utc_column()


class ImapCursor(SQLModel, table=True):
    """How far a watcher has stored a folder. An optimisation only: correctness rests on the keys."""

    __tablename__ = "imap_cursor"
    __table_args__ = (UniqueConstraint("account", "folder"),)

    id: int | None = Field(default=None, primary_key=True)
    account: str = Field(sa_column=Column(String(255), nullable=False))
    folder: str = Field(sa_column=Column(String(255), nullable=False))
    uidvalidity: int = 0
    last_uid: int = 0
    updated_at: datetime = utc_column()


class Case(SQLModel, table=True):
    __tablename__ = "case"

    id: int | None = Field(default=None, primary_key=True)
    reference: str = Field(sa_column=Column(String(32), nullable=False, unique=True))
    partnership: str = Field(sa_column=Column(String(64), nullable=False, index=True))
    #: awaiting_information | incomplete | open | needs_routing | resolved | closed | withdrawn
    status: str = Field(sa_column=Column(String(32), nullable=False, index=True))
    #: 1-based stage number as the policy names it (0: the immediate-risk step).
    stage: int | None = None
    #: Index into the route's stages (-1: the immediate-risk step); None before routing.
    stage_index: int | None = None
    route: str | None = Field(default=None, sa_column=Column(String(64)))
    stage_opened_at: datetime | None = nullable_utc()
    raising_agency: str | None = Field(default=None, sa_column=Column(String(64)))
    other_agency: str | None = Field(default=None, sa_column=Column(String(64)))
    #: Who is involved at the current stage: [{email, name, role_name, party, side, deputy_email, ...}].
    parties: list[dict[str, Any]] = json_column(list)
    #: A RESOLVED awaiting the other side's confirmation: {by, side, outcome, at, stage}.
    resolution: dict[str, Any] = json_column(dict)
    closed_at: datetime | None = nullable_utc()
    opened_at: datetime = utc_column()
    updated_at: datetime = utc_column()
    due_at: datetime | None = nullable_utc(index=True)
    raised_by_email: str | None = Field(default=None, sa_column=Column(String(320)))
    immediate_risk: bool = False
    #: The referral as understood (contains personal data: stays in the database, never in logs).
    fields: dict[str, Any] = json_column(dict)
    missing: list[str] = json_column(list)
    #: The fingerprint (Partnership.policy_version) of the policy the case was opened under.
    policy_version: str | None = Field(default=None, sa_column=Column(String(128)))
    #: That policy as it was when the case opened, stored once for all its cases (a later YAML edit
    #: does not move a running case's deadlines).
    policy_version_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("policy_version.id"), nullable=True, index=True))
    #: Addresses from the referral's text that partnership staff confirmed may be mailed.
    confirmed_addresses: list[str] = json_column(list, server_default="[]")  # for rows older than it
    origin_inbound_id: int | None = None  # no FK: inbound_message already references case
    origin_message_id: str | None = Field(default=None, sa_column=Column(String(998)))


class PolicyVersion(SQLModel, table=True):
    """One partnership policy as it was in effect, once per distinct fingerprint: the cases opened
    under it refer to it, and are evaluated against it for as long as they run."""

    __tablename__ = "policy_version"

    id: int | None = Field(default=None, primary_key=True)
    #: Partnership.policy_version: "<policy.version>+<hash of the whole effective config>".
    fingerprint: str = Field(sa_column=Column(String(128), nullable=False, unique=True))
    partnership: str = Field(sa_column=Column(String(64), nullable=False, index=True))
    #: Partnership.model_dump(mode="json").
    policy: dict[str, Any] = json_column(dict)
    created_at: datetime = utc_column()


class CaseEvent(SQLModel, table=True):
    """Append-only history of a case: who, when, what, which message, which clause."""

    __tablename__ = "case_event"

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="case.id", index=True)
    at: datetime = utc_column()
    kind: str = Field(sa_column=Column(String(64), nullable=False))
    actor: str | None = Field(default=None, sa_column=Column(String(320)))
    inbound_id: int | None = Field(default=None, foreign_key="inbound_message.id")
    clause: str | None = Field(default=None, sa_column=Column(String(255)))
    detail: dict[str, Any] = json_column(dict)


class ReferenceCounter(SQLModel, table=True):
    __tablename__ = "reference_counter"
    __table_args__ = (UniqueConstraint("prefix", "year"),)

    id: int | None = Field(default=None, primary_key=True)
    prefix: str = Field(sa_column=Column(String(16), nullable=False))
    year: int
    last: int = 0


class OutboxMessage(SQLModel, table=True):
    """Outgoing mail: a row first, sent after commit (ARCHITECTURE: outbox)."""

    __tablename__ = "outbox"

    id: int | None = Field(default=None, primary_key=True)
    #: Makes every send idempotent: e.g. "ack:<inbound id>". A second insert with it is a no-op.
    dedupe_key: str = Field(sa_column=Column(String(512), nullable=False, unique=True))
    message_id: str = Field(sa_column=Column(String(998), nullable=False, unique=True))
    case_id: int | None = Field(default=None, foreign_key="case.id", index=True)
    template: str = Field(sa_column=Column(String(128), nullable=False))
    sender: str = Field(sa_column=Column(String(320), nullable=False))
    recipients: list[str] = json_column(list)
    subject: str = Field(sa_column=Column(String(998), nullable=False))
    raw: bytes = Field(sa_column=Column(CompressedBytes(), nullable=False))
    #: pending | sending | sent | failed
    status: str = Field(default="pending", sa_column=Column(String(16), nullable=False, index=True))
    #: Lower goes first: case mail before notices (ARCHITECTURE: outbox).
    priority: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    attempts: int = 0
    #: When due; while 'sending', when the claim was taken.
    next_attempt_at: datetime = utc_column(index=True)
    claimed_by: str | None = Field(default=None, sa_column=Column(String(255)))
    created_at: datetime = utc_column()
    sent_at: datetime | None = nullable_utc()
    last_error: str | None = Field(default=None, sa_column=Column(Text))


class Timer(SQLModel, table=True):
    """A persisted deadline: reminders and escalations live here, never only in memory.

    ``key`` is unique per case/stage/kind, so scheduling twice, restarting, or two processes
    ticking together can never produce the same reminder twice.
    """

    __tablename__ = "timer"
    #: The tick's due query: pending (or firing) timers by due time, whatever the number of open cases.
    __table_args__ = (Index("ix_timer_status_due_at", "status", "due_at"),)

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(sa_column=Column(String(255), nullable=False, unique=True))
    case_id: int = Field(foreign_key="case.id", index=True)
    stage: int | None = None
    #: remind_before | remind_due | escalate | routing_reminder | confirm_deadline | info_reminder
    kind: str = Field(sa_column=Column(String(32), nullable=False))
    due_at: datetime = utc_column(index=True)
    #: pending | firing | done | cancelled
    status: str = Field(default="pending", sa_column=Column(String(16), nullable=False))  # see __table_args__
    created_at: datetime = utc_column()
    fired_at: datetime | None = nullable_utc()
    claimed_at: datetime | None = nullable_utc()
    claimed_by: str | None = Field(default=None, sa_column=Column(String(255)))


class Worker(SQLModel, table=True):
    """A process that claims work, and its heartbeat: a claim whose owner is dead (its PID gone on
    this host, or its heartbeat old) is taken back at once instead of after the claim's lease."""

    __tablename__ = "worker"

    #: host:pid:random, as written in the claimed_by columns.
    owner: str = Field(sa_column=Column(String(255), primary_key=True))
    host: str = Field(sa_column=Column(String(255), nullable=False))
    pid: int
    #: When the process started, in clock ticks since boot (/proc/PID/stat): a PID reused later is not it.
    start_ticks: int | None = Field(default=None, sa_column=Column(BigInteger))
    started_at: datetime = utc_column()
    heartbeat_at: datetime = utc_column(index=True)


class CoordinatorNotice(SQLModel, table=True):
    """Something the coordinator should hear about without a mail each time (a reply that was not
    applied, an address to confirm): gathered into one digest an hour per partnership."""

    __tablename__ = "coordinator_notice"

    id: int | None = Field(default=None, primary_key=True)
    partnership: str = Field(sa_column=Column(String(64), nullable=False, index=True))
    case_id: int | None = Field(default=None, foreign_key="case.id", index=True)
    kind: str = Field(sa_column=Column(String(64), nullable=False))
    #: Codes and addresses only: never text from a message.
    detail: dict[str, Any] = json_column(dict)
    created_at: datetime = utc_column()
    digested_at: datetime | None = nullable_utc(index=True)


class MailboxHealth(SQLModel, table=True):
    """The last successful contact with each watched mailbox, and its open incident if any: what
    `escalations status` shows and what the administrators' alerts are decided from."""

    __tablename__ = "mailbox_health"

    #: The mailbox's configured ``name``.
    name: str = Field(sa_column=Column(String(255), primary_key=True))
    #: When watching began (an incident is counted from here if there has never been a contact).
    since_at: datetime = utc_column()
    last_ok_at: datetime | None = nullable_utc()
    #: IDLE (true) or polling (false) at the last contact.
    idle: bool | None = None
    last_error_at: datetime | None = nullable_utc()
    #: A fixed code (the exception's type, login_failed, token:<code>), never a server's text.
    last_error_code: str | None = Field(default=None, sa_column=Column(String(64)))
    #: Set when the "no contact" alert was queued, cleared when the recovery mail is: one of each per
    #: incident, also across restarts.
    down_alerted_at: datetime | None = nullable_utc()
