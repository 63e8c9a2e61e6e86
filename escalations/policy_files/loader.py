"""Reading ``config/`` (I/O): YAML with file:line marks, loading and validating every partnership.

Layout on disk (``config_dir``)::

    partnerships/<id>.yaml   the rules: mailboxes, calendar, roles, routes (ladders), immediate risk
    agencies/<id>.yaml       the people: agencies (names, aliases, domains, contacts by role), the
                             contacts of the partnership's own roles, the Resolution Panel pool

``load_config(config_dir)`` validates everything once at startup and raises :class:`ConfigError`
(every :class:`ConfigIssue` names file, line and field). The checks beyond the schema are
:mod:`.checks`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from escalations.policy_files.checks import check_partnership, provisional_readings
from escalations.policy_files.yamlfile import ConfigError, ConfigIssue, Loc, Source, read_yaml, shared_values
from escalations.routing.policy.model import AgencyDirectory, Partnership, PolicyConfig

__all__ = ["ConfigError", "ConfigIssue", "load_config"]


def _pydantic_message(err: Any) -> str:
    kind = err.get("type", "")
    loc = err.get("loc", ())
    if kind == "literal_error":
        expected = str(err.get("ctx", {}).get("expected", ""))
        options = [o.strip().strip("'") for o in re.split(r",| or ", expected) if o.strip()]
        return f"{err.get('input')!r} is not one of {', '.join(options)}"
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return f"unknown field {loc[-1]!r} (check the spelling; see docs/policies.md)" if loc else "unknown field"
    if kind == "string_pattern_mismatch" and loc and loc[-1] == "id":
        return f"{err.get('input')!r} must be lower-case letters, digits and hyphens"
    msg = str(err.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")


def _validation_issues(src: Source, exc: ValidationError, prefix: Loc = ()) -> list[ConfigIssue]:
    out = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if isinstance(p, (str, int)))
        # Drop pydantic's internal loc parts (validator names), keep the user's path.
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
        out.append(src.issue((*prefix, *loc), _pydantic_message(err)))
    return out


Directories = dict[str, list[tuple[Source, AgencyDirectory]]]


def load_config(config_dir: Path) -> PolicyConfig:
    """Load and validate every partnership and agencies directory under ``config_dir``."""
    issues: list[ConfigIssue] = []
    warnings: list[ConfigIssue] = []
    pdir = config_dir / "partnerships"
    files = sorted(pdir.glob("*.yaml")) if pdir.is_dir() else []
    if not files:
        raise ConfigError([ConfigIssue(str(pdir), None, "partnerships", "no partnership YAML files found")])
    directories, broken_directories = _read_directories(config_dir / "agencies", issues)

    cfg = PolicyConfig()
    sources: dict[str, Source] = {}
    declared_ids: set[str] = set()
    for path in files:
        src = read_yaml(path, issues)
        if src is None:
            declared_ids.add(path.stem)  # unreadable: don't also blame its agencies file
            continue
        warnings.extend(shared_values(src))
        declared_ids.add(str(src.data.get("id", "")))
        p = _load_partnership(src, directories, broken_directories, cfg, sources, issues, warnings)
        if p is not None:
            cfg.partnerships[p.id] = p
            sources[p.id] = src

    for pid, entries in directories.items():
        if pid not in declared_ids:
            for asrc, _ in entries:
                issues.append(asrc.issue(("partnership",), f"no partnership with id {pid!r} "
                                                           f"(known: {', '.join(sorted(declared_ids))})"))
    issues.extend(_across_partnerships(cfg, sources))
    if issues:
        raise ConfigError(issues)
    cfg.warnings = warnings
    return cfg


def _read_directories(adir: Path, issues: list[ConfigIssue]) -> tuple[Directories, set[str]]:
    """Agencies directories keyed by partnership id, and the ids whose directory has errors."""
    directories: Directories = {}
    broken: set[str] = set()
    for path in sorted(adir.glob("*.yaml")) if adir.is_dir() else []:
        src = read_yaml(path, issues)
        if src is None:
            continue
        try:
            directory = AgencyDirectory.model_validate(src.data)
        except ValidationError as exc:
            issues.extend(_validation_issues(src, exc))
            broken.add(str(src.data.get("partnership", "")))
            continue
        directories.setdefault(directory.partnership, []).append((src, directory))
    return directories, broken


def _load_partnership(src: Source, directories: Directories, broken_directories: set[str], cfg: PolicyConfig,
                      sources: dict[str, Source], issues: list[ConfigIssue],
                      warnings: list[ConfigIssue]) -> Partnership | None:
    """One partnership file with its agencies merged in, checked; None when it cannot be used."""
    data = dict(src.data)
    inline = list(data.get("agencies") or [])
    pid = str(data.get("id", ""))
    data["agencies"] = inline + [a.model_dump(mode="json") for _, d in directories.get(pid, []) for a in d.agencies]
    for dsrc, d in directories.get(pid, []):
        issues.extend(_merge_people(data, src, dsrc, d))
    data["rules_version"] = _content_hash(src.data)
    data["directory_version"] = _content_hash([d.model_dump(mode="json") for _, d in directories.get(pid, [])])
    try:
        p = Partnership.model_validate(data)
    except ValidationError as exc:
        issues.extend(_validation_issues(src, exc))
        return None
    if p.id in cfg.partnerships:
        issues.append(src.issue(("id",), f"partnership id {p.id!r} is also used by {sources[p.id].path}"))
        return None
    if p.id != src.path.stem:
        issues.append(src.issue(("id",), f"id {p.id!r} should match the file name ({src.path.stem!r})"))
    agency_sources: dict[str, tuple[Source, Loc]] = {}
    for i, a in enumerate(inline):
        if isinstance(a, dict) and "id" in a:
            agency_sources.setdefault(str(a["id"]), (src, ("agencies", i)))
    for asrc, d in directories.get(p.id, []):
        for i, agency in enumerate(d.agencies):
            agency_sources.setdefault(agency.id, (asrc, ("agencies", i)))
    if p.id not in broken_directories:  # else its agencies are incomplete: fix those errors first
        issues.extend(check_partnership(p, src, agency_sources))
    warnings.extend(provisional_readings(p, src))
    return p


def _content_hash(value: Any) -> str:
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def _merge_people(data: dict[str, Any], src: Source, dsrc: Source, d: AgencyDirectory) -> list[ConfigIssue]:
    """Put the directory's role contacts and panel pool into the partnership's rules (``data``)."""
    issues = []
    roles = dict(data.get("roles") or {})
    for role_id, held in d.roles.items():
        role = roles.get(role_id)
        if not isinstance(role, dict):
            issues.append(dsrc.issue(("roles", role_id), f"no role {role_id!r} in {src.path.name} "
                                                         f"(its roles: {', '.join(sorted(roles)) or 'none'})"))
            continue
        if role.get("contacts"):
            issues.append(src.issue(("roles", role_id, "contacts"), f"the contacts of role {role_id!r} are also in "
                                    f"{dsrc.path.name}: keep people in the agencies file only"))
            continue
        roles[role_id] = {**role, "contacts": [c.model_dump(mode="json", exclude_none=True) for c in held.contacts]}
    data["roles"] = roles
    if d.panel_pool:
        pool = [m.model_dump(mode="json", exclude_none=True) for m in d.panel_pool]
        for loc, panel in _panels(data):
            if panel.get("pool"):
                issues.append(src.issue((*loc, "pool"), f"this panel has its own pool and {dsrc.path.name} has "
                                                        "panel_pool: keep people in the agencies file only"))
            else:
                panel["pool"] = pool
    return issues


def _panels(data: dict[str, Any]) -> list[tuple[Loc, dict[str, Any]]]:
    """Every Resolution Panel in the routes (copied so the caller may fill it in)."""
    out: list[tuple[Loc, dict[str, Any]]] = []
    routes = data.get("routes")
    if not isinstance(routes, list):
        return out
    data["routes"] = routes = [dict(r) if isinstance(r, dict) else r for r in routes]
    for ri, route in enumerate(routes):
        stages = route.get("stages") if isinstance(route, dict) else None
        if not isinstance(stages, list):
            continue
        route["stages"] = stages = [dict(st) if isinstance(st, dict) else st for st in stages]
        for si, stage in enumerate(stages):
            dm = stage.get("decision_maker") if isinstance(stage, dict) else None
            if isinstance(dm, dict) and isinstance(dm.get("panel"), dict):
                stage["decision_maker"] = dm = dict(dm)
                dm["panel"] = panel = dict(dm["panel"])
                out.append((("routes", ri, "stages", si, "decision_maker", "panel"), panel))
    return out


def _across_partnerships(cfg: PolicyConfig, sources: dict[str, Source]) -> list[ConfigIssue]:
    """Every mailbox belongs to exactly one partnership; reference prefixes are unique."""
    issues: list[ConfigIssue] = []
    owner: dict[str, str] = {}
    prefixes: dict[str, str] = {}
    for pid, p in cfg.partnerships.items():
        src = sources[pid]
        for i, m in enumerate(p.mailboxes):
            key = m.lower()
            if key in owner and owner[key] != pid:
                issues.append(src.issue(("mailboxes", i), f"mailbox {m!r} is already owned by partnership "
                                                          f"{owner[key]!r}; each mailbox must belong to one partnership"))
            owner.setdefault(key, pid)
        if p.reference_prefix in prefixes:
            issues.append(src.issue(("reference_prefix",), f"reference prefix {p.reference_prefix!r} is also used by "
                                                           f"{prefixes[p.reference_prefix]!r}"))
        prefixes.setdefault(p.reference_prefix, pid)
    return issues
