"""Partnership policies: the model administrators edit as YAML, its loader/validator, and the engine.

Layout on disk (``config_dir``)::

    partnerships/<id>.yaml   one partnership: mailboxes, calendar, roles, routes (ladders), immediate risk
    agencies/<id>.yaml       that partnership's agencies directory: names, aliases, contacts by role

``load_config(config_dir)`` validates everything once at startup and raises :class:`ConfigError`
(every :class:`ConfigIssue` names file, line and field). The engine functions (:func:`stage_plan`,
:func:`timeline`, :func:`next_step`) are pure: no I/O, no clock; they return UTC-aware datetimes.

Policy versions: ``Partnership.policy_version`` fingerprints the whole effective config of a
partnership. A case records it (and a JSON snapshot of the Partnership) when it opens, so a later
YAML edit changes new cases only; ``Partnership.model_validate_json(snapshot)`` restores it.
See docs/policies.md.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
)
from pydantic import model_validator as _model_validator

from escalations.routing.calendar import Division, Unit, WorkingCalendar
from escalations.routing.redact import on_domains

#: Required of every referral whatever the partnership (ARCHITECTURE.md, issue 3).
BASE_REQUIRED_FIELDS: tuple[str, ...] = ("child_names", "other_agency", "concern", "outcome_sought")

ChildStatus = Literal["cp_plan", "looked_after", "child_in_need", "none"]
CHILD_STATUSES: tuple[str, ...] = get_args(ChildStatus)

#: Roles every agency in a directory can hold. ``practitioner`` is never looked up in the
#: directory: on the raising side it is the referrer, on the receiving side the named worker.
AGENCY_ROLES: dict[str, str] = {
    "practitioner": "Practitioner",
    "line_manager": "Line manager / supervisor",
    "senior_manager": "Senior manager (tier 3 / operations manager)",
    "head_of_service": "Head of service",
    "safeguarding_lead": "Designated / named safeguarding lead",
    "partnership_member": "Agency's member of (nominated representative on) the partnership",
}
SIDES: tuple[str, ...] = ("raising", "receiving", "both", "partnership")

#: The index :func:`stage_plan` and :func:`next_step` use for the immediate-risk step.
IMMEDIATE = -1

_PARTY_RE = re.compile(r"^(raising|receiving|both|partnership)\.[a-z][a-z0-9_]*$")
_SLUG_RE = r"^[a-z0-9][a-z0-9-]*$"


# --------------------------------------------------------------------------------------------
# Field types
# --------------------------------------------------------------------------------------------


def _check_email(value: str) -> str:
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"{value!r} is not a valid email address: {exc}") from None
    return value


def _check_party(value: str) -> str:
    if not _PARTY_RE.match(value):
        raise ValueError(
            f"{value!r} is not a party: write side.role, where side is one of {', '.join(SIDES)} "
            "(e.g. raising.line_manager, partnership.independent_chair)"
        )
    return value


def _check_time(value: Any) -> Any:
    if isinstance(value, int):
        raise ValueError('write the time in quotes, e.g. "17:00" (YAML reads 17:00 unquoted as a number)')
    return value


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not a known timezone (e.g. Europe/London)") from None
    return value


Email = Annotated[str, AfterValidator(_check_email)]
PartyRef = Annotated[str, AfterValidator(_check_party)]
Slug = Annotated[str, Field(pattern=_SLUG_RE)]
Clause = Annotated[str, Field(min_length=1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class Person(_Model):
    name: str
    email: Email


class Contact(_Model):
    """Someone to ask, with the deputy used when they are out of office."""

    name: str
    email: Email
    deputy: Person | None = None
    #: For partnership roles held per area: the borough (Tri-borough) or subgroup (Sutton).
    scope: str | None = None


class Interpretation(_Model):
    """Where a policy is ambiguous: the words, the reading chosen, and why."""

    wording: str
    reading: str
    why: str
    #: True when the reading fills a gap the partnership should confirm; ``config check`` warns.
    provisional: bool = False


class Timescale(_Model):
    amount: int | None = Field(default=None, ge=0)
    unit: Unit
    #: "or a timescale that protects the child (whichever is shorter)": the referral's needed_by wins if sooner.
    or_protective: bool = False
    clause: Clause
    interpretation: Interpretation | None = None

    @_model_validator(mode="after")
    def _amount_needed(self) -> Timescale:
        if self.unit != "same_working_day" and self.amount is None:
            raise ValueError(f"a timescale in {self.unit} needs an amount")
        return self

    def describe(self) -> str:
        if self.unit == "same_working_day":
            text = "same working day"
        elif self.amount == 0 and self.unit == "hours":
            text = "immediately"
        else:
            unit = self.unit.replace("_", " ")
            if self.amount == 1:
                unit = unit[:-1]
            text = f"{self.amount} {unit}"
        return text + (" (or sooner to protect the child)" if self.or_protective else "")


class Notification(_Model):
    notify: list[PartyRef] = Field(min_length=1)
    #: Only when the child has one of these statuses; empty means always.
    when_child_status: list[ChildStatus] = Field(default_factory=list)
    #: Only when immediate risk is (True) / is not (False) flagged; None means either.
    when_immediate_risk: bool | None = None
    reason: str
    clause: Clause


class SuggestedAction(_Model):
    text: str
    clause: Clause


class FormRequirement(_Model):
    name: str
    completed_by: PartyRef
    when: Literal["at_referral", "at_stage_open", "on_resolution"]
    send_to: PartyRef | None = None
    note: str = ""
    clause: Clause


class PanelMember(_Model):
    agency: str
    name: str
    email: Email
    deputy: Person | None = None


class ResolutionPanel(_Model):
    """A panel of ``size`` senior officers from distinct member agencies (C&H 2.14, Havering 2.12)."""

    size: int = Field(ge=1)
    must_include_disputing_agencies: bool = True
    pool: list[PanelMember] = Field(default_factory=list)
    clause: Clause


class DecisionMaker(_Model):
    party: PartyRef
    #: The decision maker may convene a panel instead of deciding alone.
    panel: ResolutionPanel | None = None
    decision_within: Timescale | None = None
    note: str = ""
    clause: Clause


class Stage(_Model):
    id: Slug
    name: str
    #: The policy's own name for the stage ("Stage One", "Pre-escalation").
    label: str | None = None
    #: Who must act (at least one).
    asked: list[PartyRef] = Field(default_factory=list)
    action: str
    clause: Clause
    #: None when the policy sets none (the interpretation says so); needed_by still applies.
    timescale: Timescale | None = None
    #: How soon after the previous stage fails this one must be reached (Tri-borough "within 24 hours").
    reach_within: Timescale | None = None
    notifications: list[Notification] = Field(default_factory=list)
    suggested_actions: list[SuggestedAction] = Field(default_factory=list)
    forms: list[FormRequirement] = Field(default_factory=list)
    decision_maker: DecisionMaker | None = None
    interpretation: Interpretation | None = None


class Route(_Model):
    """One ladder. A partnership with several picks one per referral (:meth:`Partnership.choose_route`)."""

    id: Slug
    name: str
    description: str = ""
    clause: Clause
    default: bool = False
    #: Words in a referral that select this route (case-insensitive).
    keywords: list[str] = Field(default_factory=list)
    stages: list[Stage] = Field(min_length=1)


class ImmediateRisk(_Model):
    action: str
    asked: list[PartyRef] = Field(min_length=1)
    timescale: Timescale
    clause: Clause
    #: The default-route stage the ladder continues at (None: the first stage).
    continue_at: str | None = None
    #: True: that stage opens at case open, alongside this step; False: when this step falls due.
    parallel: bool = True
    #: A stage the referrer may (or must) jump to.
    bypass_to: str | None = None
    bypass_mandatory: bool = False
    bypass_note: str = ""
    interpretation: Interpretation | None = None


class PartnershipRole(_Model):
    name: str
    description: str = ""
    clause: str | None = None
    contacts: list[Contact] = Field(default_factory=list)


class SecureMail(_Model):
    required: bool = True
    means: str
    clause: Clause


def _check_domain(value: str) -> str:
    d = value.strip().lower().removeprefix("@").strip(".")
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+", d):
        raise ValueError(f"not a mail domain: {value!r}")
    return d


class SecureRoute(_Model):
    """A relay that enforces TLS to these domains (e.g. CJSM): mail whose every recipient is on one
    of them, or below one, carries the full details; all other mail is redacted."""

    domains: list[Annotated[str, AfterValidator(_check_domain)]] = Field(min_length=1)
    clause: Clause
    note: str = ""

    def covers(self, recipients: Iterable[str]) -> bool:
        return on_domains(recipients, self.domains)


_Date = date  # the field below is named 'date'


class PolicyDocument(_Model):
    title: str
    version: str
    #: The policy's date (None when the document carries none; a month-only date is given as the 1st).
    date: _Date | None = None
    source: str | None = None


class ChildSafety(_Model):
    """The general principle that makes the referral's needed_by shorten every stage's deadline."""

    applies_to_all_stages: bool = True
    wording: str
    clause: Clause


class Borough(_Model):
    id: Slug
    name: str
    aliases: list[str] = Field(default_factory=list)


Sector = Literal[
    "social_care", "police", "health", "mental_health", "education", "probation", "housing",
    "early_years", "voluntary", "local_authority", "other",
]


class Agency(_Model):
    id: Slug
    name: str
    aliases: list[str] = Field(default_factory=list)
    sector: Sector
    #: Mail domains of the agency's staff: an address written in a referral is mailed only when its
    #: domain is one of the partnership's agencies' (or the coordinator confirmed it).
    domains: list[str] = Field(default_factory=list)
    borough: str | None = None
    #: A member of the partnership: eligible (and, in a dispute, required) on a Resolution Panel.
    member: bool = True
    contacts: dict[str, Contact] = Field(default_factory=dict)


class AgencyDirectory(_Model):
    """``config/agencies/<partnership>.yaml``."""

    partnership: str
    agencies: list[Agency] = Field(default_factory=list)


class Partnership(_Model):
    id: Slug
    name: str
    mailboxes: list[Email] = Field(min_length=1)
    reference_prefix: Annotated[str, Field(pattern=r"^[A-Z]{2,5}$")]
    required_fields: list[str] = Field(default_factory=list)
    timezone: Annotated[str, AfterValidator(_check_timezone)] = "Europe/London"
    bank_holidays: Division = "england-and-wales"
    working_day_end: Annotated[time, BeforeValidator(_check_time)] = time(17, 0)
    #: Escalate automatically when a stage falls due unresolved (else: remind and wait for the referrer).
    auto_escalate: bool = True
    policy: PolicyDocument
    secure_mail: SecureMail | None = None
    #: Where full details may go; everything else is sent with the child as initials.
    secure_route: SecureRoute | None = None
    #: The partnership role that routes what the service cannot (unknown agency, missing contact).
    coordinator_role: str
    child_safety: ChildSafety | None = None
    roles: dict[str, PartnershipRole] = Field(default_factory=dict)
    boroughs: list[Borough] = Field(default_factory=list)
    agencies: list[Agency] = Field(default_factory=list)
    routes: list[Route] = Field(min_length=1)
    immediate_risk: ImmediateRisk | None = None
    #: Declared policy version + hash of everything else; filled in when empty.
    policy_version: str = ""

    _calendar: WorkingCalendar = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        self._calendar = WorkingCalendar(self.timezone, self.bank_holidays, self.working_day_end)
        if not self.policy_version:
            object.__setattr__(self, "policy_version", f"{self.policy.version}+{self.fingerprint()}")

    def fingerprint(self) -> str:
        dump = self.model_dump(mode="json", exclude={"policy_version"})
        blob = json.dumps(dump, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]

    # -- contract kept from the intake spine ------------------------------------------------

    def all_required_fields(self) -> list[str]:
        extra = [f for f in self.required_fields if f not in BASE_REQUIRED_FIELDS]
        return [*BASE_REQUIRED_FIELDS, *extra]

    @property
    def primary_mailbox(self) -> str:
        return self.mailboxes[0]

    # -- lookups ----------------------------------------------------------------------------

    @property
    def calendar(self) -> WorkingCalendar:
        return self._calendar

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def default_route(self) -> Route:
        return next((r for r in self.routes if r.default), self.routes[0])

    def route(self, route_id: str | None = None) -> Route:
        if route_id is None:
            return self.default_route
        for r in self.routes:
            if r.id == route_id:
                return r
        raise KeyError(f"{self.id} has no route {route_id!r} (routes: {', '.join(r.id for r in self.routes)})")

    def choose_route(self, text: str | None = None, requested: str | None = None) -> Route:
        """The route a referral asks for by id, else the first whose keywords appear in ``text``, else the default."""
        if requested:
            wanted = _norm(requested)
            for r in self.routes:
                if _norm(r.id) == wanted or _norm(r.name) == wanted:
                    return r
        if text:
            hay = f" {_norm(text)} "
            for r in self.routes:
                if any(f" {_norm(k)} " in hay for k in r.keywords):
                    return r
        return self.default_route

    def agency(self, agency_id: str) -> Agency | None:
        return next((a for a in self.agencies if a.id == agency_id), None)

    def find_agency(self, text: str | None, borough: str | None = None) -> Agency | None:
        """The agency a practitioner means by ``text`` ("Hackney CSC", "Met Police"), or None.

        Exact name/alias/id match first, then the longest name or alias found as whole words
        inside the text, then a text found inside one name. With several equally good matches,
        an agency in ``borough`` wins; otherwise an ambiguous text matches nothing.
        """
        if not text or not text.strip():
            return None
        wanted = _norm(text)
        b = self.find_borough(borough) if borough else None
        pool = self.agencies

        def pick(cands: list[Agency]) -> Agency | None:
            uniq = list({a.id: a for a in cands}.values())
            if len(uniq) == 1:
                return uniq[0]
            if b is not None:
                local = [a for a in uniq if a.borough == b.id]
                if len(local) == 1:
                    return local[0]
            return None

        exact = [a for a in pool if wanted in {_norm(n) for n in (a.id, a.name, *a.aliases)}]
        if exact:
            return pick(exact)
        hay = f" {wanted} "
        best_len = 0
        best: list[Agency] = []
        for a in pool:
            for n in (a.name, *a.aliases):
                nn = _norm(n)
                if nn and f" {nn} " in hay:
                    if len(nn) > best_len:
                        best_len, best = len(nn), [a]
                    elif len(nn) == best_len:
                        best.append(a)
        if best:
            return pick(best)
        if len(wanted) >= 4:
            inside = [a for a in pool if any(f" {wanted} " in f" {_norm(n)} " for n in (a.name, *a.aliases))]
            if inside:
                return pick(inside)
        return None

    def find_borough(self, text: str | None) -> Borough | None:
        if not text:
            return None
        wanted = _norm(text)
        for b in self.boroughs:
            if wanted in {_norm(n) for n in (b.id, b.name, *b.aliases)}:
                return b
        return None

    def coordinator(self) -> list[Contact]:
        role = self.roles.get(self.coordinator_role)
        return list(role.contacts) if role else []


def _norm(text: str) -> str:
    t = text.lower().replace("’", "'").replace("&", " and ")
    t = re.sub(r"[^a-z0-9']+", " ", t)
    t = t.replace("'s ", "s ").replace("'", "")
    return " ".join(t.split())


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}"


class ConfigError(Exception):
    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


@dataclass
class PolicyConfig:
    partnerships: dict[str, Partnership] = field(default_factory=dict)
    #: Non-fatal findings (provisional interpretations the partnership should confirm).
    warnings: list[ConfigIssue] = field(default_factory=list)

    def partnership_for_address(self, address: str) -> Partnership | None:
        wanted = address.strip().lower()
        for p in self.partnerships.values():
            if any(m.lower() == wanted for m in p.mailboxes):
                return p
        return None

    def all_mailboxes(self) -> dict[str, Partnership]:
        return {m.lower(): p for p in self.partnerships.values() for m in p.mailboxes}


Loc = tuple[str | int, ...]


def format_loc(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def line_for(root: yaml.Node | None, loc: Sequence[str | int]) -> int | None:
    """The 1-based line of ``loc`` in the composed YAML document.

    A path found in full gives the line of its key (``chair:``, ``pool:``) or sequence item; a path
    found only in part (a missing field) gives the line where the deepest mapping found begins.
    """
    if root is None:
        return None
    cur: yaml.Node = root
    line = int(cur.start_mark.line) + 1
    complete = True
    for part in loc:
        if isinstance(cur, yaml.MappingNode):
            pair = next(((k, v) for k, v in cur.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)),
                        None)
            if pair is None:
                complete = False
                continue  # a pydantic-internal loc element, or a missing key: stay on the mapping
            cur = pair[1]
            line = int(pair[0].start_mark.line) + 1
        elif isinstance(cur, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(cur.value):
            cur = cur.value[part]
            line = int(cur.start_mark.line) + 1
        else:
            complete = False
    return line if complete else int(cur.start_mark.line) + 1


@dataclass
class _Source:
    path: Path
    root: yaml.Node | None
    data: Any

    def issue(self, loc: Loc, message: str) -> ConfigIssue:
        return ConfigIssue(str(self.path), line_for(self.root, loc), format_loc(loc), message)


def _read_yaml(path: Path, issues: list[ConfigIssue]) -> _Source | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        issues.append(ConfigIssue(str(path), None, "(file)", f"cannot read: {exc}"))
        return None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            issues.append(ConfigIssue(str(path), None, "(file)", "the file is empty"))
            return None
        _duplicate_keys(path, root, (), issues)
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        issues.append(ConfigIssue(str(path), mark.line + 1 if mark else None, "(yaml)",
                                  f"not valid YAML: {problem}"))
        return None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        issues.append(ConfigIssue(str(path), 1, "(top level)", "expected a mapping of field: value"))
        return None
    return _Source(path, root, data)


def _duplicate_keys(path: Path, node: yaml.Node, loc: Loc, issues: list[ConfigIssue]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            key = str(k.value) if isinstance(k, yaml.ScalarNode) else "?"
            if key in seen and key != "<<":
                issues.append(ConfigIssue(str(path), k.start_mark.line + 1, format_loc((*loc, key)),
                                          f"{key!r} appears twice in the same mapping; the first would be ignored"))
            seen.add(key)
            _duplicate_keys(path, v, (*loc, key), issues)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _duplicate_keys(path, item, (*loc, i), issues)


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


def _validation_issues(src: _Source, exc: ValidationError, prefix: Loc = ()) -> list[ConfigIssue]:
    out = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if isinstance(p, (str, int)))
        # Drop pydantic's internal loc parts (validator names), keep the user's path.
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
        out.append(src.issue((*prefix, *loc), _pydantic_message(err)))
    return out


def load_config(config_dir: Path) -> PolicyConfig:
    """Load and validate every partnership and agencies directory under ``config_dir``."""
    issues: list[ConfigIssue] = []
    warnings: list[ConfigIssue] = []
    pdir = config_dir / "partnerships"
    files = sorted(pdir.glob("*.yaml")) if pdir.is_dir() else []
    if not files:
        raise ConfigError([ConfigIssue(str(pdir), None, "partnerships", "no partnership YAML files found")])

    # Agencies directories, keyed by partnership id.
    directories: dict[str, list[tuple[_Source, AgencyDirectory]]] = {}
    broken_directories: set[str] = set()
    adir = config_dir / "agencies"
    for path in sorted(adir.glob("*.yaml")) if adir.is_dir() else []:
        src = _read_yaml(path, issues)
        if src is None:
            continue
        try:
            directory = AgencyDirectory.model_validate(src.data)
        except ValidationError as exc:
            issues.extend(_validation_issues(src, exc))
            broken_directories.add(str(src.data.get("partnership", "")))
            continue
        directories.setdefault(directory.partnership, []).append((src, directory))

    cfg = PolicyConfig()
    sources: dict[str, _Source] = {}
    declared_ids: set[str] = set()
    for path in files:
        src = _read_yaml(path, issues)
        if src is None:
            declared_ids.add(path.stem)  # unreadable: don't also blame its agencies file
            continue
        data = dict(src.data)
        inline = list(data.get("agencies") or [])
        pid = str(data.get("id", ""))
        declared_ids.add(pid)
        merged = inline + [a.model_dump(mode="json") for _, d in directories.get(pid, []) for a in d.agencies]
        data["agencies"] = merged
        try:
            p = Partnership.model_validate(data)
        except ValidationError as exc:
            issues.extend(_validation_issues(src, exc))
            continue
        if p.id in cfg.partnerships:
            issues.append(src.issue(("id",), f"partnership id {p.id!r} is also used by {sources[p.id].path}"))
            continue
        if p.id != path.stem:
            issues.append(src.issue(("id",), f"id {p.id!r} should match the file name ({path.stem!r})"))
        agency_sources: dict[str, tuple[_Source, Loc]] = {}
        for i, _a in enumerate(inline):
            if isinstance(_a, dict) and "id" in _a:
                agency_sources.setdefault(str(_a["id"]), (src, ("agencies", i)))
        for asrc, d in directories.get(p.id, []):
            for i, a in enumerate(d.agencies):
                agency_sources.setdefault(a.id, (asrc, ("agencies", i)))
        if p.id not in broken_directories:  # else its agencies are incomplete: fix those errors first
            issues.extend(_check_partnership(p, src, agency_sources))
        warnings.extend(_provisional(p, src))
        cfg.partnerships[p.id] = p
        sources[p.id] = src

    for pid, entries in directories.items():
        if pid not in declared_ids:
            for asrc, _ in entries:
                issues.append(asrc.issue(("partnership",), f"no partnership with id {pid!r} "
                                                           f"(known: {', '.join(sorted(declared_ids))})"))

    # Across partnerships: every mailbox belongs to exactly one; prefixes are unique.
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

    if issues:
        raise ConfigError(issues)
    cfg.warnings = warnings
    return cfg


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


def _check_partnership(p: Partnership, src: _Source,
                       agency_sources: dict[str, tuple[_Source, Loc]]) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    add = issues.append

    if p.coordinator_role not in p.roles:
        add(src.issue(("coordinator_role",), f"coordinator role {p.coordinator_role!r} is not one of this "
                                             f"partnership's roles ({', '.join(p.roles) or 'none defined'})"))
    for rid, prole in p.roles.items():
        if not prole.contacts:
            add(src.issue(("roles", rid), f"partnership role {rid!r} has no contact: add at least one under contacts"))
        scopes = {b.id for b in p.boroughs}
        for i, c in enumerate(prole.contacts):
            if c.scope and p.boroughs and c.scope not in scopes and rid.startswith("borough"):
                add(src.issue(("roles", rid, "contacts", i, "scope"),
                              f"{c.scope!r} is not one of the boroughs ({', '.join(sorted(scopes))})"))

    # Agencies: unique ids, unambiguous names, contacts only for known roles.
    seen_ids: set[str] = set()
    names: dict[str, str] = {}
    for a in p.agencies:
        asrc, aloc = agency_sources.get(a.id, (src, ("agencies",)))
        if a.id in seen_ids:
            add(asrc.issue((*aloc, "id"), f"agency id {a.id!r} appears twice"))
        seen_ids.add(a.id)
        for role in a.contacts:
            if role not in AGENCY_ROLES or role == "practitioner":
                known = ", ".join(r for r in AGENCY_ROLES if r != "practitioner")
                add(asrc.issue((*aloc, "contacts", role), f"unknown role {role!r}: agency contacts are one of {known}"))
        for n in (a.name, *a.aliases):
            key = _norm(n)
            other = names.get(key)
            if other and other != a.id and not _different_boroughs(p, other, a):
                add(asrc.issue((*aloc, "aliases"), f"name {n!r} also names agency {other!r}; "
                                                   "a practitioner's wording must point to one agency"))
            names.setdefault(key, a.id)
        if a.borough and p.boroughs and a.borough not in {b.id for b in p.boroughs}:
            add(asrc.issue((*aloc, "borough"), f"{a.borough!r} is not one of the boroughs "
                                               f"({', '.join(b.id for b in p.boroughs)})"))

    # Routes and stages.
    defaults = [r.id for r in p.routes if r.default]
    if len(defaults) > 1:
        add(src.issue(("routes",), f"only one route may be the default; found {', '.join(defaults)}"))
    route_ids: set[str] = set()
    agency_roles_used: dict[str, Loc] = {}
    for ri, route in enumerate(p.routes):
        rloc: Loc = ("routes", ri)
        if route.id in route_ids:
            add(src.issue((*rloc, "id"), f"route id {route.id!r} appears twice"))
        route_ids.add(route.id)
        stage_ids: set[str] = set()
        for si, stage in enumerate(route.stages):
            sloc: Loc = (*rloc, "stages", si)
            if stage.id in stage_ids:
                add(src.issue((*sloc, "id"), f"stage id {stage.id!r} appears twice in route {route.id!r}"))
            stage_ids.add(stage.id)
            if not stage.asked:
                add(src.issue((*sloc, "asked"), f"stage {stage.id!r} has no contact: nobody is asked to act "
                                                "(list at least one party under asked)"))
            if stage.timescale is None and stage.interpretation is None and stage.decision_maker is None:
                add(src.issue((*sloc, "timescale"), f"stage {stage.id!r} has no timescale: give one, or an "
                                                    "interpretation explaining why the policy sets none"))
            for ploc, party in _parties_of_stage(stage):
                issue = _check_party_ref(p, party)
                if issue:
                    add(src.issue((*sloc, *ploc), issue))
                side, role = party.split(".", 1)
                if side != "partnership" and role != "practitioner" and role in AGENCY_ROLES:
                    agency_roles_used.setdefault(role, (*sloc, *ploc))
            dm = stage.decision_maker
            if dm and dm.panel:
                issues.extend(_check_panel(p, src, (*sloc, "decision_maker", "panel"), dm.panel))
    if p.immediate_risk:
        ir = p.immediate_risk
        for i, party in enumerate(ir.asked):
            issue = _check_party_ref(p, party)
            if issue:
                add(src.issue(("immediate_risk", "asked", i), issue))
            side, role = party.split(".", 1)
            if side != "partnership" and role in AGENCY_ROLES and role != "practitioner":
                agency_roles_used.setdefault(role, ("immediate_risk", "asked", i))
        default_ids = [s.id for s in p.default_route.stages]
        for key in ("continue_at", "bypass_to"):
            target = getattr(ir, key)
            if target and target not in default_ids:
                add(src.issue(("immediate_risk", key), f"{target!r} is not a stage of the default route "
                                                       f"({', '.join(default_ids)})"))

    # Every agency must be able to answer for every agency role the ladders ask.
    if agency_roles_used and not p.agencies:
        add(src.issue(("agencies",), f"no agencies directory: stages ask agency roles "
                                     f"({', '.join(sorted(agency_roles_used))}) but config/agencies/{p.id}.yaml "
                                     "is missing or empty"))
    for a in p.agencies:
        asrc, aloc = agency_sources.get(a.id, (src, ("agencies",)))
        for role, where in agency_roles_used.items():
            if role not in a.contacts:
                add(asrc.issue((*aloc, "contacts"),
                               f"agency {a.id!r} has no contact for role {role!r}, which "
                               f"{src.path.name} {format_loc(where)} asks for"))
    return issues


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


def _check_panel(p: Partnership, src: _Source, loc: Loc, panel: ResolutionPanel) -> list[ConfigIssue]:
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


def _provisional(p: Partnership, src: _Source) -> list[ConfigIssue]:
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


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class StagePlan:
    """What happens when a stage opens: who is asked and notified, by when, and which clause says so."""

    partnership_id: str
    policy_version: str
    route_id: str
    #: Index into the route's stages; :data:`IMMEDIATE` for the immediate-risk step.
    stage_index: int
    #: 1-based position in the ladder; 0 for the immediate-risk step.
    number: int
    stage_id: str
    name: str
    label: str | None
    action: str
    clause: str
    asked_parties: tuple[str, ...]
    asked: tuple[Recipient, ...]
    #: Parties whose address comes from the referral, not the directory (the practitioners).
    from_referral: tuple[str, ...]
    notified_parties: tuple[str, ...]
    notified: tuple[Recipient, ...]
    notification_clauses: tuple[str, ...]
    unresolved: tuple[Unresolved, ...]
    coordinator: tuple[Recipient, ...]
    opens: datetime | None
    due: datetime | None
    #: The policy's own deadline before the referral's needed_by was applied.
    policy_due: datetime | None
    due_rule: str
    due_clause: str | None
    shortened_by_needed_by: bool
    needed_by_passed: bool
    escalate_by: datetime | None
    suggested_actions: tuple[SuggestedAction, ...]
    forms: tuple[FormRequirement, ...]
    decision_maker: DecisionMaker | None
    panel: tuple[Recipient, ...]
    panel_shortfall: str | None
    next_stage_index: int | None
    interpretations: tuple[Interpretation, ...]
    secure_mail: SecureMail | None

    @property
    def is_final(self) -> bool:
        return self.next_stage_index is None


AgencyArg = Agency | str | None


def _resolve_agency(p: Partnership, value: AgencyArg, borough: str | None) -> Agency | None:
    if value is None or isinstance(value, Agency):
        return value
    return p.agency(value) or p.find_agency(value, borough=borough)


def _role_name(p: Partnership, party: str) -> str:
    side, role = party.split(".", 1)
    if side == "partnership":
        r = p.roles.get(role)
        return r.name if r else role
    base = AGENCY_ROLES.get(role, role)
    return {"raising": f"{base} (raising agency)", "receiving": f"{base} (other agency)"}.get(side, base)


def _recipients(p: Partnership, party: str, raising: Agency | None, other: Agency | None,
                scope: str | None) -> tuple[list[Recipient], list[str], list[Unresolved]]:
    """(directory recipients, parties taken from the referral, unresolved) for one party."""
    side, role = party.split(".", 1)
    if side == "partnership":
        r = p.roles.get(role)
        contacts = list(r.contacts) if r else []
        if any(c.scope for c in contacts):
            contacts = [c for c in contacts if scope and c.scope == scope]
            if not contacts:
                return [], [], [Unresolved(party, f"{_role_name(p, party)} is held per area and the area "
                                                  f"({scope or 'not given'}) has no contact")]
        if not contacts:
            return [], [], [Unresolved(party, f"no contact configured for {_role_name(p, party)}")]
        return [_recipient(p, party, c, None) for c in contacts], [], []
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
        recips.append(_recipient(p, sp, c, agency.id))
    return recips, referral, unresolved


def _recipient(p: Partnership, party: str, c: Contact | PanelMember, agency_id: str | None) -> Recipient:
    return Recipient(party=party, role_name=_role_name(p, party), name=c.name, email=c.email,
                     deputy_name=c.deputy.name if c.deputy else None,
                     deputy_email=c.deputy.email if c.deputy else None, agency_id=agency_id)


def _panel(p: Partnership, panel: ResolutionPanel, raising: Agency | None,
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


def _as_utc(t: datetime, tz: ZoneInfo) -> datetime:
    return (t.replace(tzinfo=tz) if t.tzinfo is None else t).astimezone(UTC)


def stage_plan(
    partnership: Partnership,
    route_id: str | None,
    stage_index: int,
    opened_at: datetime | None,
    *,
    child_status: str | None = None,
    immediate_risk: bool = False,
    needed_by: date | datetime | None = None,
    raising_agency: AgencyArg = None,
    other_agency: AgencyArg = None,
    borough: str | None = None,
    scope: str | None = None,
    previous_due: datetime | None = None,
) -> StagePlan:
    """The plan for stage ``stage_index`` of route ``route_id`` opening at ``opened_at``.

    ``stage_index`` is 0-based (:data:`IMMEDIATE` for the immediate-risk step). Naive datetimes are
    local time. ``needed_by`` (the "timescale that protects the child") replaces the policy deadline
    when sooner and never lengthens it. ``previous_due`` is when the previous stage fell due, from
    which ``reach_within`` ("escalate within 24 hours") is counted (default: ``opened_at``).
    ``borough``/``scope`` pick per-area partnership contacts (Tri-borough boroughs, Sutton subgroups).
    """
    p = partnership
    route = p.route(route_id)
    cal = p.calendar
    b = p.find_borough(borough)
    area = scope or (b.id if b else None)
    raising = _resolve_agency(p, raising_agency, b.id if b else borough)
    other = _resolve_agency(p, other_agency, b.id if b else borough)
    opens = _as_utc(opened_at, p.tz) if opened_at is not None else None

    ir = p.immediate_risk
    if stage_index == IMMEDIATE:
        if ir is None:
            raise ValueError(f"{p.id} encodes no immediate-risk step")
        stage = Stage(id="immediate-risk", name="Immediate risk", asked=ir.asked, action=ir.action,
                      clause=ir.clause, timescale=ir.timescale, interpretation=ir.interpretation)
        default_ids = [s.id for s in p.default_route.stages]
        target = ir.bypass_to if ir.bypass_mandatory and ir.bypass_to else ir.continue_at
        next_index: int | None = default_ids.index(target) if target else 0
        route = p.default_route
        number = 0
    else:
        if not 0 <= stage_index < len(route.stages):
            raise IndexError(f"route {route.id!r} of {p.id} has {len(route.stages)} stages; no index {stage_index}")
        stage = route.stages[stage_index]
        next_index = stage_index + 1 if stage_index + 1 < len(route.stages) else None
        number = stage_index + 1

    asked: list[Recipient] = []
    referral: list[str] = []
    unresolved: list[Unresolved] = []
    for party in stage.asked:
        r, f, u = _recipients(p, party, raising, other, area)
        asked += r
        referral += f
        unresolved += u

    notified_parties: list[str] = []
    notified: list[Recipient] = []
    note_clauses: list[str] = []
    for note in stage.notifications:
        if note.when_child_status and child_status not in note.when_child_status:
            continue
        if note.when_immediate_risk is not None and note.when_immediate_risk != immediate_risk:
            continue
        note_clauses.append(note.clause)
        for party in note.notify:
            notified_parties.append(party)
            r, f, u = _recipients(p, party, raising, other, area)
            notified += r
            referral += f
            unresolved += u

    # Deadline: the stage's timescale (or the decision maker's), then the child's timescale if sooner.
    ts = stage.timescale or (stage.decision_maker.decision_within if stage.decision_maker else None)
    policy_due = cal.deadline(opens, ts.amount, ts.unit) if (ts and opens) else None
    due_rule = ts.describe() if ts else "no timescale set by the policy"
    due_clause = ts.clause if ts else None
    due = policy_due
    shortened = False
    passed = False
    protective = bool(ts and ts.or_protective) or bool(p.child_safety and p.child_safety.applies_to_all_stages)
    if needed_by is not None and opens is not None and protective:
        nb = cal.needed_by_at(needed_by)
        if due is None or nb < due:
            passed = nb <= opens
            due = max(nb, opens)
            shortened = True
            why = ts.clause if (ts and ts.or_protective) else (p.child_safety.clause if p.child_safety else "")
            due_rule += " — shortened to the referral's timescale that protects the child"
            due_clause = f"{due_clause}; {why}" if due_clause and why != due_clause else why

    escalate_by = None
    if stage.reach_within and opens is not None:
        base = _as_utc(previous_due, p.tz) if previous_due is not None else opens
        escalate_by = cal.deadline(base, stage.reach_within.amount, stage.reach_within.unit)

    panel: list[Recipient] = []
    shortfall = None
    if stage.decision_maker and stage.decision_maker.panel:
        panel, shortfall = _panel(p, stage.decision_maker.panel, raising, other)

    interps = [i for i in (stage.interpretation, ts.interpretation if ts else None,
                           stage.reach_within.interpretation if stage.reach_within else None) if i]
    coordinator = [_recipient(p, f"partnership.{p.coordinator_role}", c, None) for c in p.coordinator()]
    return StagePlan(
        partnership_id=p.id, policy_version=p.policy_version, route_id=route.id, stage_index=stage_index,
        number=number, stage_id=stage.id, name=stage.name, label=stage.label, action=stage.action,
        clause=stage.clause, asked_parties=tuple(stage.asked), asked=tuple(asked),
        from_referral=tuple(dict.fromkeys(referral)), notified_parties=tuple(notified_parties),
        notified=tuple(notified), notification_clauses=tuple(note_clauses), unresolved=tuple(unresolved),
        coordinator=tuple(coordinator), opens=opens, due=due, policy_due=policy_due, due_rule=due_rule,
        due_clause=due_clause, shortened_by_needed_by=shortened, needed_by_passed=passed,
        escalate_by=escalate_by, suggested_actions=tuple(stage.suggested_actions), forms=tuple(stage.forms),
        decision_maker=stage.decision_maker, panel=tuple(panel), panel_shortfall=shortfall,
        next_stage_index=next_index, interpretations=tuple(interps), secure_mail=p.secure_mail,
    )


def _next_open(p: Partnership, plan: StagePlan, next_stage: Stage) -> datetime | None:
    """When the next stage opens if nobody resolves this one (see docs/policies.md, "Timeline")."""
    if plan.due is None:
        return None
    if p.auto_escalate or next_stage.reach_within is None:
        return plan.due
    return p.calendar.deadline(plan.due, next_stage.reach_within.amount, next_stage.reach_within.unit)


def timeline(
    partnership: Partnership,
    opened_at: datetime,
    *,
    route_id: str | None = None,
    child_status: str | None = None,
    immediate_risk: bool = False,
    needed_by: date | datetime | None = None,
    raising_agency: AgencyArg = None,
    other_agency: AgencyArg = None,
    borough: str | None = None,
    scope: str | None = None,
    start_stage: int = 0,
) -> list[StagePlan]:
    """Every stage, in order, if nobody resolves anything: each opens when the previous falls due.

    With ``immediate_risk`` the partnership's immediate-risk step comes first (number 0), and the
    ladder continues where the policy says (``continue_at`` / a mandatory ``bypass_to``), alongside
    it (``parallel``) or once it falls due. A stage without a deadline leaves the later ones
    unscheduled (opens/due None): they follow when its decision maker says so.
    """
    p = partnership
    kw: dict[str, Any] = {"child_status": child_status, "immediate_risk": immediate_risk,
                          "needed_by": needed_by, "raising_agency": raising_agency,
                          "other_agency": other_agency, "borough": borough, "scope": scope}
    plans: list[StagePlan] = []
    route = p.route(route_id)
    index = start_stage
    t: datetime | None = _as_utc(opened_at, p.tz)
    prev_due: datetime | None = None
    if immediate_risk and p.immediate_risk is not None:
        ir_plan = stage_plan(p, route.id, IMMEDIATE, t, **kw)
        plans.append(ir_plan)
        route = p.default_route
        index = ir_plan.next_stage_index or 0
        ir = p.immediate_risk
        if not (ir.parallel and not (ir.bypass_mandatory and ir.bypass_to)):
            t = ir_plan.due
            prev_due = ir_plan.due
    while index < len(route.stages):
        plan = stage_plan(p, route.id, index, t, previous_due=prev_due, **kw)
        plans.append(plan)
        if index + 1 < len(route.stages):
            t = _next_open(p, plan, route.stages[index + 1])
        prev_due = plan.due
        index += 1
    return plans


Event = Literal["opened", "unresolved", "deadline_passed", "resolved"]


def next_step(
    partnership: Partnership,
    route_id: str | None,
    current_index: int | None,
    event: Event,
    at: datetime,
    **context: Any,
) -> StagePlan | None:
    """Given the case's current stage and an event at time ``at``: the stage that opens next, or None.

    - ``opened``: the immediate-risk step if ``immediate_risk`` is set and the policy has one, else
      stage ``current_index`` (the stage the referral says it has reached, default the first).
    - ``unresolved`` / ``deadline_passed``: the next stage (after the immediate-risk step, the one the
      policy continues at); None at the final stage (the decision there is final).
    - ``resolved``: None.
    """
    p = partnership
    if event == "resolved":
        return None
    if event == "opened":
        if context.get("immediate_risk") and p.immediate_risk is not None:
            return stage_plan(p, route_id, IMMEDIATE, at, **context)
        return stage_plan(p, route_id, current_index or 0, at, **context)
    if current_index is None:
        raise ValueError("an escalation needs the current stage")
    route = p.default_route if current_index == IMMEDIATE else p.route(route_id)
    if current_index == IMMEDIATE:
        ir = p.immediate_risk
        if ir is None:
            raise ValueError(f"{p.id} encodes no immediate-risk step")
        target = ir.bypass_to if ir.bypass_mandatory and ir.bypass_to else ir.continue_at
        nxt = [s.id for s in route.stages].index(target) if target else 0
    else:
        nxt = current_index + 1
    if nxt >= len(route.stages):
        return None
    return stage_plan(p, route.id, nxt, at, **context)
