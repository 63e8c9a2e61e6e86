"""Limits on the work one message may cost, and the fixed codes recorded when one is hit.

Pure: the values come from settings through the caller. A limit never stops a message from being
used: the part over it is skipped, the code is recorded on the ParsedMessage (``limits_hit``) and
the rest of the mail is read as usual. Codes are fixed strings, safe to put in a case event or a
quarantine reason (never a filename, header value or text from the message).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["LimitExceeded", "LimitHit", "Limits", "check_zip", "read_zip_member"]


class LimitHit(StrEnum):
    ATTACHMENT_TOO_LARGE = "attachment_too_large"
    ATTACHMENT_RATIO = "attachment_ratio"
    ATTACHMENT_TOO_COMPLEX = "attachment_too_complex"
    TOO_MANY_PARTS = "too_many_parts"
    TOO_DEEP = "too_deep"
    HTML_TOO_LARGE = "html_too_large"
    EXTRACTION_TIMEOUT = "extraction_timeout"
    EXTRACTION_MEMORY = "extraction_memory"
    EXTRACTION_FAILED = "extraction_failed"


@dataclass(frozen=True)
class Limits:
    #: MIME parts (leaves and containers, embedded messages included) read per message.
    max_mime_parts: int = 500
    #: Multipart / embedded-message nesting read; deeper structure is skipped.
    max_mime_depth: int = 20
    #: An attachment (or all members of one zip together) larger than this is not read.
    attachment_max_decompressed_bytes: int = 20 * 1000 * 1000
    #: A zip member inflating more than this many times its compressed size is a bomb.
    attachment_max_ratio: int = 100
    #: The ratio rule applies to members at least this large (small XML parts compress well).
    ratio_min_bytes: int = 1024 * 1024
    #: Paragraphs and table cells in one Word document.
    docx_max_elements: int = 50_000
    #: HTML bodies longer than this are stripped of tags instead of converted.
    html_max_chars: int = 2_000_000
    #: Read .docx, winmail.dat and text attachments at all (off in the fallback parse).
    extract_attachments: bool = True


class LimitExceeded(Exception):
    """An attachment is over a limit; ``code`` is the LimitHit to record."""

    def __init__(self, code: LimitHit) -> None:
        super().__init__(code.value)
        self.code = code


def check_zip(zf: zipfile.ZipFile, limits: Limits) -> None:
    """Reject a zip by its directory before anything is decompressed."""
    total = 0
    for info in zf.infolist():
        size = max(info.file_size, 0)
        total += size
        if size > limits.attachment_max_decompressed_bytes or total > limits.attachment_max_decompressed_bytes:
            raise LimitExceeded(LimitHit.ATTACHMENT_TOO_LARGE)
        if size >= limits.ratio_min_bytes and size > limits.attachment_max_ratio * max(info.compress_size, 1):
            raise LimitExceeded(LimitHit.ATTACHMENT_RATIO)


def read_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """A member's bytes, reading at most ``limit`` + 1 of them: the declared size can lie."""
    chunks: list[bytes] = []
    got = 0
    with zf.open(info) as f:
        while True:
            chunk = f.read(min(1 << 16, limit + 1 - got))
            if not chunk:
                break
            got += len(chunk)
            if got > limit:
                raise LimitExceeded(LimitHit.ATTACHMENT_TOO_LARGE)
            chunks.append(chunk)
    return b"".join(chunks)
