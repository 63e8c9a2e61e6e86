"""PostgreSQL on 127.0.0.1:5432 (user postgres, trust, database test): one schema per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

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
    url = f"{PG_BASE}?options=-csearch_path%3D{schema}"
    try:
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
