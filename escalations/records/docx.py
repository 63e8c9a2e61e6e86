"""A :class:`Form` as a Word document (python-docx): a title, then each answer as a two-column table
row (label | value) and each grid as a table with a row of column labels, the layout the seed forms
use and the referral parser reads back.

python-docx (and lxml) is imported when a document is made: the web interface imports this module
for its form pages, and the running service never needs it otherwise."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from escalations.records.forms import Block, Form, Grid, Heading, Row

if TYPE_CHECKING:
    from docx.document import Document
    from docx.table import Table

__all__ = ["render_docx"]


def _label_cell(table: Table, row: int, col: int, text: str) -> None:
    cell = table.cell(row, col)
    cell.text = ""
    run = cell.paragraphs[0].add_run(text)
    run.bold = True


def _rows_table(doc: Document, rows: list[Row]) -> None:
    table = doc.add_table(rows=len(rows), cols=2)
    table.style = "Table Grid"
    for i, r in enumerate(rows):
        _label_cell(table, i, 0, r.label)
        table.cell(i, 1).text = r.value


def _grid_table(doc: Document, grid: Grid) -> None:
    table = doc.add_table(rows=1 + len(grid.rows), cols=len(grid.columns))
    table.style = "Table Grid"
    for j, c in enumerate(grid.columns):
        _label_cell(table, 0, j, c)
    for i, values in enumerate(grid.rows, start=1):
        for j, v in enumerate(values):
            table.cell(i, j).text = v


def _blocks(doc: Document, blocks: tuple[Block, ...]) -> None:
    pending: list[Row] = []
    for b in (*blocks, None):
        if isinstance(b, Row):
            pending.append(b)
            continue
        if pending:
            _rows_table(doc, pending)
            pending = []
        if isinstance(b, Heading):
            doc.add_paragraph().add_run(b.text).bold = True
        elif isinstance(b, Grid):
            _grid_table(doc, b)


def render_docx(form: Form, *, created: datetime | None = None) -> bytes:
    """The document's bytes. Its properties carry the title and reference only (no child's details)."""
    import docx
    from docx.shared import Pt

    doc = docx.Document()
    doc.styles["Normal"].font.name = "Arial"
    doc.styles["Normal"].font.size = Pt(10)
    doc.add_heading(form.title, level=1)
    doc.add_paragraph(form.intro)
    doc.add_paragraph().add_run(form.note).italic = True
    doc.add_paragraph(f"Case reference: {form.reference}")
    _blocks(doc, form.blocks)
    props = doc.core_properties
    props.title, props.subject, props.author = form.title, form.reference, "escalations"
    props.created = props.modified = (created or datetime(2000, 1, 1, tzinfo=UTC)).replace(tzinfo=None)
    out = io.BytesIO()
    doc.save(out)
    return out.getvalue()
