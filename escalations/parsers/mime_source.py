"""The raw source before the email package sees it: whether it is an email at all, and MIME structure
beyond the limits cut out (the email package builds every part, recursing once per nesting level,
before anything could be counted).

Pure: no I/O; linear in the size of the message.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass, field
from email.message import Message

from escalations.parsers.limits import LimitHit, Limits

__all__ = ["MBOX_FROM_RE", "Budget", "bounded_source", "headers_only", "looks_like_email"]

_KNOWN_HEADERS = frozenset({
    "from", "to", "cc", "bcc", "subject", "date", "message-id", "received", "return-path",
    "delivered-to", "x-original-to", "mime-version", "content-type", "content-transfer-encoding",
    "reply-to", "sender", "in-reply-to", "references", "x-mailer", "user-agent", "envelope-to",
    "dkim-signature", "authentication-results", "thread-topic", "thread-index", "auto-submitted",
    "x-failed-recipients", "list-id", "precedence", "importance", "x-ms-exchange-organization-scl",
    "arc-seal", "x-received", "received-spf", "content-language",
})
_HEADER_LINE_RE = re.compile(rb"^[!-9;-~]{1,76}:")
MBOX_FROM_RE = re.compile(rb"^From \S+")
_BOUNDARY_RE = re.compile(rb'boundary\s*=\s*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))', re.I)
_DASH_LINE_RE = re.compile(rb"^--[^\r\n]*", re.M)


@dataclass
class Budget:
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


def looks_like_email(raw: bytes) -> bool:
    """A header block with at least one header mail has, before the first blank line."""
    head = raw.lstrip(b"\r\n\t ")[:65536]
    lines = head.splitlines()
    if lines and MBOX_FROM_RE.match(lines[0]) and not lines[0].startswith(b"From:"):
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


@dataclass
class _Scan:
    """The boundaries open at a delimiter line, and the byte ranges to cut out."""

    declared: set[bytes]
    budget: Budget
    level: int
    stack: list[bytes] = field(default_factory=list)
    index: dict[bytes, int] = field(default_factory=dict)
    cuts: list[tuple[int, int]] = field(default_factory=list)
    skip_from: int | None = None
    skip_level: int = 0

    def _position(self, name: bytes, closing: bool) -> int | None:
        """The nesting position of boundary ``name`` (opened here if new); the ones inside it close."""
        pos = self.index.get(name)
        if pos is None:
            if closing:
                return None
            pos = len(self.stack)
            self.stack.append(name)
            self.index[name] = pos
        for gone in self.stack[pos + 1:]:
            del self.index[gone]
        del self.stack[pos + 1:]
        if closing:
            self.stack.pop()
            del self.index[name]
        return pos

    def delimiter(self, m: re.Match[bytes]) -> bool:
        """One "--boundary" line; False once nothing after it may be read."""
        line = m.group(0)[2:].rstrip(b" \t\r")
        closing = line.endswith(b"--") and line[:-2] in self.declared
        name = line[:-2] if closing else line
        if not closing and name not in self.declared:
            return True
        pos = self._position(name, closing)
        if pos is None:
            return True
        if self.skip_from is not None:
            if pos >= self.skip_level:
                return True
            self.cuts.append((self.skip_from, m.start()))
            self.skip_from = None
        if closing:
            return True
        return self._part(m, pos)

    def _part(self, m: re.Match[bytes], pos: int) -> bool:
        limits = self.budget.limits
        if self.level + pos + 1 > limits.max_mime_depth:
            self.budget.hit(LimitHit.TOO_DEEP)
            self.skip_from, self.skip_level = m.start(), pos
            return True
        self.budget.parts += 1
        if self.budget.parts > limits.max_mime_parts:
            self.budget.hit(LimitHit.TOO_MANY_PARTS)
            self.skip_from, self.skip_level = m.start(), -1  # nothing after this delimiter is read
            return False
        return True


def bounded_source(data: bytes, budget: Budget, level: int) -> bytes:
    """The message with MIME structure beyond the limits cut out, before the email package sees it.

    The delimiter lines of the declared boundaries are scanned: parts past the part budget are cut
    off, and structure nested deeper than the depth limit is cut out up to the next delimiter of a
    shallower boundary. The parts counted here are counted again (from the same start) by the walk.
    """
    declared = {m.group(1) or m.group(2) for m in _BOUNDARY_RE.finditer(data)}
    if not declared:
        return data
    scan = _Scan(declared, Budget(budget.limits, budget.parts, budget.hits), level)
    for m in _DASH_LINE_RE.finditer(data):
        if not scan.delimiter(m):
            break
    if scan.skip_from is not None:
        scan.cuts.append((scan.skip_from, len(data)))
    if not scan.cuts:
        return data
    kept: list[bytes] = []
    start = 0
    for a, b in scan.cuts:
        kept.append(data[start:a])
        start = b
    kept.append(data[start:])
    return b"".join(kept)


def headers_only(data: bytes, budget: Budget) -> Message:
    """The message's headers alone (structure too deep for the email package)."""
    budget.hit(LimitHit.TOO_DEEP)
    head, _, _body = data.replace(b"\r\n", b"\n").partition(b"\n\n")
    msg = email.message_from_bytes(head + b"\n\n", policy=email.policy.compat32)
    del msg["content-type"]
    del msg["content-transfer-encoding"]
    return msg
