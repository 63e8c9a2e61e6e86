"""Redaction of outgoing mail: a child appears as initials, with no date of birth and no ID.

Mail leaves the service over ordinary e-mail, so every body is redacted before it is queued
(Wiltshire: "ensure that all personal identifiable information is sent by secure means"); only a
partnership's configured secure route may carry the full details. The case record keeps the
original text: this module only ever rewrites a copy.

What :meth:`Redactor.for_case` removes from a text, case-insensitively, as whole words only (so
"Ava" goes but "Avalon" stays):

* each child's name — the full name and every contiguous run of its parts ("Mary-Jane Smith",
  "Mary-Jane", "Jane Smith", "Mary", "Jane", "Smith", the pieces of "O'Brien"), spaces, line breaks
  or hyphens between the parts, possessives ("Mary's") — becomes that child's initials ("M.J.S.");
  a name written without its accents ("Zoe" for "Zoë") counts too. Short names and names that are
  English words ("Rose", "A") are redacted all the same: a false positive costs a word, a false
  negative discloses a child;
* each date of birth in any common form (2015-02-01, 01/02/2015, 1/2/15, 02/01/2015 read US-style,
  1 Feb 2015, 1st of February 2015, February 1, 2015, 20150201) becomes :data:`DOB_REMOVED`;
* the child's ID (verbatim, any case, spaces or hyphens between its characters allowed, and its
  run of five or more digits alone; an ID of under :data:`MIN_ID_CHARS` characters is ignored) and anything shaped like an NHS number (10 digits, or 3-3-4 with spaces or
  hyphens) become :data:`ID_REMOVED`.

``keep`` strings (the partnership's own name and mailbox) are left as they are, so a child who
shares a word with them does not break the address people reply to.

Pure: no I/O, no configuration.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from email.utils import parseaddr
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from escalations.parsers.fields import ReferralFields
    from escalations.routing.policy.model import Partnership

__all__ = ["DOB_REMOVED", "ID_REMOVED", "NAME_REMOVED", "Redactor", "initials", "names_as_initials", "on_domains",
           "redactor_for"]

DOB_REMOVED = "[date of birth removed]"
ID_REMOVED = "[ID removed]"
#: For a name with no letters to make initials from.
NAME_REMOVED = "[name removed]"
#: A child ID shorter than this (letters and digits) is not looked for.
MIN_ID_CHARS = 4

_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
           "october", "november", "december")
#: Between the parts of a written name: spaces/line breaks, or a hyphen or dash with optional spaces.
_NAME_SEP = r"(?:\s*[-\u2010\u2011\u2012\u2013\u2014]\s*|\s+)"
_APOSTROPHES = "'\u2019\u2018`"
#: Between day, month and year in a written date.
_DATE_SEP = r"[\s,./\-]*"
#: Between the numbers of a numeric date.
_NUM_SEP = r"\s*[/\-.]\s*"
_NHS = r"(?<!\d)\d{3}[ \t\u00a0-]?\d{3}[ \t\u00a0-]?\d{4}(?!\d)"


def initials(names: Sequence[str]) -> str:
    """'Ava Testchild', 'Ben Testchild' -> 'A.T., B.T.' (the only form of a name that leaves the database)."""
    out = []
    for name in names:
        letters = [part[0].upper() for part in name.replace("-", " ").split() if part[:1].isalpha()]
        if letters:
            out.append(".".join(letters) + ".")
    return ", ".join(out) if out else "(not given)"


def _strip_accents(s: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))


def _key(s: str) -> str:
    """How a matched name is looked up: accents, case, separators and apostrophes don't matter."""
    s = _strip_accents(s).casefold()
    s = re.sub(f"[{_APOSTROPHES}]", "'", s)
    return " ".join(re.split(_NAME_SEP, s.strip()))


def _atoms(name: str) -> list[str]:
    """The parts of a name, hyphenated parts split: 'Mary-Jane  Smith' -> ['Mary', 'Jane', 'Smith']."""
    parts = re.split(_NAME_SEP, unicodedata.normalize("NFC", name).strip())
    return [a for a in (p.strip(".,;:()[]\"" + _APOSTROPHES) for p in parts) if a]


def _atom_pattern(atom: str) -> str:
    return "".join(f"[{_APOSTROPHES}]" if c in _APOSTROPHES else re.escape(c) for c in atom)


def _name_variants(name: str) -> list[list[str]]:
    """Every run of consecutive parts of the name, and the pieces of a part with an apostrophe."""
    atoms = _atoms(name)
    runs = [atoms[i:j] for i in range(len(atoms)) for j in range(i + 1, len(atoms) + 1)]
    for a in atoms:
        runs.extend([p] for p in re.split(f"[{_APOSTROPHES}]", a) if p and p != a)
    out: list[list[str]] = []
    for run in runs:
        for variant in (run, [_strip_accents(a) for a in run]):
            if variant not in out:
                out.append(variant)
    return out


def _dob_pattern(d: date) -> str:
    day = f"0?{d.day}" if d.day < 10 else str(d.day)
    month = f"0?{d.month}" if d.month < 10 else str(d.month)
    year = f"(?:{d.year}|{d.year % 100:02d})"
    full = _MONTHS[d.month - 1]
    words = {full, full[:3]} | ({"sept"} if d.month == 9 else set())
    month_word = "(?:" + "|".join(sorted(words, key=len, reverse=True)) + r")\.?"
    day_word = rf"{day}(?:st|nd|rd|th)?"
    forms = [
        rf"{d.year}{_NUM_SEP}{month}{_NUM_SEP}{day}",                       # 2015-02-01
        rf"{day}{_NUM_SEP}{month}{_NUM_SEP}{year}",                         # 01/02/2015, 1/2/15
        rf"{month}{_NUM_SEP}{day}{_NUM_SEP}{year}",                         # 02/01/2015 (US order)
        rf"{d:%Y%m%d}|{d:%d%m%Y}",                                          # 20150201, 01022015
        rf"{day_word}{_DATE_SEP}(?:of{_DATE_SEP})?{month_word}{_DATE_SEP}{year}",  # 1st of February 2015
        rf"{month_word}{_DATE_SEP}{day_word}{_DATE_SEP}{year}",             # February 1, 2015
    ]
    return r"(?<!\d)(?:" + "|".join(forms) + r")(?!\d)"


def _id_patterns(child_id: str) -> list[str]:
    chars = [c for c in child_id if c.isalnum()]
    # An "ID" of a character or three ("1", "10") is a slip, and would blank every such number in the
    # mail, deadlines included.
    if len(chars) < MIN_ID_CHARS:
        return []
    out = [r"(?<![^\W_])" + r"[\s\-/.]?".join(re.escape(c) for c in chars) + r"(?![^\W_])"]
    # The ID's number alone ("Mosaic 123456" for "M123456"), when long enough to mean something.
    out.extend(rf"(?<!\d){digits}(?!\d)" for digits in re.findall(r"\d{5,}", child_id))
    return out


def _dob(value: date | str) -> date | None:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


@dataclass(frozen=True)
class Redactor:
    """Rewrites a text so no child's name, date of birth or ID is left; see the module docstring."""

    # Not in repr: the pattern spells out the names and dates it looks for.
    _pattern: re.Pattern[str] | None = field(default=None, repr=False)
    #: _key(name as matched) -> the child's initials.
    _names: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def identity(cls) -> Redactor:
        """Changes nothing: for mail on a secure route."""
        return cls()

    @classmethod
    def for_case(cls, child_names: Iterable[str], child_dobs: Iterable[date | str] = (),
                 child_id: str | None = None, *, keep: Iterable[str] = (), guard: bool = True) -> Redactor:
        """A redactor for one case's children. NHS-shaped numbers are removed even with no child given
        (the referral form has no NHS number field, so the number is only ever in free text).

        ``guard``: the pattern starts with a look-ahead for the characters a match can begin with (a
        digit, or the first letter of a kept string, a month, the ID or a name part, in any case), so
        the many places where nothing can begin cost one test instead of every alternative: same
        matches, several times faster. False only to compare the two (tests)."""
        alternatives: list[tuple[str, str]] = []
        # What a match can begin with besides a digit (the pattern's literals, matched ignoring case as
        # the look-ahead's class is); known: every alternative's first character was found.
        firsts: set[str] = set()
        known = True
        kept = sorted({k for k in keep if k.strip()}, key=len, reverse=True)
        if kept:
            alternatives.append(("keep", "|".join(re.escape(unicodedata.normalize("NFC", k)) for k in kept)))
            firsts.update(unicodedata.normalize("NFC", k)[0] for k in kept)
        dobs = [d for d in (_dob(v) for v in child_dobs) if d is not None]
        if dobs:
            alternatives.append(("dob", "|".join(_dob_pattern(d) for d in dict.fromkeys(dobs))))
            firsts.update(_MONTHS[d.month - 1][0] for d in dobs)  # "1 Feb", "February 1": a digit or the month
        ids = _id_patterns(child_id or "")
        if ids:
            firsts.add(next(c for c in child_id or "" if c.isalnum()))
        alternatives.append(("id", "|".join([*ids, _NHS])))
        names: dict[str, str] = {}
        runs: list[list[str]] = []
        for name in child_names:
            shown = initials([name])
            shown = NAME_REMOVED if shown == "(not given)" else shown
            for run in _name_variants(name):
                if names.setdefault(_key(" ".join(run)), shown) == shown and run not in runs:
                    runs.append(run)
        if runs:
            # Longest first: at one position the regex takes the first alternative that matches.
            runs.sort(key=lambda r: (len(r), len(" ".join(r))), reverse=True)
            body = "|".join(_NAME_SEP.join(_atom_pattern(a) for a in run) for run in runs)
            alternatives.append(("name", rf"(?<!\w)(?:{body})(?!\w)"))
            for run in runs:
                if run[0] and run[0][0] not in _APOSTROPHES:
                    firsts.add(run[0][0])
                else:
                    known = False  # a part with no letter of its own to begin with: no guard
        pattern = "|".join(f"(?P<{group}>{p})" for group, p in alternatives)
        if guard and known:
            begins = r"\d" if not firsts else "[" + "".join(re.escape(c) for c in sorted(firsts)) + r"]|\d"
            pattern = f"(?={begins})(?:{pattern})"
        return cls(re.compile(pattern, re.IGNORECASE), names)

    @property
    def is_identity(self) -> bool:
        return self._pattern is None

    def redact(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(self._replace, unicodedata.normalize("NFC", text))

    def _replace(self, m: re.Match[str]) -> str:
        if m.lastgroup == "keep":
            return m.group(0)
        if m.lastgroup == "dob":
            return DOB_REMOVED
        if m.lastgroup == "id":
            return ID_REMOVED
        shown = self._names.get(_key(m.group(0)), NAME_REMOVED)
        # "told Ava." -> "told A.T." rather than "A.T.."
        if shown.endswith(".") and m.string[m.end():m.end() + 1] == ".":
            return shown[:-1]
        return shown


def redactor_for(fields: ReferralFields, partnership: Partnership) -> Redactor:
    """The redactor for a case's outgoing mail, keeping the partnership's own name and mailboxes.

    Kept for the case's next steps (a reply, a reminder, an escalation): compiling its pattern is most
    of a redactor's cost, and a case's children change only when someone corrects them."""
    return _cached_redactor(tuple(fields.child_names), tuple(str(d) for d in fields.child_dobs), fields.child_id,
                            (partnership.name, *partnership.mailboxes))


@functools.lru_cache(maxsize=256)
def _cached_redactor(names: tuple[str, ...], dobs: tuple[str, ...], child_id: str | None,
                     keep: tuple[str, ...]) -> Redactor:
    return Redactor.for_case(names, dobs, child_id, keep=keep)


#: Capitalised words a quoted phrase keeps: they name days and months, never a person.
_CALENDAR_WORDS = frozenset(["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november", "december", "christmas", "easter"])
_CAPITALISED = re.compile(r"(?<![\w'’])([A-ZÀ-Þ][\wÀ-ɏ'’-]*)")


def names_as_initials(text: str) -> str:
    """A phrase quoted from a referral whose children may not be known yet ("before Ava returns home"):
    every capitalised word but the first and the names of days and months becomes an initial, as a
    child's name would ("before A. returns home"). A false positive costs a word."""
    def shown(m: re.Match[str]) -> str:
        word = m.group(1)
        if m.start() == 0 or word.lower().rstrip("s'’") in _CALENDAR_WORDS or word.lower() in _CALENDAR_WORDS:
            return word
        return word[0] + "."
    return _CAPITALISED.sub(shown, text)


def on_domains(recipients: Iterable[str], domains: Iterable[str]) -> bool:
    """Whether every recipient's domain is one of ``domains`` or below one (``x.cjsm.net`` is under
    ``cjsm.net``; ``evilcjsm.net`` is not). No recipients: False."""
    suffixes = [d.strip().lower().strip(".").removeprefix("@") for d in domains]
    suffixes = [d for d in suffixes if d]
    seen = False
    for r in recipients:
        address = parseaddr(r)[1] or r
        domain = address.rpartition("@")[2].strip().lower().rstrip(".")
        if "@" not in address or not domain or not any(domain == d or domain.endswith("." + d) for d in suffixes):
            return False
        seen = True
    return seen
