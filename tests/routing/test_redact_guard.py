"""routing/redact: the look-ahead guard changes nothing but speed (the same text out, whatever goes in)."""

from __future__ import annotations

from datetime import date

from hypothesis import example, given, settings
from hypothesis import strategies as st

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
    assert ordinary._pattern is not None and ordinary._pattern.pattern.startswith("(?=[")
    assert Redactor.for_case(["Ava"], guard=False)._pattern.pattern.startswith("(?P<")  # type: ignore[union-attr]
    assert ordinary.redact("Ava Testchild, born 1 Feb 2015, M123456, Sutton") == \
        "A.T., born [date of birth removed], [ID removed], Sutton"
