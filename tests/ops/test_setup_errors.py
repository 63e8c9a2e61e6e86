"""Set-up mistakes are sentences: status 2, the setting or file:line named, no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from escalations.cli import app
from tests.conftest import CONFIG_DIR
from tests.servers import free_port

runner = CliRunner()

MAILBOX = """mailboxes:
  - name: hackney
    host: imap.example.org
    username: chscp@hackney.gov.uk
    auth: {method: password, password_env: HACKNEY_IMAP_PASSWORD}
    securty: ssl
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"ESCALATIONS_DATA_DIR": str(tmp_path / "var"), "ESCALATIONS_CONFIG": str(CONFIG_DIR),
            "ESCALATIONS_DATABASE_URL": "", "COLUMNS": "300"}


def cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.output


def assert_sentence(code: int, out: str, *named: str) -> None:
    assert code == 2, out
    assert "Traceback" not in out
    for n in named:
        assert n in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert errors, out


def test_database_url_that_does_not_parse(env: dict[str, str]) -> None:
    code, out = cli(env, "--database-url", "garbage", "cases", "list")
    assert_sentence(code, out, "ESCALATIONS_DATABASE_URL", "postgresql+psycopg://")
    assert len(out.strip().splitlines()) == 2


def test_postgresql_unreachable(env: dict[str, str]) -> None:
    code, out = cli(env, "--database-url", f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test",
                    "cases", "list")
    assert_sentence(code, out, "ESCALATIONS_DATABASE_URL", "Connection refused")


def test_missing_mailboxes_file(env: dict[str, str], tmp_path: Path) -> None:
    env["ESCALATIONS_MAILBOXES_FILE"] = str(tmp_path / "mailboxes.yaml")
    code, out = cli(env, "cases", "list")
    assert_sentence(code, out, "ESCALATIONS_MAILBOXES_FILE", "mailboxes.yaml does not exist")
    code, out = cli(env, "config", "check")
    assert_sentence(code, out, "ESCALATIONS_MAILBOXES_FILE", "mailboxes.yaml does not exist")
    assert "Configuration OK" in out  # the partnerships are still checked


def test_unknown_key_in_mailboxes_file_names_file_and_line(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "mailboxes.yaml"
    path.write_text(MAILBOX)
    env["ESCALATIONS_MAILBOXES_FILE"] = str(path)
    for args in (["config", "check"], ["cases", "list"]):
        code, out = cli(env, *args)
        assert_sentence(code, out, f"{path}:6", "securty", "unknown setting")
    code, out = cli(env, "config", "check", "--json")
    assert code == 2 and '"setting"' in out and "securty" in out


def test_relay_security_not_one_of_the_choices(env: dict[str, str]) -> None:
    env["ESCALATIONS_RELAY__SECURITY"] = "tls"
    env["ESCALATIONS_RELAY__HOST"] = "smtp.example.org"
    code, out = cli(env, "outbox", "list")
    assert_sentence(code, out, "ESCALATIONS_RELAY__SECURITY", "'ssl', 'starttls' or 'none'")
    assert len(out.strip().splitlines()) == 2
    code, out = cli(env, "config", "check")
    assert_sentence(code, out, "ESCALATIONS_RELAY__SECURITY")


def test_smtp_port_in_use(env: dict[str, str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        code, out = cli(env, "run", "--smtp-port", str(port))
    assert_sentence(code, out, "ESCALATIONS_SMTP_LISTEN_PORT", "already in use")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "ESCALATIONS_DATA_DIR": str(tmp_path / "var"), "ESCALATIONS_CONFIG": str(CONFIG_DIR)}
    plain = subprocess.run([sys.executable, "-m", "escalations", "--database-url", "garbage", "cases", "list"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "ESCALATIONS_DATABASE_URL" in plain.stderr
    debug = subprocess.run([sys.executable, "-m", "escalations", "--debug", "--database-url", "garbage", "cases",
                            "list"], env=env, capture_output=True, text=True, timeout=60)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_config_check_warns_about_placeholders_and_strict_fails(env: dict[str, str]) -> None:
    code, out = cli(env, "config", "check")
    assert code == 0, out
    assert "agencies/city-and-hackney.yaml:11: domains:" in out and "placeholder" in out
    assert "outgoing mail: no relay" in out
    code, out = cli(env, "config", "check", "--strict")
    assert code == 1


def test_config_folder_without_partnerships(env: dict[str, str], tmp_path: Path) -> None:
    code, out = cli(env, "--config", str(tmp_path / "nothing"), "cases", "list")
    assert_sentence(code, out, "nothing/partnerships", "no partnership YAML files found")


def test_empty_secret_key_file(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "secret.key").write_text("")
    code, out = cli(env, "tick")  # a command that opens (and if need be creates) the database
    assert_sentence(code, out, "ESCALATIONS_SECRET_KEY", "secret.key is empty")


def test_config_check_names_a_secret_that_is_not_there(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "mailboxes.yaml"
    path.write_text(MAILBOX.replace("    securty: ssl\n", ""))
    env["ESCALATIONS_MAILBOXES_FILE"] = str(path)
    env["HACKNEY_IMAP_PASSWORD"] = ""
    code, out = cli(env, "config", "check")
    assert_sentence(code, out, "mailbox hackney: auth.password_env", "HACKNEY_IMAP_PASSWORD")
    env["HACKNEY_IMAP_PASSWORD"] = "set"
    code, out = cli(env, "config", "check")
    assert code == 0, out
    assert "mailboxes: hackney (chscp@hackney.gov.uk on imap.example.org:993)" in out


def test_policy_show_with_broken_config_is_a_sentence(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "cfg" / "partnerships").mkdir(parents=True)
    (tmp_path / "cfg" / "partnerships" / "x.yaml").write_text("id: x\nname: [\n")
    code, out = cli(env, "--config", str(tmp_path / "cfg"), "policy", "show", "x")
    assert_sentence(code, out, "x.yaml:", "not valid YAML")


def test_list_setting_that_is_not_json(env: dict[str, str]) -> None:
    env["ESCALATIONS_ADMIN_EMAILS"] = "it@council.example.org"
    code, out = cli(env, "cases", "list")
    assert_sentence(code, out, "ESCALATIONS_ADMIN_EMAILS", "not valid JSON")
