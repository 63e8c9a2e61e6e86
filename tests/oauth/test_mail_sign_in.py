"""XOAUTH2 sign-in end to end: the IMAP watcher against Dovecot's oauth2 passdb and the relay sender
against an aiosmtpd XOAUTH2 relay, both checking tokens at the loopback token endpoint."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from escalations.cases.store import Store, make_engine
from escalations.clock import SystemClock
from escalations.mailer.imap_watcher import ImapWatcher
from escalations.mailer.oauth import TokenError
from escalations.mailer.smtp_sender import DeliveryError, SmtpRelaySender
from escalations.settings import AuthSettings, MailboxSettings, RelaySettings
from tests.mailer.test_imap_watcher import referral
from tests.servers import wait_until
from tests.servers.dovecot import DovecotServer
from tests.servers.oauth import OAuthServer, XOAuth2Relay

pytestmark = [pytest.mark.servers, pytest.mark.timeout(90)]

RAW = (b"From: chscp@hackney.gov.uk\r\nTo: jo.bloggs@school.example.org\r\nSubject: [CH-2026-0001] test\r\n"
       b"Message-ID: <oauth-1@escalations.invalid>\r\n\r\nbody\r\n")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(make_engine(f"sqlite:///{tmp_path / 'oauth.sqlite3'}"), SystemClock())
    s.create_schema()
    yield s
    s.engine.dispose()


@pytest.fixture
def oauth_dovecot(dovecot_factory: Callable[..., DovecotServer], oauth_server: OAuthServer) -> DovecotServer:
    return dovecot_factory(oauth2_introspection_url=oauth_server.introspection_url)


def m365_mailbox(dovecot: DovecotServer, oauth_server: OAuthServer, tmp_path: Path, **overrides: Any) -> MailboxSettings:
    app = oauth_server.register_app(mailboxes=(dovecot.user,))
    return dovecot.mailbox_settings(password=None, auth=oauth_server.m365_auth(app, tmp_path), **overrides)


def stored_count(store: Store) -> int:
    return len(store.list_inbound())


# ---- IMAP -------------------------------------------------------------------------------------


def test_imap_login_with_a_client_credentials_token(oauth_dovecot: DovecotServer, oauth_server: OAuthServer,
                                                     store: Store, tmp_path: Path) -> None:
    oauth_dovecot.append_many([referral(i) for i in range(2)])
    watcher = ImapWatcher(m365_mailbox(oauth_dovecot, oauth_server, tmp_path), store)
    assert watcher.catch_up() == 2
    assert watcher.catch_up() == 0
    assert oauth_server.grants() == ["client_credentials"]  # the second sign-in reused the cached token


def test_password_sign_in_still_works_beside_oauth2(oauth_dovecot: DovecotServer, store: Store) -> None:
    """The same server, the password path: the mechanism is chosen by the mailbox's auth block."""
    watcher = ImapWatcher(oauth_dovecot.mailbox_settings(), store)
    oauth_dovecot.append(referral(1))
    assert watcher.catch_up() == 1


def test_token_expiry_during_idle_loses_no_mail(oauth_dovecot: DovecotServer, oauth_server: OAuthServer,
                                                store: Store, tmp_path: Path) -> None:
    oauth_server.token_lifetime = 2
    mailbox = m365_mailbox(oauth_dovecot, oauth_server, tmp_path)
    stop = threading.Event()
    with structlog.testing.capture_logs() as logs:
        thread = threading.Thread(target=ImapWatcher(mailbox, store).run, args=(stop,), daemon=True)
        thread.start()
        try:
            oauth_dovecot.append(referral(1))
            wait_until(lambda: stored_count(store) == 1, what="first message")
            (first_token,) = list(oauth_server.tokens)
            wait_until(lambda: not oauth_server.introspect(first_token)["active"], what="token expiry")

            # The session signed in before expiry stays signed in: IDLE still brings new mail.
            oauth_dovecot.append(referral(2))
            wait_until(lambda: stored_count(store) == 2, what="mail on the expired session")

            # Now the connection drops while the token is expired, and mail arrives in the outage.
            oauth_dovecot.kill()
            oauth_dovecot.deliver(referral(3))
            time.sleep(0.5)
            oauth_dovecot.start()
            wait_until(lambda: stored_count(store) == 3, timeout=20, what="mail after re-authenticating")
        finally:
            stop.set()
            thread.join(5)
    assert oauth_server.grants("ok") == ["client_credentials", "client_credentials"]
    assert not [e for e in logs if e["event"] in ("imap.login_failed", "imap.token_failed")]
    assert sum(e["event"] == "imap.connected" for e in logs) >= 2


def test_revoked_token_is_replaced_after_an_authentication_failure(
        oauth_dovecot: DovecotServer, oauth_server: OAuthServer, store: Store, tmp_path: Path) -> None:
    watcher = ImapWatcher(m365_mailbox(oauth_dovecot, oauth_server, tmp_path), store)
    assert watcher.catch_up() == 0
    oauth_server.revoke_all()  # the cached token looks valid to us, not to the server
    oauth_dovecot.append(referral(1))
    with structlog.testing.capture_logs() as logs:
        assert watcher.catch_up() == 1
    assert [e["event"] for e in logs if e["event"].startswith("imap.token")] == ["imap.token_refused_retrying"]
    assert oauth_server.grants() == ["client_credentials", "client_credentials"]


def test_google_service_account_and_refresh_token_sign_in(oauth_dovecot: DovecotServer, oauth_server: OAuthServer,
                                                          store: Store, tmp_path: Path) -> None:
    oauth_dovecot.append(referral(1))
    google = AuthSettings(method="oauth2_google_service_account",  # type: ignore[arg-type]
                          service_account_file=oauth_server.add_service_account(tmp_path), ca_file=oauth_server.cert)
    assert ImapWatcher(oauth_dovecot.mailbox_settings(name="google", password=None, auth=google), store).catch_up() == 1

    rt_file = tmp_path / "refresh-token"
    rt_file.write_text(oauth_server.issue_refresh_token("desktop-app", oauth_dovecot.user) + "\n")
    refresh = AuthSettings(method="oauth2_refresh_token", client_id="desktop-app",  # type: ignore[arg-type]
                           refresh_token_file=rt_file, token_endpoint=oauth_server.token_url, ca_file=oauth_server.cert)
    watcher = ImapWatcher(oauth_dovecot.mailbox_settings(name="refresh", password=None, auth=refresh), store)
    oauth_dovecot.append(referral(2))
    assert watcher.catch_up() == 1  # referral 1 is recognised as already stored (same content)
    first_rotation = rt_file.read_text()
    oauth_server.revoke_all()
    assert watcher.catch_up() == 0  # refused, refreshed with the rotated token, signed in
    assert rt_file.read_text() != first_rotation
    assert oauth_server.grants() == ["jwt_bearer", "refresh_token", "refresh_token"]


def test_wrong_client_secret_stops_nothing_and_says_why(oauth_dovecot: DovecotServer, oauth_server: OAuthServer,
                                                        store: Store, tmp_path: Path) -> None:
    app = oauth_server.register_app()
    mailbox = oauth_dovecot.mailbox_settings(password=None,
                                             auth=oauth_server.m365_auth(app, tmp_path, secret="stale-secret"))
    with pytest.raises(TokenError) as info:
        ImapWatcher(mailbox, store).catch_up()
    assert info.value.code == "invalid_client_secret"

    stop = threading.Event()
    with structlog.testing.capture_logs() as logs:
        thread = threading.Thread(target=ImapWatcher(mailbox, store).run, args=(stop,), daemon=True)
        thread.start()
        wait_until(lambda: sum(e["event"] == "imap.token_failed" for e in logs) >= 2, what="retries")
        stop.set()
        thread.join(5)
    failed = [e for e in logs if e["event"] == "imap.token_failed"]
    assert failed[0]["code"] == "invalid_client_secret" and failed[0]["account"] == "test"
    assert "stale-secret" not in repr(logs)


# ---- SMTP relay -----------------------------------------------------------------------------------


def relay_settings(relay: XOAuth2Relay, oauth_server: OAuthServer, tmp_path: Path) -> RelaySettings:
    app = oauth_server.register_app(mailboxes=("chscp@hackney.gov.uk",))
    return RelaySettings(host=relay.host, port=relay.port, security="none", username="chscp@hackney.gov.uk",
                         auth=oauth_server.m365_auth(app, tmp_path), timeout_seconds=10)


def test_relay_sends_with_xoauth2(xoauth2_relay: XOAuth2Relay, oauth_server: OAuthServer, tmp_path: Path) -> None:
    sender = SmtpRelaySender(relay_settings(xoauth2_relay, oauth_server, tmp_path))
    sender.send("chscp@hackney.gov.uk", ["jo.bloggs@school.example.org"], RAW, name_hint="t1")
    sender.send("chscp@hackney.gov.uk", ["jo.bloggs@school.example.org"], RAW, name_hint="t2")
    assert [user for user, _ in xoauth2_relay.messages] == ["chscp@hackney.gov.uk"] * 2
    assert oauth_server.grants() == ["client_credentials"]


def test_relay_refusing_a_token_once_gets_a_refreshed_one(xoauth2_relay: XOAuth2Relay, oauth_server: OAuthServer,
                                                          tmp_path: Path) -> None:
    sender = SmtpRelaySender(relay_settings(xoauth2_relay, oauth_server, tmp_path))
    sender.send("chscp@hackney.gov.uk", ["jo.bloggs@school.example.org"], RAW, name_hint="t1")
    oauth_server.revoke_all()
    sender.send("chscp@hackney.gov.uk", ["jo.bloggs@school.example.org"], RAW, name_hint="t2")
    assert xoauth2_relay.auth_attempts == [True, False, True]
    assert len(xoauth2_relay.messages) == 2
    assert oauth_server.grants() == ["client_credentials", "client_credentials"]


def test_relay_that_refuses_every_token_keeps_the_mail_queued(
        xoauth2_relay: XOAuth2Relay, oauth_server: OAuthServer, tmp_path: Path) -> None:
    settings = relay_settings(xoauth2_relay, oauth_server, tmp_path)
    # the app may not send as this mailbox: every token it gets is for another one
    settings = settings.model_copy(update={"username": "someone-else@hackney.gov.uk"})
    with pytest.raises(DeliveryError) as info:
        SmtpRelaySender(settings).send("chscp@hackney.gov.uk", ["jo.bloggs@school.example.org"], RAW, name_hint="t1")
    assert not info.value.permanent and "535" in str(info.value)
    assert xoauth2_relay.auth_attempts == [False, False] and xoauth2_relay.messages == []


def test_relay_without_a_token_is_retried_later(xoauth2_relay: XOAuth2Relay, oauth_server: OAuthServer,
                                               tmp_path: Path) -> None:
    settings = relay_settings(xoauth2_relay, oauth_server, tmp_path)
    settings = settings.model_copy(update={"auth": settings.auth.model_copy(update={"tenant_id": "gone"})})
    with pytest.raises(DeliveryError) as info:
        SmtpRelaySender(settings).send("chscp@hackney.gov.uk", ["jo.bloggs@school.example.org"], RAW, name_hint="t1")
    assert not info.value.permanent and "tenant_not_found" in str(info.value)
