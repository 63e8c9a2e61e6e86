"""parse_message: decoding, structure, and never raising on hostile mail."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from escalations.parsers.message import (
    MessageParseError,
    ParsedMessage,
    decode_bytes,
    decode_header_value,
    html_to_text,
    parse_message,
)
from tests.fixtures.make_fixtures import huge_attachment_eml
from tests.parsers.conftest import MAIL

BASIC = (b"From: Ava Sender <Ava.Sender@Example.ORG>\r\nTo: chscp@hackney.gov.uk, \"Doe, Jo\" <jo@example.net>\r\n"
         b"Cc: <cc@example.net>\r\nReply-To: replies@example.org\r\nSubject: Hello\r\n"
         b"Message-ID:  <abc.123@example.org> \r\nIn-Reply-To: <x1@example.org>\r\n"
         b"References: <x0@example.org>\r\n <x1@example.org>\r\nDate: Tue, 03 Nov 2026 10:00:00 +0000\r\n"
         b"X-Original-To: CHSCP@hackney.gov.uk\r\nDelivered-To: chscp@hackney.gov.uk\r\n\r\nBody text\r\n")


def mail(name: str) -> ParsedMessage:
    return parse_message((MAIL / name).read_bytes())


def test_basic_headers() -> None:
    m = parse_message(BASIC)
    assert m.message_id == "abc.123@example.org"
    assert m.in_reply_to == ("x1@example.org",)
    assert m.references == ("x0@example.org", "x1@example.org")
    assert m.from_address == "ava.sender@example.org"
    assert m.from_name == "Ava Sender"
    assert m.to == ("chscp@hackney.gov.uk", "jo@example.net")
    assert m.cc == ("cc@example.net",)
    assert m.reply_to == ("replies@example.org",)
    assert m.delivered_to == ("chscp@hackney.gov.uk",)
    assert m.date == datetime(2026, 11, 3, 10, 0, tzinfo=UTC)
    assert m.text.strip() == "Body text"
    assert m.html is None
    assert m.header("SUBJECT") == "Hello"
    assert m.header("x-missing") is None
    assert m.header_all("references") == ("<x0@example.org> <x1@example.org>",)
    assert m.all_recipients == ("chscp@hackney.gov.uk", "jo@example.net", "cc@example.net")
    assert m.headers[0] == ("from", "Ava Sender <Ava.Sender@Example.ORG>")


def test_missing_headers_and_naive_date() -> None:
    m = parse_message(b"Subject: only a subject\nDate: Tue, 03 Nov 2026 10:00:00 -0000\n\n")
    assert m.from_address is None and m.from_name == ""
    assert m.message_id is None and m.to == () and m.text == ""
    assert m.date is not None and m.date.tzinfo is not None


def test_unparseable_from_and_date() -> None:
    m = parse_message(b"From: not an address\nTo: also not\nDate: yesterday-ish\nSubject: x\n\nhi\n")
    assert m.from_address is None
    assert m.to == ()
    assert m.date is None
    assert "unparseable Date header" in m.defects


def test_encoded_words_fixture() -> None:
    m = mail("encoded-words.eml")
    assert m.subject == "Escalation – Zoë Testchild – stage 2"
    assert m.from_name == "Siân Example"
    assert m.from_address == "sian.example@example.org"
    assert "Zoë Testchild" in m.text
    assert ("cc", "Josè Colleague <jose.colleague@example.net>") not in m.headers  # iso-8859-1 é, not è
    assert m.header("cc") == "José Colleague <jose.colleague@example.net>"


def test_broken_encoded_words_do_not_raise() -> None:
    m = mail("broken-encoded-words.eml")
    assert m.subject.startswith("Escalation")
    assert m.from_address == "remi.example@example.org"
    assert m.date is None
    assert any("charset" in d for d in m.defects)


def test_wrong_declared_charset_falls_back_to_utf8() -> None:
    m = mail("wrong-charset-utf8.eml")
    assert "Chloé Testchild" in m.text
    assert "“did not attend”" in m.text
    assert any("us-ascii" in d for d in m.defects)


def test_unknown_charset_falls_back_to_latin1() -> None:
    m = mail("unknown-charset-latin1.eml")
    assert "Chloé Testchild" in m.text
    assert "£5" in m.text
    assert any(d.startswith("undecodable charset: x-foo-bar") for d in m.defects)


def test_eight_bit_headers() -> None:
    m = mail("eight-bit-headers.eml")
    assert m.subject == "Escalation – Amélie Testchild"
    assert m.from_name == "Zoë Ünderwood"
    assert m.from_address == "zoe.underwood@example.org"
    assert m.header("x-department") == "Santé publique"  # latin-1 fallback


def test_html_only_outlook() -> None:
    m = mail("outlook-html-referral.eml")
    assert m.html is not None and "MsoNormal" in m.html
    assert "Name of child(ren)" in m.text
    assert "mso" not in m.text.lower() and "o:p" not in m.text
    lines = [ln for ln in m.text.splitlines() if ln.strip()]
    i = lines.index("Name of child(ren)")
    assert lines[i + 1:i + 3] == ["Oliver Testchild", "Isla Testchild"]


def test_multipart_alternative_prefers_plain() -> None:
    m = mail("alternative-referral.eml")
    assert m.html is not None and "<p>" in m.html
    assert "<p>" not in m.text and "Child's name: Freya Testchild" in m.text


def test_rfc822_attachment_is_embedded() -> None:
    m = mail("rfc822-attached.eml")
    assert len(m.embedded) == 1
    inner = m.embedded[0]
    assert inner.message_id == "inner-tri-1@mail.example.org"
    assert "Child/Family Name" in inner.text
    assert m.attachments == ()


def test_docx_and_tnef_attachments() -> None:
    docx_msg = mail("docx-form.eml")
    (att,) = docx_msg.attachments
    assert att.filename == "LSCP Escalation Referral Form.docx"
    assert att.content_type == "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    assert att.payload[:2] == b"PK" and att.size == len(att.payload)
    tnef_msg = mail("winmail-tnef.eml")
    (tnef,) = tnef_msg.attachments
    assert tnef.filename == "winmail.dat" and tnef.content_type == "application/ms-tnef"
    assert tnef.payload[:4] == b"\x78\x9f\x3e\x22"


def test_dsn_structure() -> None:
    m = mail("dsn-bounce.eml")
    assert m.is_report and m.report_type == "delivery-status"
    types = [a.content_type for a in m.attachments]
    assert types == ["message/delivery-status", "text/rfc822-headers"]
    assert b"Final-Recipient: rfc822; ch.csc.line-manager@example.org" in m.attachments[0].payload


def test_empty_and_bodyless() -> None:
    assert mail("empty-body.eml").text == ""
    m = mail("bodyless-multipart.eml")
    assert m.text == "" and len(m.attachments) == 1
    m2 = mail("multipart-no-boundary.eml")
    assert "Freya Testchild" in m2.text
    assert m2.defects


def test_huge_attachment(tmp_path: Path) -> None:
    path = tmp_path / "huge-attachment.eml"  # generated at test time, never committed
    path.write_bytes(huge_attachment_eml())
    assert path.stat().st_size > 5_000_000
    m = parse_message(path.read_bytes())
    (att,) = m.attachments
    assert att.filename == "chronology.pdf" and att.size == 5 * 1024 * 1024
    assert "Ava Testchild" in m.text


def test_nesting_is_depth_limited() -> None:
    raw = b"From: a@example.org\nSubject: level 0\n\nbottom\n"
    for level in range(1, 10):
        raw = (b"From: a@example.org\nSubject: level %d\nContent-Type: message/rfc822\n\n" % level) + raw
    m = parse_message(raw)
    depth = 0
    while m.embedded:
        m = m.embedded[0]
        depth += 1
    assert depth <= 5


@pytest.mark.parametrize("raw", [b"", b"   \r\n", b"\x00\x01\x02garbage", b"just some text\nwith lines\n",
                                 b"\x89PNG\r\n\x1a\n", b"X-Custom: 1\n\nnot a known header block"])
def test_not_email(raw: bytes) -> None:
    with pytest.raises(MessageParseError):
        parse_message(raw)


def test_mbox_from_line_is_skipped() -> None:
    m = parse_message(b"From MAILER-DAEMON Tue Nov  3 10:00:00 2026\n" + BASIC)
    assert m.message_id == "abc.123@example.org"


def test_decode_helpers() -> None:
    notes: list[str] = []
    assert decode_bytes("café".encode(), "utf-8", notes) == "café" and notes == []
    assert decode_bytes("café".encode("latin-1"), "utf-8", notes) == "café"
    assert notes and "cp1252" in notes[-1]
    assert decode_bytes(b"\x93hi\x94", None) == "“hi”"
    assert decode_header_value("=?utf-8?b?w6k=?=\r\n =?utf-8?b?w6k=?=") == "éé"
    # a multibyte character split across two encoded words
    assert decode_header_value("=?utf-8?b?4oA=?= =?utf-8?b?kw==?=") == "–"
    assert decode_header_value("plain\r\n folded") == "plain folded"


def test_html_to_text_keeps_cells_apart() -> None:
    text = html_to_text("<table><tr><td>DOB:</td><td>01/02/2015</td></tr></table>"
                        "<!--[if gte mso 9]><xml>junk</xml><![endif]--><p>1. item &amp; - dash</p>")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines[:2] == ["DOB:", "01/02/2015"]
    assert "junk" not in text and "1. item & - dash" in text


# ---- properties ------------------------------------------------------------------------------------------

VALID = (MAIL / "plain-referral.eml").read_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_parse_never_raises_on_mutations(data: st.DataObject) -> None:
    raw = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "header"]))
        pos = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            raw[pos:pos] = data.draw(st.binary(max_size=40))
        elif op == "delete":
            del raw[pos:pos + data.draw(st.integers(1, 50))]
        else:
            name = data.draw(st.sampled_from([b"Subject", b"From", b"To", b"Content-Type", b"Date", b"Message-ID",
                                              b"Content-Transfer-Encoding", b"References"]))
            value = data.draw(st.binary(max_size=60))
            raw[0:0] = name + b": " + value + b"\n"
    try:
        m = parse_message(bytes(raw))
    except MessageParseError:
        return
    assert isinstance(m.text, str)
    assert all(isinstance(v, str) for _, v in m.headers)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=80), st.sampled_from(["utf-8", "iso-8859-1", "x-unknown", "us-ascii", "koi8-r"]),
       st.sampled_from(["7bit", "8bit", "base64", "quoted-printable", "x-bogus"]))
def test_parse_never_raises_on_hostile_bodies(body: str, charset: str, cte: str) -> None:
    raw = (f"From: a@example.org\nSubject: =?{charset}?q?{body[:10]}?=\nContent-Type: text/plain; charset={charset}\n"
           f"Content-Transfer-Encoding: {cte}\n\n").encode() + body.encode("utf-8", "surrogatepass")
    m = parse_message(raw)
    assert isinstance(m.text, str) and isinstance(m.subject, str)


def test_charset_name_with_a_nul_is_treated_as_unknown() -> None:
    """Found by hypothesis: codecs.lookup raises ValueError (not LookupError) on an embedded NUL."""
    raw = (b"From: a@example.org\r\nTo: chscp@hackney.gov.uk\r\nSubject: x\r\n"
           b"Content-Type: text/plain; charset=\"utf\x00-8\"\r\n\r\nName of child(ren): Ava Testchild\r\n")
    assert "Ava Testchild" in parse_message(raw).text
