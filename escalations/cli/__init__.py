"""Command line (typer), thin: a module per command group, one set-up error printer (base.py).

Each module adds its commands to :data:`app` when imported; ``--help`` lists them in this order.
"""

from __future__ import annotations

import importlib

from escalations.cli.base import app
from escalations.private import private_umask

COMMAND_MODULES = ("run", "messages", "cases", "records", "queues", "health", "db", "policy", "web")
for _module in COMMAND_MODULES:
    importlib.import_module(f"escalations.cli.{_module}")

__all__ = ["COMMAND_MODULES", "app", "main"]


def main() -> None:
    private_umask()
    app()
