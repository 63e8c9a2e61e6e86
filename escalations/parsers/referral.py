"""Referral fields out of free-form mail: labelled text, HTML tables, forwarded mail, .docx, winmail.dat.

Pure: no I/O. Labels are matched leniently (case, spacing, punctuation, bullets, markdown bold),
either "Label: value" on one line or a label on its own line with the value on the following
lines (which is also how table rows come out: label cell, then value cell).
"""

from __future__ import annotations

import codecs
import io
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Literal, cast, get_args

from escalations.parsers.limits import LimitExceeded, LimitHit, Limits, check_zip, read_zip_member
from escalations.parsers.message import Attachment, ParsedMessage, decode_bytes, html_to_text

__all__ = [
    "FIELD_NAMES",
    "ChildStatus",
    "ReferralFields",
    "ReferralParse",
    "docx_to_text",
    "extract_fields_from_text",
    "extract_referral",
    "parse_date",
    "parse_datetime",
    "split_forwarded",
    "tnef_to_parts",
    "with_attachment_texts",
]

ChildStatus = Literal["cp_plan", "looked_after", "child_in_need", "none"]
_CHILD_STATUSES: tuple[str, ...] = get_args(ChildStatus)

FIELD_NAMES: tuple[str, ...] = (
    "child_names", "child_dobs", "child_id", "child_status",
    "raised_by_name", "raised_by_role", "raised_by_agency", "raised_by_email",
    "other_agency", "other_practitioner", "concern", "actions_taken", "outcome_sought",
    "needed_by", "immediate_risk", "stage", "borough",
)

# Values that mean "nothing given" (for required-field purposes).
_EMPTY_VALUES = frozenset({
    "", "n a", "na", "none", "nil", "tbc", "tba", "unknown", "not known", "not applicable", "not given",
    "to follow", "tbd", "x", "no", "n k", "nk", "pending",
})
_EMPTY_TEXT_VALUES = _EMPTY_VALUES - {"no", "x"}


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
                kwargs[name] = value if isinstance(value, bool) else _yes_no(str(value))
            elif name == "stage":
                if isinstance(value, bool):
                    continue
                kwargs[name] = value if isinstance(value, int) else _stage(str(value))
            elif name == "child_status":
                kwargs[name] = value if value in _CHILD_STATUSES else _child_status(str(value))
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
            return name != "child_status" and _norm(value) in _EMPTY_TEXT_VALUES
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


# ---- normalisation ----------------------------------------------------------------------------------

def _norm(text: str) -> str:
    s = text.lower().replace("’", "").replace("'", "").replace("‘", "").replace("&", " and ")
    s = re.sub(r"[^a-z0-9]+", " ", s)
    return s.strip()


# ---- the label table --------------------------------------------------------------------------------
# key: a field name, "sub:<role>" (meaning depends on the section), "section:<name>", or "ignore".

_LABELS_RAW: dict[str, tuple[str, ...]] = {
    "child_names": (
        "name of child", "name of child(ren)", "name of children", "name of child/ children",
        "name(s) of child(ren)", "names of children", "child's name", "childs name", "child name",
        "child name(s)", "child names", "children's names", "childrens names", "children", "child",
        "child(ren)", "child/family name", "child and family name", "family name", "child/young person",
        "name of child/young person", "young person", "young person's name", "subject child",
        "name of child/ children date of birth", "name of child(ren) and date of birth",
        "child(ren) name(s)", "name of the child", "names of child(ren)",
    ),
    "child_dobs": (
        "date of birth", "dob", "d.o.b", "dobs", "date(s) of birth", "dates of birth", "child's dob",
        "child dob", "child's date of birth", "date of birth of child", "dob(s)", "children's dates of birth",
    ),
    "child_id": (
        "mosaic id no", "mosaic id no.", "mosaic id", "mosaic id number", "mosaic no", "mosaic number",
        "mosaic", "child id", "child's id", "lcs id", "lcs number", "lcs no", "eclipse id", "liquidlogic id",
        "mosaic/lcs id", "case id", "client id", "person id", "framework-i id", "framework id",
    ),
    "child_status": (
        "child status", "child's status", "status of child", "legal status", "status", "child's legal status",
        "cp/lac/cin status", "cp/cin/lac", "child protection status", "category", "plan status",
    ),
    "status:cp_plan": (
        "subject to cp plan", "subject to a cp plan", "subject to child protection plan",
        "subject to a child protection plan", "is the child subject to a child protection plan",
        "is the child subject to a cp plan", "child protection plan", "cp plan",
    ),
    "status:looked_after": (
        "looked after", "is the child looked after", "looked after child", "lac", "child looked after",
        "is the child a looked after child",
    ),
    "status:child_in_need": ("child in need", "is the child a child in need", "cin", "subject to cin plan"),
    "raised_by_name": (
        "name of referrer", "referrer", "referrer name", "referrer's name", "your name", "referred by",
        "name of person raising concern", "name of person raising the concern", "raised by",
        "name of person making referral", "referring practitioner", "name of referring practitioner",
        "referring manager", "name of referring manager", "practitioner raising concern",
        "name of practitioner raising the concern", "completed by", "from practitioner",
    ),
    "raised_by_role": (
        "role", "job title", "designation", "your role", "referrer role", "referrer's role", "position",
        "your job title", "role of referrer", "job role",
    ),
    "raised_by_agency": (
        "agency", "department", "organisation", "organization", "your agency", "referrer agency",
        "referrer's agency", "referring agency", "your organisation", "agency/department",
        "department/agency", "agency/organisation", "referrer's organisation", "team", "service",
        "your department", "your team",
    ),
    "raised_by_email": (
        "email", "e-mail", "email address", "e-mail address", "your email", "your email address",
        "referrer email", "referrer's email", "contact email", "email address of referrer",
    ),
    "other_agency": (
        "other agency", "agency you disagree with", "agency with which there is a concern",
        "agency with whom there is a concern", "agency concerned", "receiving agency", "other organisation",
        "agency of concern", "name of agency with which there is a concern", "agency in dispute",
        "agency being escalated to", "escalated to agency", "other agency involved",
        "agency you are escalating to", "agency disagreed with", "disputed agency",
    ),
    "other_practitioner": (
        "other practitioner", "practitioner with whom there is a concern", "practitioner you disagree with",
        "receiving practitioner", "name of other practitioner", "other professional",
        "professional you disagree with", "practitioner concerned", "other worker",
        "name of practitioner with which there is a concern", "receiving manager name",
    ),
    "section:other": (
        "name of practitioner and agency with which there is a concern",
        "name of practitioner and agency with whom there is a concern",
        "practitioner and agency with which there is a concern",
        "practitioner and agency with whom there is a concern",
        "name of practitioner and agency", "practitioner and agency concerned", "other practitioner and agency",
        "who do you disagree with", "who are you in dispute with", "signature of receiving manager",
        "signature of receiving manger", "receiving manager", "details of other agency", "other agency details",
        "practitioner/agency", "name agency", "name / agency", "name and agency",
    ),
    "section:raiser": (
        "signature of referring manager", "referrer details", "referrer's details", "your details",
        "details of referrer", "person raising the concern", "referring agency details", "about you",
    ),
    "section:child": (
        "child details", "child's details", "details of child", "details of the child", "child information",
        "about the child", "child(ren) details", "children's details",
    ),
    "concern": (
        "brief description of nature of concern", "brief description of the nature of concern",
        "brief description of nature of the concern", "summary of reason for dispute",
        "summary of reason for dispute - include views of all agencies concerned",
        "summary of reason for dispute include views of all agencies", "reason for dispute", "concern",
        "concerns", "nature of concern", "nature of the concern", "nature of concerns", "nature of disagreement",
        "reason for escalation", "reasons for escalation", "description of concern", "details of concern",
        "summary of concern", "summary of concerns", "the concern", "what is the concern", "disagreement",
        "nature of the disagreement", "description of the disagreement", "reason for referral",
        "professional difference", "details of the disagreement", "summary of the disagreement",
    ),
    "concern+actions": (
        "brief description of nature of concern and action taken to resolve the issue",
        "brief description of the nature of concern and action taken to resolve the issue",
        "brief description of nature of concern and actions taken to resolve the issue",
        "nature of concern and action taken", "concern and action taken",
    ),
    "actions_taken": (
        "action taken", "actions taken", "actions taken to date", "action taken to date",
        "action taken to resolve the issue", "actions taken to resolve the issue", "action taken to resolve",
        "attempts to resolve", "attempts made to resolve", "steps taken", "steps taken to resolve",
        "what has been done", "actions to date", "action taken so far", "actions taken so far",
        "what have you done to resolve this", "attempts to resolve so far", "steps taken so far",
    ),
    "outcome_sought": (
        "outcome sought", "outcomes sought", "desired outcome", "desired outcomes", "outcome", "outcomes",
        "outcome required", "outcome wanted", "what outcome are you seeking", "requested outcome",
        "resolution sought", "outcome(s) sought", "what outcome do you want", "outcome requested",
    ),
    "needed_by": (
        "needed by", "timescale", "timescales", "timescale to protect the child",
        "timescale that protects the child", "resolution needed by", "response needed by", "deadline",
        "required by", "respond by", "by when", "resolve by", "resolution required by",
        "timescale for resolution", "timescale for response",
    ),
    "immediate_risk": (
        "immediate risk", "is the child at immediate risk", "is the child at risk of immediate harm",
        "risk of immediate harm", "urgent", "urgency", "child at immediate risk", "immediate risk of harm",
        "is this urgent", "is any child at immediate risk", "immediate risk to child", "at immediate risk",
        "is the child at immediate risk of harm", "immediate risk of significant harm",
    ),
    "stage": (
        "stage", "stage reached", "current stage", "escalation stage", "stage of escalation",
        "stage of process", "stage already reached", "stage of the escalation", "which stage",
        "escalation stage reached",
    ),
    "borough": ("borough", "local authority", "which borough", "borough of child", "child's borough", "la"),
    "sub:name": ("name", "full name", "practitioner name", "name of practitioner"),
    "ignore": (
        "date", "signature", "signed", "telephone", "telephone number", "phone", "tel", "mobile", "address",
        "contact number", "phone number", "from", "sent", "to", "cc", "subject", "date sent",
        "stage at which resolution achieved noting how effective the policy practice was in resolving the issue",
        "stage at which resolution achieved", "time taken to reach resolution",
        "agreed outcomes or actions if satisfactorily resolved includes escalation to next stage if unresolved",
        "agreed outcomes or actions", "checklist", "lscp escalation referral form", "escalation referral form",
        "referral form", "monitoring form", "escalation protocol monitoring form",
        "kind regards", "regards", "many thanks", "thanks", "best wishes", "yours sincerely",
    ),
}

# Labels whose meaning depends on the section they appear in (Sutton's "Name / Agency" columns
# under "Name of practitioner and agency...", Tri-borough's "Name / Designation / Agency" blocks).
_SECTION_SUBLABELS: dict[str, dict[str, str]] = {
    "other": {"sub:name": "other_practitioner", "raised_by_agency": "other_agency",
              "raised_by_role": "ignore", "raised_by_email": "ignore"},
    "raiser": {"sub:name": "raised_by_name"},
    "child": {"sub:name": "child_names"},
    "": {"sub:name": "raised_by_name"},
}


def _build_labels() -> dict[str, str]:
    table: dict[str, str] = {}
    for key, variants in _LABELS_RAW.items():
        for v in variants:
            table.setdefault(_norm(v), key)
    return table


@dataclass(frozen=True)
class _LabelTable:
    exact: dict[str, str]
    prefixes: tuple[tuple[str, str], ...]  # multi-word labels, longest first, for "Label (extra words): value"
    bare: tuple[tuple[str, str], ...]  # labels that may be followed by a value with no separator


def _make_table() -> _LabelTable:
    exact = _build_labels()
    prefixes = tuple(sorted(((k, v) for k, v in exact.items() if " " in k and v != "ignore"),
                            key=lambda kv: -len(kv[0])))
    bare = tuple(sorted(((k, v) for k, v in exact.items() if v in ("child_id", "child_dobs", "stage")),
                        key=lambda kv: -len(kv[0])))
    return _LabelTable(exact, prefixes, bare)


_TABLE = _make_table()

_SHORT_FIELDS = frozenset({
    "child_names", "child_dobs", "child_id", "child_status", "raised_by_name", "raised_by_role",
    "raised_by_agency", "raised_by_email", "other_agency", "other_practitioner", "needed_by",
    "immediate_risk", "stage", "borough", "sub:name", "status:cp_plan", "status:looked_after",
    "status:child_in_need",
})
_LONG_FIELDS = frozenset({"concern", "actions_taken", "outcome_sought", "concern+actions", "section:other"})

_BULLET_RE = re.compile(r"^(?:[>\s]*)(?:[-*•·▪‣◦–+#|]+\s*|\(?\d{1,2}[.)]\s+|\(?[a-h][.)]\s+)*")
_SIGNOFF_RE = re.compile(
    r"^(kind regards|best regards|warm regards|regards|many thanks|thanks|thank you|best wishes|"
    r"yours sincerely|yours faithfully|sent from my|--\s*$|__+$|-{5,}|this e-?mail (and any|is confidential))",
    re.I,
)
_FORWARD_MARKER_RE = re.compile(
    r"^\s*(?:>\s*)*(?:-{2,}\s*(?:forwarded message|original message)\s*-{2,}|begin forwarded message:?"
    r"|_{10,}\s*$)",
    re.I,
)


def _clean_line(line: str) -> str:
    s = line.replace("\xa0", " ").replace("\u200b", "").strip()
    s = _BULLET_RE.sub("", s)
    s = s.replace("**", "").replace("__", "")
    s = s.strip().strip("*_|").strip()
    return s


@dataclass(frozen=True)
class _Label:
    key: str
    inline: str | None  # value on the same line, or None for a label on its own line


def _lookup(label_text: str, allow_prefix: bool) -> str | None:
    n = _norm(label_text)
    if not n or len(n) > 160:
        return None
    key = _TABLE.exact.get(n)
    if key is not None:
        return key
    if allow_prefix and len(n.split()) <= 16:
        for known, k in _TABLE.prefixes:
            if n.startswith(known + " "):
                return k
    return None


# Words that are labels only when followed by ":" or "?": on a line of their own they are more
# likely a value ("Child Protection Plan", "LAC", "Urgent") or a heading.
_NEEDS_SEPARATOR = frozenset(_norm(w) for w in (
    "urgent", "urgency", "la", "child", "children", "young person", "team", "service", "category", "status",
    "mosaic", "position", "disagreement", "date", "to", "from", "sent", "cc", "subject", "signed",
))


def _after_words(s: str, count: int) -> str:
    """s without its first ``count`` alphanumeric words (and the punctuation after them)."""
    m = re.match(rf"^(?:[^A-Za-z0-9]*[A-Za-z0-9]+){{{count}}}[^A-Za-z0-9]*", s)
    return s[m.end():].strip() if m else ""


def _match_label(line: str) -> _Label | None:
    s = _clean_line(line)
    if not s or len(s) > 400:
        return None
    m = re.match(r"^([^:?]{1,160}?)\s*([:?])\s*(.*)$", s)
    if m:
        key = _lookup(m.group(1), allow_prefix=True)
        if key is not None:
            inline = m.group(3).strip().strip("*_").strip()
            if m.group(2) == "?" and inline.startswith(":"):
                inline = inline[1:].strip()
            return _Label(key, inline or None)
    key = _lookup(s, allow_prefix=False)
    if key is not None and not (key.startswith("status:") or _norm(s) in _NEEDS_SEPARATOR):
        return _Label(key, None)
    # "Mosaic ID no. 1234567", "DOB 01/02/2015", "Stage 2": no separator, but the value is plainly data
    n = _norm(s)
    for known, k in _TABLE.bare:
        if n.startswith(known + " "):
            value = _after_words(s, len(known.split()))
            if value and len(value.split()) == 1 if k == "stage" else value[:1].isdigit():
                return _Label(k, value)
            break
    # "Label - value", "Label<TAB>value", "Label   value" (copied from tables)
    m = re.match(r"^(.{1,80}?)(?:\s+[-–—]\s+|\t+|\s{3,})(.+)$", s)
    if m:
        key = _lookup(m.group(1), allow_prefix=False)
        if key is not None and key != "ignore":
            return _Label(key, m.group(2).strip())
    return None


# ---- value parsing ---------------------------------------------------------------------------------

_MONTHS = {m: i for i, names in enumerate((
    ("jan", "january"), ("feb", "february"), ("mar", "march"), ("apr", "april"), ("may",), ("jun", "june"),
    ("jul", "july"), ("aug", "august"), ("sep", "sept", "september"), ("oct", "october"),
    ("nov", "november"), ("dec", "december")), start=1) for m in names}
_MONTH_ALT = "|".join(sorted(_MONTHS, key=len, reverse=True))
_DATE_RES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b"), "ymd"),
    (re.compile(r"\b(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{4}|\d{2})\b"), "dmy"),
    (re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?(?:\s+of)?[\s\-]+({_MONTH_ALT})\.?,?[\s\-]+(\d{{4}})\b", re.I),
     "dMy"),
    (re.compile(rf"\b({_MONTH_ALT})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})\b", re.I), "Mdy"),
)
_TIME_RE = re.compile(r"\b(\d{1,2})(?:[:.](\d{2}))?\s*(am|pm)\b|\b(\d{1,2})[:.](\d{2})\b", re.I)


def _find_dates(text: str) -> list[tuple[int, int, date]]:
    """(start, end, date) of each date in text, UK day-first."""
    found: list[tuple[int, int, date]] = []
    taken: list[tuple[int, int]] = []
    for rx, kind in _DATE_RES:
        for m in rx.finditer(text):
            if any(m.start() < e and s < m.end() for s, e in taken):
                continue
            g = m.groups()
            try:
                if kind == "ymd":
                    y, mo, d = int(g[0]), int(g[1]), int(g[2])
                elif kind == "dmy":
                    d, mo, y = int(g[0]), int(g[1]), int(g[2])
                    if len(g[2]) == 2:
                        y += 2000 if y <= 69 else 1900
                elif kind == "dMy":
                    d, mo, y = int(g[0]), _MONTHS[g[1].lower()], int(g[2])
                else:
                    mo, d, y = _MONTHS[g[0].lower()], int(g[1]), int(g[2])
                found.append((m.start(), m.end(), date(y, mo, d)))
                taken.append((m.start(), m.end()))
            except (ValueError, KeyError):
                continue
    return sorted(found)


def parse_date(text: str) -> date | None:
    """The first date in text (dd/mm/yyyy, d Month yyyy, ISO...), UK day-first."""
    found = _find_dates(text)
    return found[0][2] if found else None


def parse_datetime(text: str) -> date | datetime | None:
    """A date, with a time of day if one is given ("17:00 on 12/11/2026", "12 Nov 2026 at 5pm").

    The time is naive local time (the partnership's timezone applies)."""
    found = _find_dates(text)
    if not found:
        return None
    start, end, day = found[0]
    rest = text[:start] + " " * (end - start) + text[end:]
    m = _TIME_RE.search(rest)
    if not m:
        return day
    if m.group(3):
        hour, minute = int(m.group(1)), int(m.group(2) or 0)
        ampm = m.group(3).lower()
        if hour == 12:
            hour = 0
        if ampm == "pm":
            hour += 12
    else:
        hour, minute = int(m.group(4)), int(m.group(5))
    if hour > 23 or minute > 59:
        return day
    return datetime(day.year, day.month, day.day, hour, minute)


def _yes_no(text: str) -> bool | None:
    n = _norm(text)
    first = n.split(" ", 1)[0] if n else ""
    if first in ("yes", "y", "true", "urgent", "immediate"):
        return True
    if first in ("no", "n", "false", "not", "none"):
        return False
    return None


_STATUS_PATTERNS: tuple[tuple[re.Pattern[str], ChildStatus], ...] = (
    (re.compile(r"\b(looked after|lac|cla|child looked after|in care|care order|section 20|s20|s 20)\b"),
     "looked_after"),
    (re.compile(r"\b(child protection|cp|cpp|cp plan|subject to (a )?plan)\b"), "cp_plan"),
    (re.compile(r"\b(child in need|cin|section 17|s17|s 17)\b"), "child_in_need"),
    (re.compile(r"^(none|no|n a|na|not applicable|no plan|universal|early help|nfa|not known to csc)\b"),
     "none"),
)


def _child_status(text: str) -> ChildStatus | None:
    n = _norm(text)
    if not n:
        return None
    if n in _CHILD_STATUSES:
        return cast(ChildStatus, n)
    if n.replace(" ", "_") in _CHILD_STATUSES:
        return cast(ChildStatus, n.replace(" ", "_"))
    for rx, status in _STATUS_PATTERNS:
        if rx.search(n):
            return status
    return None


_NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "first": 1, "second": 2, "third": 3,
                 "fourth": 4, "fifth": 5, "i": 1, "ii": 2, "iii": 3, "iv": 4}


def _stage(text: str) -> int | None:
    n = _norm(text)
    m = re.search(r"\b(\d{1,2})\b", n)
    if m:
        return int(m.group(1))
    for word in n.split():
        if word in _NUMBER_WORDS and word != "i":
            return _NUMBER_WORDS[word]
    words = n.split()
    if words[:2] == ["stage", "i"] or n in ("i", "ii", "iii", "iv"):
        return _NUMBER_WORDS.get(words[-1])
    return None


_EMAIL_RE = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_AGENCY_WORDS = re.compile(
    r"\b(council|police|constabulary|school|academy|college|nursery|nhs|hospital|trust|csc|social care|"
    r"services?|team|health|department|dept|unit|clinic|surgery|gp|practice|probation|cafcass|housing|"
    r"safeguarding|agency|children'?s|partnership|foundation|borough|authority|cyps|camhs|icb|ccg|"
    r"mash|youth|education|mental)\b",
    re.I,
)


def _split_practitioner_agency(value: str) -> tuple[str | None, str | None]:
    """"Jane Doe, Hackney Children's Social Care" -> ("Jane Doe", "Hackney Children's Social Care")."""
    lines = [ln.strip(" \t,;") for ln in value.splitlines() if ln.strip(" \t,;")]
    if len(lines) >= 2:
        return lines[0], " ".join(lines[1:])
    v = lines[0] if lines else ""
    m = (re.match(r"^(.+?)\s*(?:\t+|\s{2,}|\s[-–—|]\s|,\s*|\s\((?=.+\)$))(.+?)\)?$", v)
         or re.match(r"^(.+?)\s+(?:at|from|of)\s+(.+)$", v))
    if m:
        left, right = m.group(1).strip(), m.group(2).strip()
        if _AGENCY_WORDS.search(left) and not _AGENCY_WORDS.search(right):
            left, right = right, left
        return left or None, right or None
    if _AGENCY_WORDS.search(v):
        return None, v or None
    return v or None, None


def _names(value: str) -> list[str]:
    parts = re.split(r"\n|;|,|\band\b|&|\s/\s", value)
    out: list[str] = []
    for p in parts:
        p = re.sub(r"\((?:[^)]*)\)", " ", p)  # "(DOB 01/02/2015)", "(aged 7)"
        p = _strip_dates(p)
        p = re.sub(r"\b(d\.?o\.?b\.?|born|aged?\s*\d*|age\s*\d+|years?|yrs?)\b[:\s]*", " ", p, flags=re.I)
        p = re.sub(r"\s+", " ", p).strip(" .:-–")
        if p and _norm(p) not in _EMPTY_TEXT_VALUES and re.search(r"[A-Za-z]", p):
            out.append(p)
    return out


def _strip_dates(text: str) -> str:
    for s, e, _d in reversed(_find_dates(text)):
        text = text[:s] + " " + text[e:]
    return text


def _clean_value(lines: Sequence[str]) -> str:
    cleaned = [_clean_line(ln) if i == 0 else ln.replace("\xa0", " ").rstrip() for i, ln in enumerate(lines)]
    text = "\n".join(cleaned).strip()
    return re.sub(r"\n{3,}", "\n\n", text)


# ---- the extractor ----------------------------------------------------------------------------------

@dataclass
class _Builder:
    values: dict[str, object]
    labelled: set[str]
    #: list fields being accumulated (ordered, without repeats); ``values`` gets them on finish()
    lists: dict[str, dict[object, None]] = field(default_factory=dict)

    def put(self, name: str, value: object) -> None:
        if name not in self.values or _is_blank(self.values[name]):
            self.values[name] = value

    def add(self, name: str, items: tuple[object, ...]) -> None:
        """List fields accumulate within one form (names line with DOBs, then a DOB line)."""
        # in place: rebuilding the tuple on every line made a long form cost quadratic time
        self.lists.setdefault(name, {}).update(dict.fromkeys(items))

    def finish(self) -> _Builder:
        for name, items in self.lists.items():
            self.values[name] = tuple(items)
        return self


def _is_blank(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, tuple | list):
        return not value
    if isinstance(value, str):
        return _norm(value) in _EMPTY_TEXT_VALUES
    return False


def _store(b: _Builder, key: str, raw: str) -> None:
    value = raw.strip()
    if key == "concern+actions":
        b.labelled.add("concern")
        if value:
            b.put("concern", value)
        return
    if key.startswith("status:"):
        b.labelled.add("child_status")
        yn = _yes_no(value)
        if yn is True:
            b.put("child_status", key.split(":", 1)[1])
        elif yn is None and value:
            status = _child_status(value)
            if status is not None and status != "none":
                b.put("child_status", status)
        return
    if key not in FIELD_NAMES:
        return
    b.labelled.add(key)
    if not value:
        return
    if key == "child_names":
        dates = [d for _s, _e, d in _find_dates(value)]
        names = _names(value)
        if names:
            b.add("child_names", tuple(names))
        if dates:
            b.add("child_dobs", tuple(dates))
    elif key == "child_dobs":
        dates = [d for _s, _e, d in _find_dates(value)]
        if dates:
            b.add("child_dobs", tuple(dates))
    elif key == "child_status":
        status = _child_status(value)
        if status is not None:
            b.put("child_status", status)
    elif key == "raised_by_email":
        m = _EMAIL_RE.search(value)
        if m:
            b.put("raised_by_email", m.group(0).lower())
    elif key == "needed_by":
        when = parse_datetime(value)
        if when is not None:
            b.put("needed_by", when)
    elif key == "immediate_risk":
        yn = _yes_no(value)
        if yn is not None:
            b.put("immediate_risk", yn)
    elif key == "stage":
        stage = _stage(value)
        if stage is not None:
            b.put("stage", stage)
    elif key in ("child_id", "raised_by_name", "raised_by_role", "raised_by_agency", "other_agency",
                 "other_practitioner", "borough"):
        one = " ".join(ln.strip() for ln in value.splitlines() if ln.strip())
        if key == "child_id":
            one = one.rstrip(".")
        if _norm(one) not in _EMPTY_TEXT_VALUES:
            b.put(key, one)
    else:
        if _norm(value) not in _EMPTY_TEXT_VALUES:
            b.put(key, value)


def _resolve(key: str, section: str) -> str:
    mapping = _SECTION_SUBLABELS.get(section, {})
    if key in mapping:
        return mapping[key]
    if key == "sub:name":
        return _SECTION_SUBLABELS[""]["sub:name"]
    return key


def _extract(text: str) -> _Builder:
    b = _Builder({}, set())
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    labels = [_match_label(ln) for ln in lines]
    section = ""
    i = 0
    n = len(lines)
    while i < n:
        lab = labels[i]
        if lab is None:
            i += 1
            continue
        key = lab.key
        if key == "ignore":
            i += 1
            continue
        if key.startswith("section:"):
            section = key.split(":", 1)[1]
            if key != "section:other":
                i += 1
                continue
        elif not key.startswith("sub:") and key not in ("raised_by_agency", "raised_by_role", "raised_by_email"):
            section = ""
        field = _resolve(key, section)
        # Collect the value: inline text plus continuation lines.
        value_lines: list[str] = [lab.inline] if lab.inline else []
        j = i + 1
        long_field = field in _LONG_FIELDS
        blank_run = 0
        while j < n:
            if labels[j] is not None:
                break
            raw = lines[j]
            if _FORWARD_MARKER_RE.match(raw):
                break
            stripped = raw.strip()
            if not stripped:
                blank_run += 1
                if not long_field and value_lines:
                    break
                j += 1
                continue
            if _SIGNOFF_RE.match(_clean_line(raw)):
                break
            if long_field and blank_run and value_lines and _looks_like_signature(lines, j):
                break
            if blank_run and value_lines:
                value_lines.append("")
            blank_run = 0
            value_lines.append(raw)
            j += 1
        value = _clean_value(value_lines)
        if field == "section:other":
            b.labelled.add("other_agency")
            if value:
                practitioner, agency = _split_practitioner_agency(value)
                if practitioner:
                    b.put("other_practitioner", practitioner)
                    b.labelled.add("other_practitioner")
                if agency:
                    b.put("other_agency", agency)
        else:
            _store(b, field, value)
        i = j if j > i + 1 else i + 1
    return b.finish()


def _looks_like_signature(lines: Sequence[str], j: int) -> bool:
    """A short trailing run of short lines after a blank line (name / role / phone) is a signature."""
    rest: list[str] = []
    for k in range(j, len(lines)):  # six non-blank lines settle it: stay linear
        ln = lines[k]
        if ln.strip():
            rest.append(ln.strip())
            if len(rest) > 5:
                return False
    return 0 < len(rest) <= 5 and all(len(ln) <= 60 and not ln.endswith(".") for ln in rest) and \
        bool(re.search(r"(\+?\d[\d\s]{8,}|@|^tel|^mob|^phone)", "\n".join(rest), re.I | re.M))


def _fields(b: _Builder) -> ReferralFields:
    return ReferralFields(**{k: v for k, v in b.values.items() if k in FIELD_NAMES})  # type: ignore[arg-type]


def extract_fields_from_text(text: str) -> ReferralFields:
    """The labelled referral fields in one block of text."""
    return _fields(_extract(text))


def _labelled_count(text: str) -> int:
    return len(_extract(text).labelled)


# ---- forwarded mail -------------------------------------------------------------------------------

_HEADER_BLOCK_LINE = re.compile(r"^\s*(?:>\s*)*\**(from|sent|date|to|cc|subject)\**\s*:", re.I)


def split_forwarded(text: str) -> tuple[str, list[str]]:
    """The sender's own text, and each inline forwarded/quoted message below it (outermost first)."""
    lines = text.replace("\r\n", "\n").split("\n")
    cuts: list[tuple[int, int]] = []  # (marker line, first body line)
    i = 0
    while i < len(lines):
        line = lines[i]
        start: int | None = None
        if _FORWARD_MARKER_RE.match(line):
            start = i
            k = i + 1
        elif re.match(r"^\s*(?:>\s*)*\**from\**\s*:", line, re.I) and _header_block_at(lines, i):
            start = i
            k = i
        else:
            i += 1
            continue
        # skip the header block (From/Sent/To/Cc/Subject/Date lines, possibly wrapped) after the marker
        while k < len(lines) and _in_header_block(lines, k, start):
            k += 1
        cuts.append((start, k))
        i = max(k, i + 1)
    if not cuts:
        return text, []
    own = "\n".join(lines[:cuts[0][0]])
    blocks: list[str] = []
    for idx, (_start, body) in enumerate(cuts):
        end = cuts[idx + 1][0] if idx + 1 < len(cuts) else len(lines)
        block = [re.sub(r"^\s*(?:>\s?)+", "", ln) for ln in lines[body:end]]
        blocks.append("\n".join(block))
    return own, blocks


def _in_header_block(lines: Sequence[str], k: int, start: int) -> bool:
    line = lines[k]
    if not line.strip():
        return k == start + 1  # the blank line Gmail puts after its marker
    if _HEADER_BLOCK_LINE.match(line):
        return True
    # a wrapped To:/Cc: line continues the block
    return k > start and line[:1] in (" ", "\t") and bool(_HEADER_BLOCK_LINE.match(lines[k - 1]))


def _header_block_at(lines: Sequence[str], i: int) -> bool:
    """An Outlook-style "From: / Sent: / To: / Subject:" block starts at line i."""
    names: set[str] = set()
    for ln in lines[i:i + 8]:
        m = _HEADER_BLOCK_LINE.match(ln)
        if m:
            names.add(m.group(1).lower())
        elif ln.strip() and not ln[:1].isspace():
            break
    return "from" in names and ("sent" in names or "date" in names) and ("subject" in names or "to" in names)


# ---- attachments ------------------------------------------------------------------------------------

_DOCX_TYPES = frozenset({
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.ms-word.document.macroenabled.12",
})
_TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})


def _is_docx(att: Attachment) -> bool:
    name = (att.filename or "").lower()
    if att.content_type in _DOCX_TYPES or name.endswith((".docx", ".docm")):
        return att.payload[:2] == b"PK"
    return att.content_type == "application/octet-stream" and att.payload[:2] == b"PK" and \
        name.endswith(".docx")


def _is_tnef(att: Attachment) -> bool:
    name = (att.filename or "").lower()
    return (att.content_type in _TNEF_TYPES or name == "winmail.dat") and att.payload[:4] == b"\x78\x9f\x3e\x22"


def _is_bare_label(cell: str) -> bool:
    label = _match_label(cell) if cell and "\n" not in cell.strip() else None
    return label is not None and label.inline is None


def _check_docx(zf: zipfile.ZipFile, limits: Limits) -> None:
    """Sizes and ratios from the zip directory first, then the real sizes through a bounded reader
    (python-docx reads the members again, but only after they have been found to be bounded)."""
    check_zip(zf, limits)
    left = limits.attachment_max_decompressed_bytes
    for info in zf.infolist():
        blob = read_zip_member(zf, info, left)
        left -= len(blob)
        if info.filename == "word/document.xml":
            elements = sum(blob.count(tag) for tag in (b"<w:p>", b"<w:p ", b"<w:tc>", b"<w:tc "))
            if elements > limits.docx_max_elements:
                raise LimitExceeded(LimitHit.ATTACHMENT_TOO_COMPLEX)


def docx_to_text(data: bytes, limits: Limits | None = None) -> str:
    """A Word form as labelled text: paragraphs, then table rows with one cell per line.

    A table whose first row is all labels (Sutton's "Name of child/children | Date of birth")
    is read column by column; merged cells are read once. Raises LimitExceeded for a document
    over ``limits`` (default ``Limits()``), MemoryError when out of memory; '' if unreadable."""
    try:
        import docx
        from docx.table import Table
        from docx.text.paragraph import Paragraph
    except ImportError:  # pragma: no cover - python-docx is a dependency
        return ""
    if len(data) > (limits or Limits()).attachment_max_decompressed_bytes:
        raise LimitExceeded(LimitHit.ATTACHMENT_TOO_LARGE)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            if "word/document.xml" not in zf.namelist():
                return ""
            _check_docx(zf, limits or Limits())
        document = docx.Document(io.BytesIO(data))
    except (LimitExceeded, MemoryError):
        raise
    except Exception:
        return ""
    out: list[str] = []

    def table_lines(table: Table) -> None:
        rows: list[list[str]] = []
        for row in table.rows:
            cells: list[str] = []
            seen: set[int] = set()
            try:
                row_cells = row.cells
            except Exception:
                continue
            for cell in row_cells:
                ident = id(cell._tc)
                if ident in seen:
                    continue
                seen.add(ident)
                parts = [p.text for p in cell.paragraphs]
                for inner in cell.tables:
                    for irow in inner.rows:
                        parts.extend(c.text for c in irow.cells)
                cells.append("\n".join(parts).strip())
            rows.append(cells)
        k = 0
        while k < len(rows):
            r = rows[k]
            nxt = rows[k + 1] if k + 1 < len(rows) else []
            if len(r) >= 2 and all(_is_bare_label(c) for c in r) and nxt and not any(_is_bare_label(c) for c in nxt):
                # a row of column headings: read the rows below it column by column
                end = k + 1
                while end < len(rows) and not any(_is_bare_label(c) for c in rows[end]):
                    end += 1
                for col, label in enumerate(r):
                    out.append(label)
                    out.extend(row[col] for row in rows[k + 1:end] if col < len(row) and row[col])
                    out.append("")
                k = end
                continue
            out.extend(r)
            out.append("")
            k += 1

    body = document.element.body
    for child in body.iterchildren():
        tag = child.tag.rsplit("}", 1)[-1]
        if tag == "p":
            out.append(Paragraph(child, document).text)
        elif tag == "tbl":
            table_lines(Table(child, document))
    return "\n".join(out)


def rtf_to_plain(rtf: bytes) -> str:
    """Text of an RTF body (Outlook's plain-text-derived or HTML-encapsulating RTF); '' if unreadable."""
    if not rtf.lstrip().startswith(b"{\\rtf"):
        return ""  # still compressed (compressed_rtf missing) or not RTF at all
    try:
        from striprtf.striprtf import rtf_to_text
    except ImportError:  # pragma: no cover - a declared dependency
        return ""
    m = re.search(rb"\\ansicpg(\d{3,5})", rtf[:2000])
    encoding = f"cp{m.group(1).decode()}" if m else "cp1252"
    try:
        codecs.lookup(encoding)
    except LookupError:
        encoding = "cp1252"
    try:
        text: str = rtf_to_text(rtf.rstrip(b"\x00").decode("latin-1"), encoding=encoding, errors="replace")  # type: ignore[no-untyped-call]
    except MemoryError:
        raise
    except Exception:
        return ""
    return text.replace("\r\n", "\n").strip()


def tnef_to_parts(data: bytes) -> tuple[str, list[Attachment]]:
    """The body text of a winmail.dat (plain, else HTML) and its attachments."""
    try:
        from tnefparse import TNEF
    except ImportError:  # pragma: no cover
        return "", []
    try:
        tnef = TNEF(data, do_checksum=False)
    except MemoryError:
        raise
    except Exception:
        return "", []
    text = ""
    body = getattr(tnef, "body", None)
    html = getattr(tnef, "htmlbody", None)
    if body:
        text = body if isinstance(body, str) else decode_bytes(bytes(body).rstrip(b"\x00"), None)
    elif html:
        html_s = html if isinstance(html, str) else decode_bytes(bytes(html).rstrip(b"\x00"), None)
        text = html_to_text(html_s)
    else:
        try:  # "Rich Text" mail: compressed RTF, which tnefparse inflates with compressed_rtf
            rtf = getattr(tnef, "rtfbody", None)
        except Exception:
            rtf = None
        if isinstance(rtf, bytes | bytearray):
            text = rtf_to_plain(bytes(rtf))
    atts: list[Attachment] = []
    for a in getattr(tnef, "attachments", []):
        try:
            name = str(a.long_filename() or a.name or "") or None
        except Exception:
            name = None
        payload = a.data if isinstance(a.data, bytes) else b""
        ctype = "application/octet-stream"
        if name and name.lower().endswith(".docx"):
            ctype = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        elif name and name.lower().endswith(".txt"):
            ctype = "text/plain"
        atts.append(Attachment(name.strip("\x00") if name else None, ctype, payload))
    return text.strip("\x00"), atts


# ---- the referral ------------------------------------------------------------------------------------

def _attachment_texts(atts: Iterable[Attachment], depth: int = 0, limits: Limits | None = None,
                      hits: list[str] | None = None) -> list[tuple[str, str]]:
    """(source, text) for each readable form among attachments; codes of those over a limit go
    to ``hits`` and the attachment is skipped."""
    lim = limits or Limits()
    notes = hits if hits is not None else []
    out: list[tuple[str, str]] = []
    for att in atts:
        try:
            out.extend(_one_attachment(att, depth, lim, notes))
        except LimitExceeded as exc:
            if exc.code.value not in notes:
                notes.append(exc.code.value)
        except MemoryError:  # under the parse worker's RLIMIT_AS: skip this one, read the rest
            if LimitHit.EXTRACTION_MEMORY.value not in notes:
                notes.append(LimitHit.EXTRACTION_MEMORY.value)
    return out


def _one_attachment(att: Attachment, depth: int, limits: Limits, hits: list[str]) -> list[tuple[str, str]]:
    readable = _is_docx(att) or (_is_tnef(att) and depth < 2) or (att.content_type == "text/plain" and att.filename)
    if readable and att.size > limits.attachment_max_decompressed_bytes:
        raise LimitExceeded(LimitHit.ATTACHMENT_TOO_LARGE)
    if _is_docx(att):
        text = docx_to_text(att.payload, limits)
        return [("docx", text)] if text.strip() else []
    if _is_tnef(att) and depth < 2:
        out: list[tuple[str, str]] = []
        body, inner = tnef_to_parts(att.payload)
        if body.strip():
            out.append(("tnef", body))
        out.extend(("tnef" if src == "docx" else src, t)
                   for src, t in _attachment_texts(inner, depth + 1, limits, hits))
        return out
    if att.content_type == "text/plain" and att.filename and len(att.payload) < 200_000:
        text = decode_bytes(att.payload, None)
        return [("attachment", text)] if text.strip() else []
    return []


def with_attachment_texts(msg: ParsedMessage, limits: Limits | None = None) -> ParsedMessage:
    """``msg`` (and the messages embedded in it) with ``attachment_texts`` filled in and the codes
    of the attachments skipped added to ``limits_hit``: the heavy part of reading a referral, done
    once where it can be bounded (the parse worker)."""
    hits: list[str] = list(msg.limits_hit)

    def fill(m: ParsedMessage) -> ParsedMessage:
        texts = m.attachment_texts
        if texts is None:
            texts = tuple(_attachment_texts(m.attachments, 0, limits, hits))
        return replace(m, attachment_texts=texts, embedded=tuple(fill(e) for e in m.embedded))

    filled = fill(msg)
    return replace(filled, limits_hit=tuple(dict.fromkeys(hits)))


def extract_referral(msg: ParsedMessage, required: Sequence[str]) -> ReferralParse:
    """Fields from the message body, inline forwards, embedded mail, .docx forms and winmail.dat."""
    builder = _Builder({}, set())
    sources: list[str] = []

    def absorb(source: str, text: str) -> None:
        part = _extract(text)
        before = dict(builder.values)
        for k, v in part.values.items():
            builder.put(k, v)
        builder.labelled |= part.labelled
        if (part.labelled or builder.values != before) and source not in sources:
            sources.append(source)

    hits: list[str] = list(msg.limits_hit)

    def absorb_message(m: ParsedMessage, own_source: str, depth: int) -> None:
        own, forwarded = split_forwarded(m.text)
        absorb(own_source, own)
        for block in forwarded:
            absorb("forwarded", block)
        texts = m.attachment_texts
        if texts is None:  # not read by the parse worker (a plain parse_message result)
            texts = tuple(_attachment_texts(m.attachments, hits=hits))
        for src, text in texts:
            absorb(src, text)
        if depth < 3:
            for inner in m.embedded:
                absorb_message(inner, "embedded", depth + 1)

    absorb_message(msg, "body", 0)
    if "raised_by_email" not in builder.values and msg.from_address:
        builder.values["raised_by_email"] = msg.from_address
    if _is_blank(builder.values.get("raised_by_name")) and msg.from_name.strip():
        name = msg.from_name.strip()
        if "@" not in name:
            builder.values["raised_by_name"] = name
    result = _fields(builder)
    missing = tuple(name for name in required if name in FIELD_NAMES and result.is_empty(name))
    return ReferralParse(fields=result, missing=missing, sources=tuple(sources),
                         labelled_count=len(builder.labelled), limits_hit=tuple(dict.fromkeys(hits)))

