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
import importlib
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
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


#: The ASCII letters ``re.IGNORECASE`` takes as equal to more than their own two cases (a test checks
#: this over every code point).
_ODD_CASES = {"i": "\u0130\u0131", "k": "\u212a", "s": "\u017f"}


def _cases(c: str) -> set[str] | None:
    """What ``c`` matches ignoring case; None for a character outside ASCII."""
    return {c, c.lower(), c.upper(), *_ODD_CASES.get(c.lower(), "")} if c.isascii() else None


def _starts(words: Iterable[str], digits: bool = False) -> re.Pattern[str] | None:
    """Where a match of a pattern may begin: one of ``words``' first three characters, ignoring case,
    or (``digits``) an ASCII digit not after one (for a text with no other digits: see
    :data:`_OTHER_DIGIT`). A superset, written to begin with one character class and ignore no case,
    which ``re`` skips ahead to in C: a pattern that ignores case, or begins with a look-ahead, is
    instead tried at every place of a text. None if a word begins outside ASCII."""
    def one_of(chars: set[str]) -> str:
        return "[" + "".join(re.escape(c) for c in sorted(chars)) + "]"

    firsts: set[str] = set()
    branches = ["(?<=[0-9])(?<![0-9][0-9])"] if digits else []
    for word in dict.fromkeys(w[:3] for w in words):
        cases = [_cases(c) for c in word]
        if not cases or any(k is None for k in cases):
            return None
        first, *rest = (k for k in cases if k is not None)
        firsts |= first
        branches.append(f"(?<={one_of(first)})" + "".join(one_of(k) for k in rest))
    if not branches:
        return None
    return re.compile("[" + ("0-9" if digits else "") + one_of(firsts)[1:] + "(?:" + "|".join(branches) + ")")


#: A digit outside ASCII (the NHS-number pattern takes any script's digits; :func:`_starts` only ASCII).
_OTHER_DIGIT = re.compile(r"[\u0080-\U0010ffff](?<=\d)")


@functools.lru_cache(maxsize=64)
def _date_starts(month_initials: str) -> re.Pattern[str] | None:
    """:func:`_starts` of :func:`_dates_pattern` (guarded): a digit, or the months' words it looks for."""
    return _starts([m for m in _MONTHS if m[0] in month_initials], digits=True)


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


def _fold_table() -> dict[int, str] | None:
    """How :class:`Redactor` folds a lowered text so that comparing it with a name's lowered parts
    takes as equal exactly what ``re.IGNORECASE`` does: each set of lowercase letters that share an
    uppercase one becomes one of them (long s and s, dotless i and i, final and other sigma...: the
    table the ``re`` module compiles with; apostrophes :func:`_folded` makes one). None where that table
    is not there (another Python): names are then looked for with a compiled pattern, as before."""
    try:
        extra = importlib.import_module("re._casefix")._EXTRA_CASES
    except (ImportError, AttributeError):
        return None
    classes: dict[int, set[int]] = {}
    for code, others in extra.items():
        joined = {code, *others}
        for member in list(joined):
            joined |= classes.get(member, set())
        for member in joined:
            classes[member] = joined
    return {code: chr(min(members)) for code, members in classes.items() if chr(code) != chr(min(members))}


_FOLD = _fold_table()
#: A character the fold changes (translating a whole text by the table costs more than the rest of
#: its redaction, so it is done only for a text that has one).
_FOLDED_CHARS = re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(_FOLD)) + "]") if _FOLD else None
_NAME_SEP_RE = re.compile(_NAME_SEP)
#: Where a match begins and ends, and what it is: at one place a kept string goes before a date of
#: birth, before the ID, before an NHS number, before a name.
_KEEP, _DOB, _ID, _NHS_NO, _NAME = range(5)
_Found = tuple[int, int, int]


def _folded(text: str) -> str | None:
    """``text`` lowered and folded (see :func:`_fold_table`), one character for one; None where
    lowering changes its length (a dotted capital I) or there is no fold table."""
    if _FOLD is None or _FOLDED_CHARS is None:
        return None
    lowered = text.lower()
    if len(lowered) != len(text):
        return None
    for apostrophe in _APOSTROPHES[1:]:
        lowered = lowered.replace(apostrophe, "'")
    return lowered.translate(_FOLD) if _FOLDED_CHARS.search(lowered) else lowered


def _is_word(c: str) -> bool:
    """What the pattern's ``\\w`` takes (a letter, digit or numeral of any script, or ``_``)."""
    return c.isalnum() or c == "_"


@functools.lru_cache(maxsize=64)
def _keep_pattern(kept: tuple[str, ...], guard: bool) -> tuple[re.Pattern[str], re.Pattern[str] | None]:
    """The kept strings (longest first), compiled once per partnership, and (guarded) where they begin."""
    return _guarded("|".join(re.escape(k) for k in kept), (k[0] for k in kept), guard), \
        _starts(kept) if guard else None


def _guarded(body: str, firsts: Iterable[str], guard: bool) -> re.Pattern[str]:
    if guard:
        body = "(?=[" + "".join(re.escape(c) for c in sorted(set(firsts))) + f"])(?:{body})"
    return re.compile(body, re.IGNORECASE)


@dataclass(frozen=True)
class Redactor:
    """Rewrites a text so no child's name, date of birth or ID is left; see the module docstring.

    Four searches, merged: the kept strings (a pattern compiled once per partnership), every date and
    NHS-shaped number (:func:`_dates_pattern`, compiled once), the child's ID (a pattern compiled per
    case, when it has one) and the names. The first two are tried only where :func:`_starts` finds one
    may begin. Names are looked for without a pattern of their own: the text is lowered and folded once,
    each name part found with ``str.find``, and the parts, separators and word boundaries checked where
    one is found, as the pattern would have (compiling a pattern of a case's names was most of the cost
    of a redactor; a text lowering cannot keep one character for one, or a name that cannot be folded,
    still uses the compiled pattern). At each place the leftmost match wins and, where two begin at one
    place, a kept string before a date of birth before the ID before an NHS number before a name: what
    one pattern of all of them, in that order, would take."""

    _keep: re.Pattern[str] | None = field(default=None, repr=False)
    _keep_starts: re.Pattern[str] | None = field(default=None, repr=False)
    _id: re.Pattern[str] | None = field(default=None, repr=False)
    # Not in repr: these spell out the names looked for.
    #: Every run of a name's parts, longest first (as the pattern tries them), each part lowered and
    #: folded; None where a part cannot be (then only the pattern below is used).
    _runs: tuple[tuple[str, ...], ...] | None = field(default=None, repr=False)
    #: The runs' first parts, each once.
    _heads: tuple[str, ...] = field(default=(), repr=False)
    #: The names as a pattern's source, compiled the first time a text needs it ('' for no names).
    _name_source: str = field(default="", repr=False)
    _name_firsts: str | None = field(default=None, repr=False)
    #: _key(name as matched) -> the child's initials.
    _names: dict[str, str] = field(default_factory=dict, repr=False)
    _dobs: frozenset[date] = field(default_factory=frozenset, repr=False)
    #: None: the identity (nothing is removed).
    _dates: re.Pattern[str] | None = field(default=None, repr=False)
    _date_starts: re.Pattern[str] | None = field(default=None, repr=False)

    @classmethod
    def identity(cls) -> Redactor:
        """Changes nothing: for mail on a secure route."""
        return cls()

    @classmethod
    def for_case(cls, child_names: Iterable[str], child_dobs: Iterable[date | str] = (),
                 child_id: str | None = None, *, keep: Iterable[str] = (), guard: bool = True,
                 literal: bool = True) -> Redactor:
        """A redactor for one case's children. NHS-shaped numbers are removed even with no child given
        (the referral form has no NHS number field, so the number is only ever in free text).

        ``guard``: each pattern starts with a look-ahead for the characters a match can begin with (the
        first letter of a kept string, the ID or a name part, in any case; for the dates: a digit or a
        month's first letter), so the many places where nothing can begin cost one test instead of
        every alternative, and the kept strings and the dates are tried only where :func:`_starts`
        finds one may begin: same matches, several times faster. ``literal``: names are found in folded
        text (see the class), not by a pattern. Both False only to compare (tests, bench/redact.py)."""
        kept = tuple(sorted({unicodedata.normalize("NFC", k) for k in keep if k.strip()}, key=len, reverse=True))
        dobs = frozenset(d for d in (_dob(v) for v in child_dobs) if d is not None)
        ids, id_firsts = _id_patterns(child_id or "")
        names: dict[str, str] = {}
        runs: list[list[str]] = []
        for name in child_names:
            shown = initials([name])
            shown = NAME_REMOVED if shown == "(not given)" else shown
            for run in _name_variants(name):
                if names.setdefault(_key(" ".join(run)), shown) == shown and run not in runs:
                    runs.append(run)
        # Longest first: at one position the pattern takes the first alternative that matches.
        runs.sort(key=lambda r: (len(r), len(" ".join(r))), reverse=True)
        source, name_firsts = "", None
        if runs:
            body = "|".join(_NAME_SEP.join(_atom_pattern(a) for a in run) for run in runs)
            source = rf"(?<!\w)(?:{body})(?!\w)"
            # A part with no letter of its own to begin with: no guard.
            if all(run[0][:1] and run[0][0] not in _APOSTROPHES for run in runs):
                name_firsts = "".join(sorted({run[0][0] for run in runs}))
        folded_runs: tuple[tuple[str, ...], ...] | None = None
        if runs and literal:
            folded = [tuple(_folded(a) for a in run) for run in runs]
            if all(a is not None for run in folded for a in run):
                folded_runs = tuple(tuple(a for a in run if a is not None) for run in folded)
        month_initials = "".join(sorted({_MONTHS[d.month - 1][0] for d in dobs}))
        keep_pattern, keep_starts = _keep_pattern(kept, guard) if kept else (None, None)
        return cls(
            keep_pattern, keep_starts,
            _guarded("|".join(ids), id_firsts, guard) if ids else None,
            folded_runs, tuple(dict.fromkeys(run[0] for run in folded_runs)) if folded_runs else (),
            source, name_firsts if guard else None, names, dobs, _dates_pattern(month_initials, guard),
            _date_starts(month_initials) if guard else None)

    @property
    def is_identity(self) -> bool:
        return self._dates is None

    @functools.cached_property
    def _name_pattern(self) -> re.Pattern[str]:
        return _guarded(self._name_source, self._name_firsts or "", self._name_firsts is not None)

    def redact(self, text: str) -> str:
        if self._dates is None:
            return text
        text = unicodedata.normalize("NFC", text)
        date_starts = self._date_starts if text.isascii() or _OTHER_DIGIT.search(text) is None else None
        finders: list[Callable[[int], _Found | None]] = [functools.partial(self._next_date, text, date_starts)]
        if self._keep is not None:
            finders.append(functools.partial(_next_match, self._keep, self._keep_starts, text, _KEEP))
        if self._id is not None:
            finders.append(functools.partial(_next_match, self._id, None, text, _ID))
        if self._name_source:
            folded = _folded(text) if self._runs is not None else None
            if folded is not None:
                finders.append(functools.partial(self._next_name, text, folded, {}))
            else:
                finders.append(functools.partial(_next_match, self._name_pattern, None, text, _NAME))
        found = [f(0) for f in finders]
        pos, out = 0, []
        while True:
            best: _Found | None = None
            for f in found:
                if f is not None and (best is None or (f[0], f[2]) < (best[0], best[2])):
                    best = f
            if best is None:
                break
            start, end, kind = best
            out.append(text[pos:start])
            out.append(self._shown(text, start, end, kind))
            pos = end
            for i, f in enumerate(found):
                if f is not None and f[0] < pos:
                    found[i] = finders[i](pos)
        out.append(text[pos:])
        return "".join(out)

    def _next_date(self, text: str, starts: re.Pattern[str] | None, pos: int) -> _Found | None:
        """The first date of birth or NHS-shaped number at or after ``pos`` (other dates are passed)."""
        assert self._dates is not None
        while (m := _match_from(self._dates, starts, text, pos)) is not None:
            if m.lastgroup == "nhs":
                return m.start(), m.end(), _NHS_NO
            if _is_dob(m, self._dobs):
                return m.start(), m.end(), _DOB
            pos = m.start() + 1  # a date of birth may begin inside another date ("12/01/02/2015")
        return None

    def _next_name(self, text: str, folded: str, heads: dict[str, int], pos: int) -> _Found | None:
        """The first name at or after ``pos``, as the names' pattern would find it: the leftmost place
        where a run of a name's parts begins (not inside a word), the first run in :attr:`_runs` that
        matches there, parts apart by :data:`_NAME_SEP`, and no word character after it. ``heads``:
        where each first part was last found (kept between calls on one text)."""
        assert self._runs is not None
        for head in self._heads:
            last = heads.get(head)
            if last is None or 0 <= last < pos:  # -1: not in the rest of the text
                heads[head] = folded.find(head, pos)
        while True:
            at = min((p for p in heads.values() if p >= 0), default=-1)
            if at < 0:
                return None
            if at == 0 or not _is_word(text[at - 1]):
                for run in self._runs:
                    end = _run_end(run, text, folded, at)
                    if end is not None:
                        return at, end, _NAME
            for head, p in heads.items():
                if p == at:
                    heads[head] = folded.find(head, at + 1)

    def _shown(self, text: str, start: int, end: int, kind: int) -> str:
        if kind == _KEEP:
            return text[start:end]
        if kind == _DOB:
            return DOB_REMOVED
        if kind in (_ID, _NHS_NO):
            return ID_REMOVED
        shown = self._names.get(_key(text[start:end]), NAME_REMOVED)
        # "told Ava." -> "told A.T." rather than "A.T.."
        if shown.endswith(".") and text[end:end + 1] == ".":
            return shown[:-1]
        return shown


def _match_from(pattern: re.Pattern[str], starts: re.Pattern[str] | None, text: str, pos: int) -> re.Match[str] | None:
    """``pattern.search(text, pos)``; tried only where ``starts`` (see :func:`_starts`) finds it may begin."""
    if starts is None:
        return pattern.search(text, pos)
    while (at := starts.search(text, pos)) is not None:
        if (m := pattern.match(text, at.start())) is not None:
            return m
        pos = at.start() + 1
    return None


def _next_match(pattern: re.Pattern[str], starts: re.Pattern[str] | None, text: str, kind: int,
                pos: int) -> _Found | None:
    m = _match_from(pattern, starts, text, pos)
    return None if m is None else (m.start(), m.end(), kind)


def _run_end(run: tuple[str, ...], text: str, folded: str, at: int) -> int | None:
    """Where ``run`` (folded parts) ends if it is written at ``at`` and no word character follows."""
    pos = at
    for i, part in enumerate(run):
        if i:
            sep = _NAME_SEP_RE.match(text, pos)
            if sep is None:
                return None
            pos = sep.end()
        if not folded.startswith(part, pos):
            return None
        pos += len(part)
    return None if pos < len(text) and _is_word(text[pos]) else pos


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
