from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings as hypothesis_settings

if TYPE_CHECKING:
    from escalations.app import App
from escalations.clock import FakeClock
from escalations.logs import configure_logging
from escalations.settings import RelaySettings, Settings

pytest_plugins = ["tests.servers.smtp", "tests.servers.postgres", "tests.servers.dovecot", "tests.servers.oauth"]

# CI explores the same examples on every run (a red build must be reproducible and not depend on
# luck); developers' runs keep exploring new ones, and hypothesis's database replays what failed.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    hypothesis_settings.load_profile("ci")

# A service a test starts (`escalations run` in a subprocess too) serves its web interface on a free
# port, never on the default 8080 another run on this machine may hold.
os.environ.setdefault("ESCALATIONS_WEB__BIND", "127.0.0.1:0")

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "config"
MAIL_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "mail"


@pytest.fixture(autouse=True, scope="session")
def _logging() -> None:
    configure_logging("json")


@pytest.fixture(autouse=True)
def _restore_umask() -> Iterator[None]:
    # The CLI sets umask 077 for the whole process (CliRunner runs it in ours): files the next
    # test's servers write (a Dovecot config read by another user when running as root) must not
    # inherit it.
    previous = os.umask(0o022)
    os.umask(previous)
    yield
    os.umask(previous)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'test.sqlite3'}"


@pytest.fixture
def clock() -> FakeClock:
    # Tuesday 3 November 2026, 10:00 GMT: a working day, before the day's end.
    return FakeClock(datetime(2026, 11, 3, 10, 0, tzinfo=UTC))


AppFactory = Callable[..., "App"]


@pytest.fixture
def make_app(tmp_path: Path, clock: FakeClock) -> Iterator[AppFactory]:
    from escalations.app import build_app

    built: list[App] = []

    def factory(database_url: str | None = None, *, relay_port: int | None = None, **overrides: object) -> App:
        settings = Settings(
            data_dir=tmp_path / "var",
            config_dir=CONFIG_DIR,
            database_url=database_url or f"sqlite:///{tmp_path / 'app.sqlite3'}",
            smtp_listen_port=0,
            relay=RelaySettings(host="127.0.0.1", port=relay_port, security="none") if relay_port else None,
            outbox_backoff_initial_seconds=0.01,
            outbox_backoff_max_seconds=0.05,
            process_interval_seconds=0.2,
            **overrides,  # type: ignore[arg-type]
        )
        app = build_app(settings, clock=clock)
        built.append(app)
        return app

    yield factory
    for app in built:
        app.close()
        app.store.engine.dispose()
