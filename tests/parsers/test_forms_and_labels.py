"""Word forms filled in with content controls, fields that stop at signatures, fuzzy labels, the seed
forms' own labels, Sutton's Head of Service question, and the administrator's labels file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import docx
import pytest

from escalations.parsers.attachments import docx_to_text
from escalations.parsers.labels import FUZZY_THRESHOLD, match_label
from escalations.parsers.message import parse_message
from escalations.parsers.referral import extract_fields_from_text, extract_referral
from escalations.parsers.values import yes_no_choice
from escalations.policy_files.labels import load_labels
from escalations.policy_files.yamlfile import ConfigError
from tests.parsers.docx_forms import content_control_form, legacy_field, sdt_block, sdt_inline, text_box


def docx_bytes(d: docx.document.Document) -> bytes:
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


# ---- Word forms ------------------------------------------------------------------------------------

def test_content_controls_legacy_fields_text_boxes_and_cells_are_read() -> None:
    text = docx_to_text(docx_bytes(content_control_form()))
    f = extract_fields_from_text(text)
    assert f.child_names == ("Ava Testchild",)          # inline content control in a table cell
    assert f.other_agency == "Hackney Children's Social Care" and f.other_practitioner == "Sam Smith"
    assert f.concern == "Referral closed with no assessment."  # block-level content control in the body
    assert f.outcome_sought == "A strategy discussion."          # legacy FORMTEXT field
    assert f.raised_by_name == "Jo Bloggs"                       # text box
    assert f.head_of_service_contacted is False
    assert "FORMTEXT" not in text


def test_a_content_control_wrapping_a_whole_row_and_a_cell() -> None:
    d = docx.Document()
    table = d.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "Mosaic ID no."
    table.rows[0].cells[1].paragraphs[0]._p.append(sdt_inline("1234567"))
    # wrap the row in a row-level content control
    tr = table.rows[0]._tr
    sdt = sdt_block("x")
    content = sdt.find("{http://schemas.openxmlformats.org/wordprocessingml/2006/main}sdtContent")
    for p in list(content):
        content.remove(p)
    tr.addprevious(sdt)
    content.append(tr)
    # and a cell whose answer is a block-level control (paragraphs inside w:sdt in the cell)
    row = table.add_row()
    row.cells[0].text = "Outcome sought"
    row.cells[1]._tc.append(sdt_block("A strategy discussion"))
    f = extract_fields_from_text(docx_to_text(docx_bytes(d)))
    assert f.child_id == "1234567"
    assert f.outcome_sought == "A strategy discussion"


def test_deleted_text_and_field_codes_are_left_out() -> None:
    d = docx.Document()
    p = d.add_paragraph("Concern: ")
    for run in legacy_field("No assessment was offered."):
        p._p.append(run)
    from docx.oxml import parse_xml
    from docx.oxml.ns import nsdecls

    p._p.append(parse_xml(f'<w:del {nsdecls("w")} w:id="1" w:author="x"><w:r><w:delText> DELETED</w:delText>'
                          "</w:r></w:del>"))
    text = docx_to_text(docx_bytes(d))
    assert text.strip() == "Concern: No assessment was offered."


def test_a_text_box_is_read_once() -> None:
    d = docx.Document()
    d.add_paragraph()._p.append(text_box("Outcome sought: A meeting"))
    assert docx_to_text(docx_bytes(d)).count("Outcome sought") == 1


# ---- signatures ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "Concern: The referral was closed.\nJo Bloggs\nHealth Visitor, Homerton\n",
    "Concern: The referral was closed.\nJo Bloggs Health Visitor, Homerton\n",
    "Concern: The referral was closed. Jo Bloggs Health Visitor, Homerton\n",
    "Concern: The referral was closed.\n\nJo Bloggs\n",
    "Concern: The referral was closed.\nJo Bloggs\n07700 900123\n",
    "Concern: The referral was closed.\nKind regards, Jo\n",
])
def test_fields_stop_at_signatures(text: str) -> None:
    assert extract_fields_from_text(text).concern == "The referral was closed."


@pytest.mark.parametrize("text", [
    "Concern: The Health Visitor said the referral was closed.",
    "Concern: Sam Smith the social worker closed it.",
    "Concern: Children involved:\nAva Testchild\nBen Testchild\nboth at the same school",
])
def test_text_that_only_looks_like_a_signature_is_kept(text: str) -> None:
    assert extract_fields_from_text(text).concern == text.split(": ", 1)[1]


# ---- labels ----------------------------------------------------------------------------------------

SEED_LABELS = [
    # Sutton LSCP, Appendix B
    ("Mosaic ID no.", "child_id"), ("Name of child/ children", "child_names"), ("Date of birth", "child_dobs"),
    ("Name of practitioner and agency with which there is a concern", "section:other"),
    ("Brief description of nature of concern", "concern"), ("Outcomes sought", "outcome_sought"),
    ("Should the Head of Service be contacted? Yes No", "head_of_service_contacted"),
    # what the referring agency's safeguarding advisor agreed: the actions taken to resolve it so far
    ("Actions agreed by safeguarding advisor (to be completed by referring SA)", "actions_taken"),
    ("Outcome achieved following completion of actions", "ignore"), ("Name of referrer", "raised_by_name"),
    ("Department", "raised_by_agency"), ("Safeguarding advisor", "ignore"),
    # Tri-borough, Appendix A
    ("Child/Family Name", "child_names"),
    ("Summary of reason for dispute – include views of all agencies concerned", "concern"),
    ("Signature of referring manager", "section:raiser"), ("Signature of receiving manger", "section:other"),
    ("Designation", "raised_by_role"), ("Agency", "raised_by_agency"),
    ("Time taken to reach resolution", "ignore"),
    # variants practitioners write
    ("Agency with whom we disagree", "other_agency"), ("Agency we disagree with", "other_agency"),
    ("Timescale to protect the child", "needed_by"), ("Name of person completing form", "raised_by_name"),
]


@pytest.mark.parametrize(("label", "key"), SEED_LABELS)
def test_seed_form_labels_map_to_their_field(label: str, key: str) -> None:
    found = match_label(f"{label}: x") if "?" not in label else match_label(label)
    assert found is not None and found.key == key and not found.fuzzy, label


@pytest.mark.parametrize(("line", "key"), [
    ("Brief descripton of nature of concern: No assessment", "concern"),
    ("Outcomes saught: A meeting", "outcome_sought"),
    ("Name of refferer: Jo Bloggs", "raised_by_name"),
    ("Agency with whom we disagre: CSC", "other_agency"),
])
def test_near_wordings_match_fuzzily(line: str, key: str) -> None:
    found = match_label(line)
    assert found is not None and found.key == key and found.fuzzy


@pytest.mark.parametrize("line", ["Summary of the concern raised: x", "Note: x", "I have attached: the form",
                                  "Outcome achieved: x"])
def test_far_wordings_do_not(line: str) -> None:
    found = match_label(line)
    assert found is None or not found.fuzzy


def test_fuzzy_labels_are_recorded_in_the_parse() -> None:
    raw = (b"From: jo@school.example.org\r\nTo: chscp@hackney.gov.uk\r\nSubject: Escalation\r\n\r\n"
           b"Name of child(ren): Ava Testchild\r\nBrief descripton of nature of concern: No assessment.\r\n")
    parse = extract_referral(parse_message(raw), ["concern"])
    assert parse.fuzzy_labels == ("concern",) and parse.fields.concern == "No assessment."
    assert 80 <= FUZZY_THRESHOLD <= 95


def test_sutton_head_of_service_is_its_own_field() -> None:
    text = ("Outcomes sought\nA strategy discussion.\n\nActions agreed by safeguarding advisor (to be completed by "
            "referring SA)\nSpoke to the team manager.\nShould the Head of Service be contacted? Yes ☒ No ☐\n")
    f = extract_fields_from_text(text)
    assert f.outcome_sought == "A strategy discussion."
    assert f.head_of_service_contacted is True
    blank = extract_fields_from_text("Outcomes sought: A meeting.\nShould the Head of Service be contacted? Yes No\n")
    assert blank.outcome_sought == "A meeting." and blank.head_of_service_contacted is None


@pytest.mark.parametrize(("text", "expected"), [
    ("Yes", True), ("No", False), ("Yes No", None), ("Yes/No", None), ("Yes ☐ No ☒", False), ("☒ Yes ☐ No", True),
    ("[x] No", False),
])
def test_yes_no_choice(text: str, expected: bool | None) -> None:
    assert yes_no_choice(text) is expected


# ---- the administrator's labels file ---------------------------------------------------------------

def test_config_labels_file_extends_the_vocabulary(tmp_path: Path) -> None:
    (tmp_path / "labels.yaml").write_text("other_agency:\n  - Agency we are unhappy with\n", encoding="utf-8")
    table = load_labels(tmp_path)
    assert extract_fields_from_text("Agency we are unhappy with: Example Trust", table).other_agency == \
        "Example Trust"


def test_a_bad_labels_file_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "labels.yaml").write_text("child_names:\n  - x\nchild_nmaes:\n  - y\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_labels(tmp_path)
    (issue,) = err.value.issues
    assert (issue.line, issue.field) == (3, "child_nmaes") and "unknown field name" in issue.message
    json.dumps(str(issue))


def test_legacy_checkboxes_answer_a_yes_no_question() -> None:
    from docx.oxml import parse_xml
    from docx.oxml.ns import nsdecls

    def box(checked: bool) -> object:
        state = '<w:checked/>' if checked else '<w:default w:val="0"/>'
        return parse_xml(f'<w:r {nsdecls("w")}><w:fldChar w:fldCharType="begin"><w:ffData><w:name w:val="C"/>'
                         f"<w:checkBox><w:sizeAuto/>{state}</w:checkBox></w:ffData></w:fldChar></w:r>")

    d = docx.Document()
    p = d.add_paragraph("Should the Head of Service be contacted? Yes ")
    p._p.append(box(False))
    p.add_run(" No ")
    p._p.append(box(True))
    text = docx_to_text(docx_bytes(d))
    assert "☐" in text and "☒" in text
    assert extract_fields_from_text(text).head_of_service_contacted is False
