"""PostgreSQL pool: a connection idle in the pool for a while is pinged before use and replaced when its
server side is gone; one given back just now is used without a round trip."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from escalations.cases import engine as engine_module
from escalations.cases.store import make_engine

pytestmark = pytest.mark.servers


def _backend_pid(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(url: str, pid: int) -> None:
    admin = sa.create_engine(url)
    try:
        with admin.begin() as conn:
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
    finally:
        admin.dispose()


def _counting_pings(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    pings: list[int] = []
    real = engine.dialect.do_ping

    def do_ping(dbapi_conn: Any) -> bool:
        pings.append(1)
        return real(dbapi_conn)

    monkeypatch.setattr(engine.dialect, "do_ping", do_ping)
    return pings


def test_a_connection_back_in_the_pool_just_now_is_used_without_a_ping(postgres_url: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(postgres_url)
    try:
        pings = _counting_pings(engine, monkeypatch)
        pids = {_backend_pid(engine) for _ in range(20)}
        assert len(pids) == 1 and pings == []   # one pooled connection, twenty checkouts, no round trip more
    finally:
        engine.dispose()


def test_an_idle_connection_whose_server_side_is_gone_is_replaced_before_use(postgres_url: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_SECONDS", 0.0)   # every connection counts as idle
    engine = make_engine(postgres_url)
    try:
        pings = _counting_pings(engine, monkeypatch)
        first = _backend_pid(engine)
        _terminate(postgres_url, first)   # a server restart or an idle timeout, seen from the pool
        second = _backend_pid(engine)     # no error: the ping failed and the pool connected again
        assert second != first and len(pings) >= 1
    finally:
        engine.dispose()


def test_without_the_ping_a_dead_connection_fails_once_and_the_pool_then_starts_again(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the two seconds give up: the server gone just after a connection's last use costs that
    statement (as the server going away mid-work does); the next one gets a new connection."""
    monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_SECONDS", 3600.0)
    engine = make_engine(postgres_url)
    try:
        first = _backend_pid(engine)
        _terminate(postgres_url, first)
        with pytest.raises(sa.exc.OperationalError):
            _backend_pid(engine)
        assert _backend_pid(engine) != first
    finally:
        engine.dispose()
