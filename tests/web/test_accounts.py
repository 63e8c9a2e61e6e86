"""Accounts without a browser: lockout windows, session expiry, one-time links, OIDC claim mapping,
argon2 and TOTP, on a real database (SQLite and PostgreSQL) with a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pyotp
import pytest
from sqlalchemy.engine import Engine

from escalations.cases import schema
from escalations.cases.store import make_engine
from escalations.clock import FakeClock
from escalations.settings import OidcSettings, WebSettings
from escalations.web.accounts import Accounts, Identity
from escalations.web.oidc import map_claims
from escalations.web.passwords import hash_password, totp_step, verify_password
from escalations.web.roles import Role

T0 = datetime(2026, 11, 3, 10, 0, tzinfo=UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    e = make_engine(database_url)
    schema.upgrade(e)
    yield e
    e.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def accounts(engine: Engine, clock: FakeClock, **web: object) -> Accounts:
    return Accounts(engine, clock, WebSettings(**web), service_secret=b"test key")  # type: ignore[arg-type]


def test_lockout_after_failures_within_the_window_and_for_its_length(engine: Engine, clock: FakeClock) -> None:
    a = accounts(engine, clock, lockout_failures=3, lockout_window_minutes=15, lockout_minutes=15)
    for _ in range(2):
        a.record_attempt("Ann@Council.example", "10.0.0.1", ok=False, kind="password")
        clock.advance(timedelta(minutes=1))
    assert a.locked_until("ann@council.example") is None
    a.record_attempt("ann@council.example", "10.0.0.1", ok=False, kind="password")
    until = a.locked_until("ann@council.example")
    assert until == clock.now() + timedelta(minutes=15)
    clock.advance(timedelta(minutes=15, seconds=1))
    assert a.locked_until("ann@council.example") is None
    assert a.locked_until("bob@council.example") is None  # one address's failures lock only it


def test_failures_spread_wider_than_the_window_do_not_lock(engine: Engine, clock: FakeClock) -> None:
    a = accounts(engine, clock, lockout_failures=3, lockout_window_minutes=15)
    for _ in range(3):
        a.record_attempt("ann@council.example", None, ok=False, kind="password")
        clock.advance(timedelta(minutes=10))
    assert a.locked_until("ann@council.example") is None


def test_a_finished_sign_in_clears_earlier_failures(engine: Engine, clock: FakeClock) -> None:
    a = accounts(engine, clock, lockout_failures=3)
    for _ in range(2):
        a.record_attempt("ann@council.example", None, ok=False, kind="totp")
    a.record_attempt("ann@council.example", None, ok=True, kind="totp")
    a.record_attempt("ann@council.example", None, ok=False, kind="password")
    assert a.locked_until("ann@council.example") is None


def test_rate_limit_per_client_address(engine: Engine, clock: FakeClock) -> None:
    a = accounts(engine, clock, max_failures_per_ip=4)
    for i in range(4):
        a.record_attempt(f"user{i}@council.example", "10.0.0.9", ok=False, kind="password")
    assert a.ip_refused("10.0.0.9")
    assert not a.ip_refused("10.0.0.8")


def test_sessions_expire_idle_and_absolute(engine: Engine, clock: FakeClock) -> None:
    a = accounts(engine, clock, session_idle_minutes=30, session_absolute_hours=2)
    who = Identity("ann@council.example", Role.VIEWER, frozenset({"city-and-hackney"}))
    token = a.create_session(who, method="local", ip=None)
    other = a.create_session(who, method="local", ip=None)
    assert token != other  # every sign-in a new random id
    clock.advance(timedelta(minutes=29))
    assert a.load_session(token) is not None  # seen: the idle limit starts again
    clock.advance(timedelta(minutes=29))
    assert a.load_session(token) is not None
    assert a.load_session(other) is None  # 58 minutes idle
    for _ in range(3):
        clock.advance(timedelta(minutes=25))
        a.load_session(token)
    assert a.load_session(token) is None  # past two hours however active
    assert a.load_session("not-a-session") is None


def test_disabling_ends_sessions(engine: Engine, clock: FakeClock) -> None:
    a = accounts(engine, clock)
    user = a.add_user("ann@council.example", Role.ADMIN, ["city-and-hackney"], password_hash=hash_password("x" * 12))
    token = a.create_session(Identity(user.email, Role.ADMIN, frozenset(user.partnerships), user_id=user.id),
                             method="local", ip=None)
    assert a.load_session(token) is not None
    assert a.disable_user("ANN@council.example")
    assert a.load_session(token) is None


def test_sign_in_link_works_once_and_expires(engine: Engine, clock: FakeClock) -> None:
    a = accounts(engine, clock, sign_in_link_minutes=60)
    with a._session() as s:
        once = a.create_link(s, "Pat@Agency.example", "CH-2026-0001")
        late = a.create_link(s, "pat@agency.example", "CH-2026-0001")
        s.commit()
    link = a.use_link(once)
    assert link is not None and (link.email, link.case_ref) == ("pat@agency.example", "CH-2026-0001")
    assert a.use_link(once) is None
    clock.advance(timedelta(minutes=61))
    assert not a.link_usable(late)
    assert a.use_link(late) is None


def test_totp_code_is_good_once(engine: Engine, clock: FakeClock) -> None:
    a = accounts(engine, clock)
    user = a.add_user("ann@council.example", Role.VIEWER, ["city-and-hackney"])
    assert user.id is not None
    secret = pyotp.random_base32()
    step = totp_step(secret, pyotp.TOTP(secret).now())
    assert step is not None
    assert a.accept_totp_step(user.id, step, confirm=True)
    assert not a.accept_totp_step(user.id, step)  # replayed
    assert totp_step(secret, "000000") is None or totp_step(secret, "000000") != step
    assert totp_step(secret, "12345") is None


def test_passwords_are_argon2_hashes() -> None:
    h = hash_password("correct horse battery")
    assert h.startswith("$argon2id$")
    assert verify_password(h, "correct horse battery")
    assert not verify_password(h, "correct horse batterx")
    assert not verify_password(None, "anything")
    with pytest.raises(ValueError, match="12 characters"):
        hash_password("short")


def test_oidc_claims_map_to_the_highest_role_and_partnerships(engine: Engine, clock: FakeClock) -> None:
    a = accounts(engine, clock)
    o = OidcSettings(issuer="https://login.example", client_id="x",
                     role_claims={"Esc.Viewer": Role.VIEWER, "g-coord": Role.COORDINATOR},
                     partnership_claims={"g-hav": "havering"}, partnerships=["city-and-hackney"])
    mapped = map_claims({"email": "Ann@Council.example", "roles": ["Esc.Viewer"], "groups": ["g-coord", "g-hav"]},
                        o, a)
    assert mapped.identity is not None
    assert mapped.identity.role is Role.COORDINATOR
    assert mapped.identity.partnerships == {"city-and-hackney", "havering"}
    assert map_claims({"email": "bob@council.example", "roles": ["Other"]}, o, a).refusal == "no_role"
    assert map_claims({"email": "bob@council.example", "email_verified": False, "roles": ["Esc.Viewer"]},
                      o, a).refusal == "email"


def test_oidc_role_given_by_an_administrator(engine: Engine, clock: FakeClock) -> None:
    a = accounts(engine, clock)
    o = OidcSettings(issuer="https://accounts.google.com", client_id="x", allowed_domains=["council.example"])
    a.add_user("carol@council.example", Role.ADMIN, ["sutton"])
    mapped = map_claims({"email": "carol@council.example", "email_verified": True}, o, a)
    assert mapped.identity is not None and mapped.identity.role is Role.ADMIN
    assert mapped.identity.partnerships == {"sutton"}
    assert map_claims({"email": "carol@elsewhere.example"}, o, a).refusal == "email"
    a.disable_user("carol@council.example")
    assert map_claims({"email": "carol@council.example"}, o, a).refusal == "disabled"


def test_housekeeping_deletes_what_has_expired_only(engine: Engine, clock: FakeClock) -> None:
    a = accounts(engine, clock, session_idle_minutes=30, sign_in_link_minutes=60)
    who = Identity("ann@council.example", Role.VIEWER, frozenset({"sutton"}))
    old = a.create_session(who, method="local", ip=None)
    a.record_attempt("ann@council.example", None, ok=False, kind="password")
    with a._session() as s:
        a.create_link(s, "pat@agency.example", "SUT-2026-0001")
        s.commit()
    a.audit(user_email="ann@council.example", role="viewer", action="sign_in")
    clock.advance(timedelta(days=31))
    live = a.create_session(who, method="local", ip=None)
    assert a.housekeeping() == {"sessions": 1, "links": 1, "attempts": 1}
    assert a.load_session(live) is not None and a.load_session(old) is None
    assert len(a.audit_rows()) == 1  # the audit trail is kept


def test_totp_secrets_are_sealed_in_the_database(engine: Engine, clock: FakeClock) -> None:
    a = accounts(engine, clock)
    user = a.add_user("ann@council.example", Role.VIEWER, ["sutton"])
    other = a.add_user("bob@council.example", Role.VIEWER, ["sutton"])
    assert user.id is not None and other.id is not None
    secret = pyotp.random_base32()
    a.set_pending_totp(user.id, secret)
    row = a.user("ann@council.example")
    assert row is not None and row.totp_secret is not None and secret not in row.totp_secret
    assert a.totp_secret(row) == secret
    bob = a.user("bob@council.example")
    assert bob is not None
    bob.totp_secret = row.totp_secret  # copied to another account's row: does not open
    assert a.totp_secret(bob) is None
    elsewhere = Accounts(engine, clock, WebSettings(), service_secret=b"another key")
    assert elsewhere.totp_secret(row) is None
