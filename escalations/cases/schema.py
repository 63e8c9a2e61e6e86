"""The database schema's revision: what a database has, bringing it to this release (Alembic).

A release installs over a live database: ``escalations db upgrade`` runs the migrations in
escalations/migrations/versions/, and every other command checks the revision first. Only an
empty database (none of our tables) is created without being asked, so the demo and the tests
need no extra step; a read-only command never creates or alters anything.

Alembic (and Mako, Pygments and its dialect modules with it: ~10 MiB, ~0.1 s) is imported only to
migrate or to tell apart a database that is not at head: a database at head is recognised with
one plain query against ``alembic_version``, and the head is read from the revision files
themselves (:func:`head`), so a command or a service start on a current database never loads it.
"""

from __future__ import annotations

import ast
import functools
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
import structlog
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection, Engine, make_url
from sqlmodel import SQLModel

from escalations.cases import models as _models  # noqa: F401  (the case tables SQLModel.metadata holds)
from escalations.private import sqlite_path

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

log = structlog.get_logger("escalations.schema")
# Alembic logs its plugins (on its first import: any of the imports below) and its dialect at INFO:
# noise in a service's log and in a refusal. Every import of Alembic in the service is from here.
logging.getLogger("alembic").setLevel(logging.WARNING)


def all_models() -> MetaData:
    """SQLModel.metadata with every table of ours: the records' (legal holds, form copies, purges)
    and the web interface's too, imported here rather than by every command that opens the store."""
    from escalations.records import models as _records_models  # noqa: F401
    from escalations.web import models as _web_models  # noqa: F401

    return SQLModel.metadata

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
VERSION_TABLE = "alembic_version"
#: Release 53cddc3's schema, made by ``create_all`` with no version recorded.
FIRST_RELEASE_REVISION = "0001"
FIRST_RELEASE_TABLES = frozenset({"inbound_message", "inbound_alias", "imap_cursor", "case", "case_event",
                                  "reference_counter", "outbox", "timer"})
#: What revision 0002 adds: a database without a version that has none of it is the first release's.
_ADDED_AFTER_FIRST_RELEASE = {"worker": None, "coordinator_notice": None, "outbox": "priority",
                              "case": "confirmed_addresses", "timer": "claimed_by",
                              "inbound_message": "claimed_by"}
#: Held while migrating on PostgreSQL, so two processes starting on one empty database do not both
#: create it (SQLite's BEGIN IMMEDIATE does the same there).
_PG_LOCK_KEY = 0x6573_6361_6C61  # "escala"


class SchemaState(StrEnum):
    EMPTY = "empty"  # none of our tables: created at head without asking
    CURRENT = "current"
    BEHIND = "behind"  # an older revision: `escalations db upgrade`
    AHEAD = "ahead"  # a revision this release does not know: a newer release upgraded it
    FIRST_RELEASE = "first_release"  # 53cddc3's tables, no revision recorded: stamped 0001 on upgrade
    #: Exactly the models' tables, no revision recorded (create_all by a build between 53cddc3 and
    #: migrations): stamped head on upgrade.
    UNVERSIONED_HEAD = "unversioned_head"
    UNRECOGNISED = "unrecognised"  # our tables, no revision, and not a release's schema


@dataclass(frozen=True)
class SchemaStatus:
    state: SchemaState
    revision: str | None
    head: str


@dataclass(frozen=True)
class UpgradeResult:
    before: str | None
    after: str
    #: The revision recorded first for tables made before migrations (none recorded).
    stamped: str | None = None


class SchemaError(Exception):
    """The database cannot be used as it is; the message is one sentence naming what to do."""


class NoDatabase(SchemaError):
    pass


def shown_url(url: str | sa.URL) -> str:
    """The URL for messages: never a password."""
    return make_url(url).render_as_string(hide_password=True)


def no_database(url: str | sa.URL) -> NoDatabase:
    return NoDatabase(f"no database yet at {shown_url(url)}: run escalations db upgrade")


def database_exists(url: str) -> bool:
    """False for an SQLite file that is not there (connecting would create it)."""
    path = sqlite_path(url)
    return path is None or path.exists()


@functools.cache
def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config(None))


def _revision_file_ids(path: Path) -> tuple[str, tuple[str, ...]] | None:
    """``revision`` and its ``down_revision`` parents as a revision file assigns them (literals), else None."""
    found: dict[str, object] = {}
    for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
            try:
                found[target.id] = ast.literal_eval(value)
            except ValueError:
                return None
    revision, down = found.get("revision"), found.get("down_revision")
    if not isinstance(revision, str):
        return None
    parents = () if down is None else (down,) if isinstance(down, str) else down
    if not isinstance(parents, tuple | list) or not all(isinstance(d, str) for d in parents):
        return None
    return revision, tuple(parents)


@functools.cache
def _head_of_files() -> str | None:
    """The one head of escalations/migrations/versions/, read from the files' ``revision`` and
    ``down_revision`` literals without importing Alembic (None: not one clear head; Alembic decides)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        ids = _revision_file_ids(path)
        if ids is None:
            return None
        revisions.add(ids[0])
        parents.update(ids[1])
    heads = revisions - parents
    return next(iter(heads)) if len(heads) == 1 and parents <= revisions else None


def head() -> str:
    rev = _head_of_files() or _scripts().get_current_head()
    assert rev is not None
    return rev


def _config(connection: Connection | None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def _known(revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:  # an id none of our revisions has
        return False


def _at_head(connection: Connection, target: str) -> bool:
    """The one plain query: is exactly ``target`` recorded? (Anything else: Alembic looks.)"""
    if not sa.inspect(connection).has_table(VERSION_TABLE):
        return False
    recorded = connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    return list(recorded) == [target]


def status_of(connection: Connection) -> SchemaStatus:
    target = head()
    if _at_head(connection, target):
        return SchemaStatus(SchemaState.CURRENT, target, target)
    revision = None
    if sa.inspect(connection).has_table(VERSION_TABLE):  # else no revision: told apart without Alembic
        from alembic.migration import MigrationContext

        revision = MigrationContext.configure(connection).get_current_revision()
    if revision is not None:
        if revision == target:
            return SchemaStatus(SchemaState.CURRENT, revision, target)
        state = SchemaState.BEHIND if _known(revision) else SchemaState.AHEAD
        return SchemaStatus(state, revision, target)
    inspector = sa.inspect(connection)
    tables = set(inspector.get_table_names())
    tables.discard(VERSION_TABLE)  # the table with no row in it: go by the other tables
    if not tables & set(all_models().tables):
        return SchemaStatus(SchemaState.EMPTY, None, target)
    if tables >= FIRST_RELEASE_TABLES and not _has_later_additions(inspector, tables):
        return SchemaStatus(SchemaState.FIRST_RELEASE, None, target)
    if not differences(connection):
        return SchemaStatus(SchemaState.UNVERSIONED_HEAD, None, target)
    return SchemaStatus(SchemaState.UNRECOGNISED, None, target)


def _has_later_additions(inspector: sa.Inspector, tables: set[str]) -> bool:
    for table, column in _ADDED_AFTER_FIRST_RELEASE.items():
        if column is None and table in tables:
            return True
        if column is not None and column in {c["name"] for c in inspector.get_columns(table)}:
            return True
    return False


def status(engine: Engine) -> SchemaStatus:
    from escalations.cases.store import READ_ONLY  # store imports this module

    # read-only: no write lock on SQLite, so a command looking never waits behind the service
    with engine.execution_options(**{READ_ONLY: True}).connect() as conn:
        return status_of(conn)


def refusal(st: SchemaStatus, url: str | sa.URL) -> SchemaError | None:
    """Why this release cannot use a database in this state (None: it can)."""
    where = shown_url(url)
    match st.state:
        case SchemaState.CURRENT:
            return None
        case SchemaState.EMPTY:
            return no_database(url)
        case SchemaState.BEHIND:
            return SchemaError(f"the database at {where} has schema revision {st.revision} and this release "
                               f"needs {st.head}: run escalations db upgrade")
        case SchemaState.FIRST_RELEASE | SchemaState.UNVERSIONED_HEAD:
            return SchemaError(f"the database at {where} has tables made before migrations, with no recorded "
                               f"schema revision: run escalations db upgrade")
        case SchemaState.AHEAD:
            return SchemaError(f"the database at {where} has schema revision {st.revision}, newer than this "
                               f"release knows (up to {st.head}): run the release that upgraded it")
        case SchemaState.UNRECOGNISED:
            return SchemaError(f"the database at {where} has tables but no recorded schema revision and is not "
                               f"an earlier release's schema: escalations db upgrade cannot tell what it is")
    raise AssertionError(st.state)


def require_current(engine: Engine) -> None:
    """Raise unless the database is at this release's head (read-only: changes nothing)."""
    if not database_exists(engine.url.render_as_string(hide_password=False)):
        raise no_database(engine.url)
    problem = refusal(status(engine), engine.url)
    if problem is not None:
        raise problem


def prepare(engine: Engine, *, in_child: bool = False) -> None:
    """Create an empty database at head; otherwise as :func:`require_current`. ``in_child``: an empty
    database (on disk or a server) is created by a short-lived child process (:func:`create_in_child`),
    so a long-running service never holds Alembic."""
    for attempt in range(5):
        try:
            st = status(engine)
            if st.state is SchemaState.EMPTY:
                in_memory = engine.dialect.name == "sqlite" and sqlite_path(
                    engine.url.render_as_string(hide_password=False)) is None
                if in_child and not in_memory:
                    create_in_child(engine.url)
                    require_current(engine)
                else:
                    upgrade(engine, only_if_empty=True)
                return
            break
        except sa.exc.OperationalError as exc:
            # A brand-new SQLite file switching to WAL while another process creates it can answer
            # "database is locked" at once, without waiting: look again.
            if engine.dialect.name != "sqlite" or "locked" not in str(exc) or attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
    problem = refusal(st, engine.url)
    if problem is not None:
        raise problem


#: How the child process of :func:`create_in_child` is given the database URL (never on its command
#: line, which any local user can read).
CHILD_URL_VARIABLE = "ESCALATIONS_SCHEMA_CHILD_URL"
#: The child's exit status when it printed a :class:`SchemaError` sentence (1: another failure).
CHILD_REFUSED = 2
#: Creating every table of an empty database takes well under a second; a child still at it after
#: this long (a server that accepts the connection and then never answers) is stopped.
CHILD_TIMEOUT_SECONDS = 300


def create_in_child(url: sa.URL) -> None:
    """Create an empty database at head in a child process (``python -m escalations.cases.schema_child``)
    and wait for it. Alembic, Mako and the dialect modules Alembic loads (~9 MiB) then never enter the
    service's own process, which would hold them for as long as it runs; a database made before is
    recognised without them (:func:`status_of`). The child takes the same lock as :func:`upgrade`, so
    two services starting on one empty database still create it once."""
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    env[CHILD_URL_VARIABLE] = url.render_as_string(hide_password=False)
    try:
        done = subprocess.run([sys.executable, "-m", "escalations.cases.schema_child"], env=env, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=CHILD_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise SchemaError(f"creating the database at {shown_url(url)} took more than {CHILD_TIMEOUT_SECONDS} s "
                          "and was stopped; run escalations db upgrade to see why") from None
    except OSError as exc:
        raise SchemaError(f"could not start a process to create the database at {shown_url(url)} "
                          f"({exc.strerror or type(exc).__name__}); run escalations db upgrade instead") from None
    if done.returncode == 0:
        return
    said = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    if done.returncode == CHILD_REFUSED and said:
        raise SchemaError(said[-1])
    raise SchemaError(f"creating the database at {shown_url(url)} failed (exit status {done.returncode}"
                      f"{': ' + said[-1] if said else ''}); run escalations db upgrade to see why")


def upgrade(engine: Engine, *, only_if_empty: bool = False) -> UpgradeResult:
    """Bring the database to head in one transaction (all of it, or none of it on a crash)."""
    from alembic import command
    from alembic.migration import MigrationContext

    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        st = status_of(conn)  # again, under the lock: another process may have been first
        if only_if_empty and st.state is not SchemaState.EMPTY:
            problem = refusal(st, engine.url)
            if problem is not None:
                raise problem
            return UpgradeResult(st.revision, st.head)
        if st.state in (SchemaState.AHEAD, SchemaState.UNRECOGNISED):
            problem = refusal(st, engine.url)
            assert problem is not None
            raise problem
        cfg = _config(conn)
        stamped = {SchemaState.FIRST_RELEASE: FIRST_RELEASE_REVISION,
                   SchemaState.UNVERSIONED_HEAD: st.head}.get(st.state)
        if stamped is not None:
            command.stamp(cfg, stamped)
        command.upgrade(cfg, "head")
        after = MigrationContext.configure(conn).get_current_revision()
        assert after == st.head
        result = UpgradeResult(stamped or st.revision, after, stamped)
    if result.before != result.after or stamped:
        log.info("schema.upgraded", before=result.before, after=result.after, stamped=stamped)
    return result


def differences(connection: Connection) -> list[object]:
    """What autogenerate would change to make the database match the models (empty: nothing).
    Only our tables: another application's in the same database are not ours to compare."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    metadata = all_models()
    ours = metadata.tables

    def include_name(name: str | None, type_: str, _parent: object) -> bool:
        return type_ != "table" or name in ours

    context = MigrationContext.configure(connection, opts={"compare_type": True, "include_name": include_name})
    return list(compare_metadata(context, metadata))


def write_revision(engine: Engine, message: str) -> None:
    """Developers: write versions/NNNN_*.py from the difference between a database at head and the
    models. Review it before committing."""
    from alembic import command

    number = f"{len(list(_scripts().walk_revisions())) + 1:04d}"
    with engine.begin() as conn:
        command.revision(_config(conn), message, autogenerate=True, rev_id=number)
