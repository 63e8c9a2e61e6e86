"""The CLI contract of ARCHITECTURE.md: parse, ingest, cases, outbox, quarantine (with --json)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from escalations.cli import app
from tests.conftest import CONFIG_DIR
from tests.intake.test_service_smtp import CHILD, referral

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"ESCALATIONS_DATA_DIR": str(tmp_path / "var"), "ESCALATIONS_CONFIG": str(CONFIG_DIR),
            "ESCALATIONS_DATABASE_URL": ""}


def cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout


def test_every_command_has_help(env: dict[str, str]) -> None:
    for args in (["--help"], ["run", "--help"], ["parse", "--help"], ["ingest", "--help"], ["cases", "list", "--help"],
                 ["cases", "show", "--help"], ["tick", "--help"], ["outbox", "list", "--help"],
                 ["quarantine", "list", "--help"], ["quarantine", "replay", "--help"],
                 ["timers", "list", "--help"], ["timers", "retry", "--help"]):
        code, out = cli(env, *args)
        assert code == 0, args
        assert "Usage" in out


def test_parse_json_has_no_side_effects(env: dict[str, str], tmp_path: Path) -> None:
    eml = tmp_path / "r.eml"
    eml.write_bytes(referral())
    code, out = cli(env, "parse", str(eml), "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["kind"] == "referral"
    assert data["partnership"] == "city-and-hackney"
    assert data["fields"]["child_names"] == [CHILD]
    assert data["fields"]["child_dobs"] == ["2015-03-02"]
    assert data["missing"] == []
    assert not (tmp_path / "var" / "escalations.sqlite3").exists()


def test_ingest_then_cases_and_outbox(env: dict[str, str], tmp_path: Path) -> None:
    eml = tmp_path / "r.eml"
    eml.write_bytes(referral())
    code, out = cli(env, "ingest", str(eml), "--received", "2026-11-03T09:58:00", "--json")
    assert code == 0, out
    data = json.loads(out)
    (m,) = data["messages"]
    assert m["kind"] == "referral" and m["status"] == "done" and m["case"].startswith("CH-2026-")
    # the acknowledgement, and the raiser's copy of stage 1 (the other worker is named, not addressed)
    assert data["sent"] == 2
    sent = sorted((tmp_path / "var" / "sent").glob("*.eml"))
    assert len(sent) == 2
    assert [b"referral_acknowledged" in f.read_bytes() for f in sent] == [True, False]
    assert all(CHILD.encode() not in f.read_bytes() for f in sent)
    # ingesting the same file again changes nothing
    code, out = cli(env, "ingest", str(eml), "--json")
    again = json.loads(out)["messages"][0]
    assert not again["new"] and again["case"] == m["case"]

    code, out = cli(env, "cases", "list", "--json")
    (case,) = json.loads(out)
    assert case["reference"] == m["case"] and case["status"] == "open"
    code, out = cli(env, "cases", "show", m["case"], "--json")
    shown = json.loads(out)
    assert {"reference", "partnership", "status", "stage", "due_at", "parties", "events"} <= set(shown)
    assert [e["kind"] for e in shown["events"]][:1] == ["case_opened"]
    assert [(p["email"], p["party"]) for p in shown["parties"]] == [("jo.bloggs@school.example.org", "raiser")]
    assert shown["mailed"] == ["jo.bloggs@school.example.org"]
    code, out = cli(env, "outbox", "list", "--json")
    rows = json.loads(out)
    assert len(rows) == 2
    assert all(r["status"] == "sent" and CHILD not in r["subject"] and m["case"] in r["subject"] for r in rows)

    code, out = cli(env, "cases", "show", "CH-1999-0001")
    assert code == 1


def test_quarantine_and_replay(env: dict[str, str], tmp_path: Path) -> None:
    stray = tmp_path / "stray.eml"
    stray.write_bytes(referral("nobody@example.net"))
    code, out = cli(env, "ingest", str(stray), "--json")
    m = json.loads(out)["messages"][0]
    assert m["status"] == "quarantined" and m["detail"] == "no_partnership_mailbox"
    code, out = cli(env, "quarantine", "list", "--json")
    (q,) = json.loads(out)
    assert q["id"] == m["inbound_id"] and q["reason"].startswith("no_partnership_mailbox")
    assert CHILD not in out

    # the administrator adds the address as a mailbox of a partnership, then replays
    cfg = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, cfg)
    hav = cfg / "partnerships" / "havering.yaml"
    hav.write_text(re.sub(r"mailboxes:\n", "mailboxes:\n  - nobody@example.net\n", hav.read_text(), count=1))
    env2 = {**env, "ESCALATIONS_CONFIG": str(cfg)}
    code, out = cli(env2, "quarantine", "replay", str(q["id"]), "--json")
    assert code == 0, out
    replayed = json.loads(out)["replayed"][0]
    assert replayed["status"] == "done" and replayed["case"].startswith("HAV-")
    code, out = cli(env2, "quarantine", "list", "--json")
    assert json.loads(out) == []


def test_timers_list_and_retry(env: dict[str, str], tmp_path: Path) -> None:
    eml = tmp_path / "r.eml"
    eml.write_bytes(referral())
    code, out = cli(env, "ingest", str(eml), "--received", "2026-11-03T09:58:00", "--json")
    ref = json.loads(out)["messages"][0]["case"]
    code, out = cli(env, "timers", "list", "--case", ref, "--json")
    assert code == 0, out
    timers = json.loads(out)
    assert {t["kind"] for t in timers} >= {"escalate"} and all(t["status"] == "pending" for t in timers)
    assert all(t["case"] == ref for t in timers)
    # a timer whose step raised is kept as failed; the administrator retries it after the fix
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{tmp_path / 'var' / 'escalations.sqlite3'}")
    with engine.begin() as conn:
        conn.execute(text("UPDATE timer SET status = 'failed' WHERE id = :id"), {"id": timers[0]["id"]})
    engine.dispose()
    code, out = cli(env, "timers", "list", "--status", "failed", "--json")
    assert [t["id"] for t in json.loads(out)] == [timers[0]["id"]]
    code, out = cli(env, "timers", "retry", str(timers[0]["id"]))
    assert code == 0 and "pending again" in out
    code, out = cli(env, "timers", "retry", str(timers[0]["id"]))
    assert code == 1
    code, out = cli(env, "timers", "list", "--case", "CH-1999-0001")
    assert code == 1


def test_a_message_that_killed_three_attempts_is_quarantined_and_replay_resets_its_count(
        env: dict[str, str], tmp_path: Path) -> None:
    from sqlalchemy import text

    from escalations.cases.store import Store, make_engine
    from escalations.clock import SystemClock

    code, out = cli(env, "db", "upgrade")  # creates the database
    assert code == 0, out
    store = Store(make_engine(f"sqlite:///{tmp_path / 'var' / 'escalations.sqlite3'}"), SystemClock())
    inbound = store.store_inbound(referral(), source="cli").id
    with store.engine.begin() as conn:  # three processes took it and died with it, the last long ago
        conn.execute(text("UPDATE inbound_message SET attempts = 3, claimed_at = '2026-01-01 00:00:00', "
                          "claimed_by = 'elsewhere:1:dead' WHERE id = :id"), {"id": inbound})
    store.engine.dispose()
    code, out = cli(env, "tick", "--json")
    assert code == 0, out
    assert json.loads(out)["processed"] == 0
    code, out = cli(env, "quarantine", "list", "--json")
    (q,) = json.loads(out)
    assert (q["id"], q["reason"], q["attempts"]) == (inbound, "too_many_attempts", 3)
    code, out = cli(env, "quarantine", "replay", str(inbound), "--json")
    assert code == 0, out
    assert json.loads(out)["replayed"][0]["status"] == "done"
    row = Store(make_engine(f"sqlite:///{tmp_path / 'var' / 'escalations.sqlite3'}"), SystemClock()).get_inbound(inbound)
    assert row is not None and (row.status, row.attempts) == ("done", 1)


def test_cases_list_table_keeps_to_the_partnership_and_status_asked_for(env: dict[str, str]) -> None:
    """The table shows what --partnership / --status ask for (it once listed every case whatever
    was asked), each case with its own acknowledgement's status."""
    demo = Path(__file__).resolve().parents[2] / "escalations" / "demo"
    refs = {}
    for pid in ("city-and-hackney", "havering"):
        code, out = cli(env, "ingest", str(demo / f"{pid}.eml"), "--json")
        assert code == 0, out
        refs[pid] = json.loads(out)["messages"][0]["case"]
    assert all(refs.values())
    code, out = cli(env, "cases", "list")
    assert code == 0 and all(r in out for r in refs.values()) and out.count("ack sent") == 2, out
    code, out = cli(env, "cases", "list", "--partnership", "havering")
    assert code == 0 and refs["havering"] in out and refs["city-and-hackney"] not in out, out
    assert out.count("ack sent") == 1
    code, out = cli(env, "cases", "list", "--status", "closed")
    assert code == 0 and not any(r in out for r in refs.values()), out
    code, out = cli(env, "cases", "list", "--partnership", "havering", "--json")
    assert [c["reference"] for c in json.loads(out)] == [refs["havering"]]
