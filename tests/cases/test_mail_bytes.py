"""Outgoing mail written without building ``email.message`` objects is byte for byte what the stdlib
writes for the same headers and body (the objects are still used where a header needs encoding)."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

from hypothesis import given, settings
from hypothesis import strategies as st

from escalations.mailer.outbox import _WIRE, _headers, build_message
from escalations.routing.workflow.state import OutgoingMail

WHEN = datetime(2026, 11, 3, 10, 0, tzinfo=UTC)


def stdlib_bytes(mail: OutgoingMail, body: str, **kw: object) -> bytes:
    msg = EmailMessage()
    for name, value in _headers(mail, **kw):  # type: ignore[arg-type]
        msg[name] = value
    msg.set_content(body, charset="utf-8", cte="quoted-printable")
    return msg.as_bytes(policy=_WIRE)


def mail(subject: str, *, to: tuple[str, ...] = ("sam.smith@csc.example.org",), cc: tuple[str, ...] = (),
         in_reply_to: str | None = None) -> OutgoingMail:
    return OutgoingMail(template="stage_request.txt.j2", to=to, cc=cc, subject=subject, context={},
                        dedupe_key="k", reason="test", in_reply_to=in_reply_to)


KW = {"from_address": "chscp@hackney.gov.uk", "from_name": "City & Hackney Safeguarding Children Partnership",
      "message_id": "esc.abc.123@escalations.invalid", "date": WHEN,
      "reply_to": "chscp+aeaaaaababvwav5amlbwz4qpej7tz2rx@hackney.gov.uk"}

BODY = ("Dear Sam Smith,\n\nYou are asked to act on an escalation under the City & Hackney Safeguarding Children "
        "Partnership's policy — stage 1.\n\tTabbed = line   \nFrom the start\n.\n" + "x" * 200 + "\n\nÉlodie Ünal\n")


def test_a_case_mail_is_what_the_stdlib_writes() -> None:
    for m in (mail("[CH-2026-0001] Stage 1: Discuss with the other worker"),
              mail("[CH-2026-0001] Escalation referral received", cc=("a@example.org", "b@example.org"),
                   in_reply_to="orig@example.org")):
        assert build_message(mail=m, body=BODY, **KW) == stdlib_bytes(m, BODY, **KW)  # type: ignore[arg-type]


def test_headers_that_need_encoding_still_go_through_the_stdlib() -> None:
    m = mail("[CH-2026-0001] Réunion — stage 2")
    raw = build_message(mail=m, body=BODY, **KW)  # type: ignore[arg-type]
    assert raw == stdlib_bytes(m, BODY, **KW)  # type: ignore[arg-type]
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Subject"] == "[CH-2026-0001] Réunion — stage 2"


@settings(max_examples=300, deadline=None)
@given(subject=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=120),
       body=st.text(st.characters(blacklist_categories=("Cs",)), max_size=600))
def test_any_body_and_plain_subject_match_the_stdlib(subject: str, body: str) -> None:
    m = mail(subject)
    assert build_message(mail=m, body=body, **KW) == stdlib_bytes(m, body, **KW)  # type: ignore[arg-type]


_line = st.text(alphabet=" \t=a\u00e9\u2014\x85\x0c.", min_size=0, max_size=100)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(_line, max_size=6), end=st.sampled_from(["", "\n", "\n\n"]))
def test_lines_about_the_wrapping_length_match_the_stdlib(lines: list[str], end: str) -> None:
    """Lines near 78 characters, escapes across the break, trailing spaces and tabs, form feeds and
    bytes that are line breaks to ``str.splitlines`` once decoded as latin-1 (0x85)."""
    m = mail("[CH-2026-0001] Wrapping")
    body = "\n".join(lines) + end
    assert build_message(mail=m, body=body, **KW) == stdlib_bytes(m, body, **KW)  # type: ignore[arg-type]


def test_what_quoted_printable_escapes_is_what_the_stdlib_escapes() -> None:
    from email import quoprimime

    from escalations.mailer.outbox import _QP_ESCAPED
    for c in map(chr, range(256)):
        if c not in "\r\n":  # line breaks: never in the text (split on before)
            assert (_QP_ESCAPED.fullmatch(c) is not None) == (quoprimime.body_encode(f"a{c}a", 76) != f"a{c}a"), c
