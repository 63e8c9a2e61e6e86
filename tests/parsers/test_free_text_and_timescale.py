"""A letter with no form labels, and a protective timescale in words: what the parsers make of them."""

from __future__ import annotations

from datetime import date, datetime
from email.message import EmailMessage

import pytest

from escalations.parsers.classify import MailFacts, MailKind, classify
from escalations.parsers.free_text import says_immediate_risk, understand
from escalations.parsers.message import parse_message
from escalations.parsers.referral import extract_fields_from_text, extract_referral
from escalations.parsers.timescale import find_timescale, read_timescale
from escalations.routing.redact import names_as_initials

#: Tuesday 3 November 2026, 09:55 local.
RECEIVED = datetime(2026, 11, 3, 9, 55)
REQUIRED = ["child_names", "other_agency", "concern", "outcome_sought"]


def mail(body: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Jo Bloggs <jo.bloggs@school.example.org>"
    msg["To"] = "chscp@hackney.gov.uk"
    msg["Subject"] = "Escalation"
    msg.set_content(body)
    return msg


def facts(**kw: object) -> MailFacts:
    base: dict[str, object] = {"from_own_mailbox": False, "automated": "none", "answers_case": False,
                               "labelled_count": 0, "has_text": True}
    base.update(kw)
    return MailFacts(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kw", "kind"), [
    ({}, MailKind.FREE_TEXT),
    ({"labelled_count": 1}, MailKind.FREE_TEXT),
    ({"labelled_count": 2}, MailKind.REFERRAL),
    ({"has_text": False}, MailKind.UNKNOWN),
    ({"answers_case": True, "labelled_count": 9}, MailKind.REPLY),
    ({"automated": "auto_reply", "answers_case": True}, MailKind.AUTO_REPLY),
    ({"automated": "bounce"}, MailKind.BOUNCE),
    ({"automated": "list", "labelled_count": 5}, MailKind.LIST),
    ({"from_own_mailbox": True, "automated": "bounce"}, MailKind.OWN_MAIL),
])
def test_classification_order(kw: dict[str, object], kind: MailKind) -> None:
    assert classify(facts(**kw)) is kind


LETTER = (
    "Hello,\n\n"
    "I want to escalate our disagreement with CSC about their decision to close the referral for Ava "
    "Testchild without an assessment.\n\n"
    "Kind regards\nJo Bloggs\nHealth Visitor, Homerton\n07700 900123\n"
)


def test_free_text_letter_is_understood_without_labels() -> None:
    parse = extract_referral(parse_message(bytes(mail(LETTER))), REQUIRED, received=RECEIVED)
    assert parse.free_text and parse.labelled_count < 2
    f = parse.fields
    assert f.other_agency == "CSC"
    assert f.concern is not None and f.concern.startswith("Hello,") and "Homerton" not in f.concern
    assert f.immediate_risk is None
    assert set(parse.missing) == {"child_names", "outcome_sought"}
    assert f.raised_by_email == "jo.bloggs@school.example.org"


def test_a_labelled_referral_is_not_free_text() -> None:
    body = "Name of child(ren): Ava Testchild\nOther agency: CSC\nConcern: No assessment.\nOutcome sought: One.\n"
    parse = extract_referral(parse_message(bytes(mail(body))), REQUIRED, received=RECEIVED)
    assert not parse.free_text and parse.missing == ()


@pytest.mark.parametrize(("text", "risk"), [
    ("Ava is at immediate risk of harm if she goes home", True),
    ("There is an imminent risk to the baby", True),
    ("the children are in immediate danger", True),
    ("It is not safe to return home tonight", True),
    ("There is no immediate risk, but we disagree", False),
    ("the child is not at immediate risk", False),
    ("We disagree about the plan", False),
])
def test_immediate_risk_wordings(text: str, risk: bool) -> None:
    assert says_immediate_risk(text) is risk


def test_an_agency_is_only_read_when_it_is_plainly_an_agency() -> None:
    assert understand("We are in dispute with Hackney Children's Social Care.").other_agency == \
        "Hackney Children's Social Care"
    # a capitalised word that could be a child's name is never taken for the agency
    assert understand("We have a disagreement with Ava Testchild's plan.").other_agency is None


@pytest.mark.parametrize(("text", "expected"), [
    ("before Ava returns home at the weekend", date(2026, 11, 6)),
    ("by the weekend", date(2026, 11, 6)),
    ("end of the week", date(2026, 11, 6)),
    ("by Friday", date(2026, 11, 6)),
    ("Tuesday", date(2026, 11, 3)),
    ("within 48 hours", datetime(2026, 11, 5, 9, 55)),
    ("within 2 days", date(2026, 11, 5)),
    ("within 3 working days", date(2026, 11, 6)),
    ("within five working days", date(2026, 11, 10)),
    ("tomorrow", date(2026, 11, 4)),
    ("17:00 on 12/11/2026", datetime(2026, 11, 12, 17, 0)),
    ("by 20 November", date(2026, 11, 20)),
    ("next Friday", date(2026, 11, 6)),
])
def test_timescales_in_words(text: str, expected: date) -> None:
    assert read_timescale(text, RECEIVED) == expected


def test_weekend_on_a_saturday_is_that_day() -> None:
    assert read_timescale("by the weekend", datetime(2026, 11, 7, 10, 0)) == date(2026, 11, 7)


@pytest.mark.parametrize("text", ["before the next core group", "ASAP", "as soon as possible"])
def test_unreadable_timescales_are_none(text: str) -> None:
    assert read_timescale(text, RECEIVED) is None


def test_labelled_timescale_in_words_sets_needed_by() -> None:
    f = extract_fields_from_text("Timescale: before Ava returns home at the weekend", received=RECEIVED)
    assert f.needed_by == date(2026, 11, 6)
    # without the received time only a written date counts
    assert extract_fields_from_text("Timescale: by Friday").needed_by is None


def test_unreadable_labelled_timescale_is_reported_not_ignored() -> None:
    body = ("Name of child(ren): Ava Testchild\nOther agency: CSC\nConcern: No assessment.\n"
            "Timescale: before the next core group\n")
    parse = extract_referral(parse_message(bytes(mail(body))), REQUIRED, received=RECEIVED)
    assert parse.fields.needed_by is None
    assert parse.timescale_unread == "before the next core group"


def test_timescale_in_a_free_text_letter() -> None:
    body = LETTER.replace("without an assessment.", "without an assessment. We need this resolved by Friday.")
    parse = extract_referral(parse_message(bytes(mail(body))), REQUIRED, received=RECEIVED)
    assert parse.fields.needed_by == date(2026, 11, 6) and parse.timescale_unread is None


def test_history_in_a_letter_is_no_timescale() -> None:
    body = LETTER.replace("without an assessment.", "without an assessment before the meeting on 01/10/2026.")
    parse = extract_referral(parse_message(bytes(mail(body))), REQUIRED, received=RECEIVED)
    assert parse.fields.needed_by is None and parse.timescale_unread is None


def test_find_timescale() -> None:
    assert find_timescale("We need it sorted by Friday please.") == "need it sorted by Friday please"
    assert find_timescale("I spoke to them before.") is None


def test_a_quoted_timescale_shows_initials_for_names() -> None:
    assert names_as_initials("before Ava returns home at the weekend") == "before A. returns home at the weekend"
    assert names_as_initials("by Friday 6 November") == "by Friday 6 November"
