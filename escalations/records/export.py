"""A case exported for staff: its forms as Word (or PDF, through LibreOffice) and its record as JSON.

What the CLI's ``cases export`` and the web interface's downloads call. Everything here carries
personal data: it is written to files with private modes (umask 077) and never logged.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from escalations.records.docx import render_docx
from escalations.records.files import ExportFormat
from escalations.records.forms import Form, FormKind, fill_form
from escalations.records.read import CaseRecord
from escalations.routing.policy.model import Partnership

__all__ = ["ExportError", "ExportFormat", "Exported", "export_case", "forms_of", "main_form", "to_pdf"]

#: How long LibreOffice may take to convert one document.
PDF_TIMEOUT_SECONDS = 120


class ExportError(Exception):
    """One sentence saying what is missing (never a traceback, never case content)."""


@dataclass(frozen=True)
class Exported:
    filename: str
    data: bytes
    media_type: str


def forms_of(p: Partnership) -> list[FormKind]:
    """The forms the partnership's YAML names (records.forms), in order, once each; the case record for
    the child's file when it names none."""
    kinds = [FormKind(f.form) for f in p.records.forms]
    return list(dict.fromkeys(kinds)) or [FormKind.CASE_RECORD]


def main_form(record: CaseRecord, p: Partnership, today: date) -> Form:
    return fill_form(forms_of(p)[0], record, p, today)


def libreoffice() -> str | None:
    return shutil.which("libreoffice") or shutil.which("soffice")


def to_pdf(docx_bytes: bytes, name: str = "form") -> bytes:
    """The document as PDF, converted by ``libreoffice --headless`` in a private temporary folder."""
    exe = libreoffice()
    if exe is None:
        raise ExportError("PDF export needs LibreOffice (the libreoffice command, Debian package "
                          "libreoffice-writer-nogui), which is not installed: export as docx instead")
    with tempfile.TemporaryDirectory(prefix="escalations-pdf-") as tmp:
        src = Path(tmp) / f"{name}.docx"
        src.write_bytes(docx_bytes)
        profile = Path(tmp) / "profile"  # its own profile: never waits on a desktop session's lock
        try:
            subprocess.run([exe, f"-env:UserInstallation=file://{profile}", "--headless", "--convert-to", "pdf",
                            "--outdir", tmp, str(src)], check=True, capture_output=True, timeout=PDF_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired as exc:
            raise ExportError(f"LibreOffice did not convert the document within {PDF_TIMEOUT_SECONDS} seconds") \
                from exc
        except subprocess.CalledProcessError as exc:
            raise ExportError(f"LibreOffice could not convert the document (exit status {exc.returncode})") from exc
        out = Path(tmp) / f"{name}.pdf"
        if not out.exists():
            raise ExportError("LibreOffice wrote no PDF for the document")
        return out.read_bytes()


def record_json(record: CaseRecord, p: Partnership, today: date,
                view: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The case as ``views.case_record`` shows it (``view``; built from the record when not given), with
    what the records add: legal hold, outcome, themes, learning, who was told and the forms' contents."""
    base = dict(view) if view is not None else {
        "reference": record.reference, "partnership": record.partnership, "status": record.status,
        "stage": record.stage, "route": record.route, "opened_at": record.opened_at.isoformat(),
        "immediate_risk": record.immediate_risk, "fields": record.fields.to_json(),
        "parties": [dict(x) for x in record.parties],
        "events": [{"at": e.at.isoformat(), "kind": e.kind, "actor": e.actor, "clause": e.clause,
                    "detail": dict(e.detail)} for e in record.events]}
    return {**base,
            "closed_at": record.closed_at.isoformat() if record.closed_at else None,
            "raising_agency": record.raising_agency, "other_agency": record.other_agency,
            "legal_hold": record.legal_hold, "outcome": record.outcome, "themes": list(record.themes),
            "learning": [{"at": e.at.isoformat(), "by": e.actor, "text": e.detail.get("text")}
                         for e in record.learning],
            "who_was_told": list(record.mailed),
            "forms": [fill_form(k, record, p, today).to_json() for k in forms_of(p)]}


def export_case(record: CaseRecord, p: Partnership, fmt: ExportFormat, today: date,
                form: FormKind | None = None, view: Mapping[str, Any] | None = None) -> Exported:
    """The case's main form (or ``form``) as docx/pdf, or its whole record as JSON (``view``: the
    case as ``views.case_record`` reads it)."""
    import json

    if fmt is ExportFormat.JSON:
        data = json.dumps(record_json(record, p, today, view), indent=2, ensure_ascii=False,
                          default=str).encode()
        return Exported(f"{record.reference}.json", data + b"\n", "application/json")
    filled = fill_form(form or forms_of(p)[0], record, p, today)
    docx_bytes = render_docx(filled)
    if fmt is ExportFormat.DOCX:
        return Exported(filled.filename, docx_bytes,
                        "application/vnd.openxmlformats-officedocument.wordprocessingml.document")
    return Exported(filled.filename.removesuffix(".docx") + ".pdf", to_pdf(docx_bytes, filled.kind),
                    "application/pdf")
