"""Forms attached to a referral as text: Word (.docx), winmail.dat (TNEF, with RTF bodies), .txt.

Pure: bytes in, text out, within ``Limits`` (sizes and ratios checked before anything is
inflated). This is the heavy part of reading a referral: ``with_attachment_texts`` runs once, in
the parse worker, and the extractor then reads the texts it filled in.
"""

from __future__ import annotations

import codecs
import io
import re
import zipfile
from collections.abc import Iterable
from dataclasses import replace

from escalations.parsers.docx_text import block_lines
from escalations.parsers.labels import match_label
from escalations.parsers.limits import LimitExceeded, LimitHit, Limits, check_zip, read_zip_member
from escalations.parsers.message import Attachment, ParsedMessage, decode_bytes, html_to_text

__all__ = ["attachment_texts", "docx_to_text", "rtf_to_plain", "tnef_to_parts", "with_attachment_texts"]

_DOCX_TYPES = frozenset({
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.ms-word.document.macroenabled.12",
})
_TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})


def _is_docx(att: Attachment) -> bool:
    name = (att.filename or "").lower()
    if att.content_type in _DOCX_TYPES or name.endswith((".docx", ".docm")):
        return att.payload[:2] == b"PK"
    return att.content_type == "application/octet-stream" and att.payload[:2] == b"PK" and \
        name.endswith(".docx")


def _is_tnef(att: Attachment) -> bool:
    name = (att.filename or "").lower()
    return (att.content_type in _TNEF_TYPES or name == "winmail.dat") and att.payload[:4] == b"\x78\x9f\x3e\x22"


def _is_bare_label(cell: str) -> bool:
    label = match_label(cell) if cell and "\n" not in cell.strip() else None
    return label is not None and label.inline is None


def _check_docx(zf: zipfile.ZipFile, limits: Limits) -> None:
    """Sizes and ratios from the zip directory first, then the real sizes through a bounded reader
    (python-docx reads the members again, but only after they have been found to be bounded)."""
    check_zip(zf, limits)
    left = limits.attachment_max_decompressed_bytes
    for info in zf.infolist():
        blob = read_zip_member(zf, info, left)
        left -= len(blob)
        if info.filename == "word/document.xml":
            elements = sum(blob.count(tag) for tag in (b"<w:p>", b"<w:p ", b"<w:tc>", b"<w:tc "))
            if elements > limits.docx_max_elements:
                raise LimitExceeded(LimitHit.ATTACHMENT_TOO_COMPLEX)


def _table_lines(rows: list[list[str]]) -> list[str]:
    """A table's rows as labelled lines: one cell per line, a blank line after each row; a row of
    column headings over value rows is read column by column."""
    out: list[str] = []
    k = 0
    while k < len(rows):
        r = rows[k]
        nxt = rows[k + 1] if k + 1 < len(rows) else []
        if len(r) >= 2 and all(_is_bare_label(c) for c in r) and nxt and not any(_is_bare_label(c) for c in nxt):
            # a row of column headings: read the rows below it column by column
            end = k + 1
            while end < len(rows) and not any(_is_bare_label(c) for c in rows[end]):
                end += 1
            for col, label in enumerate(r):
                out.append(label)
                out.extend(row[col] for row in rows[k + 1:end] if col < len(row) and row[col])
                out.append("")
            k = end
            continue
        out.extend(r)
        out.append("")
        k += 1
    return out


def _not_loaded() -> LimitExceeded:
    """A reader that cannot be imported: a declared dependency, so in practice one whose C extension
    could not be mapped under the parse worker's address-space cap. The attachment is not read, and the
    case says so (``extraction_failed``), rather than reading as an empty form."""
    return LimitExceeded(LimitHit.EXTRACTION_FAILED)


def docx_to_text(data: bytes, limits: Limits | None = None) -> str:
    """A Word form as labelled text: paragraphs, then table rows with one cell per line; answers in
    content controls, legacy form fields and text boxes included (``docx_text``).

    A table whose first row is all labels (Sutton's "Name of child/children | Date of birth")
    is read column by column; merged cells are read once. Raises LimitExceeded for a document
    over ``limits`` (default ``Limits()``), MemoryError when out of memory; '' if unreadable."""
    try:
        import docx
    except ImportError as exc:
        raise _not_loaded() from exc
    if len(data) > (limits or Limits()).attachment_max_decompressed_bytes:
        raise LimitExceeded(LimitHit.ATTACHMENT_TOO_LARGE)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            if "word/document.xml" not in zf.namelist():
                return ""
            _check_docx(zf, limits or Limits())
        document = docx.Document(io.BytesIO(data))
    except (LimitExceeded, MemoryError):
        raise
    except Exception:
        return ""
    return "\n".join(block_lines(document.element.body, _table_lines))


def rtf_to_plain(rtf: bytes) -> str:
    """Text of an RTF body (Outlook's plain-text-derived or HTML-encapsulating RTF); '' if unreadable."""
    if not rtf.lstrip().startswith(b"{\\rtf"):
        return ""  # still compressed (compressed_rtf missing) or not RTF at all
    try:
        from striprtf.striprtf import rtf_to_text
    except ImportError as exc:
        raise _not_loaded() from exc
    m = re.search(rb"\\ansicpg(\d{3,5})", rtf[:2000])
    encoding = f"cp{m.group(1).decode()}" if m else "cp1252"
    try:
        codecs.lookup(encoding)
    except LookupError:
        encoding = "cp1252"
    try:
        text: str = rtf_to_text(rtf.rstrip(b"\x00").decode("latin-1"), encoding=encoding, errors="replace")  # type: ignore[no-untyped-call]
    except MemoryError:
        raise
    except Exception:
        return ""
    return text.replace("\r\n", "\n").strip()


def tnef_to_parts(data: bytes) -> tuple[str, list[Attachment]]:
    """The body text of a winmail.dat (plain, else HTML) and its attachments."""
    try:
        from tnefparse import TNEF
    except ImportError as exc:
        raise _not_loaded() from exc
    try:
        tnef = TNEF(data, do_checksum=False)
    except MemoryError:
        raise
    except Exception:
        return "", []
    text = ""
    body = getattr(tnef, "body", None)
    html = getattr(tnef, "htmlbody", None)
    if body:
        text = body if isinstance(body, str) else decode_bytes(bytes(body).rstrip(b"\x00"), None)
    elif html:
        html_s = html if isinstance(html, str) else decode_bytes(bytes(html).rstrip(b"\x00"), None)
        text = html_to_text(html_s)
    else:
        try:  # "Rich Text" mail: compressed RTF, which tnefparse inflates with compressed_rtf
            rtf = getattr(tnef, "rtfbody", None)
        except Exception:
            rtf = None
        if isinstance(rtf, bytes | bytearray):
            text = rtf_to_plain(bytes(rtf))
    atts: list[Attachment] = []
    for a in getattr(tnef, "attachments", []):
        try:
            name = str(a.long_filename() or a.name or "") or None
        except Exception:
            name = None
        payload = a.data if isinstance(a.data, bytes) else b""
        ctype = "application/octet-stream"
        if name and name.lower().endswith(".docx"):
            ctype = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        elif name and name.lower().endswith(".txt"):
            ctype = "text/plain"
        atts.append(Attachment(name.strip("\x00") if name else None, ctype, payload))
    return text.strip("\x00"), atts


def attachment_texts(atts: Iterable[Attachment], depth: int = 0, limits: Limits | None = None,
                      hits: list[str] | None = None) -> list[tuple[str, str]]:
    """(source, text) for each readable form among attachments; codes of those over a limit go
    to ``hits`` and the attachment is skipped."""
    lim = limits or Limits()
    notes = hits if hits is not None else []
    out: list[tuple[str, str]] = []
    for att in atts:
        try:
            out.extend(_one_attachment(att, depth, lim, notes))
        except LimitExceeded as exc:
            if exc.code.value not in notes:
                notes.append(exc.code.value)
        except MemoryError:  # under the parse worker's RLIMIT_AS: skip this one, read the rest
            if LimitHit.EXTRACTION_MEMORY.value not in notes:
                notes.append(LimitHit.EXTRACTION_MEMORY.value)
    return out


def _one_attachment(att: Attachment, depth: int, limits: Limits, hits: list[str]) -> list[tuple[str, str]]:
    readable = _is_docx(att) or (_is_tnef(att) and depth < 2) or (att.content_type == "text/plain" and att.filename)
    if readable and att.size > limits.attachment_max_decompressed_bytes:
        raise LimitExceeded(LimitHit.ATTACHMENT_TOO_LARGE)
    if _is_docx(att):
        text = docx_to_text(att.payload, limits)
        return [("docx", text)] if text.strip() else []
    if _is_tnef(att) and depth < 2:
        out: list[tuple[str, str]] = []
        body, inner = tnef_to_parts(att.payload)
        if body.strip():
            out.append(("tnef", body))
        out.extend(("tnef" if src == "docx" else src, t)
                   for src, t in attachment_texts(inner, depth + 1, limits, hits))
        return out
    if att.content_type == "text/plain" and att.filename and len(att.payload) < 200_000:
        text = decode_bytes(att.payload, None)
        return [("attachment", text)] if text.strip() else []
    return []


def with_attachment_texts(msg: ParsedMessage, limits: Limits | None = None) -> ParsedMessage:
    """``msg`` (and the messages embedded in it) with ``attachment_texts`` filled in and the codes
    of the attachments skipped added to ``limits_hit``: the heavy part of reading a referral, done
    once where it can be bounded (the parse worker)."""
    hits: list[str] = list(msg.limits_hit)

    def fill(m: ParsedMessage) -> ParsedMessage:
        texts = m.attachment_texts
        if texts is None:
            texts = tuple(attachment_texts(m.attachments, 0, limits, hits))
        return replace(m, attachment_texts=texts, embedded=tuple(fill(e) for e in m.embedded))

    filled = fill(msg)
    return replace(filled, limits_hit=tuple(dict.fromkeys(hits)))
