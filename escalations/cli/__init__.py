"""Command line (typer), thin: a module per command group, one set-up error printer (base.py).

Each module adds its commands to :data:`app` when imported.
"""

from __future__ import annotations

from escalations.cli import cases, db, health, messages, policy, queues, run
from escalations.cli.base import app
from escalations.private import private_umask

__all__ = ["app", "cases", "db", "health", "main", "messages", "policy", "queues", "run"]


def main() -> None:
    private_umask()
    app()
