"""Escalations: resolving professional differences over email."""

from __future__ import annotations

import sys


def _import_structlog_without_rich() -> None:
    """Import structlog with rich hidden from it, once, before any module of ours imports it.

    When rich is installed (the CLI draws its tables with it), structlog's ``dev`` and ``tracebacks``
    modules import ``rich.traceback`` and ``rich.pretty`` to pretty-print exceptions, and those pull
    in Pygments: ~90 modules in every process, the service included. Our processors replace an
    exception by its frames before any renderer sees it (:func:`escalations.logs.frames_only_exc_info`),
    so structlog's exception formatters are never used, rich or not. rich itself stays importable:
    the hiding is undone as soon as structlog is in. With the CLI's consoles made on first use and
    rapidfuzz imported when first needed, ``escalations run`` idles at 100.7 MiB instead of 106.8
    (bench/footprint.py, 500-referral catch-up; after a restart 91.2 instead of 98.1).
    """
    if "structlog" in sys.modules:
        return
    missing = object()
    saved = sys.modules.get("rich", missing)
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` raises ImportError
    try:
        import structlog  # noqa: F401
    finally:
        if saved is missing:
            del sys.modules["rich"]
        else:
            sys.modules["rich"] = saved  # type: ignore[assignment]


_import_structlog_without_rich()
