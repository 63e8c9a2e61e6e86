"""PNG charts of the report's tables (matplotlib's Agg canvas on a Figure of its own: no display,
no pyplot state, safe in a web server's threads). A suppressed count is drawn as no bar, labelled
"<N", so no chart shows what a table hides."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from escalations.records.report.model import Report, Table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["CHARTED", "chart_png"]

#: The tables drawn as charts (the rest are short lists).
CHARTED = ("per_month", "raising_agency", "receiving_agency", "stage_resolved", "deadlines", "breached_by",
           "child_status", "themes", "outcomes")
_COLOURS = ("#1d70b8", "#f47738", "#00703c", "#912b88")


def _heights(values: list[int | str]) -> tuple[list[int], list[str]]:
    heights = [v if isinstance(v, int) else 0 for v in values]
    return heights, [str(v) for v in values]


def _figure(t: Table, threshold: int) -> Figure:
    shown = t.shown(threshold)
    labels = [label for label, _ in shown]
    vertical = t.name == "per_month"
    # matplotlib only when a chart is drawn: it is most of a running service's memory otherwise
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, max(2.5, 0.45 * len(labels) + 1)) if not vertical else (9, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / len(t.columns)
    for j, column in enumerate(t.columns):
        heights, texts = _heights([values[j] for _, values in shown])
        positions = [i + (j - (len(t.columns) - 1) / 2) * width for i in range(len(labels))]
        bars = (ax.bar if vertical else ax.barh)(positions, heights, width, label=column,
                                                  color=_COLOURS[j % len(_COLOURS)])
        ax.bar_label(bars, labels=texts, padding=2, fontsize=8)
    if vertical:
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    else:
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.invert_yaxis()
    ax.set_title(t.title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    if len(t.columns) > 1:
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def chart_png(report: Report, name: str) -> bytes:
    fig = _figure(report.table(name), report.threshold)
    out = io.BytesIO()
    fig.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()
