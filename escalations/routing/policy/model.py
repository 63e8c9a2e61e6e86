"""The schema administrators write: one partnership's policy (``config/partnerships/<id>.yaml``)
and its agencies directory (``config/agencies/<id>.yaml``), as frozen pydantic models.

Policy versions: ``Partnership.policy_version`` fingerprints the whole effective config of a
partnership. A case records it (and a JSON snapshot of the Partnership) when it opens, so a later
YAML edit changes new cases only; ``Partnership.model_validate_json(snapshot)`` restores it.
See docs/policies.md. Reading the files is :mod:`escalations.policy_files`; lookups in the
directory are :mod:`.directory`; the engine is :mod:`.plan`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, time
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr
from pydantic import model_validator as _model_validator

from escalations.routing.calendar import Division, Unit, WorkingCalendar
from escalations.routing.redact import on_domains

if TYPE_CHECKING:
    from escalations.policy_files.yamlfile import ConfigIssue

#: Required of every referral whatever the partnership (ARCHITECTURE.md, "Referral fields").
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
    #: What the policy expects of those told, in words addressed to them; empty: for information only.
    expects: str = ""
    #: Those told hold responsibility for the child (a CP Chair, an IRO), not only for the case.
    responsible_for_child: bool = False
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


FormName = Literal["tri-borough-monitoring", "sutton-referral", "wiltshire-notification", "case-record"]


class FormUse(_Model):
    """When one of the service's generated forms (escalations/records/forms.py) goes out with a mail.

    ``stage_request``: with the requests of the listed stages (``stages``), or of every stage from
    ``from_stage`` on; ``closing_record``: with the closing record of a resolved case, to everyone it
    goes to or only to the one who resolved it (``recipients: resolver``); ``completion_copy``: a mail
    of its own to ``send_to`` when the case is resolved (with ``from_stage``: once it got that far). Attached only where every recipient is on the
    partnership's secure route; elsewhere the mail says staff can download it.
    """

    form: FormName
    name: str
    attach_to: Literal["stage_request", "closing_record", "completion_copy"]
    stages: list[Slug] = Field(default_factory=list)
    from_stage: Slug | None = None
    recipients: Literal["all", "resolver"] = "all"
    send_to: PartyRef | None = None
    note: str = ""
    clause: Clause


class Retention(_Model):
    """How long each class of record is kept, in months after the case closed (raw mail and outgoing
    mail that belong to no case: after they were received or created). docs/operations.md, "Retention"."""

    raw_mail_months: int = Field(default=12, ge=1)
    case_record_months: int = Field(default=72, ge=1)
    forms_months: int = Field(default=72, ge=1)
    outgoing_mail_months: int = Field(default=12, ge=1)
    #: None where the policy states no retention period (then ``note`` says whose default applies).
    clause: Clause | None = None
    note: str = ""


class Records(_Model):
    forms: list[FormUse] = Field(default_factory=list)
    retention: Retention = Field(default_factory=Retention)


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
    #: What the decision maker is asked, in words addressed to them (the stage's ``action`` describes
    #: the stage for everyone else, e.g. "the concerned agency refers the matter to ...").
    asked: str = ""
    clause: Clause


class OutcomeNotice(_Model):
    """Who else gets the final decision or confirmed resolution of a case closed at this stage, besides
    everyone on the stage and the raiser (Wiltshire Stage Three: "communicated to all parties")."""

    parties: list[PartyRef] = Field(min_length=1)
    reason: str
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
    outcome_to: OutcomeNotice | None = None
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
    #: Addressed to the practitioner who raised the concern.
    action: str
    #: What those the step asks (a safeguarding lead, a manager) are asked, addressed to them.
    asked_action: str = ""
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


class ConfirmWithin(_Model):
    """How long the other side has to confirm (or dispute) a RESOLVED before the case closes on the
    first side's word. One reminder goes after the first working day."""

    #: At least 2: the reminder goes after 1 working day, so a 1-day window would leave no time after it.
    amount: int = Field(ge=2)
    #: Working days only: the close timer counts them with ``WorkingCalendar.add_working_days``.
    unit: Literal["working_days"]
    clause: Clause
    interpretation: Interpretation | None = None


class Resolution(_Model):
    """What ending a case needs: the written record the policy requires, and the confirmation window."""

    #: Where the policy requires the written record of a resolution; cited in every mail that is part of it.
    record_clause: Clause
    confirm_within: ConfirmWithin


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


class DirectoryRole(_Model):
    """Who holds one of the partnership's own roles (the role itself is defined in the partnership file)."""

    contacts: list[Contact] = Field(default_factory=list)


class AgencyDirectory(_Model):
    """``config/agencies/<partnership>.yaml``: the people. The rules are in ``config/partnerships/``."""

    partnership: str
    agencies: list[Agency] = Field(default_factory=list)
    #: Contacts of the partnership's own roles (business unit, chair, ...), by role id.
    roles: dict[str, DirectoryRole] = Field(default_factory=dict)
    #: The senior officers a Resolution Panel is drawn from (C&H 2.14, Havering 2.12).
    panel_pool: list[PanelMember] = Field(default_factory=list)


class _Memo(dict[Any, Any]):
    """Answers kept with a model: not part of what it is, so two equal partnerships stay equal whatever
    each has been asked (pydantic compares private attributes too)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Memo)

    def __ne__(self, other: object) -> bool:
        return not isinstance(other, _Memo)

    __hash__ = None


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
    #: Required: every partnership says where its record of a resolution is required.
    resolution: Resolution
    #: Its forms (which, and when they go out) and how long records are kept.
    records: Records = Field(default_factory=Records)
    #: Declared policy version + hash of everything else; filled in when empty.
    policy_version: str = ""
    #: Hashes of the two halves as written: the rules (partnership file) and the people (agencies
    #: file). Filled in by the loader; each changes only when its own file's content does.
    rules_version: str = ""
    directory_version: str = ""

    _calendar: WorkingCalendar = PrivateAttr()
    #: Answers of the directory's pure lookups (:mod:`.directory`), kept with the partnership they were
    #: made from: a new configuration is a new object, so nothing outlives the settings it came from.
    _lookups: _Memo = PrivateAttr(default_factory=_Memo)

    def model_post_init(self, context: Any, /) -> None:
        self._calendar = WorkingCalendar(self.timezone, self.bank_holidays, self.working_day_end)
        if not self.policy_version:
            object.__setattr__(self, "policy_version", f"{self.policy.version}+{self.fingerprint()}")

    # A copy (model_copy, with or without changes) starts with a memo of its own: the original's answers
    # are about the original's directory.
    def __copy__(self) -> Self:
        copied = super().__copy__()
        copied._lookups = _Memo()
        return copied

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        copied = super().__deepcopy__(memo)
        copied._lookups = _Memo()
        return copied

    def fingerprint(self) -> str:
        dump = self.model_dump(mode="json", exclude={"policy_version", "rules_version", "directory_version"})
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
    def lookups(self) -> dict[Any, Any]:
        """The memo of :mod:`.directory`'s lookups on this partnership (see there)."""
        return self._lookups

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
            wanted = norm_name(requested)
            for r in self.routes:
                if norm_name(r.id) == wanted or norm_name(r.name) == wanted:
                    return r
        if text:
            hay = f" {norm_text(text)} "  # not cached: the concern is the child's, and each is new
            for r in self.routes:
                if any(f" {norm_name(k)} " in hay for k in r.keywords):
                    return r
        return self.default_route

    def agency(self, agency_id: str) -> Agency | None:
        return next((a for a in self.agencies if a.id == agency_id), None)

    # The matching rules live in .directory, which imports this module: import there when called.

    def find_agency(self, text: str | None, borough: str | None = None) -> Agency | None:
        """The agency a practitioner means by ``text`` (see :func:`.directory.find_agency`)."""
        from escalations.routing.policy.directory import find_agency

        return find_agency(self, text, borough)

    def find_borough(self, text: str | None) -> Borough | None:
        from escalations.routing.policy.directory import find_borough

        return find_borough(self, text)

    def coordinator(self) -> list[Contact]:
        role = self.roles.get(self.coordinator_role)
        return list(role.contacts) if role else []


@functools.lru_cache(maxsize=8192)
def norm_name(text: str) -> str:
    """A name as compared: lower case, "&" as "and", punctuation and possessive apostrophes dropped.
    Cached: every routing decision compares the text with every agency's names and aliases. For names
    only: a referral's own text goes through :func:`norm_text`, so that no concern is kept here."""
    return norm_text(text)


def norm_text(text: str) -> str:
    """:func:`norm_name` without the cache: for a referral's text (its concern), compared once."""
    t = text.lower().replace("’", "'").replace("&", " and ")
    t = re.sub(r"[^a-z0-9']+", " ", t)
    t = t.replace("'s ", "s ").replace("'", "")
    return " ".join(t.split())


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

