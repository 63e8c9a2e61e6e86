"""Side-effect-free classification for ``escalations parse`` (no database: a message that would
be matched to a case by the processor is reported as ``reply`` from its headers alone)."""

from __future__ import annotations

from typing import Any

from escalations.parsers.auto_reply import detect_automated
from escalations.parsers.fields import FIELD_NAMES, ReferralFields
from escalations.parsers.message import MessageParseError, parse_message
from escalations.parsers.referral import extract_referral
from escalations.parsers.reply import find_reference
from escalations.processor import MIN_LABELLED_FIELDS, partnership_for
from escalations.routing.policy.model import BASE_REQUIRED_FIELDS, PolicyConfig


def inspect_message(raw: bytes, config: PolicyConfig) -> dict[str, Any]:
    try:
        msg = parse_message(raw)
    except MessageParseError as exc:
        return {"kind": "not_email", "partnership": None, "fields": ReferralFields().to_json(),
                "missing": list(BASE_REQUIRED_FIELDS), "reason": str(exc)}
    partnership = partnership_for(msg, (), config)
    required = partnership.all_required_fields() if partnership else list(BASE_REQUIRED_FIELDS)
    parse = extract_referral(msg, required)
    automated = detect_automated(msg)
    kind: str
    reference = find_reference(msg.subject)
    if automated.kind != "none":
        kind, reason = automated.kind, automated.reason
    elif reference or msg.in_reply_to:
        kind, reason = "reply", f"reference {reference}" if reference else "In-Reply-To header"
    elif parse.labelled_count >= MIN_LABELLED_FIELDS:
        kind, reason = "referral", f"{parse.labelled_count} labelled fields"
    else:
        kind, reason = "unknown", f"{parse.labelled_count} labelled fields"
    fields = parse.fields.to_json()
    return {
        "kind": kind,
        "partnership": partnership.id if partnership else None,
        "fields": {name: fields.get(name) for name in FIELD_NAMES},
        "missing": list(parse.missing),
        "reason": reason,
        "sources": list(parse.sources),
        "message_id": msg.message_id,
    }
