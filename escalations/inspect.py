"""Side-effect-free classification for ``escalations parse`` (no database: a message that would
be matched to a case by the processor is reported as ``reply`` from its headers alone)."""

from __future__ import annotations

from typing import Any

from escalations.cases.processor import partnership_for
from escalations.parsers.auto_reply import detect_automated
from escalations.parsers.classify import MailFacts, MailKind, classify
from escalations.parsers.fields import FIELD_NAMES, ReferralFields
from escalations.parsers.labels import LabelTable
from escalations.parsers.message import MessageParseError, parse_message
from escalations.parsers.referral import extract_referral
from escalations.parsers.reply import find_reference
from escalations.routing.policy.model import BASE_REQUIRED_FIELDS, PolicyConfig


def inspect_message(raw: bytes, config: PolicyConfig, labels: LabelTable | None = None) -> dict[str, Any]:
    try:
        msg = parse_message(raw)
    except MessageParseError as exc:
        return {"kind": "not_email", "partnership": None, "fields": ReferralFields().to_json(),
                "missing": list(BASE_REQUIRED_FIELDS), "reason": str(exc)}
    partnership = partnership_for(msg, (), config)
    required = partnership.all_required_fields() if partnership else list(BASE_REQUIRED_FIELDS)
    received = msg.date.replace(tzinfo=None) if msg.date else None
    if partnership is not None and msg.date is not None:
        received = partnership.calendar.local(msg.date).replace(tzinfo=None)
    parse = extract_referral(msg, required, labels, received=received)
    automated = detect_automated(msg)
    reference = find_reference(msg.subject)
    kind = classify(MailFacts(
        from_own_mailbox=bool(msg.from_address and msg.from_address in config.all_mailboxes()),
        automated=automated.kind, answers_case=bool(reference or msg.in_reply_to),
        labelled_count=parse.labelled_count, has_text=bool(msg.text.strip() or msg.attachments or msg.embedded)))
    reason = {MailKind.AUTO_REPLY: automated.reason, MailKind.BOUNCE: automated.reason,
              MailKind.LIST: automated.reason, MailKind.OWN_MAIL: "From is a partnership mailbox",
              MailKind.REPLY: f"reference {reference}" if reference else "In-Reply-To header",
              }.get(kind, f"{parse.labelled_count} labelled fields")
    fields = parse.fields.to_json()
    return {
        "kind": kind.value,
        "partnership": partnership.id if partnership else None,
        "fields": {name: fields.get(name) for name in FIELD_NAMES},
        "missing": list(parse.missing),
        "reason": reason,
        "sources": list(parse.sources),
        #: fields whose label was matched only approximately (a near wording of a known label)
        "fuzzy_labels": list(parse.fuzzy_labels),
        #: a timescale written but not readable as a date (the sender's words)
        "timescale_unread": parse.timescale_unread,
        "message_id": msg.message_id,
    }
