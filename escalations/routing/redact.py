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


def _month_pattern(month: int) -> str:
    """How a month may be written ('february', 'feb'; for September 'sept' too) as one pattern that
    tries the longest first ('feb(?:ruary)?'), so a month's words cost one test of their common start."""
    full = _MONTHS[month - 1]
    return "sep(?:t(?:ember)?)?" if month == 9 else full[:3] + (f"(?:{full[3:]})?" if full[3:] else "")


#: Each month's words, to tell which month a date's word names (matched ignoring case, as the date was).
_MONTH_WORD_RES = tuple(re.compile(_month_pattern(m), re.IGNORECASE) for m in range(1, 13))
_ANY_MONTH = "(?:" + "|".join(_month_pattern(m) for m in range(1, 13)) + ")"
_ORDINAL = "(?:st|nd|rd|th)?"
_YEAR = "(?:[0-9]{4}|[0-9]{2})"
#: Every date written in one of the forms a date of birth is looked for in (see the module docstring),
#: whatever the date: which date it is, the match's groups say, and :func:`_is_dob` checks. Digits are
#: ASCII (a date of birth is looked for as written in ASCII digits), the look-arounds any digit.
_ANY_DATE = (
    r"(?<!\d)(?:"
    rf"(?P<ymd_y>[0-9]{{4}}){_NUM_SEP}(?P<ymd_m>[0-9]{{1,2}}){_NUM_SEP}(?P<ymd_d>[0-9]{{1,2}})"  # 2015-02-01
    rf"|(?P<n_a>[0-9]{{1,2}}){_NUM_SEP}(?P<n_b>[0-9]{{1,2}}){_NUM_SEP}(?P<n_y>{_YEAR})"  # 01/02/2015, 02/01/2015
    r"|(?P<eight>[0-9]{8})"                                                                 # 20150201, 01022015
    rf"|(?P<w_d>[0-9]{{1,2}}){_ORDINAL}{_DATE_SEP}(?:of{_DATE_SEP})?(?P<w_m>{_ANY_MONTH})\.?{_DATE_SEP}"
    rf"(?P<w_y>{_YEAR})"                                                                    # 1st of February 2015
    rf"|(?P<v_m>{_ANY_MONTH})\.?{_DATE_SEP}(?P<v_d>[0-9]{{1,2}}){_ORDINAL}{_DATE_SEP}(?P<v_y>{_YEAR})"  # Feb 1, 2015
    r")(?!\d)"
)


@functools.lru_cache(maxsize=64)
def _dates_pattern(month_initials: str, guard: bool) -> re.Pattern[str]:
    """What is removed whoever the children are: every date (``dob``; only dates of birth are then
    removed) and NHS-shaped numbers (``nhs``). ``month_initials``: the first letters of the months of
    the case's dates of birth ('' for none: no dates at all), where a date written month first can
    begin. Compiled once per process and set of initials, so a case's own pattern holds only its
    names, its ID and the kept strings."""
    pattern = f"(?P<dob>{_ANY_DATE})|(?P<nhs>{_NHS})" if month_initials else f"(?P<nhs>{_NHS})"
    if guard:
        begins = f"[{month_initials}]|\\d" if month_initials else "\\d"
        pattern = f"(?={begins})(?:{pattern})"
    return re.compile(pattern, re.IGNORECASE)


def _year_is(text: str, d: date) -> bool:
    return int(text) == (d.year if len(text) == 4 else d.year % 100)


def _is_dob(m: re.Match[str], dobs: frozenset[date]) -> bool:
    """Whether the date ``m`` (of :data:`_ANY_DATE`) is one of ``dobs`` as that form writes it."""
    g = m.groupdict()
    if g["ymd_y"] is not None:
        return any(int(g["ymd_y"]) == d.year and int(g["ymd_m"]) == d.month and int(g["ymd_d"]) == d.day
                   for d in dobs)
    if g["n_a"] is not None:
        a, b = int(g["n_a"]), int(g["n_b"])
        return any(_year_is(g["n_y"], d) and (a, b) in ((d.day, d.month), (d.month, d.day)) for d in dobs)
    if g["eight"] is not None:
        return any(g["eight"] in (f"{d.year:04d}{d.month:02d}{d.day:02d}", f"{d.day:02d}{d.month:02d}{d.year:04d}")
                   for d in dobs)
    day, word, year = (g["w_d"], g["w_m"], g["w_y"]) if g["w_d"] is not None else (g["v_d"], g["v_m"], g["v_y"])
    return any(int(day) == d.day and _year_is(year, d) and _MONTH_WORD_RES[d.month - 1].fullmatch(word)
               for d in dobs)


def _id_patterns(child_id: str) -> tuple[list[str], set[str]]:
    """The patterns of a child's ID, and the characters a match of them can begin with."""
    chars = [c for c in child_id if c.isalnum()]
    # An "ID" of a character or three ("1", "10") is a slip, and would blank every such number in the
    # mail, deadlines included.
    if len(chars) < MIN_ID_CHARS:
        return [], set()
    out = [r"(?<![^\W_])" + r"[\s\-/.]?".join(re.escape(c) for c in chars) + r"(?![^\W_])"]
    firsts = {chars[0]}
    # The ID's number alone ("Mosaic 123456" for "M123456"), when long enough to mean something.
    for digits in re.findall(r"\d{5,}", child_id):
        out.append(rf"(?<!\d){digits}(?!\d)")
        firsts.add(digits[0])
    return out, firsts


def _dob(value: date | str) -> date | None:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


@dataclass(frozen=True)
class Redactor:
    """Rewrites a text so no child's name, date of birth or ID is left; see the module docstring.

    Two patterns, scanned as one: the case's own (kept strings, the child's ID, the names: compiled per
    case) and :func:`_dates_pattern` (every date, and NHS-shaped numbers: compiled once). At each place
    the leftmost match wins and, where two begin at one place, a kept string before a date of birth
    before the ID before an NHS number before a name: what one pattern of all of them, in that order,
    would take (a date of birth as a pattern of its own per child was most of a case's compile time)."""

    # Not in repr: the pattern spells out the names it looks for.
    _pattern: re.Pattern[str] | None = field(default=None, repr=False)
    #: _key(name as matched) -> the child's initials.
    _names: dict[str, str] = field(default_factory=dict, repr=False)
    _dobs: frozenset[date] = field(default_factory=frozenset, repr=False)
    #: None: the identity (nothing is removed).
    _dates: re.Pattern[str] | None = field(default=None, repr=False)

    @classmethod
    def identity(cls) -> Redactor:
        """Changes nothing: for mail on a secure route."""
        return cls()

    @classmethod
    def for_case(cls, child_names: Iterable[str], child_dobs: Iterable[date | str] = (),
                 child_id: str | None = None, *, keep: Iterable[str] = (), guard: bool = True) -> Redactor:
        """A redactor for one case's children. NHS-shaped numbers are removed even with no child given
        (the referral form has no NHS number field, so the number is only ever in free text).

        ``guard``: each pattern starts with a look-ahead for the characters a match can begin with (for
        the case's: the first letter of a kept string, the ID or a name part, in any case; for the
        dates: a digit or a month's first letter), so the many places where nothing can begin cost one
        test instead of every alternative: same matches, several times faster. False only to compare
        the two (tests)."""
        alternatives: list[tuple[str, str]] = []
        # What a match can begin with (the pattern's literals, matched ignoring case as the look-ahead's
        # class is); known: every alternative's first character was found.
        firsts: set[str] = set()
        known = True
        kept = sorted({k for k in keep if k.strip()}, key=len, reverse=True)
        if kept:
            alternatives.append(("keep", "|".join(re.escape(unicodedata.normalize("NFC", k)) for k in kept)))
            firsts.update(unicodedata.normalize("NFC", k)[0] for k in kept)
        dobs = frozenset(d for d in (_dob(v) for v in child_dobs) if d is not None)
        ids, id_firsts = _id_patterns(child_id or "")
        if ids:
            alternatives.append(("id", "|".join(ids)))
            firsts.update(id_firsts)
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
        pattern: re.Pattern[str] | None = None
        if alternatives:
            text = "|".join(f"(?P<{group}>{p})" for group, p in alternatives)
            if guard and known:
                text = "(?=[" + "".join(re.escape(c) for c in sorted(firsts)) + f"])(?:{text})"
            pattern = re.compile(text, re.IGNORECASE)
        month_initials = "".join(sorted({_MONTHS[d.month - 1][0] for d in dobs}))
        return cls(pattern, names, dobs, _dates_pattern(month_initials, guard))

    @property
    def is_identity(self) -> bool:
        return self._dates is None

    def redact(self, text: str) -> str:
        if self._dates is None:
            return text
        text = unicodedata.normalize("NFC", text)
        own, pos, out = self._pattern, 0, []
        m1 = own.search(text) if own is not None else None
        m2 = self._next_date(text, 0)
        while m1 is not None or m2 is not None:
            if m1 is None or (m2 is not None and (m2.start() < m1.start()
                                                  or (m2.start() == m1.start() and self._date_first(m1, m2)))):
                assert m2 is not None
                m, shown = m2, DOB_REMOVED if m2.lastgroup == "dob" else ID_REMOVED
            else:
                m, shown = m1, self._replace(m1)
            out.append(text[pos:m.start()])
            out.append(shown)
            pos = m.end()
            if m1 is not None and m1.start() < pos:
                m1 = own.search(text, pos) if own is not None else None
            if m2 is not None and m2.start() < pos:
                m2 = self._next_date(text, pos)
        out.append(text[pos:])
        return "".join(out)

    def _next_date(self, text: str, pos: int) -> re.Match[str] | None:
        """The first date of birth or NHS-shaped number at or after ``pos`` (other dates are passed)."""
        assert self._dates is not None
        while (m := self._dates.search(text, pos)) is not None:
            if m.lastgroup == "nhs" or _is_dob(m, self._dobs):
                return m
            pos = m.start() + 1  # a date of birth may begin inside another date ("12/01/02/2015")
        return None

    @staticmethod
    def _date_first(own: re.Match[str], date_match: re.Match[str]) -> bool:
        """Both begin at one place: a kept string, then a date of birth, the ID, an NHS number, a name."""
        if own.lastgroup == "keep":
            return False
        return date_match.lastgroup == "dob" or own.lastgroup != "id"

    def _replace(self, m: re.Match[str]) -> str:
        if m.lastgroup == "keep":
            return m.group(0)
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
