"""routing/redact: the two-pattern scan removes exactly what one pattern per case did.

Until 2026-12-02 a case's redactor was one regular expression of everything it removes, a date of
birth spelled out in every form for each child; compiling it was the largest single cost of opening a
case. Now dates (any date, then checked) and NHS numbers are one pattern compiled once, and the case's
own holds its names, its ID and the kept strings. :func:`_reference` below is the old construction,
kept as the oracle: for any case and text the two give the same text.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date

from hypothesis import example, given, settings
from hypothesis import strategies as st

from escalations.routing import redact
from escalations.routing.redact import DOB_REMOVED, ID_REMOVED, NAME_REMOVED, Redactor


def _old_dob_pattern(d: date) -> str:
    """A date of birth in every form, as one pattern of its own (the construction before 2026-12-02)."""
    day = f"0?{d.day}" if d.day < 10 else str(d.day)
    month = f"0?{d.month}" if d.month < 10 else str(d.month)
    year = f"(?:{d.year}|{d.year % 100:02d})"
    full = redact._MONTHS[d.month - 1]
    words = {full, full[:3]} | ({"sept"} if d.month == 9 else set())
    month_word = "(?:" + "|".join(sorted(words, key=len, reverse=True)) + r")\.?"
    day_word = rf"{day}(?:st|nd|rd|th)?"
    sep, date_sep = redact._NUM_SEP, redact._DATE_SEP
    forms = [
        rf"{d.year}{sep}{month}{sep}{day}",
        rf"{day}{sep}{month}{sep}{year}",
        rf"{month}{sep}{day}{sep}{year}",
        rf"{d:%Y%m%d}|{d:%d%m%Y}",
        rf"{day_word}{date_sep}(?:of{date_sep})?{month_word}{date_sep}{year}",
        rf"{month_word}{date_sep}{day_word}{date_sep}{year}",
    ]
    return r"(?<!\d)(?:" + "|".join(forms) + r")(?!\d)"


def _reference(names: list[str], dobs: list[date], child_id: str | None, keep: list[str], text: str) -> str:
    """The old redactor: one pattern, keep | dob | id (the ID's, then NHS) | name, left to right."""
    alternatives: list[tuple[str, str]] = []
    kept = sorted({k for k in keep if k.strip()}, key=len, reverse=True)
    if kept:
        alternatives.append(("keep", "|".join(re.escape(unicodedata.normalize("NFC", k)) for k in kept)))
    if dobs:
        alternatives.append(("dob", "|".join(_old_dob_pattern(d) for d in dict.fromkeys(dobs))))
    alternatives.append(("id", "|".join([*redact._id_patterns(child_id or "")[0], redact._NHS])))
    shown_by_key: dict[str, str] = {}
    runs: list[list[str]] = []
    for name in names:
        shown = redact.initials([name])
        shown = NAME_REMOVED if shown == "(not given)" else shown
        for run in redact._name_variants(name):
            if shown_by_key.setdefault(redact._key(" ".join(run)), shown) == shown and run not in runs:
                runs.append(run)
    if runs:
        runs.sort(key=lambda r: (len(r), len(" ".join(r))), reverse=True)
        body = "|".join(redact._NAME_SEP.join(redact._atom_pattern(a) for a in run) for run in runs)
        alternatives.append(("name", rf"(?<!\w)(?:{body})(?!\w)"))
    pattern = re.compile("|".join(f"(?P<{g}>{p})" for g, p in alternatives), re.IGNORECASE)

    def replace(m: re.Match[str]) -> str:
        if m.lastgroup == "keep":
            return m.group(0)
        if m.lastgroup == "dob":
            return DOB_REMOVED
        if m.lastgroup == "id":
            return ID_REMOVED
        shown = shown_by_key.get(redact._key(m.group(0)), NAME_REMOVED)
        if shown.endswith(".") and m.string[m.end():m.end() + 1] == ".":
            return shown[:-1]
        return shown

    return pattern.sub(replace, unicodedata.normalize("NFC", text))


def _written(d: date) -> list[str]:
    """A date as people write it, right and nearly right (a day or a year off, US order, no separator)."""
    return [f"{d:%d/%m/%Y}", f"{d.day}/{d.month}/{d:%y}", f"{d:%m/%d/%Y}", f"{d:%Y-%m-%d}", f"{d:%Y%m%d}",
            f"{d:%d%m%Y}", f"{d.day} {d:%B %Y}", f"{d.day}st of {d:%b}. {d:%y}", f"{d:%B} {d.day}, {d.year}",
            f"{d:%b}{d.day}{d.year}", f"{d:%b} {d.day:02d}th {d:%y}", f"{d.day} . {d.month} - {d.year}",
            f"{d.year}-{d.month}-{d.day + 1 if d.day < 28 else 1}", f"{d.day}/{d.month}/{d.year + 1}",
            f"{d:%d.%m}.{d.year % 1000:03d}", f"1{d:%d/%m/%Y}", f"{d:%d/%m/%Y}1", f"sept {d.day} {d.year}"]


# A digit or two too: a name that begins where an NHS number does loses to it, as it did.
_part = st.text(alphabet="abcdefghimnorstuyAEFMJS\u00e9\u00f1'-\u017f\u212a94", min_size=1, max_size=6)
_name = st.lists(_part, min_size=1, max_size=3).map(" ".join)
_dob = st.dates(min_value=date(1990, 1, 1), max_value=date(2026, 12, 31))
_child_id = st.one_of(st.none(), st.text(alphabet="Mm0123456789 -/", min_size=1, max_size=10))
_keep = st.lists(st.sampled_from(["City and Hackney Safeguarding Children Partnership", "escalations@ch.example.org",
                                  "Sutton", "12 Main St", "Feb 2015 office", "1 May"]), max_size=3)
_filler = st.text(alphabet="0123456789 /-.,ofstndrhFebMayJunSept\u0663\uff13\n", max_size=5)


@st.composite
def _case_and_text(draw: st.DrawFn) -> tuple[list[str], list[date], str | None, list[str], str]:
    names = draw(st.lists(_name, max_size=2))
    dobs = draw(st.lists(_dob, max_size=2))
    child_id = draw(_child_id)
    keep = draw(_keep)
    near = [draw(_dob) for _ in range(2)]
    pieces = [*(p for n in names for p in n.split()), *(w for d in [*dobs, *near] for w in _written(d)), *keep,
              *([child_id] if child_id else []), "943 476 5919", "9434765919", "943-476-591"]
    tokens = st.one_of(st.sampled_from(pieces), _filler, st.sampled_from(pieces).map(str.upper))
    text = draw(st.lists(tokens, max_size=16).map("".join))
    return names, dobs, child_id, keep, text


@settings(max_examples=3000, deadline=None)
@given(_case_and_text())
@example((["May Ford"], [date(2015, 5, 1)], "M0105", ["1 May"], "1 May 2015, M01/05/2015, 12/01/05/2015 May"))
@example(([], [date(2015, 2, 1)], "01022015", [], "01/02/2015 2015-2-1 20150201 01022015 Feb12015"))
@example((["943 Ng"], [], "M9434", [], "943 476 5919, M 9434 943"))
@example((["Sept"], [date(2011, 9, 3)], None, [], "Sept 3 2011 sept 3rd, 11 SEPTEMBER 3 11 sep3 2011 3 of Sep. 2011"))
def test_the_scan_removes_what_one_pattern_did(case: tuple[list[str], list[date], str | None, list[str], str]) -> None:
    names, dobs, child_id, keep, text = case
    assert Redactor.for_case(names, dobs, child_id, keep=keep).redact(text) == \
        _reference(names, dobs, child_id, keep, text)


def test_a_date_of_birth_inside_another_date_is_found() -> None:
    """The dates pattern finds '12/01/02' first; the date of birth begins inside it."""
    r = Redactor.for_case([], [date(2015, 2, 1)])
    assert r.redact("ref 12/01/02/2015 and 3/4/2015") == f"ref 12/{DOB_REMOVED} and 3/4/2015"


def test_a_cases_own_pattern_holds_no_date() -> None:
    """The date of birth is not spelled out in a per-case pattern any more (it is checked, not matched)."""
    r = Redactor.for_case(["Ava Testchild"], [date(2015, 2, 1)], "M123456")
    own = [r._id.pattern if r._id is not None else "", r._name_source]
    assert all(own) and not any("2015" in p or "feb" in p.lower() for p in own)
    assert Redactor.for_case(["Ben"], [date(2016, 2, 9)])._dates is r._dates  # one compiled per month initials
    assert r.redact("Ava, 1 February 2015, 1 February 2016, M123456") == \
        f"A.T., {DOB_REMOVED}, 1 February 2016, {ID_REMOVED}"


def test_nhs_numbers_go_with_no_child_at_all() -> None:
    r = Redactor.for_case([])
    assert r._keep is None and r._id is None and not r._name_source and not r.is_identity
    assert r.redact("NHS 943 476 5919, 01/02/2015") == f"NHS {ID_REMOVED}, 01/02/2015"
