"""`escalations status --json`: mailboxes, backlogs, next timers, secret expiry; read-only."""

from __future__ import annotations

import hashlib
import json
from datetime import date, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from escalations.cli import app
from tests.conftest import CONFIG_DIR, AppFactory
from tests.intake.test_service_smtp import CHILD, referral

runner = CliRunner()


def digest(path: Path) -> str:
    return "".join(hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.parent.glob(path.name + "*")))


def test_status_json_reports_and_writes_nothing(make_app: AppFactory, tmp_path: Path) -> None:
    db = tmp_path / "var" / "escalations.sqlite3"
    application = make_app(f"sqlite:///{db}")
    application.ingest(referral())
    application.ingest(b"From: someone@example.org\r\nTo: nobody@example.org\r\nSubject: hi\r\n\r\nhello\r\n")
    application.process_pending()
    application.store.record_mailbox_contact("hackney", idle=True)
    application.store.record_mailbox_contact("hackney", error_code="ConnectionRefusedError")
    application.store.engine.dispose()
    mailboxes = tmp_path / "mailboxes.yaml"
    mailboxes.write_text("- {name: hackney, host: imap.example.org, username: chscp@hackney.gov.uk, "
                         "password: x, auth: {method: password, secret_expires_on: "
                         f"'{(date.today() + timedelta(days=10)).isoformat()}'}}}}\n")
    before = digest(db)
    env = {"ESCALATIONS_DATA_DIR": str(tmp_path / "var"), "ESCALATIONS_CONFIG": str(CONFIG_DIR),
           "ESCALATIONS_DATABASE_URL": "", "ESCALATIONS_MAILBOXES_FILE": str(mailboxes)}
    result = runner.invoke(app, ["status", "--json"], env=env)
    data = json.loads(result.stdout)
    assert digest(db) == before, "status wrote to the database"
    assert result.exit_code == 1  # problems: the mailbox's silence (fake clock: hours ago) and the secret
    (mb,) = data["mailboxes"]
    assert mb["name"] == "hackney" and mb["mode"] == "idle" and mb["last_error_code"] == "ConnectionRefusedError"
    assert mb["last_ok_at"].startswith("2026-11-03T10:00") and mb["no_contact_alert"] is True
    assert data["quarantine"]["count"] == 1 and data["quarantine"]["by_reason"] == {"no_partnership_mailbox": 1}
    assert data["outbox"]["pending"] >= 1 and set(data["outbox"]) == {"pending", "sending", "sent", "failed"}
    nxt = data["timers"]["next"]
    assert 1 <= len(nxt) <= 5 and all(set(t) == {"case", "kind", "due_at"} for t in nxt)
    assert nxt[0]["case"] == "CH-2026-0001"
    assert data["secrets"][0]["account"] == "hackney" and data["secrets"][0]["days_left"] == 10
    assert any("hackney" in p for p in data["problems"])
    assert CHILD not in result.stdout


def test_status_without_a_database_is_a_sentence(tmp_path: Path) -> None:
    env = {"ESCALATIONS_DATA_DIR": str(tmp_path / "nowhere"), "ESCALATIONS_CONFIG": str(CONFIG_DIR),
           "ESCALATIONS_DATABASE_URL": ""}
    result = runner.invoke(app, ["status", "--json"], env=env)
    assert result.exit_code == 2 and "ESCALATIONS_DATA_DIR" in result.output
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.servers
def test_status_on_postgresql_in_a_read_only_session(make_app: AppFactory, postgres_url: str,
                                                     tmp_path: Path) -> None:
    application = make_app(postgres_url)
    application.ingest(referral())
    application.process_pending()
    application.store.record_mailbox_contact("hackney", idle=False)
    application.store.engine.dispose()
    # every transaction of this session refuses writes: status would fail if it tried one
    read_only = postgres_url + "%20-cdefault_transaction_read_only%3Don"
    env = {"ESCALATIONS_DATA_DIR": str(tmp_path / "var"), "ESCALATIONS_CONFIG": str(CONFIG_DIR),
           "ESCALATIONS_DATABASE_URL": read_only,
           "ESCALATIONS_MAILBOXES": '[{"name": "hackney", "host": "imap.example.org", '
                                    '"username": "chscp@hackney.gov.uk", "password": "x"}]'}
    result = runner.invoke(app, ["status", "--json"], env=env)
    data = json.loads(result.stdout)
    assert data["mailboxes"][0]["mode"] == "polling"
    assert data["timers"]["next"][0]["case"] == "CH-2026-0001"
