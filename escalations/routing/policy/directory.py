"""Directory lookups: which agency a practitioner means, who holds a role, who sits on a panel.

Pure functions over a :class:`~escalations.routing.policy.model.Partnership`; :mod:`.plan` turns
a stage's parties into :class:`Recipient` rows with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from escalations.routing.policy.model import AGENCY_ROLES, norm_name

if TYPE_CHECKING:
    from escalations.routing.policy.model import (
        Agency,
        Borough,
        Contact,
        PanelMember,
        Partnership,
        ResolutionPanel,
    )

@dataclass(frozen=True)
class Recipient:
    party: str
    role_name: str
    name: str
    email: str
    deputy_name: str | None = None
    deputy_email: str | None = None
    agency_id: str | None = None


@dataclass(frozen=True)
class Unresolved:
    """A party the directory cannot name; the coordinator routes it."""

    party: str
    reason: str


def role_name(p: Partnership, party: str) -> str:
    side, role = party.split(".", 1)
    if side == "partnership":
        r = p.roles.get(role)
        return r.name if r else role
    base = AGENCY_ROLES.get(role, role)
    return {"raising": f"{base} (raising agency)", "receiving": f"{base} (other agency)"}.get(side, base)


def recipients(p: Partnership, party: str, raising: Agency | None, other: Agency | None,
                scope: str | None) -> tuple[list[Recipient], list[str], list[Unresolved]]:
    """(directory recipients, parties taken from the referral, unresolved) for one party."""
    side, role = party.split(".", 1)
    if side == "partnership":
        r = p.roles.get(role)
        contacts = list(r.contacts) if r else []
        if any(c.scope for c in contacts):
            contacts = [c for c in contacts if scope and c.scope == scope]
            if not contacts:
                return [], [], [Unresolved(party, f"{role_name(p, party)} is held per area and the area "
                                                  f"({scope or 'not given'}) has no contact")]
        if not contacts:
            return [], [], [Unresolved(party, f"no contact configured for {role_name(p, party)}")]
        return [recipient(p, party, c, None) for c in contacts], [], []
    sides = ["raising", "receiving"] if side == "both" else [side]
    recips: list[Recipient] = []
    referral: list[str] = []
    unresolved: list[Unresolved] = []
    for s in sides:
        sp = f"{s}.{role}"
        if role == "practitioner":
            referral.append(sp)
            continue
        agency = raising if s == "raising" else other
        if agency is None:
            unresolved.append(Unresolved(sp, f"the {'raising' if s == 'raising' else 'other'} agency is not "
                                             "identified in the directory"))
            continue
        c = agency.contacts.get(role)
        if c is None:
            unresolved.append(Unresolved(sp, f"{agency.name} has no contact for {AGENCY_ROLES.get(role, role)}"))
            continue
        recips.append(recipient(p, sp, c, agency.id))
    return recips, referral, unresolved


def recipient(p: Partnership, party: str, c: Contact | PanelMember, agency_id: str | None) -> Recipient:
    return Recipient(party=party, role_name=role_name(p, party), name=c.name, email=c.email,
                     deputy_name=c.deputy.name if c.deputy else None,
                     deputy_email=c.deputy.email if c.deputy else None, agency_id=agency_id)


def panel_members(p: Partnership, panel: ResolutionPanel, raising: Agency | None,
           other: Agency | None) -> tuple[list[Recipient], str | None]:
    chosen: dict[str, PanelMember] = {}
    shortfall: list[str] = []
    if panel.must_include_disputing_agencies:
        for a in (raising, other):
            if a is None:
                shortfall.append("an agency in dispute is not identified")
                continue
            m = next((m for m in panel.pool if m.agency == a.id), None)
            if m is None:
                shortfall.append(f"no senior officer of {a.name} in the pool")
            else:
                chosen.setdefault(a.id, m)
    for m in panel.pool:
        if len(chosen) >= panel.size:
            break
        chosen.setdefault(m.agency, m)
    if len(chosen) < panel.size:
        shortfall.append(f"only {len(chosen)} of {panel.size} agencies available")
    party = "partnership.resolution_panel"
    recips = [Recipient(party=party, role_name="Resolution Panel member", name=m.name, email=m.email,
                        deputy_name=m.deputy.name if m.deputy else None,
                        deputy_email=m.deputy.email if m.deputy else None, agency_id=m.agency)
              for m in chosen.values()]
    return recips, ("; ".join(shortfall) or None)


def _names(a: Agency) -> tuple[str, ...]:
    return (a.name, *a.aliases)


def _pick(cands: list[Agency], b: Borough | None) -> Agency | None:
    """The one agency among ``cands``; with several, the only one in borough ``b``; else None."""
    uniq = list({a.id: a for a in cands}.values())
    if len(uniq) == 1:
        return uniq[0]
    local = [a for a in uniq if b is not None and a.borough == b.id]
    return local[0] if len(local) == 1 else None


def _exact(index: _AgencyIndex, wanted: str) -> list[Agency]:
    return list(index.exact.get(wanted, ()))


def _longest_inside(index: _AgencyIndex, wanted: str) -> list[Agency]:
    """The agencies whose longest name or alias appears as whole words inside ``wanted``."""
    hay = f" {wanted} "
    found = [(len(nn), a) for a, names in index.names for nn in names if nn and f" {nn} " in hay]
    best = max((n for n, _ in found), default=0)
    return [a for n, a in found if n == best]


def _containing(index: _AgencyIndex, wanted: str) -> list[Agency]:
    """The agencies one of whose names contains ``wanted`` as whole words (texts of 4+ characters)."""
    if len(wanted) < 4:
        return []
    return [a for a, names in index.names if any(f" {wanted} " in f" {nn} " for nn in names)]


@dataclass(frozen=True)
class _AgencyIndex:
    """A partnership's agencies' names as compared (:func:`norm_name`), made once per partnership."""

    #: Each agency with its name and aliases, normalised, in the order they are written.
    names: tuple[tuple[Agency, tuple[str, ...]], ...]
    #: Normalised id, name or alias -> the agencies it is one of, in directory order.
    exact: dict[str, tuple[Agency, ...]]

    @classmethod
    def of(cls, p: Partnership) -> _AgencyIndex:
        index = p.lookups.get(_INDEX)
        if index is None:
            names = tuple((a, tuple(norm_name(n) for n in _names(a))) for a in p.agencies)
            exact: dict[str, list[Agency]] = {}
            for a, normed in names:
                for n in dict.fromkeys((norm_name(a.id), *normed)):
                    exact.setdefault(n, []).append(a)
            index = cls(names, {k: tuple(v) for k, v in exact.items()})
            p.lookups[_INDEX] = index
        return index


_INDEX = ("directory", "agency-index")
_UNKNOWN = object()
#: Distinct (text, borough) answers kept per partnership; past this the memo starts again.
_MEMO_LIMIT = 2048


def find_agency(p: Partnership, text: str | None, borough: str | None = None) -> Agency | None:
    """The agency a practitioner means by ``text`` ("Hackney CSC", "Met Police"), or None.

    Exact name/alias/id match first, then the longest name or alias found as whole words
    inside the text, then a text found inside one name. With several equally good matches,
    an agency in ``borough`` wins; otherwise an ambiguous text matches nothing.

    Pure, so each answer is kept with the partnership (a case's stages ask the same question again and
    again, and every referral of one agency asks it with the same words).
    """
    if not text or not text.strip():
        return None
    key = ("directory", "agency", text, borough)
    memo = p.lookups
    kept = memo.get(key, _UNKNOWN)
    if kept is not _UNKNOWN:
        known: Agency | None = kept
        return known
    found = _find_agency(p, text, borough)
    if len(memo) >= _MEMO_LIMIT:
        memo.clear()
    memo[key] = found
    return found


def _find_agency(p: Partnership, text: str, borough: str | None) -> Agency | None:
    wanted = norm_name(text)
    b = find_borough(p, borough) if borough else None
    index = _AgencyIndex.of(p)
    for matcher in (_exact, _longest_inside, _containing):
        cands = matcher(index, wanted)
        if cands:
            return _pick(cands, b)
    return None


def find_borough(p: Partnership, text: str | None) -> Borough | None:
    if not text:
        return None
    wanted = norm_name(text)
    for b in p.boroughs:
        if wanted in {norm_name(n) for n in (b.id, b.name, *b.aliases)}:
            return b
    return None
