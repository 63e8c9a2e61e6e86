"""``escalations parse --json`` on referrals as practitioners write them: the kind, fuzzy labels,
an unread timescale, the administrator's labels file (and ``config check`` on a bad one)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from escalations.cli import app
from tests.conftest import CONFIG_DIR

runner = CliRunner()


def cli(config: Path, tmp_path: Path, *args: str) -> tuple[int, str]:
    env = {"ESCALATIONS_DATA_DIR": str(tmp_path / "var"), "ESCALATIONS_CONFIG": str(config),
           "ESCALATIONS_DATABASE_URL": ""}
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout


def eml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "m.eml"
    path.write_bytes(("From: Jo Bloggs <jo.bloggs@school.example.org>\r\nTo: chscp@hackney.gov.uk\r\n"
                      "Subject: Escalation\r\nDate: Tue, 03 Nov 2026 09:55:00 +0000\r\n"
                      "Message-ID: <p-1@example.org>\r\n\r\n" + body.replace("\n", "\r\n")).encode())
    return path


def test_fuzzy_labels_and_an_unread_timescale_are_reported(tmp_path: Path) -> None:
    body = ("Name of child(ren): Ava Testchild\nOutcomes saught: A meeting.\n"
            "Timescale: before the next core group\n")
    code, out = cli(CONFIG_DIR, tmp_path, "parse", str(eml(tmp_path, body)), "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["kind"] == "referral"
    assert data["fuzzy_labels"] == ["outcome_sought"] and data["fields"]["outcome_sought"] == "A meeting."
    assert data["timescale_unread"] == "before the next core group"
    assert data["fields"]["needed_by"] is None


def test_a_letter_is_free_text_and_its_timescale_is_read(tmp_path: Path) -> None:
    body = "I want to escalate our disagreement with CSC. We need this resolved by Friday.\n"
    code, out = cli(CONFIG_DIR, tmp_path, "parse", str(eml(tmp_path, body)), "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["kind"] == "free_text"
    assert data["fields"]["other_agency"] == "CSC" and data["fields"]["needed_by"] == "2026-11-06"


def test_the_administrators_labels_file_is_used_and_checked(tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, config)
    (config / "labels.yaml").write_text("other_agency:\n  - Agency we are unhappy with\n", encoding="utf-8")
    body = "Name of child(ren): Ava Testchild\nAgency we are unhappy with: Example Trust\n"
    code, out = cli(config, tmp_path, "parse", str(eml(tmp_path, body)), "--json")
    assert code == 0, out
    assert json.loads(out)["fields"]["other_agency"] == "Example Trust"
    (config / "labels.yaml").write_text("child_names:\n  - x\nchild_nmaes:\n  - y\n", encoding="utf-8")
    code, out = cli(config, tmp_path, "config", "check", "--json")
    assert code == 1
    errors = json.loads(out)["errors"]
    assert any(e.get("line") == 3 and "unknown field name" in e.get("message", "") for e in errors), errors
