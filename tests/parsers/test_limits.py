"""Limits in the pure parser: what is skipped, which code is recorded, that the rest is still read,
and that the work done grows linearly with the size of the message (counted, never timed)."""

from __future__ import annotations

import base64
import codecs
import encodings.aliases
import io
import zipfile
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import escalations.parsers.message as message_module
import escalations.parsers.referral as referral_module
from escalations.parsers.limits import LimitExceeded, LimitHit, Limits, check_zip, read_zip_member
from escalations.parsers.message import decode_bytes, decode_header_value, parse_message
from escalations.parsers.referral import docx_to_text, extract_referral, with_attachment_texts
from tests.security.hostile import (
    CHILD,
    REFERRAL_TEXT,
    big_docx,
    bomb_docx,
    deep,
    form_docx,
    many_parts,
    paragraphs_docx,
    with_attachment,
)


def count_calls(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[int]:
    calls = [0]
    real = getattr(module, name)

    def counting(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


def assert_referral_read(msg: message_module.ParsedMessage) -> None:
    parse = extract_referral(msg, ())
    assert parse.fields.child_names == (CHILD,)
    assert parse.labelled_count >= 5


# ---- MIME structure ---------------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_fifty_thousand_parts_stop_at_the_part_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    walked = count_calls(monkeypatch, message_module, "_walk")
    msg = parse_message(many_parts(50_000))
    assert msg.limits_hit == ("too_many_parts",)
    # the work done is bounded by the limit, not by the 50,000 parts in the message
    assert walked[0] <= Limits().max_mime_parts + 2
    assert_referral_read(msg)
    assert extract_referral(msg, ()).limits_hit == ("too_many_parts",)


def test_part_limit_keeps_the_first_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    msg = parse_message(many_parts(20), Limits(max_mime_parts=5))
    assert msg.limits_hit == ("too_many_parts",)
    assert "part 3" in msg.text and "part 4" not in msg.text
    assert_referral_read(msg)


def test_parts_within_the_limit_record_nothing() -> None:
    msg = parse_message(many_parts(20))
    assert msg.limits_hit == ()
    assert "part 19" in msg.text


@pytest.mark.timeout(120)
def test_thousand_deep_nesting_is_cut_at_the_depth_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    walked = count_calls(monkeypatch, message_module, "_walk")
    msg = parse_message(deep(1000))
    assert msg.limits_hit == ("too_deep",)
    assert walked[0] <= 3 * Limits().max_mime_depth
    assert "level 19" in msg.text and "level 20" not in msg.text and "innermost" not in msg.text
    assert_referral_read(msg)


def test_nesting_within_the_limit_is_read_whole() -> None:
    msg = parse_message(deep(10))
    assert msg.limits_hit == ()
    assert "innermost" in msg.text


def test_a_small_depth_limit_keeps_the_shallow_parts() -> None:
    msg = parse_message(deep(6), Limits(max_mime_depth=3))
    assert msg.limits_hit == ("too_deep",)
    assert "level 2" in msg.text and "level 3" not in msg.text
    assert_referral_read(msg)


def test_html_over_the_limit_is_stripped_not_converted(monkeypatch: pytest.MonkeyPatch) -> None:
    converted = count_calls(monkeypatch, message_module, "html_to_text")
    html = "<html><body>" + "".join(f"<p>{line}</p>" for line in REFERRAL_TEXT.splitlines()) + "</body></html>"
    raw = ("From: jo@school.example.org\r\nTo: chscp@hackney.gov.uk\r\nSubject: x\r\n"
           "Content-Type: text/html; charset=utf-8\r\n\r\n" + html).encode()
    msg = parse_message(raw, Limits(html_max_chars=100))
    assert msg.limits_hit == ("html_too_large",) and converted[0] == 0
    assert_referral_read(msg)
    assert parse_message(raw).limits_hit == () and converted[0] == 1


# ---- linear cost --------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_a_form_listing_many_children_is_read_in_linear_time() -> None:
    # each line added to the list of children rebuilt the whole list before: quadratic, minutes
    text = "".join(f"Name of child(ren): Child{i} Testchild\n" for i in range(100_000))
    parse = extract_referral(parse_message(b"From: a@example.org\r\nSubject: x\r\n\r\n" + text.encode()), ())
    assert len(parse.fields.child_names) == 100_000


@pytest.mark.timeout(60)
def test_signature_check_looks_only_a_few_lines_ahead() -> None:
    # a long concern of 40,000 paragraphs: every paragraph asked "is the rest a signature?"
    concern = "\n\n".join(f"Paragraph {i} of the concern." for i in range(40_000))
    text = f"Name of child(ren): {CHILD}\nBrief description of nature of concern:\n{concern}\n"
    parse = extract_referral(parse_message(b"From: a@example.org\r\nSubject: x\r\n\r\n" + text.encode()), ())
    assert parse.fields.concern is not None and "Paragraph 39999" in parse.fields.concern


class _CountingLines(list[str]):
    """A list of lines that counts how many of them are looked at."""

    touched = 0

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        got = super().__getitem__(index)
        self.touched += len(got) if isinstance(index, slice) else 1
        return got

    def __iter__(self):  # type: ignore[no-untyped-def]
        for line in super().__iter__():
            self.touched += 1
            yield line


def test_signature_check_is_constant_work_per_line() -> None:
    lines = _CountingLines(["Paragraph of the concern.", ""] * 50_000)
    assert referral_module._looks_like_signature(lines, 2) is False
    assert lines.touched <= 20
    tail = _CountingLines(["", "Jo Bloggs", "Teacher", "020 7946 0000"])
    assert referral_module._looks_like_signature(tail, 1) is True


def test_many_encoded_words_in_one_header() -> None:
    word = "=?utf-8?b?" + base64.b64encode("é".encode()).decode() + "?="
    assert decode_header_value(" ".join([word] * 20_000)) == "é" * 20_000


# ---- attachments ------------------------------------------------------------------------------------

def test_docx_form_is_read_in_advance_and_used() -> None:
    raw = with_attachment(form_docx(), body="Please see the attached form.")
    msg = with_attachment_texts(parse_message(raw))
    assert msg.attachment_texts and msg.attachment_texts[0][0] == "docx"
    assert msg.limits_hit == ()
    # extract_referral uses the text read in advance, not the attachment
    stripped = replace(msg, attachments=())
    assert extract_referral(stripped, ()).fields.child_names == (CHILD,)
    # and still reads the attachment of a plain parse_message result
    assert extract_referral(parse_message(raw), ()).fields.child_names == (CHILD,)


def test_zip_bomb_is_refused_from_its_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = with_attachment(bomb_docx(16))
    opened = count_calls(monkeypatch, zipfile.ZipFile, "open")
    msg = with_attachment_texts(parse_message(raw))
    assert msg.limits_hit == ("attachment_ratio",)
    assert opened[0] == 0  # nothing was decompressed
    assert_referral_read(msg)


def test_zip_member_declared_too_large() -> None:
    msg = with_attachment_texts(parse_message(with_attachment(bomb_docx(16))),
                                Limits(attachment_max_decompressed_bytes=10 * 1000 * 1000))
    assert msg.limits_hit == ("attachment_too_large",)


def test_docx_with_too_many_paragraphs() -> None:
    msg = with_attachment_texts(parse_message(with_attachment(paragraphs_docx(800_000))))
    assert msg.limits_hit == ("attachment_too_complex",)
    assert_referral_read(msg)


def test_attachment_over_the_size_limit_is_not_read() -> None:
    msg = with_attachment_texts(parse_message(with_attachment(big_docx(2_000_000))),
                                Limits(attachment_max_decompressed_bytes=1_000_000))
    assert msg.limits_hit == ("attachment_too_large",)
    assert_referral_read(msg)


def test_no_extraction_when_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    read = count_calls(monkeypatch, referral_module, "docx_to_text")
    msg = parse_message(with_attachment(form_docx(), body="see attached"), Limits(extract_attachments=False))
    assert msg.attachment_texts == ()
    assert extract_referral(msg, ()).fields.child_names == ()
    assert read[0] == 0


def test_codes_from_embedded_messages_reach_the_top() -> None:
    inner = with_attachment(bomb_docx(16), body="forwarded")
    raw = (b"From: jo@school.example.org\r\nTo: chscp@hackney.gov.uk\r\nSubject: Fwd\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="X"\r\n\r\n--X\r\nContent-Type: text/plain\r\n\r\n'
           + REFERRAL_TEXT.encode() + b"\r\n--X\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"\r\n--X--\r\n")
    msg = with_attachment_texts(parse_message(raw))
    assert msg.embedded and msg.limits_hit == ("attachment_ratio",)
    assert extract_referral(parse_message(raw), ()).limits_hit == ("attachment_ratio",)


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> zipfile.ZipFile:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return zipfile.ZipFile(io.BytesIO(buf.getvalue()))


def test_check_zip_sizes_and_ratio() -> None:
    limits = Limits(attachment_max_decompressed_bytes=3_000_000, attachment_max_ratio=100)
    check_zip(_zip({"a": b"x" * 1000}), limits)  # small members may compress well
    with pytest.raises(LimitExceeded) as ratio:
        check_zip(_zip({"a": b"\0" * 2_000_000}), limits)
    assert ratio.value.code is LimitHit.ATTACHMENT_RATIO
    with pytest.raises(LimitExceeded) as total:
        check_zip(_zip({"a": b"a" * 1_600_000, "b": b"b" * 1_600_000}, zipfile.ZIP_STORED), limits)
    assert total.value.code is LimitHit.ATTACHMENT_TOO_LARGE


def test_bounded_member_read_stops_at_the_limit() -> None:
    zf = _zip({"a": b"y" * 100_000})
    assert read_zip_member(zf, zf.getinfo("a"), 100_000) == b"y" * 100_000
    with pytest.raises(LimitExceeded):
        read_zip_member(zf, zf.getinfo("a"), 99_999)


def test_docx_to_text_raises_only_for_limits() -> None:
    assert docx_to_text(b"PK\x03\x04 not a zip") == ""
    with pytest.raises(LimitExceeded):
        docx_to_text(bomb_docx(4))
    assert CHILD in docx_to_text(form_docx())


# ---- charsets ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("charset", ["punycode", "idna", "rot13", "rot_13", "base64", "zlib", "hex", "uu",
                                     "bz2", "quopri", "utf-7", "unicode-1-1-utf-7", "unicode_escape",
                                     "raw_unicode_escape", "undefined", "utf-16", "utf_32", "x-bogus"])
@pytest.mark.parametrize("data", [b"Name of child: Poppy \xff\xfe+AGEA-", b"+-+AGEA+\xe2\x82", b"\\N{",
                                  b"xn--", "naïve".encode(), b"\x00\x01"])
def test_charsets_that_are_not_text_encodings_fall_back(charset: str, data: bytes) -> None:
    assert isinstance(decode_bytes(data, charset), str)
    b64 = base64.b64encode(data).decode()
    assert isinstance(decode_header_value(f"=?{charset}?B?{b64}?= and =?{charset}?Q?=FF=FE?="), str)
    raw = (f"From: a@example.org\r\nSubject: =?{charset}?B?{b64}?=\r\n"
           f"Content-Type: text/plain; charset={charset}\r\n\r\n").encode() + data
    assert isinstance(parse_message(raw).text, str)


def test_punycode_body_still_yields_the_referral() -> None:
    raw = (b"From: a@example.org\r\nSubject: x\r\nContent-Type: text/plain; charset=punycode\r\n\r\n"
           + REFERRAL_TEXT.encode())
    assert extract_referral(parse_message(raw), ()).fields.child_names == (CHILD,)


_CODEC_NAMES = sorted(set(encodings.aliases.aliases) | set(encodings.aliases.aliases.values())
                      | {"punycode", "idna", "rot13", "utf-7", "unicode_escape", "raw_unicode_escape", "undefined"})


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(charset=st.one_of(st.sampled_from(_CODEC_NAMES), st.text(max_size=20)), data=st.binary(max_size=64))
def test_decoding_never_raises(charset: str, data: bytes) -> None:
    assert isinstance(decode_bytes(data, charset), str)
    for enc in ("B", "Q"):
        payload = base64.b64encode(data).decode() if enc == "B" else codecs.encode(data, "quopri").decode("ascii")
        assert isinstance(decode_header_value(f"=?{charset}?{enc}?{payload}?="), str)


@pytest.mark.parametrize("module", ["docx", "tnefparse"])
def test_a_reader_that_cannot_be_loaded_is_recorded_not_read_as_an_empty_form(
        monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    # Under the parse worker's address-space cap a reader's C extension can fail to map (ImportError):
    # the form is skipped with a code, never taken for an empty one.
    import sys

    from tests.security.hostile import with_attachment

    monkeypatch.setitem(sys.modules, module, None)  # "import docx" now raises ImportError
    if module == "docx":
        raw = with_attachment(form_docx(), body="Please see the attached form.")
    else:  # a winmail.dat: its signature, then what the reader would have read
        raw = with_attachment(b"\x78\x9f\x3e\x22" + bytes(64), body="Please see the attached form.",
                              filename="winmail.dat")
    msg = with_attachment_texts(parse_message(raw))
    assert msg.attachment_texts == ()
    assert msg.limits_hit == (LimitHit.EXTRACTION_FAILED.value,)
    assert CHILD not in msg.text
