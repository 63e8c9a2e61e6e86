"""Forms to download from a case page (the records package makes them).

Integration point: ``escalations.records`` (forms as Word documents) is built on its own branch; until
it is part of this build the case page says so instead of offering downloads."""

from __future__ import annotations

from dataclasses import dataclass

from escalations.pageviews import CaseRecord
from escalations.routing.policy.model import Partnership


@dataclass(frozen=True)
class FormLink:
    name: str
    href: str


@dataclass(frozen=True)
class Forms:
    available: bool
    links: tuple[FormLink, ...] = ()
    note: str = ""


def forms_for(record: CaseRecord, p: Partnership | None) -> Forms:
    try:
        from escalations.records import export  # noqa: F401
    except ImportError:
        return Forms(False, note="Forms are produced by the records module, which is not part of this build.")
    return Forms(True, (FormLink("Case record (Word)", f"/cases/{record.row.reference}/form.docx"),))
