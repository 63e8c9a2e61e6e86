"""A cache of the validated configuration, so a command does not re-read and re-check every YAML file.

The cache is one pickle in the data directory, written with private mode (0600) and read only when
it is a regular file owned by this user that nobody else can write. It is keyed on:

- every config file's path, size, modification time (ns) and inode, and the directories' own mtimes
  (a file added, removed, renamed or edited changes the key);
- this package's version and the size/mtime of the modules that define and check the configuration
  (a pickle is never trusted across versions of the code), and the Python, pydantic and PyYAML versions.

A key that does not match, a file that cannot be read or unpickled: the cache is ignored and the
configuration loaded from the YAML files (then written again). Only a configuration that loaded
without errors is cached, so a mistake is reported every time until it is fixed.

The key is written in plain before the pickle, so a stale file is never unpickled and
:func:`is_current` can tell that the configuration is valid without unpickling it (nor importing
the policy model): a read-only command that never reads the configuration need not load it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import pickle
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from escalations.routing.policy.model import PolicyConfig

CACHE_NAME = "config-cache.pickle"
#: Bump when the cache file's layout changes.
_FORMAT = 2
#: What the file starts with: this line, then the key (64 hex digits) and a newline, then the pickle.
_MAGIC = b"escalations config cache 2\n"
_KEY_BYTES = 64
#: Packages whose code defines what a validated configuration is.
_CODE_PACKAGES = ("policy_files", "routing/policy")


def _stat_entry(path: Path) -> list[Any]:
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns, st.st_ino]


@functools.cache
def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _code_entries() -> list[list[Any]]:
    root = Path(__file__).resolve().parent.parent  # the escalations package
    return [_stat_entry(f) for pkg in _CODE_PACKAGES for f in sorted((root / pkg).glob("*.py"))]


def cache_key(config_dir: Path) -> str:
    """A digest that changes whenever any config file or the configuration code changes."""
    config_dir = config_dir.resolve()
    files: list[list[Any]] = []
    for sub in ("partnerships", "agencies"):
        d = config_dir / sub
        if d.is_dir():
            files.append([str(d), d.stat().st_mtime_ns])
            files.extend(_stat_entry(f) for f in sorted(d.glob("*.yaml")))
    blob = json.dumps({
        "format": _FORMAT, "escalations": _version("escalations"), "python": sys.version,
        "pydantic": _version("pydantic"), "pyyaml": _version("PyYAML"), "code": _code_entries(),
        "config_dir": str(config_dir), "files": files,
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@contextlib.contextmanager
def _private_file(cache_dir: Path) -> Iterator[IO[bytes] | None]:
    """The cache file opened for reading, or None when it is missing or not ours alone."""
    try:
        fd = os.open(cache_dir / CACHE_NAME, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        yield None
        return
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        # not ours alone: never unpickle it
        yield f if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077 else None


def _stored_key(f: IO[bytes]) -> str | None:
    head = f.read(len(_MAGIC) + _KEY_BYTES + 1)
    if not head.startswith(_MAGIC) or not head.endswith(b"\n"):
        return None
    return head[len(_MAGIC):-1].decode("ascii", "replace")


def is_current(cache_dir: Path, key: str) -> bool:
    """Whether the cache holds the configuration for ``key``: then it loaded without errors (its
    header only is read; nothing is unpickled)."""
    with _private_file(cache_dir) as f:
        return f is not None and _stored_key(f) == key


def read_cached(cache_dir: Path, key: str) -> PolicyConfig | None:
    """The cached configuration for ``key``, or None (missing, stale, not private, unreadable)."""
    with _private_file(cache_dir) as f:
        if f is None or _stored_key(f) != key:
            return None
        try:
            cfg = pickle.load(f)
        except Exception:  # a truncated or foreign file: load from YAML instead
            return None
    from escalations.routing.policy.model import PolicyConfig

    return cfg if isinstance(cfg, PolicyConfig) else None


def write_cached(cache_dir: Path, key: str, cfg: PolicyConfig) -> None:
    """Store ``cfg`` under ``key`` (atomically, mode 0600); silently skipped when it cannot be."""
    if not cache_dir.is_dir():
        return  # the data directory is created by the commands that write; a reader never makes it
    tmp = cache_dir / f".{CACHE_NAME}.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(_MAGIC + key.encode("ascii") + b"\n")
            pickle.dump(cfg, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, cache_dir / CACHE_NAME)
    except (OSError, pickle.PicklingError):
        with contextlib.suppress(OSError):
            tmp.unlink()
