"""Raw RFC 5322 bytes -> ParsedMessage: decoded headers, body text, attachments, embedded mail.

Pure: no I/O, no configuration. Real-world mail is hostile (wrong charsets, 8-bit headers, broken
encoded words, MIME without boundaries), so every decoding step falls back instead of raising and
records what it noticed in ``defects``. Only input that is not an email at all raises
MessageParseError, so the pipeline can quarantine it.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email
import email.policy
import email.utils
import quopri
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from typing import Any

import html2text

from escalations.parsers.limits import LimitHit, Limits

__all__ = [
    "Attachment",
    "Limits",
    "MessageParseError",
    "ParsedMessage",
    "decode_bytes",
    "decode_header_value",
    "html_to_text",
    "parse_message",
]

MAX_DEPTH = 5  # message/rfc822 nesting we follow; deeper parts are kept as attachments

_ADDRESS_HEADERS = ("from", "to", "cc", "reply-to", "sender", "delivered-to", "x-original-to",
                    "envelope-to", "x-envelope-to", "resent-to", "return-path", "bcc")
_DELIVERY_HEADERS = ("delivered-to", "x-original-to", "envelope-to", "x-envelope-to")
_KNOWN_HEADERS = frozenset({
    "from", "to", "cc", "bcc", "subject", "date", "message-id", "received", "return-path",
    "delivered-to", "x-original-to", "mime-version", "content-type", "content-transfer-encoding",
    "reply-to", "sender", "in-reply-to", "references", "x-mailer", "user-agent", "envelope-to",
    "dkim-signature", "authentication-results", "thread-topic", "thread-index", "auto-submitted",
    "x-failed-recipients", "list-id", "precedence", "importance", "x-ms-exchange-organization-scl",
    "arc-seal", "x-received", "received-spf", "content-language",
})
_HEADER_LINE_RE = re.compile(rb"^[!-9;-~]{1,76}:")
_MBOX_FROM_RE = re.compile(rb"^From \S+")
_ENCODED_WORD_RE = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")
_MSG_ID_RE = re.compile(r"<([^<>\s]+)>")


class MessageParseError(ValueError):
    """The bytes are not an email message (no header block)."""


@dataclass(frozen=True)
class Attachment:
    filename: str | None
    content_type: str
    payload: bytes

    @property
    def size(self) -> int:
        return len(self.payload)


@dataclass(frozen=True)
class ParsedMessage:
    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    subject: str
    from_address: str | None
    from_name: str
    reply_to: tuple[str, ...]
    to: tuple[str, ...]
    cc: tuple[str, ...]
    delivered_to: tuple[str, ...]
    date: datetime | None
    headers: tuple[tuple[str, str], ...]
    text: str
    html: str | None
    attachments: tuple[Attachment, ...]
    embedded: tuple[ParsedMessage, ...]
    is_report: bool
    report_type: str | None
    defects: tuple[str, ...]
    content_type: str = "text/plain"
    #: LimitHit codes of the parts and attachments skipped (this message and those embedded in it).
    limits_hit: tuple[str, ...] = ()
    #: (source, text) of the readable forms among the attachments, when extracted already (by the
    #: parse worker); None: not extracted yet.
    attachment_texts: tuple[tuple[str, str], ...] | None = None

    def header(self, name: str) -> str | None:
        key = name.lower()
        for n, v in self.headers:
            if n == key:
                return v
        return None

    def header_all(self, name: str) -> tuple[str, ...]:
        key = name.lower()
        return tuple(v for n, v in self.headers if n == key)

    @property
    def all_recipients(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for a in (*self.to, *self.cc, *self.delivered_to):
            seen.setdefault(a.lower(), None)
        return tuple(seen)


# ---- charset handling --------------------------------------------------------------------------

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


def _unsurrogate(value: str) -> str:
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
    value = _unsurrogate(raw)
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


# ---- HTML -> text -------------------------------------------------------------------------------

_MSO_COMMENT_RE = re.compile(r"<!--\[if[^\]]*\]>.*?<!\[endif\]-->", re.S | re.I)
_DOWNLEVEL_RE = re.compile(r"<!\[(?:if[^\]]*|endif)\]>", re.I)
_STYLE_RE = re.compile(r"<(style|script|head)\b.*?</\1\s*>", re.S | re.I)
_CELL_END_RE = re.compile(r"</t[dh]\s*>", re.I)
_CELL_RE = re.compile(r"<t[dh]\b[^>]*>.*?</t[dh]\s*>", re.S | re.I)
_PARA_OPEN_RE = re.compile(r"<(?:p|div)\b[^>]*>", re.I)
_PARA_CLOSE_RE = re.compile(r"</(?:p|div)\s*>", re.I)
_MD_ESCAPE_RE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!>|])")


def _cell_text(cell: Any) -> str:
    return re.sub(r"\s+", " ", cell.text_content()).strip()


def _columns_as_lines(html: str) -> str:
    """Tables laid out in columns (labels across the top row, one record per row below, three or
    more columns) become "label: value" paragraphs, so they read like the usual two-column forms.

    Two-column tables are left alone: they are label/value rows already. Any parsing trouble leaves
    the HTML unchanged.
    """
    if "<table" not in html.lower():
        return html
    try:
        import lxml.html

        root = lxml.html.fromstring(html)
        changed = False
        for table in list(root.iter("table")):
            if table.find(".//table") is not None:
                continue  # layout table around the real one
            rows = [r for r in table.iter("tr")]
            cells = [[c for c in r if c.tag in ("td", "th")] for r in rows]
            width = len(cells[0]) if cells else 0
            if len(rows) < 2 or width < 3 or any(len(c) != width for c in cells):
                continue
            header = [_cell_text(c) for c in cells[0]]
            if not all(header) or any(len(h) > 120 for h in header):
                continue
            block = lxml.html.Element("div")
            for record in cells[1:]:
                for label, cell in zip(header, record, strict=True):
                    p = lxml.html.Element("p")
                    p.text = f"{label.rstrip(':')}: {_cell_text(cell)}"
                    block.append(p)
            table.getparent().replace(table, block)
            changed = True
        return lxml.html.tostring(root, encoding="unicode") if changed else html
    except Exception:  # malformed markup: html2text copes with it as it is
        return html


def html_to_text(html: str) -> str:
    """HTML body as plain text, one table cell per line so label/value cells stay separable."""
    cleaned = _MSO_COMMENT_RE.sub("", html)
    cleaned = _DOWNLEVEL_RE.sub("", cleaned)
    cleaned = _STYLE_RE.sub("", cleaned)
    cleaned = _columns_as_lines(cleaned)
    # paragraphs inside a table cell become lines, so a multi-line value cell stays one block
    cleaned = _CELL_RE.sub(lambda m: _PARA_OPEN_RE.sub("", _PARA_CLOSE_RE.sub("<br>", m.group(0))), cleaned)
    cleaned = _CELL_END_RE.sub(lambda m: "<br>" + m.group(0), cleaned)
    h = html2text.HTML2Text()
    h.body_width = 0
    h.ignore_images = True
    h.ignore_emphasis = True
    h.ignore_tables = True
    h.ignore_links = True
    h.unicode_snob = True
    try:
        text = h.handle(cleaned)
    except Exception:  # html2text on pathological markup: strip tags instead
        text = re.sub(r"<[^>]+>", "\n", cleaned)
    text = _MD_ESCAPE_RE.sub(r"\1", text).replace("\xa0", " ")
    lines = [ln.rstrip() for ln in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


# ---- header helpers -------------------------------------------------------------------------------

def _msg_ids(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    ids = _MSG_ID_RE.findall(value)
    if not ids:
        ids = [t for t in value.split() if "@" in t]
    return tuple(dict.fromkeys(i.strip() for i in ids if i.strip()))


def _addresses(raw_values: Iterable[str]) -> list[tuple[str, str]]:
    """(display name, lowercased addr-spec) pairs; entries without an @ are dropped."""
    pairs: list[tuple[str, str]] = []
    for raw in raw_values:
        value = re.sub(r"\r?\n[ \t]*", " ", _unsurrogate(raw))
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


def _date(value: str | None, defects: list[str]) -> datetime | None:
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


# ---- structure walk -------------------------------------------------------------------------------

@dataclass
class _Budget:
    """What one raw message may still cost, shared by the messages embedded in it."""

    limits: Limits
    parts: int = 0
    hits: list[str] = field(default_factory=list)

    def hit(self, code: LimitHit) -> None:
        if code.value not in self.hits:
            self.hits.append(code.value)

    def take_part(self) -> bool:
        self.parts += 1
        if self.parts > self.limits.max_mime_parts:
            self.hit(LimitHit.TOO_MANY_PARTS)
            return False
        return True


@dataclass
class _Acc:
    budget: _Budget
    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    embedded: list[ParsedMessage] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)


def _safe_ctype(part: Message) -> str:
    try:
        return part.get_content_type().lower()
    except Exception:
        return "text/plain"


def _param(part: Message, name: str) -> str | None:
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


def _filename(part: Message) -> str | None:
    name: str | None = None
    try:
        name = part.get_filename()
    except Exception:
        name = None
    if name is None:
        raw = _param(part, "name")
        name = raw
    if name is None:
        return None
    return decode_header_value(str(name)) or None


def _disposition(part: Message) -> str | None:
    try:
        d = part.get_content_disposition()
    except Exception:
        return None
    return d.lower() if d else None


def _payload_bytes(part: Message, acc: _Acc) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:
        acc.defects.append("undecodable transfer encoding")
        raw = part.get_payload()
        data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""
    if isinstance(data, bytes):
        return data
    return b""


def _serialise(parts: Iterable[Message]) -> bytes:
    chunks: list[bytes] = []
    for p in parts:
        try:
            chunks.append(p.as_bytes(policy=email.policy.compat32))
        except Exception:
            chunks.append(b"".join(f"{k}: {v}\n".encode("utf-8", "surrogateescape")
                                   for k, v in p.raw_items()) + b"\n")
    return b"".join(chunks)


def _walk(part: Message, depth: int, acc: _Acc, level: int = 0) -> None:
    """Collect body text, attachments and embedded mail. ``depth`` counts embedded messages,
    ``level`` multipart nesting; both, and the number of parts, are bounded by the budget."""
    budget = acc.budget
    if level > budget.limits.max_mime_depth:
        budget.hit(LimitHit.TOO_DEEP)
        return
    if level and not budget.take_part():  # a message's own root is not one of its parts
        return
    ctype = _safe_ctype(part)
    maintype = ctype.split("/", 1)[0]
    if ctype in ("message/rfc822", "message/global"):
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            if depth < MAX_DEPTH:
                acc.embedded.append(_from_message(payload[0], depth + 1, budget, level + 1))
            else:
                acc.defects.append("message nesting too deep")
                acc.attachments.append(Attachment(_filename(part), ctype,
                                              _serialise(p for p in payload if isinstance(p, Message))))
            return
        data = _payload_bytes(part, acc)  # e.g. base64-encoded message/rfc822 (not allowed, but seen)
        if depth < MAX_DEPTH and data.strip():
            try:
                acc.embedded.append(_parse(data, depth + 1, budget, level + 1))
                return
            except MessageParseError:
                acc.defects.append("embedded message is not an email")
        acc.attachments.append(Attachment(_filename(part), ctype, data))
        return
    if maintype == "message" and part.is_multipart():
        # message/delivery-status, message/disposition-notification: header blocks
        payload = part.get_payload()
        blocks = [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []
        acc.attachments.append(Attachment(_filename(part), ctype, _serialise(blocks)))
        return
    if maintype == "multipart":
        payload = part.get_payload()
        if isinstance(payload, list):
            for sub in payload:
                if isinstance(sub, Message):
                    _walk(sub, depth, acc, level + 1)
            return
        acc.defects.append("multipart without parts")
        text = payload if isinstance(payload, str) else ""
        if text.strip():
            acc.plain.append(_unsurrogate(text))
        return
    disposition = _disposition(part)
    filename = _filename(part)
    is_body = (ctype in ("text/plain", "text/html", "text/enriched") and disposition != "attachment"
               and (filename is None or disposition == "inline"))
    data = _payload_bytes(part, acc)
    if is_body:
        text = decode_bytes(data, _param(part, "charset"), acc.defects)
        if ctype == "text/html":
            acc.html.append(text)
        else:
            acc.plain.append(text)
        return
    if disposition == "inline" and maintype == "image" and filename is None:
        return  # inline images (signatures, logos) are not attachments
    acc.attachments.append(Attachment(filename, ctype, data))


def _strip_tags(html: str) -> str:
    """Linear stand-in for html_to_text on HTML too long to convert properly."""
    text = _STYLE_RE.sub("", html) if len(html) < 100_000 else html
    text = re.sub(r"<(?:br|/p|/div|/tr|/t[dh]|/li)\b[^>]*>", "\n", text, flags=re.I)
    text = re.sub(r"<[^>]*>", "", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def _from_message(msg: Message, depth: int, budget: _Budget, level: int = 0) -> ParsedMessage:
    defects: list[str] = []
    try:
        for d in msg.defects:
            defects.append(type(d).__name__)
    except Exception:  # pragma: no cover
        pass
    headers: list[tuple[str, str]] = []
    raw_by_name: dict[str, list[str]] = {}
    for name, raw in msg.raw_items():
        key = str(name).strip().lower()
        raw_s = str(raw)
        raw_by_name.setdefault(key, []).append(raw_s)
        headers.append((key, decode_header_value(raw_s, defects)))

    def first(name: str) -> str | None:
        for n, v in headers:
            if n == name:
                return v
        return None

    from_pairs = _addresses(raw_by_name.get("from", []))
    if from_pairs:
        from_name, from_address = from_pairs[0]
    else:
        from_address = None
        raw_from = first("from") or ""
        from_name = raw_from.split("<", 1)[0].strip().strip('"')

    def addrs(*names: str) -> tuple[str, ...]:
        values: list[str] = []
        for n in names:
            values.extend(raw_by_name.get(n, []))
        return tuple(dict.fromkeys(a for _, a in _addresses(values)))

    mids = _msg_ids(first("message-id"))
    ctype = _safe_ctype(msg)
    acc = _Acc(budget, defects=defects)
    _walk(msg, depth, acc, level)
    plain = "\n\n".join(t.strip("\r\n") for t in acc.plain if t.strip())
    html = "\n".join(acc.html) if acc.html else None
    text = plain
    if not plain.strip() and html:
        if len(html) > budget.limits.html_max_chars:
            budget.hit(LimitHit.HTML_TOO_LARGE)
            text = _strip_tags(html)
        else:
            text = html_to_text(html)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    report_type = _param(msg, "report-type") if ctype == "multipart/report" else None
    return ParsedMessage(
        message_id=mids[0] if mids else ((first("message-id") or "").strip().strip("<>").strip() or None),
        in_reply_to=_msg_ids(first("in-reply-to")),
        references=_msg_ids(" ".join(v for n, v in headers if n == "references")),
        subject=first("subject") or "",
        from_address=from_address,
        from_name=from_name,
        reply_to=addrs("reply-to"),
        to=addrs("to"),
        cc=addrs("cc"),
        delivered_to=addrs(*_DELIVERY_HEADERS),
        date=_date(first("date"), defects),
        headers=tuple(headers),
        text=text,
        html=html,
        attachments=tuple(acc.attachments),
        embedded=tuple(acc.embedded),
        is_report=ctype == "multipart/report",
        report_type=report_type.lower() if report_type else None,
        defects=tuple(dict.fromkeys(acc.defects)),
        content_type=ctype,
        limits_hit=tuple(budget.hits),
        attachment_texts=None if budget.limits.extract_attachments else (),
    )


def _looks_like_email(raw: bytes) -> bool:
    head = raw.lstrip(b"\r\n\t ")[:65536]
    lines = head.splitlines()
    if lines and _MBOX_FROM_RE.match(lines[0]) and not lines[0].startswith(b"From:"):
        lines = lines[1:]
    if not lines or not _HEADER_LINE_RE.match(lines[0]):
        return False
    known = 0
    for line in lines:
        if not line.strip():
            break
        if line[:1] in (b" ", b"\t"):
            continue
        m = _HEADER_LINE_RE.match(line)
        if not m:
            return known > 0
        if m.group(0)[:-1].strip().lower().decode("ascii", "replace") in _KNOWN_HEADERS:
            known += 1
    return known > 0


_BOUNDARY_RE = re.compile(rb'boundary\s*=\s*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))', re.I)
_DASH_LINE_RE = re.compile(rb"^--[^\r\n]*", re.M)


def _bounded_source(data: bytes, budget: _Budget, level: int) -> bytes:
    """The message with MIME structure beyond the limits cut out, before the email package sees it.

    The email package builds every part (and recurses once per nesting level) before we could
    count anything, so the delimiter lines of the declared boundaries are scanned here: parts past
    the part budget are cut off, and structure nested deeper than the depth limit is cut out up to
    the next delimiter of a shallower boundary. Linear in the size of the message.
    """
    declared = {m.group(1) or m.group(2) for m in _BOUNDARY_RE.finditer(data)}
    if not declared:
        return data
    limits = budget.limits
    stack: list[bytes] = []
    index: dict[bytes, int] = {}
    cuts: list[tuple[int, int]] = []
    skip_from: int | None = None
    skip_level = 0
    parts = budget.parts
    for m in _DASH_LINE_RE.finditer(data):
        line = m.group(0)[2:].rstrip(b" \t\r")
        closing = line.endswith(b"--") and line[:-2] in declared
        name = line[:-2] if closing else line
        if not closing and name not in declared:
            continue
        pos = index.get(name)
        if pos is None:
            if closing:
                continue
            pos = len(stack)
            stack.append(name)
            index[name] = pos
        for gone in stack[pos + 1:]:
            del index[gone]
        del stack[pos + 1:]
        if closing:
            stack.pop()
            del index[name]
        if skip_from is not None:
            if pos >= skip_level:
                continue
            cuts.append((skip_from, m.start()))
            skip_from = None
        if closing:
            continue
        if level + pos + 1 > limits.max_mime_depth:
            budget.hit(LimitHit.TOO_DEEP)
            skip_from, skip_level = m.start(), pos
            continue
        parts += 1
        if parts > limits.max_mime_parts:
            budget.hit(LimitHit.TOO_MANY_PARTS)
            skip_from, skip_level = m.start(), -1  # nothing after this delimiter is read
            break
    if skip_from is not None:
        cuts.append((skip_from, len(data)))
    if not cuts:
        return data
    kept: list[bytes] = []
    pos_ = 0
    for a, b in cuts:
        kept.append(data[pos_:a])
        pos_ = b
    kept.append(data[pos_:])
    return b"".join(kept)


def _parse(raw: bytes, depth: int, budget: _Budget, level: int = 0) -> ParsedMessage:
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise MessageParseError("expected bytes")
    data = bytes(raw)
    if not data.strip():
        raise MessageParseError("empty input")
    if not _looks_like_email(data):
        raise MessageParseError("no RFC 5322 header block found")
    start = data.lstrip(b"\r\n\t ")
    first_line = start.split(b"\n", 1)[0]
    if _MBOX_FROM_RE.match(first_line) and not first_line.startswith(b"From:"):
        start = start.split(b"\n", 1)[1] if b"\n" in start else b""
    start = _bounded_source(start, budget, level)
    msg: Message
    try:
        msg = email.message_from_bytes(start, policy=email.policy.default)
    except RecursionError:
        msg = _headers_only(start, budget)
    except Exception:
        try:
            msg = email.message_from_bytes(start)  # compat32
        except RecursionError:
            msg = _headers_only(start, budget)
    try:
        return _from_message(msg, depth, budget, level)
    except RecursionError:  # structure the scan above did not see (e.g. encoded boundary names)
        return _from_message(_headers_only(start, budget), depth, budget, level)


def _headers_only(data: bytes, budget: _Budget) -> Message:
    budget.hit(LimitHit.TOO_DEEP)
    head, _, _body = data.replace(b"\r\n", b"\n").partition(b"\n\n")
    msg = email.message_from_bytes(head + b"\n\n", policy=email.policy.compat32)
    del msg["content-type"]
    del msg["content-transfer-encoding"]
    return msg


def parse_message(raw: bytes, limits: Limits | None = None) -> ParsedMessage:
    """Parse raw message bytes; raises MessageParseError only when the input is not an email.

    Parts beyond ``limits`` (default: ``Limits()``) are skipped and their codes recorded in
    ``limits_hit``. With ``limits.extract_attachments`` off, ``attachment_texts`` is set to ``()``
    so that nothing reads the attachments later.
    """
    return _parse(raw, 0, _Budget(limits or Limits()))
