"""Referral field extraction: label variants, value parsing, forwarded mail, .docx and TNEF."""

from __future__ import annotations

import string
from datetime import date, datetime
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from escalations.parsers.labels import _PRINTED_CHOICES
from escalations.parsers.message import Attachment, parse_message
from escalations.parsers.referral import (
    FIELD_NAMES,
    ReferralFields,
    _match_label,
    docx_to_text,
    extract_fields_from_text,
    extract_referral,
    parse_date,
    parse_datetime,
    split_forwarded,
    tnef_to_parts,
)
from tests.fixtures.make_fixtures import docx_bytes, tnef_bytes
from tests.parsers.conftest import MAIL


def test_field_names_match_architecture() -> None:
    assert FIELD_NAMES == (
        "child_names", "child_dobs", "child_id", "child_status", "raised_by_name", "raised_by_role",
        "raised_by_agency", "raised_by_email", "other_agency", "other_practitioner", "concern", "actions_taken",
        "outcome_sought", "needed_by", "immediate_risk", "stage", "borough", "head_of_service_contacted")
    assert tuple(ReferralFields().to_json()) == FIELD_NAMES


@pytest.mark.parametrize(("line", "field", "expected"), [
    ("Name of child(ren): Ava Testchild", "child_names", ("Ava Testchild",)),
    ("Name of child/ children: Ava Testchild", "child_names", ("Ava Testchild",)),
    ("Child's name - Ava Testchild", "child_names", ("Ava Testchild",)),
    ("CHILD/FAMILY NAME: Ava Testchild", "child_names", ("Ava Testchild",)),
    ("Children: Ava Testchild and Ben Testchild", "child_names", ("Ava Testchild", "Ben Testchild")),
    ("  * **Child name(s):** Ava Testchild; Ben Testchild", "child_names", ("Ava Testchild", "Ben Testchild")),
    ("DOB: 01/02/2015", "child_dobs", (date(2015, 2, 1),)),
    ("D.O.B.: 1 February 2015 and 2017-04-03", "child_dobs", (date(2015, 2, 1), date(2017, 4, 3))),
    ("Date of birth: 1st Feb 2015", "child_dobs", (date(2015, 2, 1),)),
    ("Date of birth: 3/4/17", "child_dobs", (date(2017, 4, 3),)),
    ("Mosaic ID no.: 1234567", "child_id", "1234567"),
    ("Mosaic ID no. 1234567", "child_id", "1234567"),
    ("LCS ID: LCS-998", "child_id", "LCS-998"),
    ("Child status: Child Protection Plan", "child_status", "cp_plan"),
    ("Legal status: LAC (s20)", "child_status", "looked_after"),
    ("Status: CIN", "child_status", "child_in_need"),
    ("Child status: none", "child_status", "none"),
    ("Subject to CP plan: Yes", "child_status", "cp_plan"),
    ("Looked after: Y", "child_status", "looked_after"),
    ("Name of referrer: Jane Referrer", "raised_by_name", "Jane Referrer"),
    ("Your name: Jane Referrer", "raised_by_name", "Jane Referrer"),
    ("Job title: Health Visitor", "raised_by_role", "Health Visitor"),
    ("Designation: Team Manager", "raised_by_role", "Team Manager"),
    ("Department: Sutton MASH", "raised_by_agency", "Sutton MASH"),
    ("Organisation: Hackney Education", "raised_by_agency", "Hackney Education"),
    ("E-mail: Jane.Referrer@Example.org (work)", "raised_by_email", "jane.referrer@example.org"),
    ("Other agency: Wiltshire Police", "other_agency", "Wiltshire Police"),
    ("Agency you disagree with: Wiltshire Police", "other_agency", "Wiltshire Police"),
    ("Other practitioner: Sam Other", "other_practitioner", "Sam Other"),
    ("Concern: It is serious.", "concern", "It is serious."),
    ("Summary of reason for dispute: They disagree.", "concern", "They disagree."),
    ("Reason for escalation: Threshold.", "concern", "Threshold."),
    ("Brief description of nature of concern and action taken to resolve the issue: Called twice.",
     "concern", "Called twice."),
    ("Attempts to resolve: Called twice.", "actions_taken", "Called twice."),
    ("Actions taken to date: Called twice.", "actions_taken", "Called twice."),
    ("Outcomes sought: A meeting.", "outcome_sought", "A meeting."),
    ("Desired outcome: A meeting.", "outcome_sought", "A meeting."),
    ("Needed by: 12/11/2026", "needed_by", date(2026, 11, 12)),
    ("Resolution needed by: 17:00 on 12 November 2026", "needed_by", datetime(2026, 11, 12, 17, 0)),
    ("Timescale: 12 Nov 2026 at 5pm", "needed_by", datetime(2026, 11, 12, 17, 0)),
    ("Timescale to protect the child: within 48 hours", "needed_by", None),
    ("Immediate risk: Yes", "immediate_risk", True),
    ("Is the child at immediate risk? no", "immediate_risk", False),
    ("Urgent: TRUE", "immediate_risk", True),
    ("Stage: 3", "stage", 3),
    ("Stage reached: Stage two", "stage", 2),
    ("Current stage: four", "stage", 4),
    ("Borough: Hammersmith & Fulham", "borough", "Hammersmith & Fulham"),
    ("Local authority: Westminster", "borough", "Westminster"),
])
def test_label_variants(line: str, field: str, expected: object) -> None:
    assert getattr(extract_fields_from_text(line), field) == expected


def test_practitioner_and_agency_split() -> None:
    f = extract_fields_from_text(
        "Name of practitioner and agency with whom there is a concern: Jane Doe, Hackney Children's Social Care")
    assert (f.other_practitioner, f.other_agency) == ("Jane Doe", "Hackney Children's Social Care")
    f = extract_fields_from_text(
        "Name of practitioner and agency with which there is a concern\nName: Pat Other\nAgency: Cognus\n"
        "Concern: x\nAgency: My Agency")
    assert (f.other_practitioner, f.other_agency, f.raised_by_agency) == ("Pat Other", "Cognus", "My Agency")
    f = extract_fields_from_text("Name of practitioner and agency with which there is a concern: Wiltshire Police")
    assert (f.other_practitioner, f.other_agency) == (None, "Wiltshire Police")


def test_label_on_own_line_and_multiline_values() -> None:
    text = ("Brief description of nature of concern\n\nFirst paragraph\ncontinues.\n\nSecond paragraph.\n\n"
            "Outcome sought\nA meeting.\n\nKind regards,\nJane\n")
    f = extract_fields_from_text(text)
    assert f.concern == "First paragraph\ncontinues.\n\nSecond paragraph."
    assert f.outcome_sought == "A meeting."


def test_signature_is_not_part_of_the_last_value() -> None:
    f = extract_fields_from_text("Outcome sought: A meeting.\n\nJane Referrer\nSocial Worker\nTel 020 7946 0000\n")
    assert f.outcome_sought == "A meeting."


def test_empty_values() -> None:
    f = extract_fields_from_text("Name of child: N/A\nOther agency: -\nConcern: tbc\nChild status: none\n"
                                 "Outcome sought: none")
    assert f.child_names == () and f.other_agency is None and f.concern is None and f.outcome_sought is None
    assert f.child_status == "none"
    assert ReferralFields(concern="N/A").is_empty("concern")
    assert not ReferralFields(child_status="none").is_empty("child_status")
    assert not ReferralFields(immediate_risk=False).is_empty("immediate_risk")


def test_unlabelled_prose_yields_nothing() -> None:
    f = extract_fields_from_text("Hi, I'm worried about the concern we discussed. The outcome was poor.\n"
                                 "Stage 2 meeting was held last week and children were present.")
    assert f == ReferralFields()


def test_names_pull_out_dates() -> None:
    f = extract_fields_from_text("Child: Ava Testchild (DOB 03/04/2015), Ben Testchild d.o.b. 1 May 2017")
    assert f.child_names == ("Ava Testchild", "Ben Testchild")
    assert f.child_dobs == (date(2015, 4, 3), date(2017, 5, 1))


def test_dates() -> None:
    assert parse_date("born 31/12/2015") == date(2015, 12, 31)
    assert parse_date("March 5, 2016") == date(2016, 3, 5)
    assert parse_date("31/02/2015") is None
    assert parse_datetime("by 09.30 on 2026-11-12") == datetime(2026, 11, 12, 9, 30)
    assert parse_datetime("12/11/2026") == date(2026, 11, 12)


def test_json_round_trip_and_merge() -> None:
    f = ReferralFields(child_names=("Ava Testchild",), child_dobs=(date(2015, 2, 1),), child_status="cp_plan",
                       needed_by=datetime(2026, 11, 12, 17, 0), immediate_risk=False, stage=2, concern="x")
    data = f.to_json()
    assert data["child_dobs"] == ["2015-02-01"] and data["needed_by"] == "2026-11-12T17:00:00"
    assert ReferralFields.from_json(data) == f
    assert ReferralFields.from_json({"needed_by": "2026-11-12", "stage": "Stage 3", "child_names": "Ava"}) == \
        ReferralFields(needed_by=date(2026, 11, 12), stage=3, child_names=("Ava",))
    answer = ReferralFields(concern="y", other_agency="Wiltshire Police", stage=4)
    merged = f.merged_with(answer)
    assert merged.concern == "x" and merged.other_agency == "Wiltshire Police" and merged.stage == 2
    assert ReferralFields(concern="N/A").merged_with(answer).concern == "y"


def test_split_forwarded_styles() -> None:
    own, blocks = split_forwarded("note\n\n-----Original Message-----\nFrom: a\nSent: b\nTo: c\nSubject: d\n\nbody")
    assert own.strip() == "note" and blocks == ["\nbody"]
    own, blocks = split_forwarded("hi\nFrom: Someone <s@example.org>\nSent: Monday\nTo: x\nSubject: y\n\nform here")
    assert own.strip() == "hi" and "form here" in blocks[0]
    own, blocks = split_forwarded("From: me\nthis is not a header block\n")
    assert blocks == []


def _msg(name: str) -> object:
    return parse_message((MAIL / name).read_bytes())


REQ = ["child_names", "other_agency", "concern", "outcome_sought"]


def test_sources_and_defaults() -> None:
    cases = {
        "plain-referral.eml": ("body",),
        "forwarded-gmail.eml": ("forwarded",),
        "rfc822-attached.eml": ("embedded",),
        "docx-form.eml": ("docx",),
        "winmail-tnef.eml": ("tnef",),
    }
    for name, sources in cases.items():
        msg = parse_message((MAIL / name).read_bytes())
        parse = extract_referral(msg, REQ)
        assert parse.sources == sources, name
        assert parse.missing == (), name
    fwd = extract_referral(parse_message((MAIL / "forwarded-outlook.eml").read_bytes()), REQ)
    assert fwd.fields.raised_by_email == "jo.lead@example.org"  # the forwarder: the form names nobody
    assert fwd.fields.raised_by_name == "Jo Lead"
    gmail = extract_referral(parse_message((MAIL / "forwarded-gmail.eml").read_bytes()), REQ)
    assert gmail.fields.raised_by_email == "priya.example@example.org"  # the form names the raiser


def test_missing_and_labelled_count() -> None:
    parse = extract_referral(parse_message((MAIL / "referral-missing-fields.eml").read_bytes()),
                             [*REQ, "child_dobs", "stage"])
    assert parse.missing == ("other_agency", "outcome_sought", "child_dobs")
    assert parse.labelled_count == 4
    reply = extract_referral(parse_message((MAIL / "reply-outlook-quoted.eml").read_bytes()), REQ)
    assert reply.labelled_count < 2


def test_docx_to_text_tables_and_merged_cells() -> None:
    data = docx_bytes(["Intro"], [
        [["Name of practitioner and agency with which there is a concern", ""], ["Name", "Agency"],
         ["Pat Other", "Cognus"]],
        [["Name of child/ children", "Date of birth"], ["Ava Testchild", "01/02/2015"], ["Ben Testchild", ""]],
        [["Outcome sought", "A meeting"]],
    ], merge_first_row=(0,))
    text = docx_to_text(data)
    assert text.count("Name of practitioner and agency with which there is a concern") == 1
    f = extract_fields_from_text(text)
    assert (f.other_practitioner, f.other_agency) == ("Pat Other", "Cognus")
    assert f.child_names == ("Ava Testchild", "Ben Testchild")
    assert f.child_dobs == (date(2015, 2, 1),)
    assert f.outcome_sought == "A meeting"
    assert docx_to_text(b"PK\x03\x04 not really a zip") == ""


def test_tnef_parts() -> None:
    inner = docx_bytes([], [[["Concern", "From the docx"]]])
    body, atts = tnef_to_parts(tnef_bytes("Name of child: Ruby Testchild\n", [("form.docx", inner)]))
    assert "Ruby Testchild" in body
    assert atts == [Attachment("form.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                               inner)]
    assert tnef_to_parts(b"\x78\x9f\x3e\x22 truncated") == ("", [])


# ---- properties ------------------------------------------------------------------------------------------

LABELS = {
    "child_id": ["Mosaic ID no.", "Mosaic ID", "Child ID", "LCS ID"],
    "raised_by_name": ["Name of referrer", "Referrer", "Your name"],
    "raised_by_role": ["Role", "Job title", "Designation"],
    "raised_by_agency": ["Agency", "Department", "Organisation"],
    "other_agency": ["Other agency", "Agency you disagree with"],
    "concern": ["Brief description of nature of concern", "Summary of reason for dispute", "Concern",
                "Nature of concern", "Reason for escalation"],
    "actions_taken": ["Action taken", "Actions taken to date", "Attempts to resolve"],
    "outcome_sought": ["Outcome sought", "Outcomes sought", "Desired outcome"],
    "borough": ["Borough", "Local authority"],
}
WORD = st.text(alphabet=string.ascii_letters, min_size=2, max_size=10).filter(
    lambda w: w.lower() not in {"na", "no", "none", "nil", "tbc", "tba", "tbd", "nk", "unknown", "pending", "x"})
# A value that is itself a label ("Agency") is ambiguous on a line of its own; such values are excluded,
# and so are values that read as a form's printed choices ("YN", "Y/N": "Should ...? Yes/No" is a label).
VALUE = st.lists(WORD, min_size=1, max_size=6).map(" ".join).filter(
    lambda v: v.lower() not in {"not known", "to follow"} and _match_label(v) is None
    and not _PRINTED_CHOICES.fullmatch(v))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(LABELS)), VALUE, min_size=1), st.data(),
       st.sampled_from(["{l}: {v}", "**{l}:** {v}", "- {l}: {v}", "{l}\n{v}", "{l}:\n{v}", "{l}:   {v}"]),
       st.sampled_from(["\n", "\n\n"]))
def test_label_value_forms_round_trip(values: dict[str, str], data: st.DataObject, form: str, sep: str) -> None:
    lines = []
    for field, value in values.items():
        label = data.draw(st.sampled_from(LABELS[field]))
        label = data.draw(st.sampled_from([label, label.upper(), label.lower()]))
        lines.append(form.format(l=label, v=value))
    f = extract_fields_from_text(sep.join(lines))
    for field, value in values.items():
        assert getattr(f, field) == value, (field, sep.join(lines))


BASE_REQUIRED = ["child_names", "other_agency", "concern", "outcome_sought"]


def _teacher_mail(html: str | None) -> EmailMessage:
    """A referral as a school's mail client sends it: HTML body, or (None) an empty one for attachments."""
    m = EmailMessage()
    m["From"] = "a.teacher@school.example.org"
    m["To"] = "chscp@hackney.gov.uk"
    m["Subject"] = "Escalation"
    if html is None:
        m.set_content("")
    else:
        m.set_content(html, subtype="html")
    return m


def test_form_pasted_as_an_html_table() -> None:
    """Practitioners paste the Word form into Outlook: a two-column table, values with line breaks."""
    m = _teacher_mail(
        "<html><body><table border=1>"
        "<tr><td><b>Name of child(ren)</b></td><td>Ava Testchild</td></tr>"
        "<tr><td>Date of birth</td><td>14/03/2016</td></tr>"
        "<tr><td>Name of practitioner and agency with which there is a concern</td>"
        "<td>Sam Smith,<br>Hackney CSC</td></tr>"
        "<tr><td>Brief description of nature of concern</td><td><p>Closed with no assessment.</p>"
        "<p>Siblings not seen.</p></td></tr>"
        "<tr><td>Outcome sought</td><td>An assessment</td></tr>"
        "</table></body></html>")
    parse = extract_referral(parse_message(bytes(m)), BASE_REQUIRED)
    f = parse.fields
    assert parse.missing == ()
    assert f.child_names == ("Ava Testchild",) and f.child_dobs == (date(2016, 3, 14),)
    assert (f.other_practitioner, f.other_agency) == ("Sam Smith", "Hackney CSC")
    assert f.concern == "Closed with no assessment.\nSiblings not seen."
    assert f.outcome_sought == "An assessment"


def test_form_laid_out_in_columns() -> None:
    """A table with the labels across the top row and the record in the row below."""
    m = _teacher_mail(
        "<html><body><table><tr><td><table border=1>"
        "<tr><th>Name of child(ren)</th><th>Date of birth</th><th>Agency with which there is a concern</th>"
        "<th>Brief description of nature of concern</th><th>Outcome sought</th></tr>"
        "<tr><td>Ava Testchild</td><td>14/03/2016</td><td>Hackney Children's Social Care</td>"
        "<td>Closed with no assessment.</td><td>An assessment</td></tr>"
        "</table></td></tr></table></body></html>")
    parse = extract_referral(parse_message(bytes(m)), BASE_REQUIRED)
    f = parse.fields
    assert parse.missing == ()
    assert f.child_names == ("Ava Testchild",) and f.child_dobs == (date(2016, 3, 14),)
    assert f.other_agency == "Hackney Children's Social Care"
    assert f.concern == "Closed with no assessment." and f.outcome_sought == "An assessment"


@pytest.mark.parametrize("rtf", [
    # Outlook "Rich Text" from a plain-text draft (\fromtext), with a cp1252 escape
    rb"{\rtf1\ansi\ansicpg1252\fromtext \fbidis \deff0{\fonttbl{\f0\fswiss Arial;}}" b"\r\n"
    rb"{\*\generator Microsoft Exchange Server;}" b"\r\n"
    rb"\pard\plain\f0 Name of child(ren): Ava Testchild\par" b"\r\n"
    rb"Date of birth: 14/03/2016\par" b"\r\n"
    rb"Other agency: Hackney CSC\par" b"\r\n"
    rb"Brief description of nature of concern: Closed with no assessment \'96 again.\par" b"\r\n"
    rb"Outcome sought: An assessment\par" b"\r\n}",
    # HTML encapsulated in RTF (\fromhtml1): the tags are RTF destinations, the text is plain
    rb"{\rtf1\ansi\ansicpg1252\fromhtml1 \deff0{\fonttbl{\f0\fswiss Arial;}}" b"\r\n"
    rb"{\*\htmltag19 <html>}{\*\htmltag50 <body>}" b"\r\n"
    rb"{\*\htmltag64 <p>}\htmlrtf {\htmlrtf0 Name of child(ren): Ava Testchild\htmlrtf\par}\htmlrtf0"
    rb"{\*\htmltag72 </p>}{\*\htmltag64 <p>}\htmlrtf {\htmlrtf0 Date of birth: 14/03/2016\htmlrtf\par}\htmlrtf0"
    rb"{\*\htmltag72 </p>}{\*\htmltag64 <p>}\htmlrtf {\htmlrtf0 Other agency: Hackney CSC\htmlrtf\par}\htmlrtf0"
    rb"{\*\htmltag72 </p>}{\*\htmltag64 <p>}\htmlrtf {\htmlrtf0 Brief description of nature of concern: "
    rb"Closed with no assessment \'96 again.\htmlrtf\par}\htmlrtf0{\*\htmltag72 </p>}"
    rb"{\*\htmltag64 <p>}\htmlrtf {\htmlrtf0 Outcome sought: An assessment\htmlrtf\par}\htmlrtf0"
    rb"{\*\htmltag72 </p>}{\*\htmltag58 </body>}{\*\htmltag27 </html>}}",
], ids=["fromtext", "fromhtml"])
def test_winmail_dat_with_only_a_compressed_rtf_body(rtf: bytes) -> None:
    from tests.fixtures.make_fixtures import tnef_rtf_bytes

    m = _teacher_mail(None)
    m.add_attachment(tnef_rtf_bytes(rtf), maintype="application", subtype="ms-tnef", filename="winmail.dat")
    parse = extract_referral(parse_message(bytes(m)), BASE_REQUIRED)
    f = parse.fields
    assert parse.missing == ()
    assert f.child_names == ("Ava Testchild",) and f.child_dobs == (date(2016, 3, 14),)
    assert f.other_agency == "Hackney CSC" and f.outcome_sought == "An assessment"
    assert f.concern == "Closed with no assessment \u2013 again."
