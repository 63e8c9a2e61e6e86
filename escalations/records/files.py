"""Files the records package writes: they hold personal data, so only their owner may read them."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

from escalations.private import FILE_MODE

__all__ = ["ExportFormat", "write_private"]


class ExportFormat(StrEnum):
    DOCX = "docx"
    PDF = "pdf"
    JSON = "json"


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, FILE_MODE)
