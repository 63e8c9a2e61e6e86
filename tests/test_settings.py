"""Settings an administrator gives in the environment or in files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from escalations.settings import Settings


def test_mailboxes_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "mailboxes.yaml"
    f.write_text(
        "mailboxes:\n"
        "  - name: hackney\n    host: imap.example.org\n    username: chscp@example.org\n"
        "    password: app-password\n    after_store: move\n    move_to: Escalations/Stored\n"
    )
    monkeypatch.setenv("ESCALATIONS_MAILBOXES_FILE", str(f))
    s = Settings()
    (m,) = s.mailboxes
    assert (m.name, m.host, m.port, m.security, m.after_store) == ("hackney", "imap.example.org", 993, "ssl", "move")
    assert m.password.get_secret_value() == "app-password"
    assert "app-password" not in repr(s)


def test_relay_from_nested_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESCALATIONS_RELAY__HOST", "smtp.example.org")
    monkeypatch.setenv("ESCALATIONS_RELAY__PORT", "465")
    monkeypatch.setenv("ESCALATIONS_RELAY__SECURITY", "ssl")
    relay = Settings().relay
    assert relay is not None and (relay.host, relay.port, relay.security) == ("smtp.example.org", 465, "ssl")


def test_token_secret_is_created_once_and_kept_private(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "var")
    first = s.token_secret()
    assert len(first) >= 32
    mode = stat.S_IMODE(os.stat(tmp_path / "var" / "secret.key").st_mode)
    assert mode == 0o600
    # a restart reads the same key, so reply tokens already sent stay valid
    assert Settings(data_dir=tmp_path / "var").token_secret() == first


def test_configured_token_secret_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESCALATIONS_SECRET_KEY", "from-the-environment")
    assert Settings(data_dir=tmp_path).token_secret() == b"from-the-environment"
    assert not (tmp_path / "secret.key").exists()
