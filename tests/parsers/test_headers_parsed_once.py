"""parsers/message: a header parsed once per message reads as the default policy reads it each time."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from escalations.parsers import message
from escalations.parsers.message import _POLICY, parse_message
from tests.security.hostile import deep, form_docx, many_parts, with_attachment

MAIL = sorted((Path(__file__).parent.parent / "fixtures" / "mail").rglob("*.eml"))


_CRAFTED = {
    "two content types": b"Content-Type: text/html\r\nContent-Type: text/plain; charset=koi8-r\r\n\r\n<p>x</p>\r\n",
    "broken content type": b"Content-Type: text/;;; charset\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!\r\n",
    "rfc 2231 file name": (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
                           b"--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment;"
                           b" filename*=utf-8''r%C3%A9f%C3%A9rral.docx\r\n\r\nxx\r\n--b--\r\n"),
}


def _corpus() -> list[tuple[str, bytes]]:
    out = [(p.name, p.read_bytes()) for p in MAIL if not p.name.startswith("not-email")]
    out += [("docx form", with_attachment(form_docx())), ("many parts", many_parts(40)), ("deep", deep(12))]
    out += [(name, b"From: a@b.org\r\nSubject: s\r\n" + raw) for name, raw in _CRAFTED.items()]
    return out


@pytest.mark.parametrize(("name", "raw"), _corpus(), ids=lambda v: v if isinstance(v, str) else "")
def test_parsed_the_same_as_with_the_default_policy(name: str, raw: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    once = parse_message(raw)
    monkeypatch.setattr(message, "_POLICY", email.policy.default)
    assert parse_message(raw) == once, name


def test_a_header_replaced_is_parsed_again() -> None:
    msg = email.message_from_bytes(b"Content-Type: text/plain; charset=latin-1\r\nSubject: a\r\n\r\nbody\r\n",
                                   policy=_POLICY)
    assert msg.get_content_charset() == "latin-1" and msg.get_content_charset() == "latin-1"
    msg.replace_header("Content-Type", "text/html; charset=utf-8")
    assert msg.get_content_type() == "text/html" and msg.get_content_charset() == "utf-8"
    del msg["Content-Type"]
    assert msg.get_content_type() == "text/plain" and msg.get("content-type") is None
    assert msg.get("Subject") == "a" and msg.get("subject") is msg.get("SUBJECT")
