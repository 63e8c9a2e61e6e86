"""Raw RFC 5322 bytes -> ParsedMessage: decoded headers, body text, attachments, embedded mail.

Pure: no I/O, no configuration. Real-world mail is hostile (wrong charsets, 8-bit headers, broken
encoded words, MIME without boundaries), so every decoding step falls back instead of raising and
records what it noticed in ``defects``. Only input that is not an email at all raises
MessageParseError, so the pipeline can quarantine it.

The steps, one module each: the raw source checked and bounded (``mime_source``), charsets and
encoded words (``charsets``), header values (``headers``), one part's facts (``mime_parts``), HTML
bodies as text (``html_text``); the walk over the structure is here.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage, Message
from typing import Any

from escalations.parsers.charsets import decode_bytes, decode_header_value, unsurrogate
from escalations.parsers.headers import DELIVERY_HEADERS, addresses, header_date, msg_ids
from escalations.parsers.html_text import html_to_text, strip_tags
from escalations.parsers.limits import LimitHit, Limits
from escalations.parsers.mime_parts import disposition, filename, param, payload_bytes, safe_ctype, serialise
from escalations.parsers.mime_source import (
    MBOX_FROM_RE,
    Budget,
    bounded_source,
    headers_only,
    looks_like_email,
)

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
    #: The parse worker's reading of this message as a referral, when it was asked for one:
    #: (the naive local time it was read against, a ReferralParse with no ``missing`` worked out yet:
    #: that needs the partnership). None: not read; the processor reads it if it must.
    referral_ahead: tuple[datetime | None, Any] | None = None

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



# ---- structure walk -------------------------------------------------------------------------------

@dataclass
class _Acc:
    budget: Budget
    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    embedded: list[ParsedMessage] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)



def _embedded(part: Message, ctype: str, depth: int, acc: _Acc, level: int) -> None:
    """A message/rfc822 part: parsed as a message of its own, or (too deep) kept as an attachment."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        if depth < MAX_DEPTH:
            acc.embedded.append(_from_message(payload[0], depth + 1, acc.budget, level + 1))
        else:
            acc.defects.append("message nesting too deep")
            acc.attachments.append(Attachment(filename(part), ctype,
                                              serialise(p for p in payload if isinstance(p, Message))))
        return
    data = payload_bytes(part, acc.defects)  # e.g. base64-encoded message/rfc822 (not allowed, but seen)
    if depth < MAX_DEPTH and data.strip():
        try:
            acc.embedded.append(_parse(data, depth + 1, acc.budget, level + 1))
            return
        except MessageParseError:
            acc.defects.append("embedded message is not an email")
    acc.attachments.append(Attachment(filename(part), ctype, data))


def _multipart(part: Message, depth: int, acc: _Acc, level: int) -> None:
    payload = part.get_payload()
    if isinstance(payload, list):
        for sub in payload:
            if isinstance(sub, Message):
                _walk(sub, depth, acc, level + 1)
        return
    acc.defects.append("multipart without parts")
    text = payload if isinstance(payload, str) else ""
    if text.strip():
        acc.plain.append(unsurrogate(text))


def _leaf(part: Message, ctype: str, acc: _Acc) -> None:
    """A body text, or an attachment (inline images without a name are neither)."""
    how, name = disposition(part), filename(part)
    is_body = (ctype in ("text/plain", "text/html", "text/enriched") and how != "attachment"
               and (name is None or how == "inline"))
    data = payload_bytes(part, acc.defects)
    if is_body:
        text = decode_bytes(data, param(part, "charset"), acc.defects)
        (acc.html if ctype == "text/html" else acc.plain).append(text)
        return
    if how == "inline" and ctype.startswith("image/") and name is None:
        return  # inline images (signatures, logos) are not attachments
    acc.attachments.append(Attachment(name, ctype, data))


def _walk(part: Message, depth: int, acc: _Acc, level: int = 0) -> None:
    """Collect body text, attachments and embedded mail. ``depth`` counts embedded messages,
    ``level`` multipart nesting; both, and the number of parts, are bounded by the budget."""
    budget = acc.budget
    if level > budget.limits.max_mime_depth:
        budget.hit(LimitHit.TOO_DEEP)
        return
    if level and not budget.take_part():  # a message's own root is not one of its parts
        return
    ctype = safe_ctype(part)
    maintype = ctype.split("/", 1)[0]
    if ctype in ("message/rfc822", "message/global"):
        _embedded(part, ctype, depth, acc, level)
    elif maintype == "message" and part.is_multipart():
        # message/delivery-status, message/disposition-notification: header blocks
        payload = part.get_payload()
        blocks = [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []
        acc.attachments.append(Attachment(filename(part), ctype, serialise(blocks)))
    elif maintype == "multipart":
        _multipart(part, depth, acc, level)
    else:
        _leaf(part, ctype, acc)


def _header_list(msg: Message, defects: list[str]) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """Every header decoded, in order, and the raw values by lower-case name (for address parsing)."""
    headers: list[tuple[str, str]] = []
    raw_by_name: dict[str, list[str]] = {}
    for name, raw in msg.raw_items():
        key = str(name).strip().lower()
        raw_s = str(raw)
        raw_by_name.setdefault(key, []).append(raw_s)
        headers.append((key, decode_header_value(raw_s, defects)))
    return headers, raw_by_name


def _body_text(acc: _Acc, budget: Budget) -> tuple[str, str | None]:
    """The message's text (its plain parts, else its HTML as text) and its HTML, if any."""
    plain = "\n\n".join(t.strip("\r\n") for t in acc.plain if t.strip())
    html = "\n".join(acc.html) if acc.html else None
    text = plain
    if not plain.strip() and html:
        if len(html) > budget.limits.html_max_chars:
            budget.hit(LimitHit.HTML_TOO_LARGE)
            text = strip_tags(html)
        else:
            text = html_to_text(html)
    return text.replace("\r\n", "\n").replace("\r", "\n"), html


def _from_message(msg: Message, depth: int, budget: Budget, level: int = 0) -> ParsedMessage:
    defects: list[str] = []
    try:
        for d in msg.defects:
            defects.append(type(d).__name__)
    except Exception:  # pragma: no cover
        pass
    headers, raw_by_name = _header_list(msg, defects)

    def first(name: str) -> str | None:
        for n, v in headers:
            if n == name:
                return v
        return None

    from_pairs = addresses(raw_by_name.get("from", []))
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
        return tuple(dict.fromkeys(a for _, a in addresses(values)))

    mids = msg_ids(first("message-id"))
    ctype = safe_ctype(msg)
    acc = _Acc(budget, defects=defects)
    _walk(msg, depth, acc, level)
    text, html = _body_text(acc, budget)
    report_type = param(msg, "report-type") if ctype == "multipart/report" else None
    return ParsedMessage(
        message_id=mids[0] if mids else ((first("message-id") or "").strip().strip("<>").strip() or None),
        in_reply_to=msg_ids(first("in-reply-to")),
        references=msg_ids(" ".join(v for n, v in headers if n == "references")),
        subject=first("subject") or "",
        from_address=from_address,
        from_name=from_name,
        reply_to=addrs("reply-to"),
        to=addrs("to"),
        cc=addrs("cc"),
        delivered_to=addrs(*DELIVERY_HEADERS),
        date=header_date(first("date"), defects),
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



class _HeadersParsedOnce(EmailMessage):
    """The default policy's message, each header value parsed once however often it is asked for.

    ``EmailMessage.get`` parses a structured header anew on every call, and reading one part's type,
    charset, disposition, file name and transfer encoding asks for Content-Type alone four times:
    most of the parse. A parsed header is an immutable string, so the first result is kept with the
    raw value it came from and given again while that same raw value is the header's (a header
    replaced or removed is parsed afresh)."""

    def get(self, name: str, failobj: Any = None) -> Any:
        key = name.lower()
        for k, v in self.raw_items():  # as EmailMessage.get: the first header of that name
            if k.lower() == key:
                memo: dict[str, tuple[Any, Any]] = self.__dict__.setdefault("_parsed_once", {})
                hit = memo.get(key)
                if hit is not None and hit[0] is v:
                    return hit[1]
                parsed = self.policy.header_fetch_parse(k, v)
                memo[key] = (v, parsed)
                return parsed
        return failobj


_POLICY = email.policy.default.clone(message_factory=_HeadersParsedOnce)


def _parse(raw: bytes, depth: int, budget: Budget, level: int = 0) -> ParsedMessage:
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise MessageParseError("expected bytes")
    data = bytes(raw)
    if not data.strip():
        raise MessageParseError("empty input")
    if not looks_like_email(data):
        raise MessageParseError("no RFC 5322 header block found")
    start = data.lstrip(b"\r\n\t ")
    first_line = start.split(b"\n", 1)[0]
    if MBOX_FROM_RE.match(first_line) and not first_line.startswith(b"From:"):
        start = start.split(b"\n", 1)[1] if b"\n" in start else b""
    start = bounded_source(start, budget, level)
    msg: Message
    try:
        msg = email.message_from_bytes(start, policy=_POLICY)
    except RecursionError:
        msg = headers_only(start, budget)
    except Exception:
        try:
            msg = email.message_from_bytes(start)  # compat32
        except RecursionError:
            msg = headers_only(start, budget)
    try:
        return _from_message(msg, depth, budget, level)
    except RecursionError:  # structure the scan above did not see (e.g. encoded boundary names)
        return _from_message(headers_only(start, budget), depth, budget, level)



def parse_message(raw: bytes, limits: Limits | None = None) -> ParsedMessage:
    """Parse raw message bytes; raises MessageParseError only when the input is not an email.

    Parts beyond ``limits`` (default: ``Limits()``) are skipped and their codes recorded in
    ``limits_hit``. With ``limits.extract_attachments`` off, ``attachment_texts`` is set to ``()``
    so that nothing reads the attachments later.
    """
    return _parse(raw, 0, Budget(limits or Limits()))
