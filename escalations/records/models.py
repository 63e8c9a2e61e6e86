"""The records package's tables: legal holds on cases, which outgoing mail carried a form, and the
retention purges' audit lines (references and counts only)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, String, Text
from sqlmodel import Field, SQLModel

from escalations.cases.models import json_column, utc_column


class LegalHold(SQLModel, table=True):
    """A case that retention must not delete, whatever its age (litigation, a review, an inquiry)."""

    __tablename__ = "legal_hold"

    case_id: int = Field(foreign_key="case.id", primary_key=True)
    set_at: datetime = utc_column()
    set_by: str = Field(sa_column=Column(String(320), nullable=False))
    #: Why, in staff's words: never read into a log.
    reason: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))


class FormCopy(SQLModel, table=True):
    """A form attached to an outgoing mail (its bytes are in the outbox row's raw message): kept for
    the retention of forms rather than that of ordinary outgoing mail."""

    __tablename__ = "form_copy"

    outbox_id: int = Field(foreign_key="outbox.id", primary_key=True)
    form: str = Field(sa_column=Column(String(64), primary_key=True))
    case_id: int = Field(foreign_key="case.id", index=True)
    created_at: datetime = utc_column()


class PurgeRun(SQLModel, table=True):
    """One run of ``escalations retention purge``: what went, as case references and counts."""

    __tablename__ = "purge_run"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = utc_column()
    dry_run: bool = False
    #: {"case_record": [...refs], "raw_mail": [...], "outgoing_mail": [...], "forms": [...]}
    references: dict[str, Any] = json_column(dict)
    #: {"cases": n, "raw_mail": n, "outgoing_mail": n, "forms": n, "events": n}
    counts: dict[str, Any] = json_column(dict)
