"""Each partnership's form, generated from a real case, opened with python-docx: every field checked
against the case; a filled-in copy mailed back is read into the referral's fields."""

from __future__ import annotations

import io
import json
from datetime import date, timedelta
from email.message import EmailMessage
from pathlib import Path

import docx
import pytest
from typer.testing import CliRunner

from escalations.app import App
from escalations.cli import app as cli_app
from escalations.inspect import inspect_message
from escalations.records.docx import render_docx
from escalations.records.export import forms_of
from escalations.records.forms import FormKind, fill_form
from escalations.records.read import load_record
from escalations.routing.policy.model import Partnership
from tests.conftest import CONFIG_DIR
from tests.records.conftest import BY_ID, CHILD, close, open_case, party, say

TODAY = date(2026, 11, 4)
CONCERN = "Referral closed with no assessment despite repeated disclosures."
ACTIONS = "Telephoned the duty team twice; no call back."
SOUGHT = "A strategy discussion and a child and family assessment."
OUTCOME = "Joint home visit on Friday and a strategy discussion."
DOB = "2 March 2015"


def cells(data: bytes) -> list[list[str]]:
    """Every table row of the document, as cell texts (merged cells once)."""
    document = docx.Document(io.BytesIO(data))
    rows = []
    for table in document.tables:
        for row in table.rows:
            seen: list[str] = []
            for c in row.cells:
                if not seen or c.text != seen[-1]:
                    seen.append(c.text)
            rows.append(seen)
    return rows


def pairs(data: bytes) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in cells(data) if len(r) == 2]


def value(data: bytes, label: str, nth: int = 0) -> str:
    found = [v for k, v in pairs(data) if k == label]
    assert len(found) > nth, f"no row {label!r} in {pairs(data)}"
    return found[nth]


def partnership(app: App, pid: str) -> Partnership:
    return app.config.partnerships[pid]


def generated(app: App, reference: str, kind: FormKind) -> bytes:
    record = load_record(app.store, reference)
    assert record is not None
    return render_docx(fill_form(kind, record, partnership(app, record.partnership), TODAY))


def test_each_partnership_names_its_forms_in_its_yaml(app: App) -> None:
    assert forms_of(partnership(app, "tri-borough")) == [FormKind.TRI_BOROUGH_MONITORING]
    assert forms_of(partnership(app, "sutton")) == [FormKind.SUTTON_REFERRAL]
    assert forms_of(partnership(app, "wiltshire")) == [FormKind.WILTSHIRE_NOTIFICATION]
    assert forms_of(partnership(app, "city-and-hackney")) == [FormKind.CASE_RECORD]
    assert forms_of(partnership(app, "havering")) == [FormKind.CASE_RECORD]
    for p in app.config.partnerships.values():
        stage_ids = {s.id for r in p.routes for s in r.stages}
        for use in p.records.forms:
            assert use.clause
            assert set(use.stages) <= stage_ids and (use.from_stage is None or use.from_stage in stage_ids)


def test_tri_borough_monitoring_form(app: App) -> None:
    p = BY_ID["tri-borough"]
    ref = open_case(app, p)
    practitioner = party(app, ref, "raising")["email"]
    say(app, ref, practitioner, "ESCALATE", "no reply from Children's Services")
    close(app, ref, OUTCOME)
    case = app.store.case_by_reference(ref)
    assert case is not None and case.status == "closed" and case.stage == 2
    raising = next(x for x in case.parties if x["party"] == "raising.line_manager")
    receiving = next(x for x in case.parties if x["party"] == "receiving.line_manager")
    data = generated(app, ref, FormKind.TRI_BOROUGH_MONITORING)
    assert docx.Document(io.BytesIO(data)).paragraphs[0].text.startswith("Tri Borough Local Safeguarding")
    assert value(data, "Child/Family Name") == CHILD
    summary = value(data, "Summary of reason for dispute – include views of all agencies concerned")
    assert CONCERN in summary and ACTIONS in summary and "no reply from Children's Services" in summary
    assert OUTCOME in summary  # the RESOLVED reply's words are a view of the raising side
    agreed = value(data, "Agreed outcomes or actions if satisfactorily resolved – includes escalation to next "
                         "stage if unresolved")
    assert f"Agreed outcome: {OUTCOME}" in agreed and agreed.startswith("Escalated:")
    assert value(data, "Name") == raising["name"]
    assert value(data, "Designation") == raising["role_name"]
    assert value(data, "Agency") == \
        app.config.partnerships["tri-borough"].agency(case.raising_agency or "").name  # type: ignore[union-attr]
    assert value(data, "Date") == "4 November 2026"
    assert value(data, "Name", 1) == receiving["name"]
    assert value(data, "Designation", 1) == receiving["role_name"]
    assert value(data, "Agency", 1) == \
        app.config.partnerships["tri-borough"].agency(case.other_agency or "").name  # type: ignore[union-attr]
    stage = value(data, "Stage at which resolution achieved, noting how effective the policy/practice was in "
                        "resolving the issue")
    assert stage.startswith("Stage 2:") and "2 stage(s) used; 1 escalation(s)" in stage
    assert value(data, "Time taken to reach resolution") == "3 hours"  # three replies an hour apart


def test_sutton_referral_form(app: App) -> None:
    p = BY_ID["sutton"]
    ref = open_case(app, p)
    close(app, ref, OUTCOME)
    case = app.store.case_by_reference(ref)
    assert case is not None
    data = generated(app, ref, FormKind.SUTTON_REFERRAL)
    rows = cells(data)
    assert value(data, "Mosaic ID no.") == "MOS-123456" == case.fields["child_id"]
    assert ["Name of child/ children", "Date of birth"] in rows and [CHILD, DOB] in rows
    assert ["Name", "Agency"] in rows
    assert case.fields["other_practitioner"].startswith(p.other_practitioner)
    assert [case.fields["other_practitioner"], app.config.partnerships["sutton"].agency(  # type: ignore[union-attr]
        case.other_agency or "").name] in rows
    assert value(data, "Brief description of nature of concern") == CONCERN
    assert value(data, "Outcomes sought") == SOUGHT
    assert value(data, "Actions agreed by safeguarding advisor (to be completed by referring SA)") == ACTIONS
    assert value(data, "Should the Head of Service be contacted? Yes/No") == ""  # the referral did not say
    assert ["Who will do what?", "What will be undertaken?", "By when?"] in rows
    resolver = party(app, ref, "raising")["email"]
    assert [resolver, OUTCOME, "3 November 2026"] in rows
    assert value(data, "Outcome achieved following completion of actions") == OUTCOME
    assert value(data, "Name of referrer") == p.raiser_name
    assert value(data, "Department") == p.raising_agency
    assert value(data, "Date") == "3 November 2026"
    assert value(data, "Safeguarding advisor") == ""  # no safeguarding lead on this case's stage
    assert value(data, "Date", 1) == ""


def test_wiltshire_notification(app: App) -> None:
    p = BY_ID["wiltshire"]
    ref = open_case(app, p)
    resolver = party(app, ref, "raising")
    close(app, ref, OUTCOME)
    case = app.store.case_by_reference(ref)
    assert case is not None
    data = generated(app, ref, FormKind.WILTSHIRE_NOTIFICATION)
    wilts = app.config.partnerships["wiltshire"]
    assert value(data, "Name of child(ren)") == CHILD
    assert value(data, "Date of birth") == DOB
    assert value(data, "Name of referrer") == p.raiser_name
    assert value(data, "Referrer's agency") == p.raising_agency
    assert value(data, "Agency with which there is a concern") == wilts.agency(case.other_agency or "").name  # type: ignore[union-attr]
    assert value(data, "Brief description of nature of concern") == CONCERN
    assert value(data, "Stage at which the matter was resolved").startswith("Stage 1:")
    assert value(data, "Manager who resolved the concern") == resolver["name"]
    assert value(data, "Manager's role") == resolver["role_name"]
    assert value(data, "Agreed outcome and how any outstanding issues will be pursued") == OUTCOME
    assert value(data, "Date resolved") == "3 November 2026"
    assert value(data, "Date") == "4 November 2026"
    text = "\n".join(par.text for par in docx.Document(io.BytesIO(data)).paragraphs)
    assert wilts.primary_mailbox in text and "secure means" in text


@pytest.mark.parametrize("pid", ["city-and-hackney", "havering"])
def test_case_record_for_the_childs_file(app: App, pid: str) -> None:
    p = BY_ID[pid]
    ref = open_case(app, p)
    close(app, ref, OUTCOME)
    record = load_record(app.store, ref)
    assert record is not None
    data = generated(app, ref, FormKind.CASE_RECORD)
    rows = cells(data)
    assert value(data, "Name of child(ren)") == CHILD
    assert value(data, "Date of birth") == DOB
    assert value(data, "Name of referrer") == p.raiser_name
    assert value(data, "Brief description of nature of concern") == CONCERN
    assert value(data, "Outcome sought") == SOUGHT
    assert value(data, "Case status") == "closed"
    assert value(data, "Outcome of the escalation") == OUTCOME
    stage = record.stages[0]
    assert ["1", stage.name, "3 November 2026", (stage.due or "")[:10], ", ".join(stage.asked),
            ", ".join(stage.notified)] in rows
    kinds = [r[1] for r in rows if len(r) == 5]
    assert "reply resolved" in kinds and "closed" in kinds and "stage opened" in kinds
    told = value(data, "Who was told")
    assert p.raiser in told and all(a in told for a in stage.asked)
    assert told.split(", ") == sorted(record.mailed)


def test_a_filled_in_form_mailed_back_is_read_into_fields(app: App, tmp_path: Path) -> None:
    p = BY_ID["sutton"]
    ref = open_case(app, p)
    data = generated(app, ref, FormKind.SUTTON_REFERRAL)
    # the practitioner fills in a box and mails it back
    document = docx.Document(io.BytesIO(data))
    for row in document.tables[-1].rows:
        if row.cells[0].text == "Safeguarding advisor":
            row.cells[1].text = "Morgan Adviser"
    buf = io.BytesIO()
    document.save(buf)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = p.raiser, p.mailbox, "Escalation referral form"
    msg["Message-ID"] = "<filled-1@example.org>"
    msg.set_content("The completed form is attached.\n")
    msg.add_attachment(buf.getvalue(), maintype="application", filename=f"{ref}-sutton-referral.docx",
                       subtype="vnd.openxmlformats-officedocument.wordprocessingml.document")
    eml = tmp_path / "filled.eml"
    eml.write_bytes(bytes(msg))
    result = CliRunner().invoke(cli_app, ["--config", str(CONFIG_DIR), "--data-dir", str(tmp_path / "v"),
                                          "parse", "--json", str(eml)])
    assert result.exit_code == 0, result.output
    f = json.loads(result.stdout)["fields"]
    case = app.store.case_by_reference(ref)
    assert case is not None
    assert f["other_practitioner"].startswith(p.other_practitioner)  # the address is read apart, as raised_by_email is
    for name in ("child_names", "child_dobs", "child_id", "concern", "outcome_sought",
                 "actions_taken", "raised_by_name", "raised_by_agency"):
        assert f[name] == case.fields[name], name


def test_every_form_reads_back(app: App) -> None:
    """Each generated form, as a mail attachment, parses to the case's child and concern."""
    for pid, kind in (("tri-borough", FormKind.TRI_BOROUGH_MONITORING), ("wiltshire", FormKind.WILTSHIRE_NOTIFICATION),
                      ("havering", FormKind.CASE_RECORD)):
        p = BY_ID[pid]
        ref = open_case(app, p)
        app.clock.advance(timedelta(minutes=1))  # type: ignore[attr-defined]
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = p.raiser, p.mailbox, "Form"
        msg.set_content("Attached.\n")
        msg.add_attachment(generated(app, ref, kind), maintype="application", filename="form.docx",
                           subtype="vnd.openxmlformats-officedocument.wordprocessingml.document")
        f = inspect_message(bytes(msg), app.config)["fields"]
        assert f["child_names"] == [CHILD], kind
        assert f["concern"].startswith(CONCERN), kind
