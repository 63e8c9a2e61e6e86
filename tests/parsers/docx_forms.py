"""Word forms built the way practitioners' copies arrive: answers typed into content controls
(``w:sdt``), legacy form fields, text boxes and table cells. Built with python-docx and lxml."""

from __future__ import annotations

from typing import Any

import docx
from docx.oxml import parse_xml
from docx.oxml.ns import nsdecls

__all__ = ["content_control_form", "sdt_block", "sdt_inline"]


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _runs(text: str) -> str:
    lines = text.split("\n")
    return "<w:br/>".join(f'<w:t xml:space="preserve">{_esc(line)}</w:t>' for line in lines)


def sdt_inline(text: str) -> Any:
    """An inline content control holding ``text`` (what a filled-in "Click here to enter text" is)."""
    return parse_xml(f'<w:sdt {nsdecls("w")}><w:sdtPr><w:alias w:val="answer"/></w:sdtPr>'
                     f"<w:sdtContent><w:r>{_runs(text)}</w:r></w:sdtContent></w:sdt>")


def sdt_block(text: str) -> Any:
    """A block-level content control: paragraphs inside ``w:sdt`` directly in the body or a cell."""
    paras = "".join(f"<w:p><w:r>{_runs(line)}</w:r></w:p>" for line in text.split("\n"))
    return parse_xml(f'<w:sdt {nsdecls("w")}><w:sdtPr/><w:sdtContent>{paras}</w:sdtContent></w:sdt>')


def legacy_field(text: str) -> list[Any]:
    """The runs of a legacy FORMTEXT field whose result is ``text``."""
    xml = [
        '<w:r><w:fldChar w:fldCharType="begin"><w:ffData><w:name w:val="Text1"/><w:textInput/></w:ffData>'
        "</w:fldChar></w:r>",
        '<w:r><w:instrText xml:space="preserve"> FORMTEXT </w:instrText></w:r>',
        '<w:r><w:fldChar w:fldCharType="separate"/></w:r>',
        f"<w:r>{_runs(text)}</w:r>",
        '<w:r><w:fldChar w:fldCharType="end"/></w:r>',
    ]
    return [parse_xml(x.replace("<w:r>", f'<w:r {nsdecls("w")}>', 1)) for x in xml]


def text_box(text: str) -> Any:
    """A VML text box (Word's "Insert > Text Box" in compatibility mode) holding ``text``."""
    paras = "".join(f"<w:p><w:r>{_runs(line)}</w:r></w:p>" for line in text.split("\n"))
    return parse_xml(f'<w:r {nsdecls("w")} xmlns:v="urn:schemas-microsoft-com:vml"><w:pict><v:shape><v:textbox><w:txbxContent>{paras}'
                     "</w:txbxContent></v:textbox></v:shape></w:pict></w:r>")


def content_control_form(*, concern: str = "Referral closed with no assessment.", child: str = "Ava Testchild",
                         hos: str = "No") -> docx.document.Document:
    """A Sutton-style form: labels in the left column, answers in content controls in the right; the
    concern in a block-level control in the body, the outcome in a legacy field, the timescale in a
    text box."""
    d = docx.Document()
    d.add_paragraph("LSCP Escalation Referral Form")
    table = d.add_table(rows=4, cols=2)
    rows = [("Name of child/ children", child), ("Date of birth", "01/02/2015"),
            ("Name of practitioner and agency with which there is a concern", "Sam Smith, Hackney Children's "
             "Social Care"), ("Should the Head of Service be contacted? Yes/No", hos)]
    for row, (label, answer) in zip(table.rows, rows, strict=True):
        row.cells[0].text = label
        p = row.cells[1].paragraphs[0]
        p._p.append(sdt_inline(answer))
    d.add_paragraph("Brief description of nature of concern")
    d.element.body.insert(len(d.element.body) - 1, sdt_block(concern))
    p = d.add_paragraph("Outcomes sought: ")
    for run in legacy_field("A strategy discussion."):
        p._p.append(run)
    box = d.add_paragraph()
    box._p.append(text_box("Name of referrer: Jo Bloggs"))
    return d
