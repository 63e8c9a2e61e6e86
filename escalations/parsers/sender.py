"""Who sent a message, read strictly: exactly one mailbox in From, or a reason why not.

A reply acts on a case only for the address it came from, so that address must be unambiguous.
The lenient reading in :mod:`escalations.parsers.message` (which keeps anything address-like, for
acknowledging odd referrals) is not good enough for authority: ``sam@x <eve@y>``, ``Sam <sam@x>
<eve@y>`` and ``sam@x, eve@y`` were all read as sam. Here:

* the raw From header (before RFC 2047 decoding, so an encoded ``:`` in a display name cannot turn
  it into a group) is parsed with the stdlib's RFC 5322 header parser;
* there must be exactly one From header holding exactly one mailbox, with no parse defect other
  than obsolete-but-harmless syntax, and no control characters anywhere in the header;
* the addr-spec must pass ``email-validator``'s syntax check (no domain literals, no quoted oddities);
* the display name is never read as an address;
* a Sender header naming another mailbox means "sent on someone else's behalf": not the sender.

Pure: no I/O. Never raises; problems are fixed codes (never the header's text).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.policy import default as _default_policy
from enum import StrEnum

from email_validator import EmailNotValidError, validate_email

__all__ = ["SenderProblem", "StrictSender", "strict_sender", "valid_address"]


class SenderProblem(StrEnum):
    NO_FROM = "sender_missing"
    SEVERAL_FROM_HEADERS = "sender_several_from_headers"
    SEVERAL_ADDRESSES = "sender_several_addresses"
    UNPARSEABLE = "sender_unparseable"
    CONTROL_CHARACTERS = "sender_control_characters"
    INVALID_ADDRESS = "sender_invalid_address"
    SENDER_DIFFERS = "sender_header_differs"


@dataclass(frozen=True)
class StrictSender:
    """``address`` (lower-cased) when From holds exactly one acceptable mailbox, else ``problem``."""

    address: str | None
    problem: SenderProblem | None = None

    @property
    def ok(self) -> bool:
        return self.address is not None


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u0080-\u009f\u2028\u2029]")
_TOLERATED_DEFECTS = {"ObsoleteHeaderDefect"}


@functools.lru_cache(maxsize=4096)
def valid_address(address: str) -> str | None:
    """The normalised (lower-cased) address if its syntax is acceptable for a header we write, else None.

    Cached: every mail checks each of its recipients, and most are the partnership's own contacts."""
    if not address or _CONTROL.search(address) or any(c.isspace() for c in address):
        return None
    try:
        checked = validate_email(address, check_deliverability=False, allow_display_name=False)
    except (EmailNotValidError, ValueError, TypeError):
        return None
    return str(checked.normalized).lower()


#: A From value in the plainest form, ``Sam Smith <sam.smith@school.example.org>``, ``"Smith, Sam"
#: <sam@x.org>`` or a bare address: letters, digits and a few marks, nothing the RFC 5322 parser could
#: read another way (no comment, encoded word, route, group, escape or obsolete syntax). For these the
#: address is the text between the brackets, as the parser reads it (tests/parsers/test_sender_fast.py
#: checks the two agree); anything else goes to the parser.
_ATOM = r"[A-Za-z0-9_%+-]+"
_PLAIN_ADDRESS = rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_PLAIN_FROM = re.compile(
    rf"[ \t]*(?:(?:[A-Za-z0-9_'-]+(?: [A-Za-z0-9_'-]+)*|\"[A-Za-z0-9 _',.()-]*\")[ \t]*)?<({_PLAIN_ADDRESS})>[ \t]*"
    rf"|[ \t]*({_PLAIN_ADDRESS})[ \t]*")


@functools.lru_cache(maxsize=1024)
def _mailboxes(raw_value: str) -> tuple[str, ...] | SenderProblem:
    plain = _PLAIN_FROM.fullmatch(raw_value)
    if plain:  # the usual From: the parser's whole work would say the same, at many times the cost
        return (plain.group(1) or plain.group(2),)
    return _parsed_mailboxes(raw_value)


def _parsed_mailboxes(raw_value: str) -> tuple[str, ...] | SenderProblem:
    # Unfold first: a folded header is one value.
    value = re.sub(r"\r?\n[ \t]+", " ", raw_value)
    if _CONTROL.search(value.replace("\r\n", "")):
        return SenderProblem.CONTROL_CHARACTERS
    try:
        header = _default_policy.header_factory("from", value)
        addresses = list(header.addresses)
        defects = {type(d).__name__ for d in header.defects}
    except Exception:  # the stdlib parser raises on some malformed input
        return SenderProblem.UNPARSEABLE
    if defects - _TOLERATED_DEFECTS:
        return SenderProblem.UNPARSEABLE
    return tuple(str(a.addr_spec) for a in addresses)


def strict_sender(from_values: Sequence[str], sender_values: Sequence[str] = ()) -> StrictSender:
    """Read the raw From (and Sender) header values of a message strictly; see the module docstring."""
    if not from_values:
        return StrictSender(None, SenderProblem.NO_FROM)
    if len(from_values) > 1:
        return StrictSender(None, SenderProblem.SEVERAL_FROM_HEADERS)
    found = _mailboxes(from_values[0])
    if isinstance(found, SenderProblem):
        return StrictSender(None, found)
    if not found:
        return StrictSender(None, SenderProblem.NO_FROM)
    if len(found) > 1:
        return StrictSender(None, SenderProblem.SEVERAL_ADDRESSES)
    address = valid_address(found[0])
    if address is None:
        return StrictSender(None, SenderProblem.INVALID_ADDRESS)
    if sender_values:
        if len(sender_values) > 1:
            return StrictSender(None, SenderProblem.SENDER_DIFFERS)
        others = _mailboxes(sender_values[0])
        if isinstance(others, SenderProblem) or len(others) != 1 or valid_address(others[0]) != address:
            return StrictSender(None, SenderProblem.SENDER_DIFFERS)
    return StrictSender(address)


def raw_header_values(raw: bytes, name: str) -> list[str]:
    """The undecoded values of header ``name`` in a message's header block (bytes as UTF-8, undecodable bytes replaced)."""
    head = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0]
    values: list[str] = []
    current: list[str] | None = None
    wanted = name.lower().encode()
    for line in head.splitlines():
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line.decode("utf-8", "replace"))
            continue
        if current is not None:
            values.append("\r\n".join(current))
            current = None
        key, sep, rest = line.partition(b":")
        if sep and key.strip().lower() == wanted:
            current = [rest.decode("utf-8", "replace").lstrip(" ")]
    if current is not None:
        values.append("\r\n".join(current))
    return values
