"""The one set of quoting rules both readers use: forward markers, quoted history, sign-offs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from escalations.parsers import quoting
from escalations.parsers.quoting import (
    FORWARD_MARKER_RE,
    cut_quoted,
    cut_signature,
    split_forwarded,
    starts_sign_off,
    strip_quoted,
)
from escalations.parsers.referral import extract_fields_from_text


@pytest.mark.parametrize("marker", [
    "-----Original Message-----", "---------- Forwarded message ---------", "Begin forwarded message:",
    "> -----Original Message-----", "________________________________",
])
def test_one_forward_marker_for_both_readers(marker: str) -> None:
    assert FORWARD_MARKER_RE.match(marker)
    # the reply reader cuts there...
    assert strip_quoted(f"ACCEPT\n{marker}\nFrom: a\nSent: b\nESCALATE") == "ACCEPT"
    # ...and the referral extractor ends a value there and reads what follows as forwarded mail
    own, blocks = split_forwarded(f"Concern: the school\n{marker}\nOutcome sought: a meeting")
    assert own == "Concern: the school" and blocks
    assert extract_fields_from_text(f"Concern: the school\n{marker}\nmore").concern == "the school"


@pytest.mark.parametrize("sign_off", ["Kind regards,", "Thanks", "Cheers,", "Yours sincerely",
                                      "Sent from my iPhone"])
def test_one_sign_off_vocabulary_for_both_readers(sign_off: str) -> None:
    assert cut_signature(f"NOTE called the GP\n{sign_off}\nTom Sample") == "NOTE called the GP"
    assert starts_sign_off(sign_off)
    text = f"Outcome sought: a strategy meeting\n{sign_off}\nTom Sample\n"
    assert extract_fields_from_text(text).outcome_sought == "a strategy meeting"


def test_signature_delimiter_cuts_a_reply_whatever_follows() -> None:
    assert cut_signature("NOTE called the GP\n-- \n" + "a long line of a disclaimer " * 10) == "NOTE called the GP"


def test_a_reply_keeps_a_sentence_that_starts_like_a_sign_off() -> None:
    # "Thanks for ..." is new text in a reply; in a referral's value a one-line sign-off ends it
    assert cut_signature("NOTE\nThanks for the update, I agree with the plan") == \
        "NOTE\nThanks for the update, I agree with the plan"
    assert starts_sign_off("Kind regards, Jo Bloggs")
    assert not starts_sign_off("Best interests of the child")


def test_outlook_header_block_needs_a_second_header_line() -> None:
    assert cut_quoted("ACCEPT\nFrom: CHSCP\nSent: Monday\nSubject: x") == "ACCEPT"
    assert cut_quoted("From: my own line\nnot a header") == "From: my own line\nnot a header"
    assert cut_quoted("ok\nOn Tue, 3 Nov 2026 at 10:00, CHSCP <chscp@example.org>\nwrote:\n> x") == "ok"


def test_signature_after_a_blank_line_has_contact_details() -> None:
    assert quoting.looks_like_signature(["", "Jo Bloggs", "Teacher", "020 7946 0000"], 1)
    assert not quoting.looks_like_signature(["", "The school has called twice.", "No reply."], 1)


@given(st.text(alphabet=st.sampled_from(list("ab >-_:\nFromSent")), max_size=200))
def test_cuts_only_ever_shorten(text: str) -> None:
    assert text.startswith(cut_quoted(text))
    assert text.startswith(cut_signature(text))
    own, _blocks = split_forwarded(text)
    assert text.startswith(own)
