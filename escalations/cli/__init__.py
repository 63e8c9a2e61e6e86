"""Command line (typer), thin: a module per command group, one set-up error printer (base.py).

Each module adds its commands to :data:`app` when imported. Importing this package imports none of
them: :data:`~escalations.cli.base.COMMANDS` names the module(s) of each command, imported when that
command runs, so a command's start-up pays only for its own imports. ``--help`` lists them all in
that table's order.
"""

from __future__ import annotations

from escalations.cli.base import COMMAND_MODULES, COMMANDS, app, import_commands
from escalations.private import private_umask

__all__ = ["COMMANDS", "COMMAND_MODULES", "app", "import_commands", "main"]


def main() -> None:
    private_umask()
    app()
