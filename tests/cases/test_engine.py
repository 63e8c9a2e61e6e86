"""cases/engine.py on SQLite: a write transaction holds SQLite's write lock from BEGIN; a read-only one does not."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import event, text

from escalations.cases.engine import READ_ONLY, make_engine


def _other_writer(path: Path) -> sqlite3.Connection:
    """Another process's connection, as it were: no waiting for a lock."""
    return sqlite3.connect(path, timeout=0, isolation_level=None)


def test_a_write_transaction_takes_the_write_lock_at_begin(tmp_path: Path) -> None:
    path = tmp_path / "e.sqlite3"
    engine = make_engine(f"sqlite:///{path}")
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _k, sql, *_: statements.append(sql))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    other = _other_writer(path)
    with engine.begin() as conn:
        conn.execute(text("SELECT 1"))  # nothing written yet: the lock is BEGIN IMMEDIATE's
        assert conn.connection.dbapi_connection.in_transaction  # type: ignore[union-attr]
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        assert other.execute("SELECT count(*) FROM t").fetchone() == (0,)  # readers go on (WAL)
    other.execute("BEGIN IMMEDIATE")  # released at commit
    other.execute("ROLLBACK")
    assert "BEGIN IMMEDIATE" in statements
    engine.dispose()


def test_a_read_only_transaction_leaves_writers_alone(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    other = _other_writer(path)
    with engine.connect().execution_options(**{READ_ONLY: True}) as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 0
        assert conn.connection.dbapi_connection.in_transaction  # type: ignore[union-attr]
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO t VALUES (1)")
        other.execute("COMMIT")
        # the read transaction's snapshot is the one it began with
        assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 0
    engine.dispose()
