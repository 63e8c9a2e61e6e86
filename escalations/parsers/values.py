"""Values out of a referral's label text: dates, yes/no, child status, stage, names, "practitioner, agency".

Pure: no I/O. Dates are read UK day-first; anything unreadable is None, never an exception.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from escalations.parsers.fields import ChildStatus

__all__ = [
    "AGENCY_WORDS",
    "EMAIL_RE",
    "EMPTY_TEXT_VALUES",
    "child_status",
    "find_dates",
    "names",
    "norm",
    "parse_date",
    "parse_datetime",
    "split_practitioner_agency",
    "stage",
    "strip_dates",
    "yes_no",
    "yes_no_choice",
]

# Values that mean "nothing given" (for required-field purposes).
_EMPTY_VALUES = frozenset({
    "", "n a", "na", "none", "nil", "tbc", "tba", "unknown", "not known", "not applicable", "not given",
    "to follow", "tbd", "x", "no", "n k", "nk", "pending",
})
EMPTY_TEXT_VALUES = _EMPTY_VALUES - {"no", "x"}


def norm(text: str) -> str:
    s = text.lower().replace("’", "").replace("'", "").replace("‘", "").replace("&", " and ")
    s = re.sub(r"[^a-z0-9]+", " ", s)
    return s.strip()


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


def find_dates(text: str) -> list[tuple[int, int, date]]:
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
    found = find_dates(text)
    return found[0][2] if found else None


def parse_datetime(text: str) -> date | datetime | None:
    """A date, with a time of day if one is given ("17:00 on 12/11/2026", "12 Nov 2026 at 5pm").

    The time is naive local time (the partnership's timezone applies)."""
    found = find_dates(text)
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


def yes_no(text: str) -> bool | None:
    n = norm(text)
    first = n.split(" ", 1)[0] if n else ""
    if first in ("yes", "y", "true", "urgent", "immediate"):
        return True
    if first in ("no", "n", "false", "not", "none"):
        return False
    return None


_CHECKED = "☒☑✔✓✗✘■▣◉●⊠"
_CHOICE_RE = re.compile(rf"\b(yes|no)\b\s*(?:\[\s*[x✓✔]\s*\]|\(\s*[x✓✔]\s*\)|[{_CHECKED}])"
                        rf"|(?:\[\s*[x✓✔]\s*\]|[{_CHECKED}])\s*\b(yes|no)\b", re.I)


def yes_no_choice(text: str) -> bool | None:
    """A form's "Yes / No" answer: the ticked one ("Yes ☐ No ☒", "[x] Yes"); the printed choices
    left as they are ("Yes No", "Yes/No") answer nothing; otherwise as ``yes_no``."""
    ticked = {(m.group(1) or m.group(2)).lower() for m in _CHOICE_RE.finditer(text)}
    if len(ticked) == 1:
        return ticked.pop() == "yes"
    words = set(norm(text).split())
    if {"yes", "no"} <= words:
        rest = words - {"yes", "no", "y", "n"}
        return None if not rest or ticked else yes_no(text)
    return yes_no(text)


_STATUS_PATTERNS: tuple[tuple[re.Pattern[str], ChildStatus], ...] = (
    (re.compile(r"\b(looked after|lac|cla|child looked after|in care|care order|section 20|s20|s 20)\b"),
     "looked_after"),
    (re.compile(r"\b(child protection|cp|cpp|cp plan|subject to (a )?plan)\b"), "cp_plan"),
    (re.compile(r"\b(child in need|cin|section 17|s17|s 17)\b"), "child_in_need"),
    (re.compile(r"^(none|no|n a|na|not applicable|no plan|universal|early help|nfa|not known to csc)\b"),
     "none"),
)
_STATUS_NAMES = frozenset(status for _rx, status in _STATUS_PATTERNS)


def child_status(text: str) -> ChildStatus | None:
    n = norm(text)
    if not n:
        return None
    if n in _STATUS_NAMES:
        return n  # narrowed: the set holds ChildStatus values
    if n.replace(" ", "_") in _STATUS_NAMES:
        return cast("ChildStatus", n.replace(" ", "_"))
    for rx, status in _STATUS_PATTERNS:
        if rx.search(n):
            return status
    return None


_NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "first": 1, "second": 2, "third": 3,
                 "fourth": 4, "fifth": 5, "i": 1, "ii": 2, "iii": 3, "iv": 4}


def stage(text: str) -> int | None:
    n = norm(text)
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


EMAIL_RE = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
AGENCY_WORDS = re.compile(
    r"\b(council|police|constabulary|school|academy|college|nursery|nhs|hospital|trust|csc|social care|"
    r"services?|team|health|department|dept|unit|clinic|surgery|gp|practice|probation|cafcass|housing|"
    r"safeguarding|agency|children'?s|partnership|foundation|borough|authority|cyps|camhs|icb|ccg|"
    r"mash|youth|education|mental)\b",
    re.I,
)


def split_practitioner_agency(value: str) -> tuple[str | None, str | None]:
    """"Jane Doe, Hackney Children's Social Care" -> ("Jane Doe", "Hackney Children's Social Care")."""
    lines = [ln.strip(" \t,;") for ln in value.splitlines() if ln.strip(" \t,;")]
    if len(lines) >= 2:
        return lines[0], " ".join(lines[1:])
    v = lines[0] if lines else ""
    m = (re.match(r"^(.+?)\s*(?:\t+|\s{2,}|\s[-–—|]\s|,\s*|\s\((?=.+\)$))(.+?)\)?$", v)
         or re.match(r"^(.+?)\s+(?:at|from|of)\s+(.+)$", v))
    if m:
        left, right = m.group(1).strip(), m.group(2).strip()
        if AGENCY_WORDS.search(left) and not AGENCY_WORDS.search(right):
            left, right = right, left
        return left or None, right or None
    if AGENCY_WORDS.search(v):
        return None, v or None
    return v or None, None


def names(value: str) -> list[str]:
    parts = re.split(r"\n|;|,|\band\b|&|\s/\s", value)
    out: list[str] = []
    for p in parts:
        p = re.sub(r"\((?:[^)]*)\)", " ", p)  # "(DOB 01/02/2015)", "(aged 7)"
        p = strip_dates(p)
        p = re.sub(r"\b(d\.?o\.?b\.?|born|aged?\s*\d*|age\s*\d+|years?|yrs?)\b[:\s]*", " ", p, flags=re.I)
        p = re.sub(r"\s+", " ", p).strip(" .:-–")
        if p and norm(p) not in EMPTY_TEXT_VALUES and re.search(r"[A-Za-z]", p):
            out.append(p)
    return out


def strip_dates(text: str) -> str:
    for s, e, _d in reversed(find_dates(text)):
        text = text[:s] + " " + text[e:]
    return text

