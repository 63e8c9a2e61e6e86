"""Replies: quoted text cut, the command read from the new text only, case references found."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from escalations.parsers.message import ParsedMessage, parse_message
from escalations.parsers.reply import REFERENCE_RE, ReplyCommand, find_reference, parse_reply, strip_quoted
from tests.parsers.conftest import MAIL


def reply(body: str, subject: str = "RE: [CH-2026-0001] Stage 1") -> ParsedMessage:
    return parse_message(f"From: Tom Sample <tom.sample@example.net>\nTo: chscp@hackney.gov.uk\n"
                         f"Subject: {subject}\nContent-Type: text/plain; charset=utf-8\n\n{body}".encode())


OUTLOOK_QUOTE = ("\n\n________________________________\nFrom: CHSCP <chscp@hackney.gov.uk>\n"
                 "Sent: 03 November 2026 10:00\nTo: Tom Sample\nSubject: [CH-2026-0001] Stage 1\n\n"
                 "ESCALATE - move to the next stage\n")


@pytest.mark.parametrize(("body", "command", "argument"), [
    ("RESOLVED", "RESOLVED", ""),
    ("Resolved.", "RESOLVED", ""),
    ("resolve - we met", "RESOLVED", "we met"),
    ("AGREE", "ACCEPT", ""),
    ("Agreed: will attend the meeting", "ACCEPT", "will attend the meeting"),
    ("accept", "ACCEPT", ""),
    ("Escalate - no response from the hospital\nThey have not called back.", "ESCALATE",
     "no response from the hospital\nThey have not called back."),
    ("ESCALATE: reason", "ESCALATE", "reason"),
    ("  **NOTE** spoke to the manager", "NOTE", "spoke to the manager"),
    ("\n\nURGENT\nChild missing tonight", "URGENT", "Child missing tonight"),
    ("Withdraw", "WITHDRAW", ""),
    ("INFO\nName of child: Ava Testchild", "INFO", "Name of child: Ava Testchild"),
    ("Thanks, I will look into this.", None, "Thanks, I will look into this."),
    ("Escalation is not needed yet.", None, "Escalation is not needed yet."),
])
def test_commands(body: str, command: str | None, argument: str) -> None:
    parsed = parse_reply(reply(body + OUTLOOK_QUOTE))
    assert parsed.command == command
    assert parsed.argument == argument
    assert "move to the next stage" not in parsed.new_text


def test_quoted_escalate_is_never_picked_up() -> None:
    for name in ("reply-outlook-quoted.eml", "reply-gmail-quoted.eml"):
        parsed = parse_reply(parse_message((MAIL / name).read_bytes()))
        assert "move to the next stage" not in parsed.new_text, name
    outlook = parse_reply(parse_message((MAIL / "reply-outlook-quoted.eml").read_bytes()))
    assert outlook == ReplyCommand(
        "RESOLVED", "we met this morning and agreed a strategy discussion for Thursday.\nMinutes to follow.",
        "Resolved - we met this morning and agreed a strategy discussion for Thursday.\nMinutes to follow.")
    only_quote = parse_reply(reply("> ESCALATE\n> please"))
    assert only_quote.command is None


def test_empty_reply() -> None:
    parsed = parse_reply(parse_message((MAIL / "empty-body.eml").read_bytes()))
    assert parsed == ReplyCommand(None, "", "")


@pytest.mark.parametrize("quote", [
    "\n-----Original Message-----\nFrom: x\nSent: y\nESCALATE\n",
    "\nOn Tue, 3 Nov 2026 at 10:00, CHSCP <chscp@hackney.gov.uk> wrote:\n> ESCALATE\n",
    "\nOn Tue, 3 Nov 2026 at 10:00, CHSCP <chscp@hackney.gov.uk>\nwrote:\n\nESCALATE\n",
    "\nFrom: CHSCP <chscp@hackney.gov.uk>\nSent: Tuesday, November 3, 2026 10:00 AM\nTo: Tom\nSubject: x\n\nESCALATE\n",
    "\n________________________________\nESCALATE\n",
    "\n> ESCALATE\n",
    "\n-- \nTom Sample\nESCALATE team lead\n",
])
def test_strip_quoted_cuts(quote: str) -> None:
    assert strip_quoted("ACCEPT and thanks" + quote) == "ACCEPT and thanks"


def test_signature_removed() -> None:
    assert strip_quoted("NOTE called the GP\n\nKind regards,\nTom Sample\nSocial Worker\n") == "NOTE called the GP"


def test_find_reference() -> None:
    assert find_reference("RE: [CH-2026-0001] Stage 1") == "CH-2026-0001"
    assert find_reference("Automatic reply: HAV-2027-0012 chase") == "HAV-2027-0012"
    assert find_reference("TRI-2026-12345") == "TRI-2026-12345"
    assert find_reference("ch-2026-0001 lower case") is None
    assert find_reference("ABCDEF-2026-0001") is None
    assert find_reference("X-2026-0001") is None
    assert find_reference("CH-26-0001") is None
    assert find_reference("") is None


# ---- properties ------------------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_strip_quoted_never_returns_quoted_lines(text: str) -> None:
    out = strip_quoted(text)
    assert not any(line.lstrip().startswith(">") for line in out.splitlines())


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=2, max_size=5), st.integers(1000, 9999),
       st.integers(1, 10**7), st.text(max_size=30), st.text(max_size=30))
def test_find_reference_finds_generated_references(prefix: str, year: int, number: int, before: str,
                                                   after: str) -> None:
    ref = f"{prefix}-{year}-{number:04d}"
    subject = f"{before} [{ref}] {after}"
    found = find_reference(subject)
    assert found is not None and REFERENCE_RE.fullmatch(found)
    if not REFERENCE_RE.search(before + " ["):
        assert found == ref
