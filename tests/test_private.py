"""Private files (ARCHITECTURE: the service runs with umask 077): the data dir 0700, the database, the
log, the key and sent mail 0600 — with a loose umask (022) in the calling process, and for files made
earlier under it."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from escalations.cases import schema
from escalations.cases.store import make_engine
from escalations.cli import app
from tests.conftest import CONFIG_DIR
from tests.servers import free_port


@pytest.fixture
def loose_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)) or ".": mode(p) for p in [root, *root.rglob("*")]}


def loose_data_dir(data: Path) -> None:
    """A data dir as an earlier run under umask 022 left it."""
    (data / "sent").mkdir(parents=True)
    for name in ("secret.key", "escalations.log", "sent/000001-old@escalations.invalid.eml"):
        (data / name).write_text("x" * 64 if name == "secret.key" else "old\n")
    engine = make_engine(f"sqlite:///{data / 'escalations.sqlite3'}")  # WAL, as the service opens it
    schema.upgrade(engine)
    engine.dispose()
    assert mode(data) == 0o755 and mode(data / "escalations.sqlite3") == 0o644


def test_every_cli_command_makes_the_data_dir_private(tmp_path: Path, loose_umask: None) -> None:
    data = tmp_path / "var"
    loose_data_dir(data)
    env = {"ESCALATIONS_DATA_DIR": str(data), "ESCALATIONS_CONFIG": str(CONFIG_DIR), "ESCALATIONS_DATABASE_URL": ""}
    result = CliRunner().invoke(app, ["outbox", "list", "--json"], env=env)
    assert result.exit_code == 0, result.output
    found = modes(data)
    assert found.pop(".") == 0o700 and found.pop("sent") == 0o700
    assert found and all(m == 0o600 for m in found.values()), found
    assert os.umask(0o077) == 0o077  # and what it writes from now on is private too


@pytest.mark.servers
def test_the_service_writes_only_private_files(tmp_path: Path, loose_umask: None) -> None:
    """`escalations run --demo` started from a shell with umask 022, on a data dir made under it."""
    data = tmp_path / "var"
    loose_data_dir(data)
    env = {**os.environ, "ESCALATIONS_DATA_DIR": str(data), "ESCALATIONS_CONFIG": str(CONFIG_DIR)}
    env.pop("ESCALATIONS_DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "escalations", "run", "--demo", "--smtp-port", str(free_port())],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list((data / "sent").glob("*.eml"))) < 6:
            assert proc.poll() is None, proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
            time.sleep(0.2)
        found = modes(data)  # while it runs: the -wal and -shm files exist
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert len([n for n in found if n.startswith("sent/")]) >= 6
    assert {"escalations.log", "escalations.sqlite3-wal", "escalations.sqlite3-shm", "secret.key"} <= set(found)
    assert found.pop(".") == 0o700 and found.pop("sent") == 0o700
    assert all(m == 0o600 for m in found.values()), found
    assert mode(data / "escalations.log") == 0o600
