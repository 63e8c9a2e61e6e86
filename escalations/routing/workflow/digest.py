"""The coordinator's hourly digest of notices: one mail an hour instead of one per forged reply.

Pure: the dispatcher hands in the notices and the case references it read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from escalations.routing.workflow.authority import REFUSAL_TEXT, Refusal, config_addresses
from escalations.routing.workflow.lookalike import resembles

if TYPE_CHECKING:
    from escalations.routing.policy.model import Partnership
    from escalations.routing.workflow.state import OutgoingMail

__all__ = ["DIGEST_EVERY", "MAX_LINES", "DigestItem", "compose_digest"]

#: At most one digest an hour per partnership.
DIGEST_EVERY = timedelta(hours=1)
#: Lines listed in one digest; the rest are counted.
MAX_LINES = 200

_KIND_TEXT = {
    "sender_not_verified": "a referral whose From line did not name exactly one sender",
    "address_unconfirmed": "an address in a referral whose domain is no agency's (not mailed)",
}


@dataclass(frozen=True)
class DigestItem:
    kind: str
    reference: str | None
    at: datetime
    detail: Mapping[str, Any]


def _what(item: DigestItem) -> str:
    if item.kind == "reply_not_applied":
        try:
            return "reply not applied: " + REFUSAL_TEXT[Refusal(str(item.detail.get("reason")))]
        except ValueError:
            return "reply not applied"
    return _KIND_TEXT.get(item.kind, item.kind.replace("_", " "))


def _known_domains(p: Partnership) -> set[str]:
    """The domains the partnership's people write from: its agencies' and every configured contact's."""
    from escalations.routing.workflow.recipients import agency_domains

    return agency_domains(p) | {a.rpartition("@")[2] for a in config_addresses(p)}


def compose_digest(p: Partnership, items: Sequence[DigestItem], now: datetime) -> list[OutgoingMail]:
    from escalations.routing.calendar import format_local
    from escalations.routing.workflow.state import NOTICE_MAIL, OutgoingMail

    if not items:
        return []
    known = _known_domains(p)
    lines = [{"when": format_local(i.at, p.tz), "reference": i.reference, "what": _what(i),
              "sender": str(i.detail.get("from") or ""),
              "lookalike": resembles(str(i.detail.get("from") or ""), known) or ""} for i in items[:MAX_LINES]]
    if len(items) > MAX_LINES:
        lines.append({"when": "", "reference": "", "what": f"... and {len(items) - MAX_LINES} more",
                      "sender": "", "lookalike": ""})
    ctx = {"notices": lines, "partnership_name": p.name, "mailbox": p.primary_mailbox}
    stamp = now.strftime("%Y%m%dT%H%M%S")
    return [OutgoingMail(template="coordinator_digest.txt.j2", to=(c.email,),
                         subject=f"Escalations: {len(items)} message{'s' if len(items) != 1 else ''} "
                                 "not acted on", context=ctx,
                         dedupe_key=f"digest:{p.id}:{stamp}:{c.email}", reason="coordinator digest",
                         priority=NOTICE_MAIL) for c in p.coordinator()]
