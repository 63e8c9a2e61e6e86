"""Forms to download from a case page: the partnership's forms (as its YAML names them), filled from
the case by the records package, as Word documents. They hold personal data: each download is an
audit row, and the response is never cached."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from escalations import views
from escalations.records.export import ExportFormat, export_case, forms_of
from escalations.records.forms import FormKind
from escalations.records.read import load_records
from escalations.routing.policy.model import Partnership
from escalations.views.pages import CaseRecord
from escalations.web import audit
from escalations.web.auth import CaseNotFound
from escalations.web.context import application

FORM_NAMES = {"tri-borough-monitoring": "Tri-borough Monitoring Form", "sutton-referral": "Escalation Referral Form",
              "wiltshire-notification": "Notification of an Escalation", "case-record": "Case record for the child's file"}


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
    if p is None:
        return Forms(False, note="The partnership's configuration is not loaded, so no form can be made.")
    kinds = [str(k) for k in forms_of(p)]
    return Forms(True, tuple(FormLink(f"{FORM_NAMES.get(k, k)} (Word)", f"/cases/{record.row.reference}/forms/{k}.docx")
                             for k in kinds))


def form_download(request: Request) -> Response:
    from escalations.web.pages.case import load

    record, user = load(request)
    app = application(request)
    p = views.case_policy(app, record.id)
    kind = request.path_params["kind"]
    if p is None or kind not in {str(k) for k in forms_of(p)}:
        raise CaseNotFound()
    full = load_records(app.store, references=[record.row.reference])
    if not full:
        raise CaseNotFound()
    out = export_case(full[0], p, ExportFormat.DOCX, app.clock.now().date(), form=FormKind(kind))
    audit.record(request, user, "case.form_download", case_ref=record.row.reference, detail=kind)
    return Response(out.data, media_type=out.media_type,
                    headers={"Content-Disposition": f'attachment; filename="{out.filename}"'})


routes = [Route("/cases/{ref}/forms/{kind}.docx", form_download, name="case_form")]
