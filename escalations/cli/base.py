"""The root command: global options, settings, the one set-up error printer, shared helpers."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, cast

import typer
import typer.main
from pydantic import ValidationError
from pydantic_settings import SettingsError
from typer.core import TyperGroup

from escalations.clock import LONDON, iso, local
from escalations.errors import EXIT_SETUP, SetupError, as_setup_errors, report
from escalations.logs import configure_logging
from escalations.private import private_umask
from escalations.settings import Settings

if TYPE_CHECKING:
    from rich.console import Console

#: Every top-level command and group, in the order ``--help`` lists them, and the modules of
#: escalations/cli/ that register it (``cases`` gets export / learn / theme from records.py). A
#: command's modules are imported when it runs, so ``escalations cases list`` never imports the
#: service's, the web interface's or the records' (``--help`` and a mistyped name import them all).
COMMANDS: dict[str, tuple[str, ...]] = {
    "run": ("run",), "parse": ("messages",), "ingest": ("messages",), "report": ("records",),
    "tick": ("queues",), "status": ("health",), "web": ("web",),
    "cases": ("cases", "records"), "retention": ("records",), "outbox": ("queues",), "timers": ("queues",),
    "quarantine": ("queues",), "mailbox": ("health",), "db": ("db",), "config": ("policy",),
    "policy": ("policy",), "users": ("web",), "audit": ("web",),
}
#: The modules, in the order the commands they register are listed.
COMMAND_MODULES = tuple(dict.fromkeys(m for modules in COMMANDS.values() for m in modules))


def import_commands(modules: tuple[str, ...] = COMMAND_MODULES) -> None:
    """Register these modules' commands on :data:`app` (each module adds its own when imported)."""
    for module in modules:
        importlib.import_module(f"escalations.cli.{module}")


class _SetupErrorsAsSentences(TyperGroup):
    """The one error printer: every command's set-up mistakes become a sentence and exit 2. Commands
    come from :data:`COMMANDS`, each module imported when its command is first asked for."""

    _loaded: set[str]

    def list_commands(self, ctx: Any) -> list[str]:
        return [*COMMANDS, *(name for name in self.commands if name not in COMMANDS)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        loaded = self.__dict__.setdefault("_loaded", set())
        if cmd_name in COMMANDS and cmd_name not in loaded:
            import_commands(COMMANDS[cmd_name])
            command = _registered(cmd_name)
            if command is not None:
                self.commands[cmd_name] = command
            loaded.add(cmd_name)
        elif cmd_name not in COMMANDS and cmd_name not in self.commands:
            # a mistyped name: every command loaded, so "Did you mean ...?" is offered from all of them
            for name in COMMANDS:
                self.get_command(ctx, name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except Exception as exc:
            errors = as_setup_errors(exc)
            if errors is None or ctx.meta.get("escalations.debug"):
                raise
            report(errors, lambda line: err.print(line, markup=False, highlight=False, soft_wrap=True))
            ctx.exit(EXIT_SETUP)



app = typer.Typer(help="Resolving professional differences: the partnership escalation service.",
                  no_args_is_help=True, pretty_exceptions_enable=False, cls=_SetupErrorsAsSentences)


def _registered(name: str) -> Any:
    """The click command or group a module registered on :data:`app` under ``name`` (None: none)."""
    for info in app.registered_commands:
        if info.callback is not None and (info.name or typer.main.get_command_name(info.callback.__name__)) == name:
            return typer.main.get_command_from_info(info, pretty_exceptions_short=app.pretty_exceptions_short,
                                                    rich_markup_mode=app.rich_markup_mode)
    for group in app.registered_groups:
        if group.name == name:
            return typer.main.get_group_from_info(group, pretty_exceptions_short=app.pretty_exceptions_short,
                                                  rich_markup_mode=app.rich_markup_mode,
                                                  suggest_commands=app.suggest_commands)
    return None

class _LazyConsole:
    """A rich ``Console`` made on first use. rich (~2 MiB and 40 modules) is for tables and messages
    at a terminal; ``escalations run`` prints its start-up lines without it and never needs it unless
    it has an error to report (or runs the demo)."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


console = cast("Console", _LazyConsole())
err = cast("Console", _LazyConsole(stderr=True))

__all__ = [
    "COMMANDS",
    "COMMAND_MODULES",
    "LONDON",
    "JsonOpt",
    "app",
    "build",
    "console",
    "err",
    "get_settings",
    "import_commands",
    "iso",
    "local",
    "local_iso",
    "parse_when",
    "print_json",
    "schema_refused",
]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


@app.callback()
def main_callback(
    ctx: typer.Context,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", envvar="ESCALATIONS_DATA_DIR",
                        help="SQLite database and captured mail [default: ./var]")] = None,
    config: Annotated[Path | None, typer.Option("--config", envvar="ESCALATIONS_CONFIG",
                      help="Configuration folder [default: the repository's config/]")] = None,
    database_url: Annotated[str | None, typer.Option("--database-url", envvar="ESCALATIONS_DATABASE_URL",
                            help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db [default: SQLite]")] = None,
    debug: Annotated[bool, typer.Option("--debug", envvar="ESCALATIONS_DEBUG",
                     help="Show the full traceback of set-up errors.")] = False,
) -> None:
    private_umask()  # raw mail and children's details: nothing any command writes is for other users
    ctx.meta["escalations.debug"] = debug
    overrides: dict[str, Any] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if config is not None:
        overrides["config_dir"] = config
    if database_url is not None:
        overrides["database_url"] = database_url
    try:
        ctx.obj = Settings(**overrides)
    except (ValidationError, SetupError, SettingsError) as exc:
        # field and reason only: pydantic's own text repeats the input, which may be a secret
        errors = as_setup_errors(exc) or [SetupError("ESCALATIONS_*", "not valid")]
        if ctx.invoked_subcommand == "config":  # config check reports them with everything else
            ctx.obj = SettingsNotValid(overrides.get("config_dir"), errors)
            return
        if debug:
            raise
        raise SetupError.of(errors) from None


@dataclass
class SettingsNotValid:
    """What `config check` gets when the settings themselves are wrong."""

    config_dir: Path | None
    errors: list[SetupError]


def get_settings(ctx: typer.Context) -> Settings:
    obj = ctx.find_root().obj
    if isinstance(obj, SettingsNotValid):
        raise SetupError.of(obj.errors)
    assert isinstance(obj, Settings)
    return obj


def build(ctx: typer.Context, log_format: str = "console", level: int = logging.WARNING, *,
           read_only: bool = False) -> Any:
    """``read_only`` commands never create or alter a schema: they need one at this release's head."""
    from escalations.app import build_app

    configure_logging("json" if log_format == "json" else "console", level)
    # ConfigError, SchemaError and the like: printed as sentences by _SetupErrorsAsSentences
    return build_app(get_settings(ctx), read_only=read_only)


def schema_refused(exc: Exception) -> NoReturn:
    err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2) from None


def local_iso(value: str | None) -> str:
    return local(datetime.fromisoformat(value)) if value else "-"


def parse_when(value: str) -> datetime:
    """ISO date/time; a naive one is Europe/London local time."""
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"not an ISO date/time: {value!r}") from exc
    return (dt.replace(tzinfo=LONDON) if dt.tzinfo is None else dt).astimezone(UTC)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


