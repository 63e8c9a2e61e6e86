"""Private files: the data directory holds raw mail and children's details, so nothing in it may be
readable by other users of the machine (ARCHITECTURE: the service runs with umask 077).

The umask covers what is created from now on; :func:`make_private` narrows what already exists
(a data directory made under a looser umask, or by an earlier version).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600

#: Files of the data directory that are always private (besides the database and sent mail).
_DATA_FILES = ("secret.key", "escalations.log")


def private_umask() -> int:
    """Set umask 077; returns the previous one."""
    return os.umask(PRIVATE_UMASK)


def sqlite_path(database_url: str) -> Path | None:
    from sqlalchemy.engine import make_url  # not for `import escalations.cli`: --help needs no SQLAlchemy

    url = make_url(database_url)
    if not url.drivername.startswith("sqlite") or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def _narrow(path: Path, mode: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        current = stat.S_IMODE(path.stat().st_mode)
        if current & ~mode:
            path.chmod(current & mode)


def make_private(data_dir: Path, database_url: str) -> None:
    """Data dir and sent/ 0700; the SQLite database (and its -wal/-shm), the log, the key and every
    sent/*.eml 0600."""
    _narrow(data_dir, DIR_MODE)
    for name in _DATA_FILES:
        _narrow(data_dir / name, FILE_MODE)
    sent = data_dir / "sent"
    if sent.is_dir():
        _narrow(sent, DIR_MODE)
        for f in sent.iterdir():
            if f.is_file():
                _narrow(f, FILE_MODE)
    db = sqlite_path(database_url)
    if db is not None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            _narrow(db.with_name(db.name + suffix), FILE_MODE)
