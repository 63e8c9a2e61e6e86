"""The referral's fields: what a referral says, typed, whatever wording or format it came in.

The names are the contract of ``escalations parse --json`` (ARCHITECTURE.md, "Referral fields").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Literal, get_args

from escalations.parsers.values import EMPTY_TEXT_VALUES, child_status, norm, stage, yes_no

__all__ = ["CHILD_STATUSES", "FIELD_NAMES", "ChildStatus", "ReferralFields", "ReferralParse"]

ChildStatus = Literal["cp_plan", "looked_after", "child_in_need", "none"]
CHILD_STATUSES: tuple[str, ...] = get_args(ChildStatus)

FIELD_NAMES: tuple[str, ...] = (
    "child_names", "child_dobs", "child_id", "child_status",
    "raised_by_name", "raised_by_role", "raised_by_agency", "raised_by_email",
    "other_agency", "other_practitioner", "concern", "actions_taken", "outcome_sought",
    "needed_by", "immediate_risk", "stage", "borough",
)


@dataclass(frozen=True)
class ReferralFields:
    child_names: tuple[str, ...] = ()
    child_dobs: tuple[date, ...] = ()
    child_id: str | None = None
    child_status: ChildStatus | None = None
    raised_by_name: str | None = None
    raised_by_role: str | None = None
    raised_by_agency: str | None = None
    raised_by_email: str | None = None
    other_agency: str | None = None
    other_practitioner: str | None = None
    concern: str | None = None
    actions_taken: str | None = None
    outcome_sought: str | None = None
    needed_by: date | datetime | None = None
    immediate_risk: bool | None = None
    stage: int | None = None
    borough: str | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for name in FIELD_NAMES:
            value = getattr(self, name)
            if isinstance(value, tuple):
                out[name] = [v.isoformat() if isinstance(v, date) else v for v in value]
            elif isinstance(value, date):  # datetime is a date too
                out[name] = value.isoformat()
            else:
                out[name] = value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> ReferralFields:
        kwargs: dict[str, object] = {}
        for name in FIELD_NAMES:
            value = data.get(name)
            if value is None:
                continue
            if name == "child_names":
                items = value if isinstance(value, list | tuple) else [value]
                kwargs[name] = tuple(str(v) for v in items if str(v).strip())
            elif name == "child_dobs":
                items = value if isinstance(value, list | tuple) else [value]
                dobs: list[date] = []
                for v in items:
                    if isinstance(v, date):
                        dobs.append(v)
                    else:
                        try:
                            dobs.append(date.fromisoformat(str(v)[:10]))
                        except ValueError:
                            continue
                kwargs[name] = tuple(dobs)
            elif name == "needed_by":
                if isinstance(value, date):
                    kwargs[name] = value
                else:
                    s = str(value)
                    try:
                        kwargs[name] = datetime.fromisoformat(s) if len(s) > 10 else date.fromisoformat(s)
                    except ValueError:
                        continue
            elif name == "immediate_risk":
                kwargs[name] = value if isinstance(value, bool) else yes_no(str(value))
            elif name == "stage":
                if isinstance(value, bool):
                    continue
                kwargs[name] = value if isinstance(value, int) else stage(str(value))
            elif name == "child_status":
                kwargs[name] = value if value in CHILD_STATUSES else child_status(str(value))
            else:
                kwargs[name] = str(value)
        return cls(**kwargs)  # type: ignore[arg-type]

    def is_empty(self, name: str) -> bool:
        value = getattr(self, name)
        if value is None:
            return True
        if isinstance(value, tuple):
            return not value
        if isinstance(value, str):
            return name != "child_status" and norm(value) in EMPTY_TEXT_VALUES
        return False

    def merged_with(self, other: ReferralFields) -> ReferralFields:
        """This referral with its empty fields filled from ``other``."""
        updates = {name: getattr(other, name) for name in FIELD_NAMES
                   if self.is_empty(name) and not other.is_empty(name)}
        return replace(self, **updates) if updates else self


@dataclass(frozen=True)
class ReferralParse:
    fields: ReferralFields
    missing: tuple[str, ...]
    sources: tuple[str, ...]
    labelled_count: int
    #: LimitHit codes of what was skipped in the message (fixed strings, safe for the case record).
    limits_hit: tuple[str, ...] = ()
    #: A timescale the sender wrote that could not be read as a date (their words: may name a child,
    #: so never logged; redacted before it is quoted back).
    timescale_unread: str | None = None
    #: The fields whose label was matched only fuzzily (a near wording of a known label).
    fuzzy_labels: tuple[str, ...] = ()
    #: The sender's own text had too few labels: what was understood came from the free text.
    free_text: bool = False
