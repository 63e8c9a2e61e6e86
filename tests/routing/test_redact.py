"""Redaction of outgoing mail (routing/redact.py): examples of every form, and a property."""

from __future__ import annotations

import re
import string
from datetime import date

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from escalations.routing.redact import DOB_REMOVED, ID_REMOVED, Redactor, initials, on_domains

AVA = Redactor.for_case(["Ava Testchild"], ["2015-02-01"], "MOS123456")


@pytest.mark.parametrize(("text", "expected"), [
    ("Ava Testchild told her teacher", "A.T. told her teacher"),
    ("Ava told her teacher", "A.T. told her teacher"),
    ("Testchild said", "A.T. said"),
    ("Ava's mother", "A.T.'s mother"),
    ("Testchild’s school", "A.T.’s school"),
    ("AVA TESTCHILD and ava testchild and aVa", "A.T. and A.T. and A.T."),
    ("it was Ava", "it was A.T."),
    ("(Ava) and [Testchild], Ava; Ava!", "(A.T.) and [A.T.], A.T.; A.T.!"),
    ("seen by\nAva\nTestchild on Monday", "seen by\nA.T. on Monday"),
    ("We spoke to Ava.", "We spoke to A.T."),
    ("\"Ava\"", "\"A.T.\""),
    ("Avalon Bench Javascript Testchildren", "Avalon Bench Javascript Testchildren"),
])
def test_names_become_initials(text: str, expected: str) -> None:
    assert AVA.redact(text) == expected


def test_hyphenated_and_multi_part_names() -> None:
    r = Redactor.for_case(["Mary-Jane van der Berg-Smith"])
    out = r.redact("Mary-Jane, Mary Jane, Jane, van der Berg-Smith, Berg, Smith's, MARY-JANE VAN DER BERG-SMITH")
    x = "M.J.V.D.B.S."
    assert out == f"{x}, {x}, {x}, {x}, {x}, {x}'s, {x}"
    assert not re.search(r"\b(mary|jane|van|der|berg|smith)\b", out, re.I)


def test_apostrophes_accents_and_several_children() -> None:
    r = Redactor.for_case(["Freya O'Brien", "Zoë Ng"], ["2010-05-04", "2012-12-25"])
    assert r.redact("Freya (16) told me; O’Brien, Brien, Zoe and Zoë, NG") == \
        "F.O. (16) told me; F.O., F.O., Z.N. and Z.N., Z.N."
    assert r.redact("born 25/12/2012 and 4 May 2010") == f"born {DOB_REMOVED} and {DOB_REMOVED}"


def test_short_and_common_word_names_are_still_redacted() -> None:
    r = Redactor.for_case(["A Rose", "Will May"])
    out = r.redact("A rose. Will will go in May; a Rosebud, Willow")
    assert out == "A.R. W.M. W.M. go in W.M.; A.R. Rosebud, Willow"


def test_shared_surname_takes_one_childs_initials() -> None:
    r = Redactor.for_case(["Ava Testchild", "Ben Testchild"])
    assert r.redact("Ava, Ben Testchild and the Testchild family") == "A.T., B.T. and the A.T. family"


@pytest.mark.parametrize("written", [
    "2015-02-01", "2015/02/01", "01/02/2015", "1/2/2015", "1/2/15", "01-02-2015", "01.02.15", "02/01/2015",
    "1 Feb 2015", "1 Feb. 2015", "01 February 2015", "1st February 2015", "1st of February 2015",
    "February 1, 2015", "February 1st 2015", "Feb 1 2015", "1-Feb-2015", "1 FEBRUARY 15", "20150201",
])
def test_dates_of_birth_in_any_common_form(written: str) -> None:
    assert AVA.redact(f"DOB: {written}.") == f"DOB: {DOB_REMOVED}."
    assert AVA.redact(f"({written})") == f"({DOB_REMOVED})"


def test_other_dates_stay() -> None:
    text = "Met on 3 February 2015, 2015-02-11 and 11/02/2015; due Tuesday 5 January 2027, 17:00"
    assert AVA.redact(text) == text


@pytest.mark.parametrize("written", ["MOS123456", "mos123456", "MOS 123456", "MOS-123456", "123456",
                                     "485 777 3456", "485-777-3456", "4857773456"])
def test_ids_and_nhs_numbers(written: str) -> None:
    assert AVA.redact(f"ID {written}, next") == f"ID {ID_REMOVED}, next"


def test_numbers_that_are_not_ids_stay() -> None:
    text = "Telephone 0208 770 4879 or 02087704879; case SUT-2026-0001; 12345678901"
    assert AVA.redact(text) == text


def test_nhs_numbers_go_even_with_no_child_fields() -> None:
    r = Redactor.for_case([], [], None)
    assert r.redact("NHS 943 476 5919") == f"NHS {ID_REMOVED}"
    assert Redactor.identity().redact("Ava 943 476 5919") == "Ava 943 476 5919"
    assert Redactor.identity().is_identity and not r.is_identity


def test_kept_strings_are_left_whole() -> None:
    r = Redactor.for_case(["Ava Sutton"], keep=["suttonLSCP@sutton.gov.uk.cjsm.net",
                                                "Sutton Local Safeguarding Children Partnership"])
    assert r.redact("Sutton Local Safeguarding Children Partnership — suttonLSCP@sutton.gov.uk.cjsm.net; "
                    "Ava Sutton lives in Sutton") == \
        "Sutton Local Safeguarding Children Partnership — suttonLSCP@sutton.gov.uk.cjsm.net; A.S. lives in A.S."


def test_unparseable_dob_and_blank_id_are_ignored() -> None:
    r = Redactor.for_case(["Ava"], ["not a date", date(2015, 2, 1)], "  ")
    assert r.redact("Ava 01/02/2015 x") == f"A. {DOB_REMOVED} x"


def test_short_ids_are_not_looked_for_and_nothing_shows_in_repr() -> None:
    r = Redactor.for_case(["Ava Testchild"], ["2015-02-01"], "10")
    assert r.redact("due Tuesday 10 November 2026") == "due Tuesday 10 November 2026"
    assert "Ava" not in repr(AVA) and "Testchild" not in repr(AVA) and "2015" not in repr(AVA)


def test_initials() -> None:
    assert initials(["Ava Testchild", "Mary-Jane Smith"]) == "A.T., M.J.S."
    assert initials([]) == "(not given)"


def test_secure_domains_match_on_the_domain_suffix_only() -> None:
    assert on_domains(["a@sutton.gov.uk.cjsm.net", "B <b@CJSM.NET>"], ["cjsm.net"])
    assert not on_domains(["a@evilcjsm.net"], ["cjsm.net"])
    assert not on_domains(["a@x.cjsm.net", "b@example.org"], ["cjsm.net"])
    assert not on_domains(["cjsm.net"], ["cjsm.net"])
    assert not on_domains([], ["cjsm.net"])


# ---- property --------------------------------------------------------------------------------------

#: Words of the redactor's own placeholders: a child named "Birth" is not disclosed by "[date of birth removed]".
PLACEHOLDER_WORDS = {w.lower() for w in re.findall(r"[A-Za-z]+", DOB_REMOVED + ID_REMOVED)}
FILLER = ["the", "child", "told", "her", "teacher", "that", "mum", "school", "and", "was", "seen", "by", "on"]

part = st.text(alphabet=string.ascii_letters, min_size=2, max_size=9)
name_part = st.lists(part, min_size=1, max_size=2).map("-".join)  # hyphenated sometimes
child_name = st.lists(name_part, min_size=1, max_size=3).map(" ".join)


def _mentions(name: str) -> list[str]:
    parts = name.split()
    pieces = [p for whole in parts for p in whole.split("-")]
    return [name, *parts, *pieces, " ".join(parts[:2]), name.replace(" ", "\n")]


def _cased(draw: st.DrawFn, s: str) -> str:
    how = draw(st.sampled_from(["keep", "upper", "lower", "title", "swap", "random"]))
    if how == "random":
        flips = draw(st.lists(st.booleans(), min_size=len(s), max_size=len(s)))
        return "".join(c.upper() if f else c.lower() for c, f in zip(s, flips, strict=True))
    return {"keep": s, "upper": s.upper(), "lower": s.lower(), "title": s.title(), "swap": s.swapcase()}[how]


def _dob_forms(d: date) -> list[str]:
    month = d.strftime("%B")
    return [d.isoformat(), f"{d:%d/%m/%Y}", f"{d.day}/{d.month}/{d:%y}", f"{d.day} {month[:3]} {d.year}",
            f"{d.day}th {month} {d.year}", f"{month} {d.day}, {d.year}"]


@st.composite
def concern(draw: st.DrawFn) -> tuple[list[str], date, str, str, list[str]]:
    names = draw(st.lists(child_name, min_size=1, max_size=2))
    tokens = {p.lower() for n in names for p in re.split(r"[ -]", n)}
    assume(not tokens & (PLACEHOLDER_WORDS | set(FILLER)))
    dob = draw(st.dates(min_value=date(2005, 1, 1), max_value=date(2025, 12, 31)))
    child_id = draw(st.from_regex(r"[A-Z]{0,3}[0-9]{5,8}", fullmatch=True))
    nhs = draw(st.from_regex(r"[0-9]{3}[ -]?[0-9]{3}[ -]?[0-9]{4}", fullmatch=True))
    dob_written = draw(st.sampled_from(_dob_forms(dob)))
    pieces: list[str] = []
    for _ in range(draw(st.integers(3, 14))):
        kind = draw(st.sampled_from(["filler", "name", "name", "dob", "id", "nhs"]))
        if kind == "filler":
            pieces.append(draw(st.sampled_from(FILLER)))
            continue
        if kind == "name":
            mention = _cased(draw, draw(st.sampled_from(_mentions(draw(st.sampled_from(names))))))
        else:
            mention = {"dob": dob_written, "id": _cased(draw, child_id), "nhs": nhs}[kind]
        wrap = draw(st.sampled_from(["{}", "{}'s", "{}’s", "({})", "{},", "{}.", "{}!", "\n{}", "{}\n", '"{}"',
                                     "{}:", "[{}]", "{};"]))
        pieces.append(wrap.format(mention))
    sep = draw(st.sampled_from([" ", "\n", "  "]))
    return names, dob, child_id, sep.join(pieces), [dob_written, child_id, nhs]


@given(concern())
def test_no_name_dob_or_id_survives(case: tuple[list[str], date, str, str, list[str]]) -> None:
    names, dob, child_id, text, secrets = case
    out = Redactor.for_case(names, [dob.isoformat()], child_id).redact(text)
    for name in names:
        for token in re.split(r"[ -]", name):
            assert not re.search(rf"(?<![A-Za-z0-9_]){re.escape(token)}(?![A-Za-z0-9_])", out, re.I), (token, out)
    for secret in secrets:
        assert secret.lower() not in out.lower(), (secret, out)
    assert re.sub(r"\D", "", child_id) not in re.sub(r"\D", "", out.replace(ID_REMOVED, " "))


def test_secure_route_domains_are_checked_and_normalised() -> None:
    from pydantic import ValidationError

    from escalations.routing.policy.model import SecureRoute

    route = SecureRoute.model_validate({"domains": ["@CJSM.net.", "gcsx.gov.uk"], "clause": "X 1"})
    assert route.domains == ["cjsm.net", "gcsx.gov.uk"]
    assert route.covers(["a@x.CJSM.net", "b@gcsx.gov.uk"]) and not route.covers(["a@x.cjsm.net", "c@example.org"])
    for bad in ([], ["not a domain"], ["localhost"]):
        with pytest.raises(ValidationError):
            SecureRoute.model_validate({"domains": bad, "clause": "X 1"})
