"""Mail about the service itself: the administrators' mailbox alerts and the coordinator's daily
digest of what needs a person. Pure: the dispatcher (escalations/cases/operations.py) reads the rows.

Nothing here carries a case's fields: references, fixed reason codes, field names, counts and
professionals' addresses only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from escalations.routing.policy.model import Partnership
    from escalations.routing.workflow.state import OutgoingMail

__all__ = ["DailyDigest", "compose_daily_digest", "compose_mailbox_alert"]

#: The outbox orders case mail first; these are notices.
_NOTICE = 1


def compose_mailbox_alert(*, mailbox: str, admins: Sequence[str], down: bool, last_ok_at: datetime | None,
                          since: datetime, error_code: str | None, now: datetime, tz: ZoneInfo,
                          incident: str) -> OutgoingMail:
    """One alert when a mailbox stops answering (``down``), one when it recovers. ``incident``
    identifies the incident, so the dedupe key makes each mail once-only."""
    from escalations.routing.calendar import format_local
    from escalations.routing.workflow.state import OutgoingMail

    ctx = {"mailbox": mailbox, "down": down, "last_ok": format_local(last_ok_at, tz) if last_ok_at else None,
           "since": format_local(since, tz), "error_code": error_code, "now": format_local(now, tz)}
    state = "no contact" if down else "recovered"
    return OutgoingMail(template="admin_mailbox_alert.txt.j2", to=tuple(admins),
                        subject=f"Escalations: mailbox {mailbox}: {state}", context=ctx,
                        dedupe_key=f"mailbox-{'down' if down else 'up'}:{mailbox}:{incident}",
                        reason="mailbox alert", priority=_NOTICE)


@dataclass(frozen=True)
class DailyDigest:
    """What needs a person in one partnership, as the dispatcher read it."""

    #: (received, reason code) of each quarantined message.
    quarantined: Sequence[tuple[datetime, str]]
    #: (reference, opened, missing field names) of referrals still incomplete.
    incomplete: Sequence[tuple[str, datetime, Sequence[str]]]
    #: (reference, opened) of cases waiting for the coordinator to route them.
    needs_routing: Sequence[tuple[str, datetime]]
    #: (reference, address, when) of hard bounces in the last day.
    bounces: Sequence[tuple[str, str, datetime]]

    def __bool__(self) -> bool:
        return bool(self.quarantined or self.incomplete or self.needs_routing or self.bounces)


def compose_daily_digest(p: Partnership, digest: DailyDigest, now: datetime) -> list[OutgoingMail]:
    """The coordinator's morning list; nothing when nothing needs a person."""
    from escalations.routing.calendar import format_local
    from escalations.routing.workflow.state import FIELD_LABELS, OutgoingMail

    if not digest:
        return []
    codes = Counter(code for _, code in digest.quarantined)
    ctx = {
        "partnership_name": p.name, "mailbox": p.primary_mailbox,
        "quarantine_codes": sorted(codes.items()),
        "quarantined": [{"when": format_local(t, p.tz), "code": c} for t, c in digest.quarantined],
        "incomplete": [{"reference": r, "opened": format_local(t, p.tz), "missing": ", ".join(FIELD_LABELS.get(f, f) for f in m) or "-"}
                       for r, t, m in digest.incomplete],
        "needs_routing": [{"reference": r, "opened": format_local(t, p.tz)} for r, t in digest.needs_routing],
        "bounces": [{"reference": r, "address": a, "when": format_local(t, p.tz)} for r, a, t in digest.bounces],
    }
    total = len(digest.quarantined) + len(digest.incomplete) + len(digest.needs_routing) + len(digest.bounces)
    day = now.astimezone(p.tz).date().isoformat()
    return [OutgoingMail(template="daily_digest.txt.j2", to=(c.email,),
                         subject=f"Escalations: {total} item{'s' if total != 1 else ''} need a person ({day})",
                         context=ctx, dedupe_key=f"daily:{p.id}:{day}:{c.email}", reason="daily digest",
                         priority=_NOTICE) for c in p.coordinator()]
