"""The text of a Word document's body, the way a filled-in form holds it: paragraphs, tables (a row's
cells in order), content controls (``w:sdt``, block, row, cell and inline), legacy form fields (their
result runs; a checkbox as ☒/☐), text boxes (VML and DrawingML, read once) and tracked insertions;
deleted text and field codes are left out.

Pure: works on the lxml element tree python-docx has already parsed (no entity resolution).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Layout", "W", "block_lines", "table_rows"]

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
#: Wrappers whose content belongs where they stand.
_WRAPPERS = frozenset({f"{W}sdtContent", f"{W}customXml", f"{W}smartTag", f"{W}ins", f"{W}hyperlink",
                       f"{W}fldSimple", f"{W}r", f"{W}moveTo"})
_SKIP = frozenset({f"{W}del", f"{W}moveFrom", f"{W}delText", f"{W}instrText", f"{W}sdtPr", f"{W}rPr",
                   f"{W}pPr", f"{W}tcPr", f"{W}trPr", f"{W}tblPr", _MC_FALLBACK})
_CHECKED, _UNCHECKED = "☒", "☐"


def _checkbox(el: Any) -> str:
    """A legacy form checkbox (``w:ffData/w:checkBox``): its state as a ticked or empty box."""
    for tag in ("checked", "default"):
        found = el.find(f"{W}{tag}")
        if found is not None:
            return _CHECKED if found.get(f"{W}val", "1") not in ("0", "false") else _UNCHECKED
    return _UNCHECKED


def _inline(el: Any, out: list[str], boxes: list[Any]) -> None:
    """A paragraph's own text into ``out``; text boxes met on the way into ``boxes``."""
    for child in el:
        tag = child.tag
        if not isinstance(tag, str) or tag in _SKIP:
            continue
        if tag == f"{W}t":
            out.append(child.text or "")
        elif tag == f"{W}tab":
            out.append("\t")
        elif tag in (f"{W}br", f"{W}cr"):
            out.append("\n")
        elif tag == f"{W}txbxContent":
            boxes.append(child)
        elif tag == f"{W}checkBox":
            out.append(_checkbox(child))
        else:
            _inline(child, out, boxes)


Layout = Callable[[list[list[str]]], list[str]]


def _paragraph(p: Any, layout: Layout) -> list[str]:
    out: list[str] = []
    boxes: list[Any] = []
    _inline(p, out, boxes)
    lines = "".join(out).split("\n")
    for box in boxes:
        lines.extend(block_lines(box, layout))
    return lines


def _cells(tr: Any) -> list[Any]:
    """A row's cells, including those inside cell-level content controls; a vertically merged
    continuation cell is left out (the merged cell is read once, where it starts)."""
    cells: list[Any] = []
    for child in tr:
        if child.tag == f"{W}tc":
            merge = child.find(f"{W}tcPr/{W}vMerge")
            if merge is None or merge.get(f"{W}val") == "restart":
                cells.append(child)
        elif child.tag in (f"{W}sdt", f"{W}customXml"):
            content = child.find(f"{W}sdtContent") if child.tag == f"{W}sdt" else child
            if content is not None:
                cells.extend(_cells(content))
    return cells


def _rows(tbl: Any) -> list[Any]:
    rows: list[Any] = []
    for child in tbl:
        if child.tag == f"{W}tr":
            rows.append(child)
        elif child.tag in (f"{W}sdt", f"{W}customXml"):
            content = child.find(f"{W}sdtContent") if child.tag == f"{W}sdt" else child
            if content is not None:
                rows.extend(_rows(content))
    return rows


def table_rows(tbl: Any, layout: Layout) -> list[list[str]]:
    """Each row's cell texts (a nested table's lines inside its cell)."""
    return [["\n".join(block_lines(tc, layout)).strip() for tc in _cells(tr)] for tr in _rows(tbl)]


def block_lines(container: Any, layout: Layout) -> list[str]:
    """The lines of a body, cell, text box or block content control, in document order; ``layout``
    turns a table's rows of cell texts into lines (the form reader decides how)."""
    lines: list[str] = []
    for child in container:
        tag = child.tag
        if tag == f"{W}p":
            lines.extend(_paragraph(child, layout))
        elif tag == f"{W}tbl":
            lines.extend(layout(table_rows(child, layout)))
        elif tag == f"{W}sdt":
            content = child.find(f"{W}sdtContent")
            if content is not None:
                lines.extend(block_lines(content, layout))
        elif tag == f"{W}customXml":
            lines.extend(block_lines(child, layout))
    return lines
