"""Checks beyond the schema: references between roles, agencies, stages and panels resolve.

Each check is a small named function in :data:`PARTNERSHIP_CHECKS`, run in order by
:func:`check_partnership`; every finding is a :class:`ConfigIssue` naming file, line and field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from escalations.policy_files.yamlfile import ConfigIssue, Loc, Source, format_loc
from escalations.routing.policy.model import (
    AGENCY_ROLES,
    Agency,
    Partnership,
    ResolutionPanel,
    Stage,
    norm_name,
)


def _parties_of_stage(stage: Stage) -> list[tuple[Loc, str]]:
    out: list[tuple[Loc, str]] = [(("asked", i), a) for i, a in enumerate(stage.asked)]
    for n, note in enumerate(stage.notifications):
        out += [(("notifications", n, "notify", i), a) for i, a in enumerate(note.notify)]
    for f, form in enumerate(stage.forms):
        out.append((("forms", f, "completed_by"), form.completed_by))
        if form.send_to:
            out.append((("forms", f, "send_to"), form.send_to))
    if stage.decision_maker:
        out.append((("decision_maker", "party"), stage.decision_maker.party))
    return out


@dataclass(frozen=True)
class Target:
    """What a check looks at: the partnership, its file, and where each agency was written."""

    p: Partnership
    src: Source
    agency_sources: dict[str, tuple[Source, Loc]]

    def agency_source(self, a: Agency) -> tuple[Source, Loc]:
        return self.agency_sources.get(a.id, (self.src, ("agencies",)))


Check = Callable[[Target], list[ConfigIssue]]


def check_coordinator(t: Target) -> list[ConfigIssue]:
    p = t.p
    if p.coordinator_role in p.roles:
        return []
    return [t.src.issue(("coordinator_role",), f"coordinator role {p.coordinator_role!r} is not one of this "
                                               f"partnership's roles ({', '.join(p.roles) or 'none defined'})")]


def check_roles(t: Target) -> list[ConfigIssue]:
    """Every partnership role has a contact; per-borough contacts name a known borough."""
    p, out = t.p, []
    scopes = {b.id for b in p.boroughs}
    for rid, prole in p.roles.items():
        if not prole.contacts:
            out.append(t.src.issue(("roles", rid), f"partnership role {rid!r} has no contact: "
                                                   "add at least one under contacts"))
        for i, c in enumerate(prole.contacts):
            if c.scope and p.boroughs and c.scope not in scopes and rid.startswith("borough"):
                out.append(t.src.issue(("roles", rid, "contacts", i, "scope"),
                                       f"{c.scope!r} is not one of the boroughs ({', '.join(sorted(scopes))})"))
    return out


def check_agencies(t: Target) -> list[ConfigIssue]:
    """Agencies: unique ids, unambiguous names, contacts only for known roles, known boroughs."""
    out: list[ConfigIssue] = []
    seen_ids: set[str] = set()
    names: dict[str, str] = {}
    for a in t.p.agencies:
        asrc, aloc = t.agency_source(a)
        if a.id in seen_ids:
            out.append(asrc.issue((*aloc, "id"), f"agency id {a.id!r} appears twice"))
        seen_ids.add(a.id)
        out += _agency_contact_roles(a, asrc, aloc)
        out += _agency_names(t.p, a, asrc, aloc, names)
        out += _agency_borough(t.p, a, asrc, aloc)
    return out


def _agency_contact_roles(a: Agency, asrc: Source, aloc: Loc) -> list[ConfigIssue]:
    known = ", ".join(r for r in AGENCY_ROLES if r != "practitioner")
    return [asrc.issue((*aloc, "contacts", role), f"unknown role {role!r}: agency contacts are one of {known}")
            for role in a.contacts if role not in AGENCY_ROLES or role == "practitioner"]


def _agency_names(p: Partnership, a: Agency, asrc: Source, aloc: Loc, names: dict[str, str]) -> list[ConfigIssue]:
    """A practitioner's wording must point to one agency (the same name in two boroughs is fine)."""
    out = []
    for n in (a.name, *a.aliases):
        key = norm_name(n)
        other = names.get(key)
        if other and other != a.id and not _different_boroughs(p, other, a):
            out.append(asrc.issue((*aloc, "aliases"), f"name {n!r} also names agency {other!r}; "
                                                      "a practitioner's wording must point to one agency"))
        names.setdefault(key, a.id)
    return out


def _agency_borough(p: Partnership, a: Agency, asrc: Source, aloc: Loc) -> list[ConfigIssue]:
    if a.borough and p.boroughs and a.borough not in {b.id for b in p.boroughs}:
        return [asrc.issue((*aloc, "borough"), f"{a.borough!r} is not one of the boroughs "
                                               f"({', '.join(b.id for b in p.boroughs)})")]
    return []


def check_default_route(t: Target) -> list[ConfigIssue]:
    defaults = [r.id for r in t.p.routes if r.default]
    if len(defaults) > 1:
        return [t.src.issue(("routes",), f"only one route may be the default; found {', '.join(defaults)}")]
    return []


def check_routes(t: Target) -> list[ConfigIssue]:
    """Route and stage ids are unique; every stage asks someone, by a timescale, of known parties."""
    out: list[ConfigIssue] = []
    route_ids: set[str] = set()
    for ri, route in enumerate(t.p.routes):
        rloc: Loc = ("routes", ri)
        if route.id in route_ids:
            out.append(t.src.issue((*rloc, "id"), f"route id {route.id!r} appears twice"))
        route_ids.add(route.id)
        stage_ids: set[str] = set()
        for si, stage in enumerate(route.stages):
            sloc: Loc = (*rloc, "stages", si)
            if stage.id in stage_ids:
                out.append(t.src.issue((*sloc, "id"), f"stage id {stage.id!r} appears twice in route {route.id!r}"))
            stage_ids.add(stage.id)
            out += _check_stage(t, sloc, stage)
    return out


def _check_stage(t: Target, sloc: Loc, stage: Stage) -> list[ConfigIssue]:
    out = []
    if not stage.asked:
        out.append(t.src.issue((*sloc, "asked"), f"stage {stage.id!r} has no contact: nobody is asked to act "
                                                 "(list at least one party under asked)"))
    if stage.timescale is None and stage.interpretation is None and stage.decision_maker is None:
        out.append(t.src.issue((*sloc, "timescale"), f"stage {stage.id!r} has no timescale: give one, or an "
                                                     "interpretation explaining why the policy sets none"))
    for ploc, party in _parties_of_stage(stage):
        issue = _check_party_ref(t.p, party)
        if issue:
            out.append(t.src.issue((*sloc, *ploc), issue))
    dm = stage.decision_maker
    if dm and dm.panel:
        out += _check_panel(t.p, t.src, (*sloc, "decision_maker", "panel"), dm.panel)
    return out


def check_immediate_risk(t: Target) -> list[ConfigIssue]:
    """The immediate-risk step asks known parties and continues at a stage of the default route."""
    ir = t.p.immediate_risk
    if ir is None:
        return []
    out = []
    for i, party in enumerate(ir.asked):
        issue = _check_party_ref(t.p, party)
        if issue:
            out.append(t.src.issue(("immediate_risk", "asked", i), issue))
    default_ids = [s.id for s in t.p.default_route.stages]
    for key in ("continue_at", "bypass_to"):
        target = getattr(ir, key)
        if target and target not in default_ids:
            out.append(t.src.issue(("immediate_risk", key), f"{target!r} is not a stage of the default route "
                                                            f"({', '.join(default_ids)})"))
    return out


def check_agency_contacts(t: Target) -> list[ConfigIssue]:
    """Every agency must be able to answer for every agency role the ladders ask."""
    p, out = t.p, []
    used = _agency_roles_used(p)
    if used and not p.agencies:
        out.append(t.src.issue(("agencies",), f"no agencies directory: stages ask agency roles "
                                              f"({', '.join(sorted(used))}) but config/agencies/{p.id}.yaml "
                                              "is missing or empty"))
    for a in p.agencies:
        asrc, aloc = t.agency_source(a)
        for role, where in used.items():
            if role not in a.contacts:
                out.append(asrc.issue((*aloc, "contacts"),
                                      f"agency {a.id!r} has no contact for role {role!r}, which "
                                      f"{t.src.path.name} {format_loc(where)} asks for"))
    return out


def _agency_roles_used(p: Partnership) -> dict[str, Loc]:
    """Each agency role (not the practitioner, who comes from the referral) and where it is first asked."""
    where: list[tuple[Loc, str]] = []
    for ri, route in enumerate(p.routes):
        for si, stage in enumerate(route.stages):
            where += [(("routes", ri, "stages", si, *ploc), party) for ploc, party in _parties_of_stage(stage)]
    if p.immediate_risk:
        where += [(("immediate_risk", "asked", i), party) for i, party in enumerate(p.immediate_risk.asked)]
    used: dict[str, Loc] = {}
    for loc, party in where:
        side, role = party.split(".", 1)
        if side != "partnership" and role != "practitioner" and role in AGENCY_ROLES:
            used.setdefault(role, loc)
    return used


#: The checks, in the order their findings are reported.
PARTNERSHIP_CHECKS: tuple[Check, ...] = (
    check_coordinator,
    check_roles,
    check_agencies,
    check_default_route,
    check_routes,
    check_immediate_risk,
    check_agency_contacts,
)


def check_partnership(p: Partnership, src: Source,
                      agency_sources: dict[str, tuple[Source, Loc]]) -> list[ConfigIssue]:
    target = Target(p, src, agency_sources)
    return [issue for check in PARTNERSHIP_CHECKS for issue in check(target)]


def _different_boroughs(p: Partnership, other_id: str, a: Agency) -> bool:
    other = p.agency(other_id)
    return bool(other and other.borough and a.borough and other.borough != a.borough)


def _check_party_ref(p: Partnership, party: str) -> str | None:
    side, role = party.split(".", 1)
    if side == "partnership":
        if role not in p.roles:
            return (f"unknown role {role!r}: partnership roles are those under roles "
                    f"({', '.join(p.roles) or 'none defined'})")
        return None
    if role not in AGENCY_ROLES:
        return f"unknown role {role!r}: agency roles are {', '.join(AGENCY_ROLES)}"
    return None


def _check_panel(p: Partnership, src: Source, loc: Loc, panel: ResolutionPanel) -> list[ConfigIssue]:
    issues = []
    known = {a.id for a in p.agencies}
    for i, m in enumerate(panel.pool):
        if m.agency not in known:
            issues.append(src.issue((*loc, "pool", i, "agency"), f"unknown agency {m.agency!r} in the panel pool"))
    distinct = {m.agency for m in panel.pool}
    if len(distinct) < panel.size:
        issues.append(src.issue((*loc, "pool"), f"panel pool too small: the panel needs senior officers from "
                                                f"{panel.size} distinct agencies but the pool covers "
                                                f"{len(distinct)} ({', '.join(sorted(distinct)) or 'none'})"))
    if panel.must_include_disputing_agencies:
        missing = [a.id for a in p.agencies if a.member and a.id not in distinct]
        if missing:
            issues.append(src.issue((*loc, "pool"), "panel pool too small: the panel must include the agencies in "
                                                    "dispute, but these member agencies have no senior officer "
                                                    f"in the pool: {', '.join(missing)}"))
    return issues


def provisional_readings(p: Partnership, src: Source) -> list[ConfigIssue]:
    out = []
    for ri, route in enumerate(p.routes):
        for si, stage in enumerate(route.stages):
            for loc, interp in (((("routes", ri, "stages", si, "interpretation")), stage.interpretation),
                                ((("routes", ri, "stages", si, "timescale", "interpretation")),
                                 stage.timescale.interpretation if stage.timescale else None)):
                if interp and interp.provisional:
                    out.append(src.issue(loc, f"provisional reading, to be confirmed by the partnership: "
                                              f"{interp.reading}"))
    return out


