"""Set-up mistakes as sentences: the setting (or file:line) and what to do, never a traceback.

Code that knows which setting is wrong raises :class:`SetupError`; :func:`as_setup_errors` also
recognises the few library exceptions a wrong setting produces (a database URL that does not
parse, a database that is not there). The CLI prints them with :func:`report` and exits 2.
Messages carry setting names, files, hosts and ports: never a secret, a header or a child's detail.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

#: The exit status of every set-up mistake.
EXIT_SETUP = 2


class SetupError(Exception):
    """A user's set-up mistake. ``setting`` names the environment variable, option or file:line."""

    def __init__(self, setting: str, message: str, *, more: Sequence[SetupError] = ()) -> None:
        self.setting = setting
        self.message = message
        self.more = list(more)
        super().__init__(f"{setting}: {message}")

    @property
    def all(self) -> list[SetupError]:
        return [self, *self.more]

    @classmethod
    def of(cls, errors: Sequence[SetupError]) -> SetupError:
        return cls(errors[0].setting, errors[0].message, more=errors[1:])


def env_name(loc: Sequence[Any]) -> str:
    """A pydantic location in Settings as the environment variable that sets it."""
    head, *rest = [str(p) for p in loc] or ["?"]
    name = "ESCALATIONS_CONFIG" if head == "config_dir" else f"ESCALATIONS_{head.upper()}"
    if head == "mailboxes":  # a JSON list: the index and field, not a nested variable
        return name + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in rest)
    return "__".join([name, *(p.upper() for p in rest if not p.isdigit())])


def pydantic_reason(err: Any) -> str:
    """pydantic's reason without the input, which may be a password."""
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown setting (check the spelling; docs/operations.md lists the settings)"
    if kind == "missing":
        return "required, and not set"
    return str(err.get("msg", "not valid")).removeprefix("Value error, ")


def settings_errors(exc: ValidationError) -> list[SetupError]:
    return [SetupError(env_name(e["loc"]), pydantic_reason(e)) for e in exc.errors()]


def source_error(exc: BaseException) -> SetupError | None:
    """pydantic-settings' "error parsing value for field ..." (a list or mapping that is not JSON)."""
    from pydantic_settings import SettingsError

    if not isinstance(exc, SettingsError):
        return None
    match = re.search(r'field "([^"]+)"', str(exc))
    setting = env_name([match.group(1)]) if match else "ESCALATIONS_*"
    return SetupError(setting, 'is not valid JSON: lists and mappings are written in JSON, '
                               'e.g. ["it@council.example", "lead@council.example"]')


def _database_error(exc: BaseException) -> SetupError | None:
    try:
        from sqlalchemy import exc as sa
    except ImportError:  # pragma: no cover
        return None
    setting = "ESCALATIONS_DATABASE_URL (--database-url)"
    if isinstance(exc, (sa.ArgumentError, sa.NoSuchModuleError)) and not isinstance(exc, sa.ObjectNotExecutableError):
        return SetupError(setting, "is not a database URL I can use; write sqlite:////path/to/escalations.sqlite3 "
                                   "or postgresql+psycopg://user@host:5432/dbname")
    if isinstance(exc, (sa.OperationalError, sa.InterfaceError)):
        orig = getattr(exc, "orig", None)
        # The driver's first line names host, port and the refusal; later lines are hints and SQL.
        reason = (str(orig) if orig is not None else type(exc).__name__).strip().splitlines()[0][:200]
        return SetupError(setting, f"cannot use the database: {reason}. Check that it is running and "
                                   "the URL's host, port, user and database name")
    return None


def as_setup_errors(exc: BaseException) -> list[SetupError] | None:
    """The set-up errors ``exc`` stands for, or None when it is a bug (to be shown in full)."""
    from escalations.cases.schema import SchemaError
    from escalations.policy_files import ConfigError

    if isinstance(exc, SetupError):
        return exc.all
    if isinstance(exc, ValidationError) and exc.title == "Settings":
        return settings_errors(exc)
    if isinstance(exc, SchemaError):  # its message is one sentence naming what to run
        return [SetupError("database", str(exc))]
    if isinstance(exc, ConfigError):
        return [SetupError(f"{i.file}:{i.line}" if i.line else i.file, f"{i.field}: {i.message}")
                for i in exc.issues]
    if (source := source_error(exc)) is not None:
        return [source]
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return [SetupError("ESCALATIONS_SMTP_LISTEN_PORT (--smtp-port)",
                           "that port is already in use: stop the other process or choose another port")]
    db = _database_error(exc)
    return [db] if db is not None else None


def report(errors: Sequence[SetupError], write: Any) -> None:
    """One line per error (``write`` is a console's print), then what to run for the details."""
    for e in errors:
        write(f"error: {e.setting}: {e.message}")
    write("(run with --debug for the details)" if len(errors) < 2 else
          f"{len(errors)} set-up errors; run with --debug for the details")
