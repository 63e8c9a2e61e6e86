"""HTML mail bodies as text: Outlook's conditional comments and column layouts, tables cell by cell.

Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Any

import html2text

__all__ = ["STYLE_RE", "html_to_text", "strip_tags"]

_MSO_COMMENT_RE = re.compile(r"<!--\[if[^\]]*\]>.*?<!\[endif\]-->", re.S | re.I)
_DOWNLEVEL_RE = re.compile(r"<!\[(?:if[^\]]*|endif)\]>", re.I)
STYLE_RE = re.compile(r"<(style|script|head)\b.*?</\1\s*>", re.S | re.I)
_CELL_END_RE = re.compile(r"</t[dh]\s*>", re.I)
_CELL_RE = re.compile(r"<t[dh]\b[^>]*>.*?</t[dh]\s*>", re.S | re.I)
_PARA_OPEN_RE = re.compile(r"<(?:p|div)\b[^>]*>", re.I)
_PARA_CLOSE_RE = re.compile(r"</(?:p|div)\s*>", re.I)
_MD_ESCAPE_RE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!>|])")


def _cell_text(cell: Any) -> str:
    return re.sub(r"\s+", " ", cell.text_content()).strip()


def _columns_as_lines(html: str) -> str:
    """Tables laid out in columns (labels across the top row, one record per row below, three or
    more columns) become "label: value" paragraphs, so they read like the usual two-column forms.

    Two-column tables are left alone: they are label/value rows already. Any parsing trouble leaves
    the HTML unchanged.
    """
    if "<table" not in html.lower():
        return html
    try:
        import lxml.html

        root = lxml.html.fromstring(html)
        changed = False
        for table in list(root.iter("table")):
            if table.find(".//table") is not None:
                continue  # layout table around the real one
            rows = [r for r in table.iter("tr")]
            cells = [[c for c in r if c.tag in ("td", "th")] for r in rows]
            width = len(cells[0]) if cells else 0
            if len(rows) < 2 or width < 3 or any(len(c) != width for c in cells):
                continue
            header = [_cell_text(c) for c in cells[0]]
            if not all(header) or any(len(h) > 120 for h in header):
                continue
            block = lxml.html.Element("div")
            for record in cells[1:]:
                for label, cell in zip(header, record, strict=True):
                    p = lxml.html.Element("p")
                    p.text = f"{label.rstrip(':')}: {_cell_text(cell)}"
                    block.append(p)
            table.getparent().replace(table, block)
            changed = True
        return lxml.html.tostring(root, encoding="unicode") if changed else html
    except Exception:  # malformed markup: html2text copes with it as it is
        return html


def html_to_text(html: str) -> str:
    """HTML body as plain text, one table cell per line so label/value cells stay separable."""
    cleaned = _MSO_COMMENT_RE.sub("", html)
    cleaned = _DOWNLEVEL_RE.sub("", cleaned)
    cleaned = STYLE_RE.sub("", cleaned)
    cleaned = _columns_as_lines(cleaned)
    # paragraphs inside a table cell become lines, so a multi-line value cell stays one block
    cleaned = _CELL_RE.sub(lambda m: _PARA_OPEN_RE.sub("", _PARA_CLOSE_RE.sub("<br>", m.group(0))), cleaned)
    cleaned = _CELL_END_RE.sub(lambda m: "<br>" + m.group(0), cleaned)
    h = html2text.HTML2Text()
    h.body_width = 0
    h.ignore_images = True
    h.ignore_emphasis = True
    h.ignore_tables = True
    h.ignore_links = True
    h.unicode_snob = True
    try:
        text = h.handle(cleaned)
    except Exception:  # html2text on pathological markup: strip tags instead
        text = re.sub(r"<[^>]+>", "\n", cleaned)
    text = _MD_ESCAPE_RE.sub(r"\1", text).replace("\xa0", " ")
    lines = [ln.rstrip() for ln in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")



def strip_tags(html: str) -> str:
    """Linear stand-in for html_to_text on HTML too long to convert properly."""
    text = STYLE_RE.sub("", html) if len(html) < 100_000 else html
    text = re.sub(r"<(?:br|/p|/div|/tr|/t[dh]|/li)\b[^>]*>", "\n", text, flags=re.I)
    text = re.sub(r"<[^>]*>", "", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")

