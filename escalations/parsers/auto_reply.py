"""Is this mail from a machine? Auto-replies (RFC 3834), bounces (RFC 3464 DSNs and the rest), lists.

Pure: no I/O. ``must_not_answer`` is the guard every automatic answer passes: the service never
answers a machine, so it can never start a mail loop.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from email.message import Message
from typing import Literal

from escalations.parsers.message import Attachment, ParsedMessage, decode_bytes

__all__ = ["AutomatedInfo", "AutomatedKind", "detect_automated", "must_not_answer"]

AutomatedKind = Literal["auto_reply", "bounce", "list", "none"]


@dataclass(frozen=True)
class AutomatedInfo:
    kind: AutomatedKind
    reason: str
    failed_recipients: tuple[str, ...] = ()
    permanent: bool = False
    original_message_id: str | None = None


_OOO_SUBJECT_RE = re.compile(
    r"^\s*(?:\[[^\]]*\]\s*)?(?:automatic reply|auto(?:matic)?[\s-]?reply|autoreply|auto[\s-]?response|"
    r"out of (?:the )?office|away from (?:the |my )?office|on leave|annual leave|ooo\b|auto:|"
    r"automated reply|i am (?:currently )?out of)",
    re.I,
)
_OOO_ANYWHERE_RE = re.compile(r"\b(out of (?:the )?office|automatic reply|auto-?reply|away from the office)\b", re.I)
_BOUNCE_SUBJECT_RE = re.compile(
    r"^\s*(?:undeliverable|undelivered mail|delivery status notification \((?:failure|delay)\)|"
    r"mail delivery failed|delivery failure|failure notice|returned mail|mail delivery failure|"
    r"delivery has failed|message not delivered|undeliverable mail|could not send message|"
    r"delivery notification: delivery has failed|mail system error|non[\s-]?delivery)",
    re.I,
)
_DAEMON_RE = re.compile(r"^(mailer-daemon|postmaster|mail-daemon|mailerdaemon|mail\.delivery|"
                        r"microsoftexchange[0-9a-f]*)@", re.I)
_NOREPLY_RE = re.compile(r"^(no-?reply|do-?not-?reply|donotreply|noreply-[^@]*|bounces?(?:[+-][^@]*)?|"
                         r"notifications?)@", re.I)
_MSG_ID_RE = re.compile(r"<([^<>\s]+)>")
_STATUS_RE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


def _header_blocks(payload: bytes) -> list[Message]:
    """The per-message and per-recipient header blocks of a message/delivery-status body."""
    text = decode_bytes(payload, None).replace("\r\n", "\n")
    blocks: list[Message] = []
    for chunk in re.split(r"\n\s*\n", text):
        if chunk.strip():
            try:
                blocks.append(email.message_from_string(chunk.strip() + "\n\n", policy=email.policy.compat32))
            except Exception:  # pragma: no cover - the compat32 parser accepts anything
                continue
    return blocks


def _addr_of(field: str | None) -> str | None:
    """"rfc822; someone@example.org" -> "someone@example.org"."""
    if not field:
        return None
    value = " ".join(field.split())
    if ";" in value:
        value = value.split(";", 1)[1]
    value = value.strip().strip("<>").strip()
    return value.lower() if "@" in value else None


def _original_id_from_headers(data: bytes) -> str | None:
    text = decode_bytes(data, None)
    m = re.search(r"^message-id:\s*(.*(?:\n[ \t].*)*)", text, re.I | re.M)
    if not m:
        return None
    ids = _MSG_ID_RE.findall(m.group(1))
    return ids[0] if ids else (m.group(1).strip().strip("<>") or None)


def _status_failures(status_att: Attachment) -> tuple[list[str], bool]:
    """(failed recipients, permanent) from a delivery-status part's per-recipient blocks."""
    failed: list[str] = []
    permanent = False
    for block in _header_blocks(status_att.payload):
        recipient = _addr_of(block.get("Original-Recipient")) or _addr_of(block.get("Final-Recipient"))
        if block.get("Final-Recipient"):
            recipient = _addr_of(block.get("Final-Recipient")) or recipient
        action = (block.get("Action") or "").strip().lower()
        status = (block.get("Status") or "").strip()
        if recipient and action in ("failed", ""):
            if action == "failed" or status.startswith("5"):
                failed.append(recipient)
            if action == "failed" and status.startswith("5"):
                permanent = True
    return failed, permanent


def _original_from_parts(msg: ParsedMessage) -> str | None:
    """The bounced message's Message-ID from its returned headers or the returned message."""
    for a in msg.attachments:
        if a.content_type in ("text/rfc822-headers", "message/rfc822-headers", "text/rfc822-header"):
            found = _original_id_from_headers(a.payload)
            if found:
                return found
    return next((inner.message_id for inner in msg.embedded if inner.message_id), None)


def _x_failed(msg: ParsedMessage) -> list[str]:
    return [addr for value in msg.header_all("x-failed-recipients") for part in value.split(",")
            if "@" in (addr := part.strip().strip("<>").lower())]


_TEXT_FAILED_RE = re.compile(
    r"(?:^|\n)[^\n]*?(?:could not be delivered|delivery (?:has )?failed|undeliverable|failed permanently|"
    r"following address(?:es)?)[^\n]*\n(?:\s*\n)*\s*<?([\w.+'=-]+@[\w-]+(?:\.[\w-]+)+)>?", re.I)
_PERMANENT_TEXT_RE = re.compile(r"permanent(?:ly)? fail|does not exist|user unknown|no such user|"
                                r"mailbox unavailable", re.I)


def _text_bounce(text: str) -> tuple[list[str], bool, str | None]:
    """A non-standard bounce: the address, a 5.x.x status and the Message-ID written in its text."""
    m = _TEXT_FAILED_RE.search(text)
    status_m = _STATUS_RE.search(text)
    permanent = bool((status_m and status_m.group(1) == "5") or re.search(r"\b55\d\b", text)
                     or _PERMANENT_TEXT_RE.search(text))
    m_id = re.search(r"^\s*>?\s*message-id:\s*<([^<>\s]+)>", text, re.I | re.M)
    return ([m.group(1).lower()] if m else []), permanent, (m_id.group(1) if m_id else None)


def _dsn(msg: ParsedMessage) -> tuple[tuple[str, ...], bool, str | None]:
    """(failed recipients, permanent, original Message-ID) from a DSN or a bounce's text."""
    status_att: Attachment | None = next(
        (a for a in msg.attachments if a.content_type in ("message/delivery-status", "message/global-delivery-status")),
        None,
    )
    failed, permanent = _status_failures(status_att) if status_att is not None else ([], False)
    original = _original_from_parts(msg)
    failed += _x_failed(msg)
    if not failed and status_att is None:
        failed, permanent, in_text = _text_bounce(msg.text)
        original = original or in_text
    elif failed and status_att is None:
        permanent = permanent or bool(re.search(r"\b5\.\d{1,3}\.\d{1,3}\b", msg.text))
    if original is None and msg.in_reply_to:
        original = msg.in_reply_to[0]
    return tuple(dict.fromkeys(failed)), permanent, original


def _auto_submitted(msg: ParsedMessage) -> str | None:
    value = msg.header("auto-submitted")
    if value is None:
        return None
    return value.split(";", 1)[0].strip().lower()


_BOUNCE_FROM_NAMES = ("mail delivery", "microsoft outlook", "postmaster")


def _bounce_reason(msg: ParsedMessage, envelope_sender: str | None) -> str | None:
    """Why the message is a bounce, or None. Checked first: a DSN is also "auto-replied"."""
    sender = (msg.from_address or "").lower()
    subject = msg.subject or ""
    if msg.is_report and msg.report_type == "delivery-status":
        return "multipart/report delivery-status"
    if any(a.content_type == "message/delivery-status" for a in msg.attachments):
        return "message/delivery-status part"
    if msg.header("x-failed-recipients"):
        return "X-Failed-Recipients header"
    env = (envelope_sender or "").strip().strip("<>").lower()
    daemon = bool(_DAEMON_RE.match(sender)) or (envelope_sender is not None and env == "")
    if _BOUNCE_SUBJECT_RE.match(subject) and (daemon or not sender
                                             or (msg.from_name or "").lower().startswith(_BOUNCE_FROM_NAMES)):
        return f"bounce subject from {sender or 'no sender'}"
    if _DAEMON_RE.match(sender) and re.search(r"deliver|undeliver|returned|fail", subject + msg.text[:2000], re.I):
        return "message from mailer-daemon"
    return None


def _auto_reply_reason(msg: ParsedMessage) -> str | None:
    """Why the message is an automatic reply (not a receipt), or None."""
    auto = _auto_submitted(msg)
    if auto and auto != "no":
        return f"Auto-Submitted: {auto}"
    for name in ("x-autoreply", "x-autorespond", "x-auto-reply", "x-autoresponder"):
        if msg.header(name) is not None:
            return f"{_title(name)} header"
    if msg.header("x-ms-exchange-inbox-rules-loop") is not None:
        return "X-MS-Exchange-Inbox-Rules-Loop header"
    subject = msg.subject or ""
    if _OOO_SUBJECT_RE.match(subject):
        return "subject looks like out-of-office"
    if msg.header("x-auto-response-suppress") and _OOO_ANYWHERE_RE.search(subject):
        return "X-Auto-Response-Suppress with an out-of-office subject"
    if (msg.header("precedence") or "").strip().lower() == "auto_reply":
        return "Precedence: auto_reply"
    return None


def _list_reason(msg: ParsedMessage) -> str | None:
    if msg.header("list-id") is not None:
        return "List-Id header"
    if msg.header("list-unsubscribe") is not None and msg.header("list-post") is not None:
        return "List-Unsubscribe and List-Post headers"
    precedence = (msg.header("precedence") or "").strip().lower()
    return f"Precedence: {precedence}" if precedence in ("list", "bulk") else None


def detect_automated(msg: ParsedMessage, envelope_sender: str | None = None) -> AutomatedInfo:
    """Classify mail from machines; ``kind == "none"`` for mail a person wrote."""
    bounce = _bounce_reason(msg, envelope_sender)
    if bounce is not None:
        failed, permanent, original = _dsn(msg)
        # Exim lists hard failures in X-Failed-Recipients
        return AutomatedInfo("bounce", bounce, failed, permanent or bounce == "X-Failed-Recipients header", original)
    original = msg.in_reply_to[0] if msg.in_reply_to else None
    if msg.is_report and msg.report_type == "disposition-notification":
        return AutomatedInfo("auto_reply", "multipart/report disposition-notification",
                             original_message_id=_mdn_original(msg) or original)
    reason = _auto_reply_reason(msg)
    if reason is not None:
        return AutomatedInfo("auto_reply", reason, original_message_id=original)
    listed = _list_reason(msg)
    return AutomatedInfo("list", listed) if listed is not None else AutomatedInfo("none", "")


def _mdn_original(msg: ParsedMessage) -> str | None:
    for a in msg.attachments:
        if a.content_type == "message/disposition-notification":
            m = re.search(r"^original-message-id:\s*<([^<>\s]+)>", decode_bytes(a.payload, None), re.I | re.M)
            if m:
                return m.group(1)
    return None


def _title(name: str) -> str:
    return "-".join(p.capitalize() if p not in ("ms", "x") else p.upper() for p in name.split("-"))


def must_not_answer(msg: ParsedMessage, envelope_sender: str | None = None) -> str | None:
    """A reason never to send an automatic answer to this message, or None when answering is safe."""
    info = detect_automated(msg, envelope_sender)
    if info.kind != "none":
        return f"{info.kind}: {info.reason}"
    if envelope_sender is not None and envelope_sender.strip() in ("", "<>"):
        return 'null envelope sender "<>"'
    auto = _auto_submitted(msg)
    if auto and auto != "no":
        return f"Auto-Submitted: {auto}"
    precedence = (msg.header("precedence") or "").strip().lower()
    if precedence in ("bulk", "junk", "list", "auto_reply"):
        return f"Precedence: {precedence}"
    suppress = {t.strip().lower() for t in (msg.header("x-auto-response-suppress") or "").split(",")}
    hit = suppress & {"all", "autoreply", "oof"}
    if hit:
        return f"X-Auto-Response-Suppress: {sorted(hit)[0]}"
    sender = (msg.from_address or "").lower()
    env = (envelope_sender or "").strip().strip("<>").lower()
    for address in (sender, env):
        if address and (_DAEMON_RE.match(address) or _NOREPLY_RE.match(address)):
            return f"automated sender address {address}"
    if not sender:
        return "no usable From address"
    if msg.header("list-id") or msg.header("list-unsubscribe"):
        return "mailing-list headers"
    return None
