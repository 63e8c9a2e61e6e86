"""`escalations mailbox test NAME` as an administrator runs it (a subprocess), against Dovecot's oauth2
passdb and the loopback token endpoint: what it shows when sign-in works, and the words when it does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from escalations.cases import schema
from escalations.cases.store import Store, make_engine
from escalations.clock import SystemClock
from escalations.mailer.imap_watcher import ImapWatcher
from escalations.settings import MailboxSettings
from tests.conftest import CONFIG_DIR, REPO
from tests.mailer.test_imap_watcher import referral
from tests.servers import free_port
from tests.servers.dovecot import DovecotServer
from tests.servers.oauth import OAuthServer

pytestmark = [pytest.mark.servers, pytest.mark.timeout(120)]


@pytest.fixture
def oauth_dovecot(dovecot_factory: Callable[..., DovecotServer], oauth_server: OAuthServer) -> DovecotServer:
    return dovecot_factory(oauth2_introspection_url=oauth_server.introspection_url)


def run_cli(tmp_path: Path, mailbox: MailboxSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESCALATIONS_")}
    env.update({"ESCALATIONS_DATA_DIR": str(tmp_path / "var"), "ESCALATIONS_CONFIG": str(CONFIG_DIR),
                "ESCALATIONS_MAILBOXES": json.dumps([mailbox.model_dump(mode="json")])})
    return subprocess.run([sys.executable, "-m", "escalations", "mailbox", "test", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def m365(dovecot: DovecotServer, oauth_server: OAuthServer, tmp_path: Path, *, secret: str | None = None,
         app_kwargs: dict[str, Any] | None = None, **overrides: Any) -> MailboxSettings:
    app = oauth_server.register_app(**(app_kwargs or {}))
    auth = oauth_server.m365_auth(app, tmp_path, secret=secret)
    return dovecot.mailbox_settings(name="hackney", password=None, auth=auth, **overrides)


def assert_explained(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_signed_in_shows_folder_idle_and_backlog(oauth_dovecot: DovecotServer, oauth_server: OAuthServer,
                                                 tmp_path: Path) -> None:
    oauth_dovecot.append_many([referral(i) for i in range(3)])
    mailbox = m365(oauth_dovecot, oauth_server, tmp_path)
    result = run_cli(tmp_path, mailbox, "hackney")
    assert result.returncode == 0, result.stderr
    assert "OK hackney: signed in" in result.stdout and "oauth2_m365" in result.stdout
    assert "folder INBOX: 3 message(s), 3 to fetch; IDLE supported" in result.stdout
    assert "token valid until" in result.stdout
    assert "app-secret-1" not in result.stdout + result.stderr
    assert not (tmp_path / "var" / "escalations.sqlite3").exists()  # a check creates no database

    # Once the watcher has stored them, only newer mail is still to fetch.
    (tmp_path / "var").mkdir(exist_ok=True)
    engine = make_engine(f"sqlite:///{tmp_path / 'var' / 'escalations.sqlite3'}")
    schema.upgrade(engine)
    store = Store(engine, SystemClock())
    assert ImapWatcher(mailbox, store).catch_up() == 3
    store.engine.dispose()
    oauth_dovecot.append(referral(9))
    data = json.loads(run_cli(tmp_path, mailbox, "hackney", "--json").stdout)
    assert (data["ok"], data["messages"], data["to_fetch"], data["idle"]) == (True, 4, 1, True)


def test_wrong_client_secret(oauth_dovecot: DovecotServer, oauth_server: OAuthServer, tmp_path: Path) -> None:
    result = run_cli(tmp_path, m365(oauth_dovecot, oauth_server, tmp_path, secret="old-secret"), "hackney")
    assert_explained(result, "hackney:", "client secret was refused", "AADSTS7000215")
    assert "old-secret" not in result.stderr


def test_wrong_tenant(oauth_dovecot: DovecotServer, oauth_server: OAuthServer, tmp_path: Path) -> None:
    mailbox = m365(oauth_dovecot, oauth_server, tmp_path)
    mailbox = mailbox.model_copy(update={"auth": mailbox.auth.model_copy(update={"tenant_id": "typo-tenant"})})
    assert_explained(run_cli(tmp_path, mailbox, "hackney"), "tenant typo-tenant is not known")


def test_imap_permission_not_consented(oauth_dovecot: DovecotServer, oauth_server: OAuthServer,
                                       tmp_path: Path) -> None:
    mailbox = m365(oauth_dovecot, oauth_server, tmp_path, app_kwargs={"roles": ("SMTP.SendAsApp",)})
    assert_explained(run_cli(tmp_path, mailbox, "hackney"), "AUTHENTICATE failed", "IMAP.AccessAsApp",
                     "admin consent")


def test_mailbox_permission_not_granted(oauth_dovecot: DovecotServer, oauth_server: OAuthServer,
                                        tmp_path: Path) -> None:
    mailbox = m365(oauth_dovecot, oauth_server, tmp_path, app_kwargs={"mailboxes": ()})
    assert_explained(run_cli(tmp_path, mailbox, "hackney"), "AUTHENTICATE failed", "New-ServicePrincipal",
                     "FullAccess")


def test_connection_refused(oauth_dovecot: DovecotServer, oauth_server: OAuthServer, tmp_path: Path) -> None:
    mailbox = m365(oauth_dovecot, oauth_server, tmp_path, port=free_port())
    assert_explained(run_cli(tmp_path, mailbox, "hackney"), "Connection refused")


def test_server_certificate_not_trusted(dovecot_factory: Callable[..., DovecotServer], oauth_server: OAuthServer,
                                        tmp_path: Path) -> None:
    server = dovecot_factory(tls=True, oauth2_introspection_url=oauth_server.introspection_url)
    mailbox = m365(server, oauth_server, tmp_path, security="ssl", verify_tls=True)
    assert_explained(run_cli(tmp_path, mailbox, "hackney"), "not trusted")


def test_unknown_mailbox_name(oauth_dovecot: DovecotServer, oauth_server: OAuthServer, tmp_path: Path) -> None:
    assert_explained(run_cli(tmp_path, m365(oauth_dovecot, oauth_server, tmp_path), "havering"),
                     "No mailbox named 'havering'", "hackney")
