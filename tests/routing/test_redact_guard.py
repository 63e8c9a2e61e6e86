"""routing/redact: the look-ahead guard, and finding names in folded text rather than by a pattern of
their own, change nothing but speed (the same text out, whatever goes in)."""

from __future__ import annotations

import re
import string
import sys
from datetime import date

from hypothesis import example, given, settings
from hypothesis import strategies as st

from escalations.routing import redact
from escalations.routing.redact import Redactor

# Characters whose case folding is unusual (Kelvin sign, long s, dotted and dotless i, sharp s, final
# sigma, ligatures), accents and combining marks, other scripts' digits, separators and apostrophes.
_TRICKY = "aAeEiIkKsSzZ\u212a\u017f\u0130\u0131\u00df\u1e9e\u03c3\u03c2\u03a3\ufb01\u00e9\u00c9\u0301\u00f1" \
          "\u0663\uff13\u0660 -\u2013'\u2019./,"
_part = st.text(alphabet="abcdefghijklmnopqrstuvwxyzAEIOUZ\u00e9\u00c9\u00f1\u00d8'\u2019-\u212a\u017f\u0130", min_size=1,
                max_size=7)
_name = st.lists(_part, min_size=1, max_size=3).map(" ".join)
_dob = st.dates(min_value=date(2000, 1, 1), max_value=date(2026, 12, 31))
_child_id = st.one_of(st.none(), st.text(alphabet="Mm0123456789 -", min_size=1, max_size=9))
_keep = st.lists(st.sampled_from(["City and Hackney Safeguarding Children Partnership", "escalations@ch.example.org",
                                  "Sutton", "\u00c9cole", "12 Main St"]), max_size=3)


@st.composite
def _case_and_text(draw: st.DrawFn) -> tuple[list[str], list[date], str | None, list[str], str]:
    names = draw(st.lists(_name, max_size=2))
    dobs = draw(st.lists(_dob, max_size=2))
    child_id = draw(_child_id)
    keep = draw(_keep)
    pieces = [*(p for n in names for p in n.split()), *(f"{d:%d/%m/%Y}" for d in dobs),
              *(f"{d.day} {d:%B %Y}" for d in dobs), *(f"{d:%b}. {d.day}th, {d:%y}" for d in dobs), *keep,
              *([child_id] if child_id else []), "943 476 5919", "9434765919"]
    tokens = st.one_of(st.sampled_from(pieces), st.text(alphabet=_TRICKY, max_size=4),
                       st.sampled_from(pieces).map(str.upper), st.sampled_from(pieces).map(str.lower))
    text = draw(st.lists(tokens, max_size=14).map(lambda ts: "".join(ts)))
    return names, dobs, child_id, keep, text


@settings(max_examples=1500, deadline=None)
@given(_case_and_text())
@example((["Kai Sørensen"], [date(2015, 2, 1)], "M123456", ["Sutton"], "KAI s\u00f8rensen, \u212aai, 01/02/2015 m 123 456"))
@example((["\u017fam"], [], None, [], "SAM sam \u017fam"))
def test_the_guard_changes_nothing(case: tuple[list[str], list[date], str | None, list[str], str]) -> None:
    names, dobs, child_id, keep, text = case
    guarded = Redactor.for_case(names, dobs, child_id, keep=keep)
    plain = Redactor.for_case(names, dobs, child_id, keep=keep, guard=False)
    assert guarded.redact(text) == plain.redact(text)


def test_the_guard_is_there_for_an_ordinary_case_and_not_for_a_name_it_cannot_read() -> None:
    ordinary = Redactor.for_case(["Ava Testchild"], [date(2015, 2, 1)], "M123456", keep=["Sutton"])
    patterns = [ordinary._keep, ordinary._id, ordinary._name_pattern, ordinary._dates]
    assert all(p is not None and p.pattern.startswith("(?=[") for p in patterns)
    assert Redactor.for_case(["Ava"], guard=False)._name_pattern.pattern.startswith("(?<!")
    assert ordinary.redact("Ava Testchild, born 1 Feb 2015, M123456, Sutton") == \
        "A.T., born [date of birth removed], [ID removed], Sutton"


@settings(max_examples=1500, deadline=None)
@given(_case_and_text())
@example((["Kai S\u00f8rensen"], [], None, [], "KAI S\u00d8RENSEN, \u212aai, kai-s\u00f8rensen, ka\u0131"))
@example((["\u017fam Ng"], [], None, [], "SAM sam \u017fam, Sam\u2013Ng, Sam \u2014 ng, sam_ng, samng"))
@example((["\u03a3\u03bf\u03c6\u03b9\u03b1"], [], None, [], "\u03c3\u03bf\u03c6\u03b9\u03b1 \u03a3\u039f\u03a6\u0399\u0391"))
@example((["Ay\u015fe \u0130pek"], [], None, [], "ay\u015fe ipek, AY\u015eE \u0130PEK"))
@example((["O'Brien"], [], None, ["Sutton"], "o\u2019brien, O`Brien's, Brien, o'b rien, Suttono'brien"))
def test_names_found_in_folded_text_are_the_patterns_matches(
        case: tuple[list[str], list[date], str | None, list[str], str]) -> None:
    names, dobs, child_id, keep, text = case
    literal = Redactor.for_case(names, dobs, child_id, keep=keep)
    compiled = Redactor.for_case(names, dobs, child_id, keep=keep, literal=False)
    assert literal.redact(text) == compiled.redact(text)
    assert literal.redact(text.upper()) == compiled.redact(text.upper())


def test_an_ordinary_case_compiles_no_pattern_for_its_names() -> None:
    r = Redactor.for_case(["Ava-Mae Testchild"], [date(2015, 2, 1)], keep=["Sutton LSCP", "lscp@sutton.example.org"])
    text = "Ava\u2019s worker \u2014 AVA-MAE TESTCHILD \u2014 wrote to lscp@sutton.example.org about Ava\nTestchild."
    assert r.redact(text) == \
        "A.M.T.\u2019s worker \u2014 A.M.T. \u2014 wrote to lscp@sutton.example.org about A.M.T.\nA.M.T."
    assert "_name_pattern" not in r.__dict__  # found in the folded text
    other = Redactor.for_case(["Ben Testchild"], keep=["lscp@sutton.example.org", "Sutton LSCP"])
    assert other._keep is r._keep  # the kept strings: one pattern per partnership
    # A dotted capital I lowers to two characters: that text is searched with the compiled pattern.
    assert r.redact("\u0130 met Ava") == "\u0130 met A.M.T." and "_name_pattern" in r.__dict__


def test_the_ascii_letters_that_ignoring_case_match_more_than_their_cases_are_known() -> None:
    """:func:`redact._starts` writes a letter as its cases and these: checked over every code point."""
    every = "".join(map(chr, range(sys.maxunicode + 1)))
    for letter in string.ascii_lowercase:
        matched = set(re.findall(letter, every, re.IGNORECASE))
        assert matched == redact._cases(letter) == redact._cases(letter.upper()), letter


def test_where_a_match_may_begin_is_found_before_the_pattern_is_tried() -> None:
    r = Redactor.for_case(["Ava"], [date(2015, 8, 1)], keep=["City & Hackney SCP", "chscp@example.org"])
    assert r._keep_starts is not None and r._date_starts is not None
    text = "ca. 12 cases; chscp@example.org; Ava was born on AUG 1st 2015 (\u017fic), 01/08/2015 \u2014 943 476 5919"
    assert r.redact(text) == ("ca. 12 cases; chscp@example.org; A. was born on [date of birth removed] (\u017fic), "
                              "[date of birth removed] \u2014 [ID removed]")
    # Another script's digits: the NHS number is still found (by the pattern alone).
    assert r.redact("NHS \u0669\u0664\u0663 \u0664\u0667\u0666 \u0665\u0669\u0661\u0669") == "NHS [ID removed]"
    assert Redactor.for_case([], keep=["\u00c9cole"])._keep_starts is None  # begins outside ASCII: no shortcut
