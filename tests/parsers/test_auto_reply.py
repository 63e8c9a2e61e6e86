"""Machine-mail detection and the never-answer guard."""

from __future__ import annotations

import pytest

from escalations.parsers.auto_reply import AutomatedInfo, detect_automated, must_not_answer
from escalations.parsers.message import ParsedMessage, parse_message
from tests.parsers.conftest import MAIL


def msg(headers: str, body: str = "Hello\n", sender: str = "Tom Sample <tom.sample@example.net>",
        subject: str = "RE: [CH-2026-0001] Stage 1") -> ParsedMessage:
    return parse_message(f"From: {sender}\nTo: chscp@hackney.gov.uk\nSubject: {subject}\n"
                         f"In-Reply-To: <case-1@escalations.example.org>\n{headers}\n{body}".encode())


def test_person_is_not_automated() -> None:
    m = msg("")
    assert detect_automated(m) == AutomatedInfo("none", "")
    assert must_not_answer(m) is None
    assert must_not_answer(m, "tom.sample@example.net") is None


@pytest.mark.parametrize(("headers", "subject", "reason"), [
    ("Auto-Submitted: auto-replied\n", "Re: x", "Auto-Submitted: auto-replied"),
    ("Auto-Submitted: auto-generated; owner-email=x@example.org\n", "x", "Auto-Submitted: auto-generated"),
    ("X-Autoreply: yes\n", "x", "X-Autoreply header"),
    ("X-Autorespond: yes\n", "x", "X-Autorespond header"),
    ("X-Auto-Reply: yes\n", "x", "X-Auto-Reply header"),
    ("X-MS-Exchange-Inbox-Rules-Loop: tom.sample@example.net\n", "x", "X-MS-Exchange-Inbox-Rules-Loop header"),
    ("", "Automatic reply: [CH-2026-0001] Stage 1", "subject looks like out-of-office"),
    ("", "Out of Office: [CH-2026-0001]", "subject looks like out-of-office"),
    ("", "Auto: away", "subject looks like out-of-office"),
    ("", "Autoreply: away", "subject looks like out-of-office"),
    ("", "Away from the office", "subject looks like out-of-office"),
    ("X-Auto-Response-Suppress: All\n", "RE: [CH-2026-0001] out of office until Monday",
     "X-Auto-Response-Suppress with an out-of-office subject"),
])
def test_auto_replies(headers: str, subject: str, reason: str) -> None:
    info = detect_automated(msg(headers, subject=subject))
    assert info.kind == "auto_reply"
    assert info.reason == reason
    assert info.original_message_id == "case-1@escalations.example.org"


def test_auto_submitted_no_is_a_person() -> None:
    assert detect_automated(msg("Auto-Submitted: no\n")).kind == "none"
    assert must_not_answer(msg("Auto-Submitted: no\n")) is None


def test_lists() -> None:
    assert detect_automated(msg("List-Id: <x.lists.example.net>\n")).reason == "List-Id header"
    assert detect_automated(msg("Precedence: bulk\n")).kind == "list"
    assert detect_automated(msg("List-Unsubscribe: <mailto:x@example.net>\nList-Post: NO\n")).kind == "list"


def test_dsn_details() -> None:
    info = detect_automated(parse_message((MAIL / "dsn-bounce.eml").read_bytes()))
    assert info == AutomatedInfo("bounce", "multipart/report delivery-status", ("ch.csc.line-manager@example.org",),
                                 True, "case-CH-2026-0001-3@escalations.example.org")


def test_delayed_dsn_is_not_permanent() -> None:
    raw = (MAIL / "dsn-bounce.eml").read_bytes().replace(b"Action: failed\nStatus: 5.1.1",
                                                         b"Action: delayed\nStatus: 4.4.1")
    info = detect_automated(parse_message(raw))
    assert info.kind == "bounce" and not info.permanent and info.failed_recipients == ()


def test_x_failed_recipients() -> None:
    info = detect_automated(msg("X-Failed-Recipients: gone@example.org, also@example.net\n",
                                sender="Mail Delivery System <Mailer-Daemon@mx.example.net>",
                                subject="Mail delivery failed: returning message to sender"))
    assert info.kind == "bounce" and info.permanent
    assert info.failed_recipients == ("gone@example.org", "also@example.net")


def test_dsn_subject_from_daemon() -> None:
    info = detect_automated(msg("", body="Delivery to the following recipient failed permanently:\n\n"
                                         "     gone@example.org\n\nTechnical details: 550 5.1.1\n",
                                sender="Mail Delivery Subsystem <mailer-daemon@googlemail.example.net>",
                                subject="Delivery Status Notification (Failure)"))
    assert info.kind == "bounce" and info.permanent and info.failed_recipients == ("gone@example.org",)


def test_undeliverable_subject_from_person_is_not_a_bounce() -> None:
    # a practitioner writing about an undeliverable letter is not a bounce
    assert detect_automated(msg("", subject="Undeliverable letter to the family")).kind == "none"


@pytest.mark.parametrize(("headers", "sender", "envelope", "expected"), [
    ("", "Tom <tom.sample@example.net>", "<>", 'null envelope sender "<>"'),
    ("", "Tom <tom.sample@example.net>", "", 'null envelope sender "<>"'),
    ("Precedence: junk\n", "Tom <tom.sample@example.net>", None, "Precedence: junk"),
    ("X-Auto-Response-Suppress: OOF, DR\n", "Tom <tom.sample@example.net>", None, "X-Auto-Response-Suppress: oof"),
    ("X-Auto-Response-Suppress: AutoReply\n", "Tom <tom.sample@example.net>", None,
     "X-Auto-Response-Suppress: autoreply"),
    ("", "No Reply <noreply@example.org>", None, "automated sender address noreply@example.org"),
    ("", "<do-not-reply@example.org>", None, "automated sender address do-not-reply@example.org"),
    ("", "Postmaster <postmaster@example.org>", None, "automated sender address postmaster@example.org"),
    ("", "Tom <tom.sample@example.net>", "bounces+123@lists.example.net",
     "automated sender address bounces+123@lists.example.net"),
    ("", "undisclosed", None, "no usable From address"),
])
def test_must_not_answer(headers: str, sender: str, envelope: str | None, expected: str) -> None:
    assert must_not_answer(msg(headers, sender=sender), envelope) == expected


def test_must_not_answer_reports_kind() -> None:
    reason = must_not_answer(parse_message((MAIL / "ooo-exchange.eml").read_bytes()))
    assert reason is not None and reason.startswith("auto_reply:")
    X_suppress_dr_only = msg("X-Auto-Response-Suppress: DR, RN, NRN\n")
    assert must_not_answer(X_suppress_dr_only) is None
