"""What a command or the service imports (issue 13, "Footprint"): each check runs in a fresh
interpreter and looks at ``sys.modules``, so a module-level import of a heavy library in the wrong
place makes it fail. No timings are asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from escalations.cases import schema
from escalations.cases.store import make_engine
from escalations.cli import COMMANDS, app, import_commands
from tests.conftest import CONFIG_DIR, REPO

#: Never needed to list cases, nor by ``import escalations.cli`` (``--help`` is not this).
NOT_FOR_CASES_LIST = ("alembic", "docx", "matplotlib", "dateparser", "starlette", "authlib", "argon2",
                      "requests", "uvicorn", "jinja2")

_REPORT = """
import atexit, json, sys
def _report():
    sys.stdout.flush()
    sys.__stderr__.write("\\nMODULES " + json.dumps(sorted(sys.modules)) + "\\n")
atexit.register(_report)
"""


def _modules(code: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> set[str]:
    """Every module imported by ``code`` run in a new interpreter (reported at exit)."""
    done = subprocess.run([sys.executable, "-c", _REPORT + code, *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd or REPO)
    marker = [line for line in done.stderr.splitlines() if line.startswith("MODULES ")]
    assert marker and done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    return set(json.loads(marker[-1][len("MODULES "):]))


def _imported(code: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> set[str]:
    """Top-level packages imported by ``code`` run in a new interpreter."""
    return {m.split(".")[0] for m in _modules(code, *args, env=env, cwd=cwd)}


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESCALATIONS_")}
    env.update({"ESCALATIONS_DATA_DIR": str(tmp_path / "var"), "ESCALATIONS_CONFIG": str(CONFIG_DIR)})
    return env


def test_importing_the_cli_imports_no_command() -> None:
    found = _imported("import escalations.cli")
    assert not found & {*NOT_FOR_CASES_LIST, "sqlalchemy", "sqlmodel"}, found & {*NOT_FOR_CASES_LIST, "sqlalchemy"}


def test_cases_list_on_an_empty_database_imports_only_what_it_reads(tmp_path: Path) -> None:
    env = _env(tmp_path)
    upgraded = subprocess.run([sys.executable, "-m", "escalations", "db", "upgrade"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
    assert upgraded.returncode == 0, upgraded.stderr
    code = "import sys; sys.argv = ['escalations', 'cases', 'list', *sys.argv[1:]]\nfrom escalations.cli import main\nmain()"
    # the table (through escalations.views) and JSON; the first run writes the config cache, the next read it
    for run, extra in enumerate(([], ["--json"], [])):
        modules = _modules(code, *extra, env=env, cwd=tmp_path)
        found = {m.split(".")[0] for m in modules}
        assert not found & set(NOT_FOR_CASES_LIST), sorted(found & set(NOT_FOR_CASES_LIST))
        assert "escalations.cases.store" in modules and "sqlalchemy" in found  # it did run
        assert not modules & {"escalations.web.models", "escalations.records.models"}  # tables it never reads
        if run:  # the configuration is cached, so known valid, and cases list never reads it
            assert not modules & {"escalations.routing.policy.model", "holidays", "yaml"}, \
                sorted(modules & {"escalations.routing.policy.model", "holidays", "yaml"})


def test_the_web_interface_imports_no_hasher_no_oidc_client_no_word_until_used() -> None:
    found = _imported("import escalations.web.server, escalations.web.passwords, escalations.records.docx")
    assert "starlette" in found
    assert not found & {"argon2", "authlib", "docx", "matplotlib", "segno", "pyotp"}


def test_a_password_still_verifies_after_a_lazy_start() -> None:
    from escalations.web.passwords import TotpSealer, hash_password, verify_password

    stored = hash_password("correct horse battery")
    assert verify_password(stored, "correct horse battery")
    assert not verify_password(stored, "wrong horse battery")
    assert not verify_password(None, "correct horse battery")  # no account: the dummy hash, still False
    sealer = TotpSealer(b"k" * 32)
    assert sealer.unseal(sealer.seal("JBSWY3DPEHPK3PXP", 7), 7) == "JBSWY3DPEHPK3PXP"
    assert sealer.unseal(sealer.seal("JBSWY3DPEHPK3PXP", 7), 8) is None


def test_the_service_on_sqlite_imports_no_postgresql_dialect() -> None:
    modules = _modules("import escalations.app, escalations.service, escalations.cases.workflow, "
                       "escalations.cases.processor, escalations.cases.policies, escalations.mailer.outbox")
    assert "escalations.cases.policies" in modules
    assert not {m for m in modules if m.startswith("sqlalchemy.dialects.postgresql")}


def test_all_models_holds_every_table_even_in_a_process_that_imported_only_the_schema() -> None:
    code = "import json\nfrom escalations.cases import schema\nprint(json.dumps(sorted(schema.all_models().tables)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert {"case", "outbox", "legal_hold", "form_copy", "web_user", "web_session"} <= set(json.loads(done.stdout))


def test_the_head_read_from_the_revision_files_is_alembics() -> None:
    assert schema._head_of_files() == schema._scripts().get_current_head() == schema.head()


def test_the_head_is_left_to_alembic_when_the_files_do_not_say(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    versions = tmp_path / "versions"
    versions.mkdir()
    (versions / "0001_a.py").write_text('revision = "0001"\ndown_revision = None\n')
    (versions / "0002_b.py").write_text('revision = "0002"\ndown_revision = "0001"\n')
    (versions / "0003_c.py").write_text('revision = "0003"\ndown_revision = "0001"\n')  # a second head
    monkeypatch.setattr(schema, "MIGRATIONS", tmp_path)
    schema._head_of_files.cache_clear()
    try:
        assert schema._head_of_files() is None
        (versions / "0003_c.py").write_text('revision = "0003"\ndown_revision = "0002"\n')
        schema._head_of_files.cache_clear()
        assert schema._head_of_files() == "0003"
        (versions / "0004_d.py").write_text('revision = REV\ndown_revision = "0003"\n')  # not a literal
        schema._head_of_files.cache_clear()
        assert schema._head_of_files() is None
    finally:
        schema._head_of_files.cache_clear()


def test_the_command_table_names_every_command_the_modules_register() -> None:
    import_commands()
    registered = {info.name or info.callback.__name__.replace("_", "-")
                  for info in app.registered_commands if info.callback is not None}
    registered |= {g.name for g in app.registered_groups if g.name}
    assert registered == set(COMMANDS)


def test_help_lists_every_command_and_a_group_has_all_its_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0
    lines = [line.strip("│ ").split(" ", 1)[0] for line in listed.output.splitlines()]
    assert [n for n in lines if n in COMMANDS] == list(COMMANDS)
    cases = runner.invoke(app, ["cases", "--help"], env={"COLUMNS": "200"})
    assert cases.exit_code == 0
    for sub in ("list", "show", "export", "learn", "theme"):  # export/learn/theme come from records.py
        assert f" {sub} " in cases.output
    typo = runner.invoke(app, ["casse", "list"], env={"COLUMNS": "200"})
    assert typo.exit_code == 2 and "Did you mean 'cases'" in typo.output


def test_a_service_whose_mailboxes_sign_in_with_a_password_never_loads_requests() -> None:
    """requests (for OAuth2 token endpoints) is loaded when a token is first fetched."""
    found = _imported("import escalations.service, escalations.app, escalations.mailer.imap_watcher, "
                      "escalations.mailer.smtp_sender, escalations.mailer.mailbox_check, escalations.web.server")
    assert "escalations" in found and "requests" not in found


_UK_BANK_HOLIDAYS = """
import json, sys
from datetime import date, timedelta
{prelude}
from escalations.routing.calendar import DIVISIONS, WorkingCalendar
days = [date(1995, 1, 1) + timedelta(days=i) for i in range((date(2045, 12, 31) - date(1995, 1, 1)).days + 1)]
calendars = {{division: WorkingCalendar(division=division) for division in DIVISIONS}}
out = {{division: [[d.isoformat(), c.holiday_name(d)] for d in days if c.is_bank_holiday(d)]
       for division, c in calendars.items()}}
countries = sorted(m for m in sys.modules if m.startswith("holidays.countries."))
print(json.dumps({{"holidays": out, "countries": countries}}))
"""


def _bank_holidays(prelude: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", _UK_BANK_HOLIDAYS.format(prelude=prelude)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_a_working_calendar_loads_the_united_kingdom_alone_with_the_same_bank_holidays() -> None:
    alone = _bank_holidays("")
    # holidays' country index imported first, as any other user of the library would: the whole package
    whole = _bank_holidays("import holidays.countries")
    assert alone["countries"] == ["holidays.countries.united_kingdom"]
    assert len(whole["countries"]) > 100  # type: ignore[arg-type]  # the index did import every country
    assert alone["holidays"] == whole["holidays"]
    holidays_by_division = alone["holidays"]
    assert isinstance(holidays_by_division, dict)
    # a few known ones, so the comparison is not of two empty lists
    assert ["2023-05-08", "Coronation of Charles III"] in holidays_by_division["england-and-wales"]
    assert any(d == "2025-12-01" for d, _ in holidays_by_division["scotland"])  # St Andrew's Day, observed
    assert any(d == "2025-07-14" for d, _ in holidays_by_division["northern-ireland"])  # the Boyne, observed


def test_the_service_loads_neither_rich_nor_pygments_nor_rapidfuzz() -> None:
    """structlog is imported with rich hidden (escalations/__init__.py), the CLI's consoles are made on
    first use, and rapidfuzz only when a label no wording fits is looked up."""
    found = _imported(
        "import escalations.cli.run, escalations.cli.web, escalations.app, escalations.service\n"
        "from escalations.logs import configure_logging\n"
        "configure_logging('console')\n"
        "import structlog\n"
        "structlog.get_logger('t').info('started', count=1)\n"
        "from escalations.parsers.labels import default_labels, match_label\n"
        "assert match_label('Name of child: A B', default_labels()) is not None")
    assert "structlog" in found and "escalations" in found
    assert not found & {"rich", "pygments", "rapidfuzz"}, found & {"rich", "pygments", "rapidfuzz"}


def test_rich_and_rapidfuzz_still_load_when_used() -> None:
    found = _imported(
        "from escalations.cli.base import console\n"
        "console.print('a table', markup=False)\n"
        "from escalations.parsers.labels import default_labels, match_label\n"
        "label = match_label('Name of refferer: A B', default_labels())\n"
        "assert label is not None and label.fuzzy, label")
    assert {"rich", "rapidfuzz"} <= found


def test_the_service_creates_a_new_database_without_loading_alembic(tmp_path: Path) -> None:
    """``escalations run`` on a new database: a child process creates it (Alembic and Mako stay out
    of the service, which would hold them as long as it runs); the schema is then at head."""
    url = f"sqlite:///{tmp_path / 'new.sqlite3'}"
    code = (f"from escalations.app import build_app\nfrom escalations.settings import Settings\n"
            f"from escalations.cases import schema\n"
            f"app = build_app(Settings(database_url={url!r}, data_dir={str(tmp_path / 'var')!r}, "
            f"config_dir={str(CONFIG_DIR)!r}), schema_in_child=True)\n"
            f"assert schema.status(app.store.engine).state is schema.SchemaState.CURRENT\n"
            f"app.close()")
    found = _imported(code, env=_env(tmp_path))
    assert "sqlalchemy" in found and not found & {"alembic", "mako"}, found & {"alembic", "mako"}
    assert schema.status(make_engine(url)).state is schema.SchemaState.CURRENT
