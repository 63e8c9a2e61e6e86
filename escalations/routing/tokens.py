"""Signed reply tokens: how a reply finds its case.

Every mail the service sends carries a token that names the case, the stage and the recipient it was
sent to. The token travels in three places, so a reply can be matched however the partner's mail
client treats it:

* the Reply-To address, as ``mailbox+TOKEN@domain`` (only where the mailbox accepts sub-addresses),
  see :func:`plus_address` / :func:`token_from_address`;
* our Message-ID, which comes back in the reply's In-Reply-To / References headers,
  see :func:`token_message_id` / :func:`token_from_message_ids`;
* a footer line ``Reply code: TOKEN`` in the body, usually quoted back in a reply,
  see :func:`footer_line` / :func:`token_from_text`.

Format (version 1). A 20-byte binary string, base32-encoded (RFC 4648 alphabet) in lower case
without padding, so always exactly :data:`TOKEN_LENGTH` (32) characters of ``[a-z2-7]``. 20 bytes is
a multiple of 5, so there are no padding bits: every character carries signed data, and changing
any character changes the decoded bytes. The characters survive as an address local part, inside a
Message-ID and through mail systems that lower- or upper-case local parts (tokens are read
case-insensitively)::

    version   uint8   = 1
    case_id   uint32  1 .. 2**32-1
    stage     uint8   0 .. 255
    expires   uint32  expiry in whole seconds since the Unix epoch (UTC; good until 2106)
    mac       10 bytes: HMAC-SHA256(secret, TAG || the 10 bytes above || recipient), truncated to 80 bits

The recipient (stripped, lower-cased address) is not in the token text; it is bound by the MAC, so
:func:`verify_token` needs the address the reply came from, and a token issued to one person fails
(:class:`TokenBadSignature`) when presented from another address.

Length limit. RFC 5321 allows 64 octets in a local part; ``+TOKEN`` takes 33, so the mailbox's own
local part may have at most :data:`MAX_MAILBOX_LOCAL_PART` (31) characters for the sub-addressed
Reply-To. :func:`plus_address` raises :class:`ValueError` beyond that; the Message-ID and footer
still carry the token.

Pure: no I/O, no configuration; the only impurity is the random part of :func:`token_message_id`
(which can be passed in).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = [
    "FOOTER_PREFIX",
    "MAX_LOCAL_PART",
    "MAX_MAILBOX_LOCAL_PART",
    "MIN_SECRET_BYTES",
    "TOKEN_LENGTH",
    "ReplyToken",
    "TokenBadSignature",
    "TokenError",
    "TokenExpired",
    "TokenMalformed",
    "footer_line",
    "issue_token",
    "plus_address",
    "token_from_address",
    "token_from_message_ids",
    "token_from_text",
    "token_message_id",
    "verify_token",
]

TOKEN_VERSION = 1
_PAYLOAD = struct.Struct(">BIBI")  # version, case_id, stage, expires (epoch seconds)
MAC_BYTES = 10  # 80 bits
_TOKEN_BYTES = _PAYLOAD.size + MAC_BYTES  # 20: a multiple of 5, so base32 needs no padding
#: Length of every (version 1) token, in characters.
TOKEN_LENGTH = _TOKEN_BYTES * 8 // 5  # 32
#: RFC 5321 §4.5.3.1.1: maximum octets in the local part of an address.
MAX_LOCAL_PART = 64
#: Longest mailbox local part that still fits ``local+TOKEN`` into :data:`MAX_LOCAL_PART`.
MAX_MAILBOX_LOCAL_PART = MAX_LOCAL_PART - 1 - TOKEN_LENGTH  # 31
#: Shortest secret accepted; use 32 random bytes in production.
MIN_SECRET_BYTES = 16
#: Footer line marker; the full line is ``"Reply code: TOKEN"``.
FOOTER_PREFIX = "Reply code:"

_MAC_TAG = b"escalations/reply-token/v1\x00"  # domain separation from any other use of the secret
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UINT32_MAX = 0xFFFFFFFF
_UINT8_MAX = 0xFF

# A token exactly as issued (after lower-casing).
_TOKEN_RE = re.compile(rf"[a-z2-7]{{{TOKEN_LENGTH}}}")
# Characters every token is made of (what plus_address / footer_line / token_message_id accept).
_TOKEN_CHARS_RE = re.compile(r"[a-z0-9]+")
# A token embedded somewhere, read case-insensitively.
_EMBEDDED = rf"([a-z2-7]{{{TOKEN_LENGTH}}})(?![a-z0-9])"
_ADDRESS_TOKEN_RE = re.compile(r"\+" + _EMBEDDED + r"@", re.IGNORECASE)
_MSGID_TOKEN_RE = re.compile(r"(?:^|[\s<,;])esc\." + _EMBEDDED + r"\.[a-z0-9]+@", re.IGNORECASE)
_FOOTER_TOKEN_RE = re.compile(re.escape(FOOTER_PREFIX) + r"[\s>]*" + _EMBEDDED, re.IGNORECASE)

# RFC 5322 §3.2.3 dot-atom-text.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM_RE = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_DOMAIN_RE = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_UNIQUE_RE = re.compile(r"[A-Za-z0-9]+")


@dataclass(frozen=True)
class ReplyToken:
    """What a verified token says."""

    case_id: int
    #: Lower-cased address the token was issued to (and verified against).
    recipient: str
    stage: int
    #: Aware UTC datetime, whole seconds. The token is valid while ``now < expires_at``.
    expires_at: datetime


class TokenError(ValueError):
    """A reply token could not be accepted. Catch this; the subclasses say why."""


class TokenMalformed(TokenError):
    """Not a token of a version we issue: wrong length, characters or version byte."""


class TokenBadSignature(TokenError):
    """Well-formed, but the MAC does not match: forged, altered, another recipient, or another secret."""


class TokenExpired(TokenError):
    """Genuine (the MAC matched) but past its expiry. ``token`` holds what it said."""

    def __init__(self, token: ReplyToken) -> None:
        super().__init__(f"reply token for case {token.case_id} expired at {token.expires_at.isoformat()}")
        self.token = token


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes | bytearray) or len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"token secret must be at least {MIN_SECRET_BYTES} bytes")


def _normalise_recipient(recipient: str) -> str:
    return recipient.strip().lower()


def _mac(secret: bytes, payload: bytes, recipient: str) -> bytes:
    message = _MAC_TAG + payload + recipient.encode("utf-8", "surrogatepass")
    return hmac.new(secret, message, hashlib.sha256).digest()[:MAC_BYTES]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _epoch_seconds(moment: datetime, what: str) -> int:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")
    try:
        return (moment.astimezone(UTC) - _EPOCH) // timedelta(seconds=1)
    except OverflowError as exc:
        raise ValueError(f"{what} is out of range") from exc


def issue_token(secret: bytes, *, case_id: int, recipient: str, stage: int, expires_at: datetime) -> str:
    """Make the token for ``recipient`` at ``stage`` of case ``case_id``.

    ``expires_at`` must be timezone-aware; it is converted to UTC and truncated to whole seconds (so
    the token never outlives the requested time). Raises :class:`ValueError` for a secret shorter
    than :data:`MIN_SECRET_BYTES`, a case id outside 1..2**32-1, a stage outside 0..255, an expiry
    outside 1970..2106, or a recipient that is not an address.
    """
    _check_secret(secret)
    if not _is_int(case_id) or not 1 <= case_id <= _UINT32_MAX:
        raise ValueError(f"case_id must be an int in 1..{_UINT32_MAX}, not {case_id!r}")
    if not _is_int(stage) or not 0 <= stage <= _UINT8_MAX:
        raise ValueError(f"stage must be an int in 0..{_UINT8_MAX}, not {stage!r}")
    expires = _epoch_seconds(expires_at, "expires_at")
    if not 0 <= expires <= _UINT32_MAX:
        raise ValueError("expires_at must fall between 1970 and 2106")
    rcpt = _normalise_recipient(recipient)
    if "@" not in rcpt:
        raise ValueError(f"recipient must be an email address, not {recipient!r}")
    payload = _PAYLOAD.pack(TOKEN_VERSION, case_id, stage, expires)
    raw = payload + _mac(secret, payload, rcpt)
    return base64.b32encode(raw).decode("ascii").lower()


def verify_token(secret: bytes, token: str, *, recipient: str, now: datetime) -> ReplyToken:
    """Check ``token`` as presented by ``recipient`` (the reply's sender address) at ``now``.

    Letter case in the token and the address is ignored. Raises :class:`TokenMalformed`,
    :class:`TokenBadSignature` (compared in constant time) or :class:`TokenExpired` (only after the
    signature matched; expired when ``now >= expires_at``), all :class:`TokenError`. Raises plain
    :class:`ValueError` for programming errors: a short secret or a naive ``now``.
    """
    _check_secret(secret)
    now_seconds = _epoch_seconds(now, "now")
    if not isinstance(token, str):
        raise TokenMalformed("reply token must be a string")
    text = token.strip().lower()
    if not _TOKEN_RE.fullmatch(text):
        raise TokenMalformed(f"not a reply token: expected {TOKEN_LENGTH} characters of [a-z2-7]")
    try:
        raw = base64.b32decode(text.upper())
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - the pattern above rules this out
        raise TokenMalformed("not a reply token: bad base32") from exc
    payload, mac = raw[: _PAYLOAD.size], raw[_PAYLOAD.size :]
    version, case_id, stage, expires = _PAYLOAD.unpack(payload)
    if version != TOKEN_VERSION:
        raise TokenMalformed(f"unknown reply token version {version}")
    rcpt = _normalise_recipient(recipient)
    if not hmac.compare_digest(mac, _mac(secret, payload, rcpt)):
        raise TokenBadSignature("reply token signature does not match")
    reply = ReplyToken(
        case_id=case_id, recipient=rcpt, stage=stage, expires_at=_EPOCH + timedelta(seconds=expires)
    )
    if now_seconds >= expires:
        raise TokenExpired(reply)
    return reply


def _check_token_chars(token: str) -> None:
    if not isinstance(token, str) or not _TOKEN_CHARS_RE.fullmatch(token):
        raise ValueError(f"not a reply token: {token!r}")


def plus_address(mailbox: str, token: str) -> str:
    """``"lscb@lbhf.gov.uk"`` and T give ``"lscb+T@lbhf.gov.uk"``.

    Raises :class:`ValueError` if ``mailbox`` is not a plain ``local@domain`` address (no display
    name, no quoted local part), if ``token`` is not ``[a-z0-9]+``, or if the new local part would
    exceed :data:`MAX_LOCAL_PART` (64) characters, i.e. the mailbox's local part is longer than
    :data:`MAX_MAILBOX_LOCAL_PART` (31) for a standard token.
    """
    _check_token_chars(token)
    local, at, domain = mailbox.strip().rpartition("@")
    if not at or not _DOT_ATOM_RE.fullmatch(local) or not _DOMAIN_RE.fullmatch(domain):
        raise ValueError(f"not a plain mailbox address: {mailbox!r}")
    tagged = f"{local}+{token}"
    if len(tagged) > MAX_LOCAL_PART:
        raise ValueError(
            f"{tagged!r} is {len(tagged)} characters; an address local part may have at most {MAX_LOCAL_PART}"
        )
    return f"{tagged}@{domain}"


def token_from_address(address: str) -> str | None:
    """The token in ``local+TOKEN@domain`` (lower-cased), or None if there is no token-shaped tag.

    ``address`` may be a bare address or a whole ``Name <addr>`` field; the first match counts.
    """
    match = _ADDRESS_TOKEN_RE.search(address)
    return match.group(1).lower() if match else None


def token_message_id(token: str, domain: str, *, unique: str | None = None) -> str:
    """A Message-ID carrying the token, without angle brackets: ``esc.TOKEN.UNIQUE@domain``.

    Both halves are RFC 5322 dot-atom-text, so ``<...>`` around it is a valid msg-id. ``unique``
    defaults to 16 random hex digits (so two mails with the same token get different ids); tests
    may pass their own (``[A-Za-z0-9]+``). Raises :class:`ValueError` for a bad token, domain or
    unique part.
    """
    _check_token_chars(token)
    if not isinstance(domain, str) or not _DOMAIN_RE.fullmatch(domain):
        raise ValueError(f"not a domain name: {domain!r}")
    if unique is None:
        unique = secrets.token_hex(8)
    elif not _UNIQUE_RE.fullmatch(unique):
        raise ValueError(f"unique part must be [A-Za-z0-9]+, not {unique!r}")
    return f"esc.{token}.{unique}@{domain}"


def token_from_message_ids(ids: Iterable[str]) -> str | None:
    """The first token found in message ids made by :func:`token_message_id`, or None.

    Each item may be one id (with or without angle brackets) or a whole In-Reply-To / References
    header value holding several. Items are searched in the order given, so pass In-Reply-To first
    and then References newest-first (``reversed``) to prefer the message actually replied to. A
    single string is treated as one item.
    """
    items: Iterable[str] = (ids,) if isinstance(ids, str) else ids
    for item in items:
        if not isinstance(item, str):
            continue
        match = _MSGID_TOKEN_RE.search(item)
        if match:
            return match.group(1).lower()
    return None


def footer_line(token: str) -> str:
    """The body footer line: ``"Reply code: TOKEN"``."""
    _check_token_chars(token)
    return f"{FOOTER_PREFIX} {token}"


def token_from_text(text: str) -> str | None:
    """The token of the first footer line in ``text`` (lower-cased), or None.

    Finds the line wherever it sits: quoted with ``"> "`` (any depth), indented, in any letter case,
    or with the token wrapped onto the next (quoted) line.
    """
    match = _FOOTER_TOKEN_RE.search(text)
    return match.group(1).lower() if match else None
