"""One MIME part's facts, read without ever raising: content type, parameters, file name,
disposition, decoded payload, and parts serialised back to bytes.

Pure: no I/O.
"""

from __future__ import annotations

import email.policy
import email.utils
from collections.abc import Iterable
from email.message import Message

from escalations.parsers.charsets import decode_header_value

__all__ = ["disposition", "filename", "param", "payload_bytes", "safe_ctype", "serialise"]


def safe_ctype(part: Message) -> str:
    try:
        return part.get_content_type().lower()
    except Exception:
        return "text/plain"


def param(part: Message, name: str) -> str | None:
    try:
        value = part.get_param(name)
    except Exception:
        return None
    if value is None:
        return None
    if isinstance(value, tuple):
        try:
            return email.utils.collapse_rfc2231_value(value)
        except Exception:
            return str(value[2])
    return str(value)


def filename(part: Message) -> str | None:
    name: str | None = None
    try:
        name = part.get_filename()
    except Exception:
        name = None
    if name is None:
        raw = param(part, "name")
        name = raw
    if name is None:
        return None
    return decode_header_value(str(name)) or None


def disposition(part: Message) -> str | None:
    try:
        d = part.get_content_disposition()
    except Exception:
        return None
    return d.lower() if d else None


def payload_bytes(part: Message, defects: list[str]) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:
        defects.append("undecodable transfer encoding")
        raw = part.get_payload()
        data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""
    if isinstance(data, bytes):
        return data
    return b""


def serialise(parts: Iterable[Message]) -> bytes:
    chunks: list[bytes] = []
    for p in parts:
        try:
            chunks.append(p.as_bytes(policy=email.policy.compat32))
        except Exception:
            chunks.append(b"".join(f"{k}: {v}\n".encode("utf-8", "surrogateescape")
                                   for k, v in p.raw_items()) + b"\n")
    return b"".join(chunks)

