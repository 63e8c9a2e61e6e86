"""Builders of hostile mail for the limits tests, made in the test run (no big binaries in git).

Big members are streamed into the zip so that building a bomb costs the test process no memory:
its RSS is what the tests watch."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterable, Iterator
from email.message import EmailMessage

MAILBOX = "chscp@hackney.gov.uk"
CHILD = "Poppy Testchild"
DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"

REFERRAL_TEXT = (
    f"Name of child(ren): {CHILD}\n"
    "Date of birth: 02/03/2015\n"
    "Name of practitioner and agency with which there is a concern: Sam Smith, Hackney Children's Social Care\n"
    "Brief description of nature of concern: Referral closed with no assessment despite repeated disclosures.\n"
    "Outcome sought: A strategy discussion and a child and family assessment.\n"
    "Name of referrer: Jo Bloggs\n"
)

_HEAD = (f"From: Jo Bloggs <jo.bloggs@school.example.org>\r\nTo: {MAILBOX}\r\nSubject: Escalation\r\n"
         "Date: Tue, 03 Nov 2026 09:55:00 +0000\r\nMIME-Version: 1.0\r\n").encode()
_BODY = REFERRAL_TEXT.replace("\n", "\r\n").encode()
_W = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
      b'<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>')
_W_END = b"</w:body></w:document>"
_CONTENT_TYPES = (
    '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>')
_RELS = (
    '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
    'officeDocument" Target="word/document.xml"/></Relationships>')


def mid(n: int) -> bytes:
    return f"Message-ID: <hostile-{n}@example.org>\r\n".encode()


def docx(document_xml: Iterable[bytes], *, compress: int = zipfile.ZIP_DEFLATED,
         extra: tuple[tuple[str, bytes], ...] = ()) -> bytes:
    """A minimal .docx whose word/document.xml is written chunk by chunk."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as zf:
        zf.writestr("[Content_Types].xml", _CONTENT_TYPES)
        zf.writestr("_rels/.rels", _RELS)
        with zf.open("word/document.xml", "w", force_zip64=True) as f:
            for chunk in document_xml:
                f.write(chunk)
        for name, data in extra:
            zf.writestr(name, data)
    return buf.getvalue()


def form_docx(text: str = REFERRAL_TEXT) -> bytes:
    paras = b"".join(b"<w:p><w:r><w:t>" + line.encode() + b"</w:t></w:r></w:p>" for line in text.splitlines())
    return docx([_W, paras, _W_END])


def bomb_docx(mib: int) -> bytes:
    """word/document.xml of ``mib`` MiB of spaces in one text run: about 1000:1 compressed."""
    def chunks() -> Iterator[bytes]:
        yield _W + b"<w:p><w:r><w:t>"
        block = b" " * (1 << 20)
        for _ in range(mib):
            yield block
        yield b"</w:t></w:r></w:p>" + _W_END
    return docx(chunks())


def paragraphs_docx(n: int) -> bytes:
    """``n`` empty paragraphs, each with a random revision id (so the zip ratio stays ordinary)."""
    def chunks() -> Iterator[bytes]:
        yield _W
        for start in range(0, n, 10_000):
            ids = os.urandom(3 * min(10_000, n - start)).hex()
            yield b"".join(b'<w:p w:rsidR="' + ids[i:i + 6].encode() + b'"/>' for i in range(0, len(ids), 6))
        yield _W_END
    return docx(chunks())


def big_docx(size: int) -> bytes:
    """A .docx carrying ``size`` random bytes stored uncompressed (an embedded video, say)."""
    return docx([_W, b"<w:p/>", _W_END], compress=zipfile.ZIP_STORED,
                extra=(("word/media/clip.bin", os.urandom(size)),))


def with_attachment(data: bytes, *, n: int = 1, body: str = REFERRAL_TEXT,
                    filename: str = "form.docx") -> bytes:
    msg = EmailMessage()
    msg["From"] = "Jo Bloggs <jo.bloggs@school.example.org>"
    msg["To"] = MAILBOX
    msg["Subject"] = "Escalation"
    msg["Message-ID"] = f"<hostile-att-{n}@example.org>"
    msg["Date"] = "Tue, 03 Nov 2026 09:55:00 +0000"
    msg.set_content(body)
    maintype, subtype = DOCX_TYPE.split("/")
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return bytes(msg)


def many_parts(n: int, *, msg_no: int = 2) -> bytes:
    """The referral in the first part, then ``n`` small inline text parts."""
    out = [_HEAD, mid(msg_no), b'Content-Type: multipart/mixed; boundary="BB"\r\n\r\n',
           b"--BB\r\nContent-Type: text/plain\r\n\r\n", _BODY]
    out.extend(b"--BB\r\nContent-Type: text/plain\r\nContent-Disposition: inline\r\n\r\npart %d\r\n" % i
               for i in range(n))
    out.append(b"--BB--\r\n")
    return b"".join(out)


def deep(n: int, *, msg_no: int = 3) -> bytes:
    """Multiparts nested ``n`` deep, the referral in the outermost one's first part."""
    out = [_HEAD, mid(msg_no), b'Content-Type: multipart/mixed; boundary="b0"\r\n\r\n']
    for i in range(n):
        out.append(b"--b%d\r\nContent-Type: text/plain\r\n\r\n" % i + (_BODY if i == 0 else b"level %d\r\n" % i))
        out.append(b'--b%d\r\nContent-Type: multipart/mixed; boundary="b%d"\r\n\r\n' % (i, i + 1))
    out.append(b"--b%d\r\nContent-Type: text/plain\r\n\r\ninnermost\r\n--b%d--\r\n" % (n, n))
    out.extend(b"--b%d--\r\n" % i for i in range(n - 1, -1, -1))
    return b"".join(out)
