"""Alembic's environment. Run only through escalations.cases.schema, which passes the connection
(already in a transaction, holding the migration lock) in ``config.attributes["connection"]``."""

from __future__ import annotations

from typing import Any, Literal

import sqlalchemy as sa
from alembic import context
from sqlmodel import SQLModel

import escalations.cases.models
import escalations.records.models  # noqa: F401  (and the records package's)
from escalations.web import models as _web_models  # noqa: F401  (the web interface's tables)


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Write a column's database type, not our Python wrapper of it: a revision must keep working
    however escalations.cases.models changes later."""
    if type_ == "type" and isinstance(obj, sa.types.TypeDecorator):
        return f"sa.{obj.impl!r}"
    return False


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("migrations run through `escalations db upgrade`, which supplies the connection")
context.configure(connection=connection, target_metadata=SQLModel.metadata, render_as_batch=True,
                  render_item=render_item, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
