"""Header values of a message: Message-IDs, address lists (8-bit, encoded words, odd syntax), dates.

Pure: no I/O; a value that cannot be read is left out (and noted in ``defects``), never raised.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Iterable
from datetime import UTC, datetime

from escalations.parsers.charsets import decode_header_value, unsurrogate

__all__ = ["DELIVERY_HEADERS", "addresses", "header_date", "msg_ids"]

DELIVERY_HEADERS = ("delivered-to", "x-original-to", "envelope-to", "x-envelope-to")
_MSG_ID_RE = re.compile(r"<([^<>\s]+)>")


def msg_ids(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    ids = _MSG_ID_RE.findall(value)
    if not ids:
        ids = [t for t in value.split() if "@" in t]
    return tuple(dict.fromkeys(i.strip() for i in ids if i.strip()))


def addresses(raw_values: Iterable[str]) -> list[tuple[str, str]]:
    """(display name, lowercased addr-spec) pairs; entries without an @ are dropped."""
    pairs: list[tuple[str, str]] = []
    for raw in raw_values:
        value = re.sub(r"\r?\n[ \t]*", " ", unsurrogate(raw))
        try:
            found = email.utils.getaddresses([value])
        except Exception:
            found = []
        if not found or all(not a for _, a in found):
            found = [("", a) for a in re.findall(r"[\w.+'=-]+@[\w.-]+\w", value)]
        for name, addr in found:
            addr = addr.strip().strip("<>").strip()
            if "@" not in addr or " " in addr:
                continue
            pairs.append((decode_header_value(name).strip().strip('"'), addr.lower()))
    return pairs


def header_date(value: str | None, defects: list[str]) -> datetime | None:
    if not value:
        return None
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        defects.append("unparseable Date header")
        return None
    if dt is None:  # pragma: no cover - older Pythons
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt

