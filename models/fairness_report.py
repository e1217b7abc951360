"""One self-contained HTML fairness report, in the model report's look (:mod:`models.report`).

Top to bottom: the context (as of, window, source, bound) and the overall numbers; the flags (or a note that there
are none); then per segment column a picture of three bar charts — alert rate, false-positive rate and recall per
segment, the reference segment's value as a line and the band ``[bound, 1 / bound]`` around it shaded, flagged
segments red, segments too small to flag hatched grey — and two tables: the segments' numbers and their ratios to
the reference (flagged rows marked).

``render_fairness`` is pure and deterministic: the same data, the same bytes (inline SVG, fixed hash salt, no
dates). ``models.report.write_html`` writes it atomically.
"""

from __future__ import annotations

import html
from collections.abc import Mapping

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

from models.fairness import RATIOS, ColumnFairness, Fairness, SegmentStats
from models.report import CSS, FRAUD, GENUINE, GREY, STYLE, html_note, html_table, svg_figure

__all__ = ["render_fairness"]

_PLOTTED = {"alert_rate": "alert rate", "fpr": "false-positive rate", "recall": "recall"}
_EXTRA_CSS = "tr.flagged td{color:#c0392b;font-weight:600} tr.reference td{background:#eef5fb}"
_NUMBERS = ["segment", "decisions", "alerts", "frauds", "true positives", "false positives", "alert rate",
            "approval rate", "false-positive rate", "precision", "recall", "AUC", "AP"]  # fmt: skip


def render_fairness(report: Fairness, *, title: str, context: Mapping[str, object]) -> str:
    """The report as one HTML document; ``context`` (as of, window, source, ...) is shown as a table first."""
    bound = report.bound
    flags = report.flags
    if flags:
        items = "".join(f"<li>{html.escape(flag.message(bound))}</li>" for flag in flags)
        flagged = f'<div class="note"><p>{len(flags)} ratios outside the bound:</p><ul>{items}</ul></div>'
    else:
        flagged = html_note(
            f"No ratio outside [{bound:.2f}, {1 / bound:.2f}] among segments with at least "
            f"{report.min_decisions:,} decisions."
        )
    sections = []
    with mpl.rc_context(STYLE):
        for index, column in enumerate(report.columns):
            sections.append(
                f"<h2>By {html.escape(column.column)} (reference: {html.escape(column.reference)})</h2>\n"
                f"{svg_figure(f'column{index}', _bars(column, bound))}\n{_numbers(column)}\n{_ratios(column)}"
            )
    overall = report.overall
    headline = [
        ("decisions", overall.decisions), ("alerts", overall.alerts), ("frauds", overall.frauds),
        ("alert rate", overall.alert_rate), ("false-positive rate", overall.fpr), ("precision", overall.precision),
        ("recall", overall.recall), ("decisions without a segment row", report.unmatched),
        ("bound", f"[{bound:.2f}, {1 / bound:.2f}]"), ("flagged only from (decisions)", report.min_decisions),
    ]  # fmt: skip
    heading = html.escape(title)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>{heading}</title>'
        f"<style>{CSS}{_EXTRA_CSS}</style></head>\n<body>\n<h1>{heading}</h1>\n"
        f"{html_table(['', ''], [(str(k), v) for k, v in context.items()])}\n"
        f"<h2>Overall</h2>\n{html_table(['', 'value'], headline)}\n<h2>Flags</h2>\n{flagged}\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )


def _numbers(column: ColumnFairness) -> str:
    rows = [[s.value, s.decisions, s.alerts, s.frauds, s.true_positives, s.false_positives, s.alert_rate,
             s.approval_rate, s.fpr, s.precision, s.recall, s.auc, s.ap] for s in column.segments]  # fmt: skip
    return html_table(_NUMBERS, rows, [_css(s) for s in column.segments], caption="Segments")


def _ratios(column: ColumnFairness) -> str:
    rows = []
    for s in column.segments:
        ratios = s.ratios or {}
        note = "reference" if s.reference else ("flagged: " + ", ".join(s.flags) if s.flags else "")
        rows.append([s.value, *(ratios.get(metric) for metric in RATIOS), "yes" if s.flaggable else "no", note])
    header = ["segment", *RATIOS.values(), "large enough to flag", ""]
    return html_table(header, rows, [_css(s) for s in column.segments], caption=f"Ratios to {column.reference}")


def _css(segment: SegmentStats) -> str:
    return "flagged" if segment.flags else ("reference" if segment.reference else "")


def _bars(column: ColumnFairness, bound: float) -> Figure:
    segments = column.segments
    ref = next(s for s in segments if s.reference)
    x = np.arange(len(segments))
    fig = Figure(figsize=(min(max(9.0, 0.5 * len(segments) * 3), 15.0), 3.4), layout="constrained")
    for ax, (metric, name) in zip(fig.subplots(1, len(_PLOTTED)), _PLOTTED.items(), strict=True):
        ax.grid(alpha=0.3, axis="y")
        values = [getattr(s, metric) for s in segments]
        heights = [0.0 if v is None else float(v) for v in values]
        colours = [FRAUD if metric in s.flags else (GENUINE if s.flaggable else GREY) for s in segments]
        bars = ax.bar(x, heights, color=colours)
        for bar, s in zip(bars, segments, strict=True):
            if not s.flaggable:
                bar.set_hatch("//")
        base = getattr(ref, metric)
        if base is not None:
            ax.axhspan(base * bound, base / bound, color=GREY, alpha=0.15, linewidth=0, label="bound")
            label = ref.value.replace("$", r"\$")  # a legend entry is typeset as mathtext otherwise
            ax.axhline(base, color=GREY, linestyle="--", linewidth=1, label=f"{label} {base:.4f}")
            ax.legend(loc="upper right", fontsize=7)
        ax.set_xticks(x, [s.value for s in segments], rotation=45, ha="right", fontsize=7, parse_math=False)
        top = max([*heights, 0.0 if base is None else base / bound])
        ax.set_title(f"{name} by {column.column}", parse_math=False)
        ax.set_ylim(0, top * 1.1 if top > 0 else 1.0)
    return fig
