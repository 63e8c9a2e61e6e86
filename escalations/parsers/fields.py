"""The referral's fields: what a referral says, typed, whatever wording or format it came in.

The names are the contract of ``escalations parse --json`` (ARCHITECTURE.md, "Referral fields").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    "needed_by", "immediate_risk", "stage", "borough", "head_of_service_contacted",
)


# ---- decoding the stored JSON (one reader per typed field; None: leave the field empty) -------------

def _items(value: object) -> list[object]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _names(value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in _items(value) if str(v).strip())


def _one_date(v: object) -> date | None:
    if isinstance(v, date):
        return v
    try:
        return date.fromisoformat(str(v)[:10])
    except ValueError:
        return None


def _dobs(value: object) -> tuple[date, ...]:
    return tuple(d for d in (_one_date(v) for v in _items(value)) if d is not None)


def _needed_by(value: object) -> date | datetime | None:
    if isinstance(value, date):
        return value
    s = str(value)
    try:
        return datetime.fromisoformat(s) if len(s) > 10 else date.fromisoformat(s)
    except ValueError:
        return None


def _bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else yes_no(str(value))


def _stage(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    return value if isinstance(value, int) else stage(str(value))


def _status(value: object) -> object:
    return value if value in CHILD_STATUSES else child_status(str(value))


def _text(value: object) -> str:
    return str(value)


_DECODERS: Mapping[str, Callable[[object], object]] = {
    "child_names": _names, "child_dobs": _dobs, "needed_by": _needed_by, "immediate_risk": _bool,
    "head_of_service_contacted": _bool, "stage": _stage, "child_status": _status,
}


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
    #: Sutton Appendix B: "Should the Head of Service be contacted? Yes/No".
    head_of_service_contacted: bool | None = None

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
            decoded = _DECODERS.get(name, _text)(value)
            if decoded is not None:
                kwargs[name] = decoded
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
