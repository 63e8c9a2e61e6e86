"""Text out of mail's bytes whatever charset they claim: body parts and RFC 2047 encoded words.

Pure: no I/O. Every step falls back instead of raising (a wrong or unknown charset, 8-bit bytes in a
header, a broken encoded word) and notes what it found in ``defects``.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import quopri
import re

__all__ = ["decode_bytes", "decode_header_value", "unsurrogate"]

_ENCODED_WORD_RE = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")


def _codec(charset: str | None) -> str | None:
    """The Python codec for a MIME charset name, or None when unknown."""
    if not charset:
        return None
    name = charset.strip().strip('"').lower()
    if "*" in name:  # RFC 2231 language suffix: utf-8*en
        name = name.split("*", 1)[0]
    aliases = {"utf8": "utf-8", "unicode-1-1-utf-7": "utf-7", "x-unknown": "", "unknown-8bit": "",
               "unknown": "", "x-user-defined": "", "default": "", "ansi_x3.4-1968": "ascii",
               "iso-8859-8-i": "iso-8859-8", "x-mac-roman": "mac-roman", "134": "gbk"}
    name = aliases.get(name, name)
    if not name:
        return None
    try:
        info = codecs.lookup(name)
    except Exception:  # LookupError; ValueError: a NUL or other junk in the charset name
        return None
    # rot13, base64, zlib... are not text encodings; punycode, idna and the escape codecs are not
    # MIME charsets and raise on ordinary bytes.
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_CHARSETS:
        return None
    return info.name


_NOT_CHARSETS = frozenset({"punycode", "idna", "undefined", "unicode-escape", "raw-unicode-escape",
                           "unicode_escape", "raw_unicode_escape"})


def decode_bytes(data: bytes, charset: str | None, defects: list[str] | None = None) -> str:
    """Decode text whose declared charset may be wrong, missing or unknown; never raises."""
    notes = defects if defects is not None else []
    codec = _codec(charset)
    if codec is not None:
        try:
            return data.decode(codec)
        except Exception:  # UnicodeError and whatever else a codec raises on hostile bytes
            pass
    for fallback in ("utf-8", "cp1252", "latin-1"):
        if fallback == codec:
            continue
        try:
            text = data.decode(fallback)
        except UnicodeDecodeError:
            continue
        if charset and codec is None:
            notes.append(f"undecodable charset: {charset}, used {fallback}")
        elif charset:
            notes.append(f"charset {charset} declared but data is not {codec}, used {fallback}")
        elif fallback != "utf-8":
            notes.append(f"no charset declared and data is not utf-8, used {fallback}")
        return text
    return data.decode("latin-1")  # pragma: no cover - latin-1 decodes every byte string


def unsurrogate(value: str) -> str:
    """Header values of 8-bit headers carry surrogate escapes; decode them as utf-8, else latin-1."""
    if not any("\udc80" <= ch <= "\udcff" for ch in value):
        return value
    raw = value.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _decode_encoded_word(charset: str, enc: str, text: str) -> bytes | None:
    if enc.lower() == "b":
        cleaned = re.sub(r"[^A-Za-z0-9+/=]", "", text).rstrip("=")
        cleaned += "=" * (-len(cleaned) % 4)
        try:
            return base64.b64decode(cleaned)
        except (binascii.Error, ValueError):
            return None
    return quopri.decodestring(text.replace("_", " ").encode("ascii", "replace"), header=False)


def decode_header_value(raw: str, defects: list[str] | None = None) -> str:
    """Unfold and decode a header value (RFC 2047 words, 8-bit bytes); never raises."""
    notes = defects if defects is not None else []
    value = unsurrogate(raw)
    value = re.sub(r"\r?\n[ \t]*", " ", value).replace("\r", " ")
    if "=?" not in value:
        return value.strip()
    out: list[str] = []
    pos = 0
    pending: list[tuple[str, bytes]] = []  # adjacent encoded words: join bytes of the same charset

    def flush() -> None:
        i = 0
        while i < len(pending):
            cs = pending[i][0]
            j = i
            while j < len(pending) and pending[j][0] == cs:
                j += 1
            out.append(decode_bytes(b"".join(b for _, b in pending[i:j]), cs, notes))
            i = j
        pending.clear()

    for m in _ENCODED_WORD_RE.finditer(value):
        between = value[pos:m.start()]
        if between and not (pending and between.isspace()):
            flush()
            out.append(between)
        decoded = _decode_encoded_word(m.group(1), m.group(2), m.group(3))
        if decoded is None:
            flush()
            notes.append("broken encoded word")
            out.append(m.group(0))
        else:
            pending.append((m.group(1), decoded))
        pos = m.end()
    flush()
    out.append(value[pos:])
    return "".join(out).strip()

