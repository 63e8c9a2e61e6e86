"""PostgreSQL on 127.0.0.1:5432 (user postgres, trust, database test): one schema per test."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.servers import unavailable

PG_BASE = os.environ.get("ESCALATIONS_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        admin = sa.create_engine(PG_BASE, connect_args={"connect_timeout": 5})
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        unavailable(f"PostgreSQL not reachable at {PG_BASE}: {type(exc).__name__}")
    # application_name: the test's own connections can be told from other tests' (see _drop)
    url = f"{PG_BASE}?options=-csearch_path%3D{schema}&application_name={schema}"
    try:
        yield url
    finally:
        _drop(admin, schema)
        admin.dispose()


def _drop(admin: Any, schema: str) -> None:
    """DROP SCHEMA ... CASCADE once the test's connections are gone. An app the test left running
    (its fixture torn down after this one) can still be in a query on the schema's tables, and its next
    lock and the DROP's could deadlock: its connections are ended first, and a deadlock is retried."""
    import sqlalchemy as sa

    for attempt in range(5):
        try:
            with admin.begin() as conn:
                conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                     "WHERE application_name = :schema AND pid <> pg_backend_pid()"),
                             {"schema": schema})
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            return
        except sa.exc.OperationalError:
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
