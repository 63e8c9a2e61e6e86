"""Schema migrations: the revisions make exactly the models' schema, a database of the previous
release (53cddc3, made by create_all, no revision recorded) upgrades with its data intact, and only
an empty database is created without `escalations db upgrade`."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from escalations.app import build_app
from escalations.cases import schema
from escalations.cases.store import make_engine
from escalations.cli import app as cli
from escalations.clock import FakeClock
from escalations.settings import Settings
from tests.conftest import CONFIG_DIR
from tests.servers.postgres import PG_BASE

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "schema"
T0 = datetime(2026, 11, 3, 10, 0, tzinfo=UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    e = make_engine(database_url)
    yield e
    e.dispose()


def load_release_53cddc3(engine: Engine) -> None:
    """The tables create_all made at release 53cddc3, from the committed DDL of that release."""
    ddl = (FIXTURES / f"release-53cddc3.{engine.dialect.name}.sql").read_text()
    body = "\n".join(line for line in ddl.splitlines() if not line.startswith("--"))
    with engine.begin() as conn:
        for statement in body.split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)


def tables(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def diff_with_models(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        return schema.differences(conn)


def cli_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {"ESCALATIONS_DATA_DIR": str(tmp_path / "var"), "ESCALATIONS_CONFIG": str(CONFIG_DIR),
            "ESCALATIONS_DATABASE_URL": database_url}


def settings_for(database_url: str, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "var", config_dir=CONFIG_DIR, database_url=database_url, smtp_listen_port=0)


# ---- the revisions ----------------------------------------------------------------------------


def test_upgraded_schema_is_the_models_schema(engine: Engine) -> None:
    result = schema.upgrade(engine)
    assert (result.before, result.after, result.stamped) == (None, schema.head(), None)
    assert diff_with_models(engine) == []
    assert schema.status(engine).state is schema.SchemaState.CURRENT
    with engine.connect() as conn:  # and the server defaults that rows older than a column rely on
        inspector = sa.inspect(conn)
        defaults = {(t, c["name"]): c["default"] for t in ("outbox", "case") for c in inspector.get_columns(t)}
    assert "0" in str(defaults["outbox", "priority"]) and "[]" in str(defaults["case", "confirmed_addresses"])


def test_revision_1_is_release_53cddc3(engine: Engine, database_url: str, tmp_path: Path) -> None:
    """Revision 0001 makes what create_all made at 53cddc3: compared table by table, column by
    column, index by index, with the release's tables reflected from its DDL."""
    with engine.begin() as conn:
        command.upgrade(schema._config(conn), schema.FIRST_RELEASE_REVISION)
    with second_database(engine, tmp_path) as release:
        load_release_53cddc3(release)
        reflected = sa.MetaData()
        reflected.reflect(release)
    assert set(reflected.tables) == schema.FIRST_RELEASE_TABLES
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        assert compare_metadata(context, reflected) == []


@contextmanager
def second_database(engine: Engine, tmp_path: Path) -> Iterator[Engine]:
    """Another empty database of the same kind (on PostgreSQL, a schema of its own)."""
    if engine.dialect.name == "sqlite":
        other = make_engine(f"sqlite:///{tmp_path / 'second.sqlite3'}")
        yield other
        other.dispose()
        return
    name = f"t_{uuid.uuid4().hex[:12]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
    other = make_engine(f"{PG_BASE}?options=-csearch_path%3D{name}")
    try:
        yield other
    finally:
        other.dispose()
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{name}" CASCADE')


def test_downgrade_to_revision_1_and_back(engine: Engine) -> None:
    schema.upgrade(engine)
    with engine.begin() as conn:
        command.downgrade(schema._config(conn), schema.FIRST_RELEASE_REVISION)
    assert tables(engine) == schema.FIRST_RELEASE_TABLES | {schema.VERSION_TABLE}
    assert schema.status(engine).state is schema.SchemaState.BEHIND
    assert schema.upgrade(engine).before == schema.FIRST_RELEASE_REVISION
    assert diff_with_models(engine) == []


# ---- the previous release's database ------------------------------------------------------------------


def fill_release_53cddc3(engine: Engine) -> None:
    """A case with events, an inbound message, an outbox row and a timer, as 53cddc3 wrote them."""
    when = T0 if engine.dialect.name == "postgresql" else T0.replace(tzinfo=None)
    meta = sa.MetaData()
    meta.reflect(engine)
    t = meta.tables
    with engine.begin() as conn:
        conn.execute(t["case"].insert(), {
            "id": 1, "reference": "CH-2026-0001", "partnership": "city-and-hackney", "status": "open", "stage": 1,
            "stage_index": 0, "route": "standard", "stage_opened_at": when, "parties": [{"email": "a@example.org"}],
            "resolution": {}, "opened_at": when, "updated_at": when, "due_at": when, "immediate_risk": False,
            "fields": {"child_names": ["A B"]}, "missing": [], "policy_snapshot": {"id": "city-and-hackney"},
            "origin_inbound_id": 1})
        conn.execute(t["inbound_message"].insert(), {
            "id": 1, "source": "smtp", "idempotency_key": "sha256:x|mid:m1", "fingerprint": "f" * 64,
            "message_id": "m1@example.org", "envelope_recipients": ["chscp@hackney.gov.uk"], "raw": b"raw bytes",
            "size": 9, "received_at": when, "status": "done", "kind": "referral", "partnership": "city-and-hackney",
            "case_id": 1, "attempts": 1, "processed_at": when})
        conn.execute(t["case_event"].insert(), [
            {"case_id": 1, "at": when, "kind": "case_opened", "inbound_id": 1, "clause": "1.1", "detail": {"n": 1}},
            {"case_id": 1, "at": when, "kind": "stage_started", "inbound_id": None, "clause": None,
             "detail": {"stage": 1}}])
        conn.execute(t["outbox"].insert(), {
            "dedupe_key": "ack:1", "message_id": "ack1@escalations.invalid", "case_id": 1,
            "template": "referral_acknowledged", "sender": "chscp@hackney.gov.uk", "recipients": ["a@example.org"],
            "subject": "CH-2026-0001", "raw": b"mail", "status": "pending", "attempts": 0, "next_attempt_at": when,
            "created_at": when})
        conn.execute(t["timer"].insert(), {
            "key": "1:1:escalate", "case_id": 1, "stage": 1, "kind": "escalate", "due_at": when, "status": "pending",
            "created_at": when})


def test_release_53cddc3_upgrades_with_its_data(database_url: str, engine: Engine, tmp_path: Path,
                                                clock: FakeClock) -> None:
    load_release_53cddc3(engine)
    fill_release_53cddc3(engine)
    assert schema.status(engine).state is schema.SchemaState.FIRST_RELEASE
    env = cli_env(database_url, tmp_path)

    # nothing but `db upgrade` touches it: the service and the read-only commands refuse, and say what to run
    for args in (["run"], ["cases", "list"], ["outbox", "list"], ["tick"]):
        refused = CliRunner().invoke(cli, args, env=env)
        assert refused.exit_code == 2, (args, refused.output)
        assert "escalations db upgrade" in refused.output and "Traceback" not in refused.output
        # one sentence, and the hint that --debug shows the details
        assert len(refused.output.strip().splitlines()) <= 2, refused.output
    assert schema.status(engine).state is schema.SchemaState.FIRST_RELEASE

    done = CliRunner().invoke(cli, ["db", "upgrade"], env=env)
    assert done.exit_code == 0, done.output
    assert "revision 0001, recorded" in done.output and f"0001 -> {schema.head()}" in done.output
    assert diff_with_models(engine) == []

    application = build_app(settings_for(database_url, tmp_path), clock=clock, read_only=True)
    try:
        store = application.store
        case = store.case_by_reference("CH-2026-0001")
        assert case is not None and case.id is not None
        assert (case.status, case.stage, case.opened_at, case.fields) == ("open", 1, T0, {"child_names": ["A B"]})
        assert case.parties == [{"email": "a@example.org"}] and case.confirmed_addresses == []
        assert [(e.kind, e.clause, e.detail) for e in store.case_events(case.id)] == [
            ("case_opened", "1.1", {"n": 1}), ("stage_started", None, {"stage": 1})]
        inbound = store.get_inbound(1)
        assert inbound is not None and inbound.raw == b"raw bytes" and inbound.received_at == T0
        assert inbound.claimed_by is None
        (outbox,) = store.list_outbox()
        assert (outbox.priority, outbox.claimed_by, outbox.status, outbox.next_attempt_at) == (0, None, "pending", T0)
        (timer,) = store.list_timers(case.id, None)
        assert (timer.claimed_by, timer.due_at, timer.kind) == (None, T0, "escalate")
    finally:
        application.store.engine.dispose()

    again = CliRunner().invoke(cli, ["db", "current"], env=env)
    assert again.exit_code == 0 and f"revision {schema.head()} (head)" in again.output


# ---- what each kind of command does with each kind of database ------------------------------------------


def test_build_app_creates_an_empty_database_and_refuses_an_old_one(
        database_url: str, engine: Engine, tmp_path: Path, clock: FakeClock) -> None:
    settings = settings_for(database_url, tmp_path)
    with pytest.raises(schema.NoDatabase):
        build_app(settings, clock=clock, read_only=True)
    assert not tables(engine)
    build_app(settings, clock=clock).store.engine.dispose()
    assert schema.status(engine).state is schema.SchemaState.CURRENT
    build_app(settings, clock=clock, read_only=True).store.engine.dispose()

    with engine.begin() as conn:
        command.downgrade(schema._config(conn), schema.FIRST_RELEASE_REVISION)
    for read_only in (False, True):
        with pytest.raises(schema.SchemaError, match=r"revision 0001 .* run escalations db upgrade"):
            build_app(settings, clock=clock, read_only=read_only)
    assert schema.status(engine).revision == schema.FIRST_RELEASE_REVISION


def test_read_only_commands_never_create_a_database(database_url: str, engine: Engine, tmp_path: Path) -> None:
    env = cli_env(database_url, tmp_path)
    for args in (["cases", "list"], ["cases", "show", "CH-2026-0001"], ["outbox", "list", "--json"],
                 ["timers", "list"], ["quarantine", "list"], ["db", "current"]):
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 2, (args, result.output)
        # one sentence (the printer's "error: database:" before it), then the --debug hint
        assert f"no database yet at {schema.shown_url(database_url)}: run escalations db upgrade" in \
            result.output.strip().splitlines()[0]
    for args in (["config", "check"], ["policy", "show", "city-and-hackney"]):  # never open it at all
        assert CliRunner().invoke(cli, args, env=env).exit_code == 0, args
    assert not tables(engine)
    assert not (tmp_path / "var").exists()

    created = CliRunner().invoke(cli, ["db", "upgrade"], env=env)
    assert created.exit_code == 0 and f"(empty) -> {schema.head()}" in created.output
    listed = CliRunner().invoke(cli, ["cases", "list", "--json"], env=env)
    assert listed.exit_code == 0 and listed.stdout.strip() == "[]"


def _prepare_at_once(database_url: str, engine: Engine, *, in_child: bool) -> None:
    """Three engines run schema.prepare on one empty database at the same moment: it is made once."""
    engines = [make_engine(database_url) for _ in range(3)]
    start = threading.Barrier(len(engines))
    failures: list[BaseException] = []

    def prepare(e: Engine) -> None:
        start.wait()
        try:
            schema.prepare(e, in_child=in_child)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=prepare, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120 if in_child else 60)
    for e in engines:
        e.dispose()
    assert failures == []
    assert schema.status(engine).state is schema.SchemaState.CURRENT
    assert diff_with_models(engine) == []


def test_processes_starting_together_on_an_empty_database_create_it_once(database_url: str,
                                                                        engine: Engine) -> None:
    _prepare_at_once(database_url, engine, in_child=False)


def test_services_starting_together_create_it_once_each_in_a_child(database_url: str, engine: Engine) -> None:
    """``escalations run``'s way (build_app(schema_in_child=True)): the child takes the same lock."""
    _prepare_at_once(database_url, engine, in_child=True)


def test_a_child_refused_or_failing_is_one_sentence(database_url: str, engine: Engine, tmp_path: Path) -> None:
    schema.upgrade(engine)
    with engine.begin() as conn:
        command.downgrade(schema._config(conn), schema.FIRST_RELEASE_REVISION)
    with pytest.raises(schema.SchemaError, match=r"revision 0001 .* run escalations db upgrade") as refused:
        schema.create_in_child(engine.url)  # not empty by the time the child looks: it refuses, as upgrade does
    assert "Traceback" not in str(refused.value)
    assert schema.status(engine).revision == schema.FIRST_RELEASE_REVISION  # left as it was
    nowhere = sa.make_url(f"sqlite:///{tmp_path / 'no-such-directory' / 'new.sqlite3'}")
    with pytest.raises(schema.SchemaError) as failed:
        schema.create_in_child(nowhere)
    message = str(failed.value)
    assert message.startswith(f"creating the database at {nowhere} failed (exit status 1: OperationalError")
    assert message.endswith("run escalations db upgrade to see why") and "\n" not in message


def test_a_child_that_hangs_or_cannot_start_is_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    url = sa.make_url(f"sqlite:///{tmp_path / 'new.sqlite3'}")

    def hangs(*_args: object, **_kwargs: object) -> object:
        raise subprocess.TimeoutExpired("python", schema.CHILD_TIMEOUT_SECONDS)

    monkeypatch.setattr(subprocess, "run", hangs)
    with pytest.raises(schema.SchemaError, match=r"took more than 300 s and was stopped; run escalations db upgrade"):
        schema.create_in_child(url)

    def cannot(*_args: object, **_kwargs: object) -> object:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(subprocess, "run", cannot)
    with pytest.raises(schema.SchemaError, match=r"could not start a process .* \(Cannot allocate memory\)"):
        schema.create_in_child(url)


def test_a_newer_schema_is_refused_and_never_downgraded(database_url: str, engine: Engine, tmp_path: Path) -> None:
    schema.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    env = cli_env(database_url, tmp_path)
    for args in (["run"], ["db", "upgrade"], ["cases", "list"]):
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 2, (args, result.output)
        assert "revision 9999, newer than this release" in result.output and "Traceback" not in result.output
    current = CliRunner().invoke(cli, ["db", "current", "--json"], env=env)
    assert current.exit_code == 1 and '"state": "ahead"' in current.stdout


def test_tables_that_are_no_release_are_left_alone(engine: Engine, tmp_path: Path, database_url: str) -> None:
    """Our tables, no revision, and not the previous release's: nothing guesses what they are."""
    load_release_53cddc3(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE outbox ADD COLUMN priority INTEGER DEFAULT 0 NOT NULL")
    result = CliRunner().invoke(cli, ["db", "upgrade"], env=cli_env(database_url, tmp_path))
    assert result.exit_code == 2 and "no recorded schema revision" in result.output
    assert schema.VERSION_TABLE not in tables(engine)


def test_todays_tables_made_by_create_all_are_recorded_as_head(engine: Engine, tmp_path: Path,
                                                             database_url: str) -> None:
    """A build between 53cddc3 and migrations made today's tables with create_all; another
    application's table beside them is left alone."""
    schema.all_models().create_all(engine)  # every table of ours, as that build made them
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE someone_elses (x INTEGER)")
    assert schema.status(engine).state is schema.SchemaState.UNVERSIONED_HEAD
    env = cli_env(database_url, tmp_path)
    assert CliRunner().invoke(cli, ["run"], env=env).exit_code == 2
    done = CliRunner().invoke(cli, ["db", "upgrade"], env=env)
    assert done.exit_code == 0, done.output
    assert f"revision {schema.head()}, recorded" in done.output and f"already at {schema.head()}" in done.output
    assert schema.status(engine).state is schema.SchemaState.CURRENT
    assert "someone_elses" in tables(engine)


def test_the_password_never_appears() -> None:
    assert schema.shown_url("postgresql+psycopg://esc:s3cret@db.example.org/esc") == \
        "postgresql+psycopg://esc:***@db.example.org/esc"


def test_db_commands_have_help() -> None:
    for args in (["db", "--help"], ["db", "upgrade", "--help"], ["db", "current", "--help"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0 and "Usage" in result.stdout, args


# ---- revision 0004: policy versions stored once ----------------------------------------------------


def fill_revision_3_cases(engine: Engine) -> dict[str, object]:
    """Cases as revision 0003 wrote them, each with its own copy of the policy: two opened under one
    version, one under another, one from before versions were recorded, one with no copy at all."""
    when = T0 if engine.dialect.name == "postgresql" else T0.replace(tzinfo=None)
    policy_a = {"id": "city-and-hackney", "name": "A", "stages": [1, 2, 3]}
    policy_b = {"id": "city-and-hackney", "name": "B", "stages": [1, 2]}
    unversioned = {"id": "havering", "name": "old"}
    meta = sa.MetaData()
    meta.reflect(engine)
    t = meta.tables
    rows = [(1, "v1+aaa", policy_a), (2, "v1+aaa", policy_a), (3, "v2+bbb", policy_b), (4, None, unversioned),
            (5, None, {})]
    with engine.begin() as conn:
        for case_id, version, snapshot in rows:
            conn.execute(t["case"].insert(), {
                "id": case_id, "reference": f"CH-2026-000{case_id}", "partnership": snapshot.get("id", "sutton"),
                "status": "open", "parties": [], "resolution": {}, "opened_at": when, "updated_at": when,
                "immediate_risk": False, "fields": {}, "missing": [], "policy_version": version,
                "policy_snapshot": snapshot, "confirmed_addresses": []})
        # rows that refer to the cases: the upgrade must not rebuild the table under them
        conn.execute(t["case_event"].insert(), [{"case_id": i, "at": when, "kind": "case_opened", "detail": {}}
                                                 for i, _, _ in rows])
    return {"a": policy_a, "b": policy_b, "unversioned": unversioned}


def test_revision_4_stores_each_policy_once_and_back(engine: Engine) -> None:
    with engine.begin() as conn:
        command.upgrade(schema._config(conn), "0003")
    policies = fill_revision_3_cases(engine)
    schema.upgrade(engine)
    assert diff_with_models(engine) == []
    with engine.connect() as conn:
        versions = {r.fingerprint: r for r in conn.execute(sa.text(
            "SELECT id, fingerprint, partnership, policy FROM policy_version")).all()}
        refs = dict(conn.execute(sa.text('SELECT id, policy_version_id FROM "case"')).all())
        events = conn.execute(sa.text("SELECT count(*) FROM case_event")).scalar_one()
    assert events == 5
    hashed = [f for f in versions if f.startswith("snapshot+")]
    assert sorted(versions) == sorted(["v1+aaa", "v2+bbb", *hashed]) and len(hashed) == 1

    def policy(fp: str) -> object:
        value = versions[fp].policy
        return json.loads(value) if isinstance(value, str) else value

    assert (policy("v1+aaa"), policy("v2+bbb"), policy(hashed[0])) == \
        (policies["a"], policies["b"], policies["unversioned"])
    assert refs == {1: versions["v1+aaa"].id, 2: versions["v1+aaa"].id, 3: versions["v2+bbb"].id,
                    4: versions[hashed[0]].id, 5: None}
    assert versions[hashed[0]].partnership == "havering"

    with engine.begin() as conn:
        command.downgrade(schema._config(conn), "0003")
    with engine.connect() as conn:
        snapshots = {i: json.loads(s) if isinstance(s, str) else s for i, s in conn.execute(
            sa.text('SELECT id, policy_snapshot FROM "case"')).all()}
        assert "policy_version" not in sa.inspect(conn).get_table_names()
    assert snapshots == {1: policies["a"], 2: policies["a"], 3: policies["b"], 4: policies["unversioned"], 5: {}}


# ---- revision 0007: the sender key of inbound mail ----------------------------------------------------


def test_revision_7_adds_the_sender_key_and_keeps_the_mail(engine: Engine, clock: FakeClock) -> None:
    """Mail stored at revision 0006 (pending and done) is kept with no sender key: it never takes the
    fresh lane, and is claimed oldest first as before."""
    from escalations.cases.store import Store

    with engine.begin() as conn:
        command.upgrade(schema._config(conn), "0006")
    when = T0 if engine.dialect.name == "postgresql" else T0.replace(tzinfo=None)
    meta = sa.MetaData()
    meta.reflect(engine)
    assert "sender_key" not in meta.tables["inbound_message"].c
    with engine.begin() as conn:
        conn.execute(meta.tables["inbound_message"].insert(), [
            {"id": i, "source": "smtp", "idempotency_key": f"k{i}", "fingerprint": f"{i}" * 64,
             "envelope_recipients": [], "raw": f"From: p{i}@example.org\r\n\r\nbody".encode(), "size": 10,
             "received_at": when, "status": status, "attempts": 0}
            for i, status in ((1, "done"), (2, "pending"), (3, "pending"), (4, "pending"), (5, "pending"))])
        if engine.dialect.name == "postgresql":  # rows written with their ids: the sequence goes on after them
            conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('inbound_message', 'id'), 5)"))
    schema.upgrade(engine)
    assert diff_with_models(engine) == []
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, status, sender_key FROM inbound_message ORDER BY id")).all()
        indexes = {i["name"] for i in sa.inspect(conn).get_indexes("inbound_message")}
    assert [tuple(r) for r in rows] == [(1, "done", None), *((i, "pending", None) for i in range(2, 6))]
    assert "ix_inbound_message_sender_key_status_id" in indexes
    store = Store(engine, clock)
    assert store.claim_inbound_batch(2) == [2, 3]  # the first claim: all backlog, oldest first
    new = store.store_inbound(b"From: new@example.org\r\nSubject: n\r\n\r\nnew", source="smtp")
    assert store.claim_inbound_batch(3) == [new.id, 4, 5]  # the old rows stay in order behind the lane

    with engine.begin() as conn:
        command.downgrade(schema._config(conn), "0006")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM inbound_message")).scalar_one() == 6
        assert "sender_key" not in {c["name"] for c in sa.inspect(conn).get_columns("inbound_message")}


def test_first_upgrade_in_a_new_process_logs_no_alembic_chatter(tmp_path: Path) -> None:
    """Alembic's first import logs "setup plugin alembic...." at INFO: the service's log (which is at INFO)
    showed seven such lines, unformatted, before its own first line. A fresh interpreter: in this one
    Alembic was imported long ago."""
    import subprocess
    import sys

    code = ("import sys; from escalations.logs import configure_logging; configure_logging('json');"
            "from escalations.cases import schema; from escalations.cases.store import make_engine;"
            "schema.upgrade(make_engine(sys.argv[1]))")
    done = subprocess.run([sys.executable, "-c", code, f"sqlite:///{tmp_path / 'fresh.sqlite3'}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines and all(json.loads(line)["logger"].startswith("escalations") for line in lines), lines
    assert any(json.loads(line)["event"] == "schema.upgraded" for line in lines)
