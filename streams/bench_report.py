"""``fraudpipe bench``'s report, from its JSON (:func:`streams.bench.run`): the targets with their verdicts as a
markdown table, and one self-contained HTML page.

The page shows, top to bottom: the targets table (each figure, its bound, met or not); the latency / throughput
curve of the batch-size sweep (decisions/s at full speed against p99 on the workers' clock, one point per batch
size, the configured one ringed), with its table; the other figures; µs per event of each in-process stage; and
every run. Pure: the report in, markdown or one HTML string out (images inline as SVG, drawn with the helpers of
:mod:`models.report`); :func:`write_html_report` writes the page atomically.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
from matplotlib.figure import Figure

from models.report import CSS, FRAUD, GENUINE, STYLE, html_note, html_table, new_axes, svg_figure, write_html

__all__ = ["REPORTED", "TARGETS", "markdown", "render_html", "verdicts", "write_html_report"]

TARGETS = (
    ("throughput_eps", ">=", 15_000, "decisions/s at full speed, one worker"),
    ("p99_ms_at_1k", "<=", 25.0, "ms p99 at 1,000/s"),
    ("p99_ms_at_half", "<=", 50.0, "ms p99 at half the maximum"),
    ("ratio_to_naive", ">=", 10.0, "x the naive variant (same run)"),
    ("ratio_to_inprocess", ">=", 0.7, "of the in-process pipeline (same run)"),
    ("rss_mb", "<=", 500.0, "MB worker peak RSS"),
    ("redis_bytes_per_card", "<=", 2_048, "bytes of Redis per active card: its own key"),
    ("redis_total_bytes_per_card", "<=", 6_000, "bytes of Redis per active card: everything"),
    ("decision_files_per_min_at_1k", "<=", 12.0, "decision-log files per worker per minute at 1,000/s"),
)
"""(report key, comparison, bound, what it is): the issue's targets, medians of ``repeat`` runs."""

REPORTED = ("p50_ms", "p99_ms", "max_ms", "passthrough_eps", "ratio_to_passthrough", "naive_eps", "inprocess_eps",
            "replay_eps", "p50_ms_at_1k", "half_rate_eps", "p50_ms_at_half", "cpu_s_per_1k", "cards", "batch_size",
            "workers", "repeat")  # fmt: skip
"""Figures shown without a target (``p50_ms``..``max_ms``: the maximum-rate run, on the workers' clock)."""


def verdicts(report: Mapping[str, Any]) -> list[tuple[str, Any, str, bool]]:
    """(key, value, the target as text, met) for each of :data:`TARGETS`; a missing value is not met."""
    out = []
    for key, op, bound, what in TARGETS:
        value = report.get(key)
        met = value is not None and (value >= bound if op == ">=" else value <= bound)
        out.append((key, value, f"{op} {bound:,} ({what})", bool(met)))
    return out


def markdown(report: Mapping[str, Any]) -> str:
    """The report as a markdown table: each target with its verdict, then the other figures, stages and sweep."""
    lines = ["| measure | value | target | met |", "|---|---|---|---|"]
    lines += [f"| {key} | {value} | {target} | {'yes' if met else 'no'} |" for key, value, target, met in
              verdicts(report)]  # fmt: skip
    lines += [f"| {key} | {report.get(key)} | | |" for key in REPORTED]
    for family, size in report.get("redis_bytes_per_card_by_family", {}).items():
        lines.append(f"| Redis bytes per card: {family} keys | {size} | | |")
    for stage, micros in report.get("stages_us_per_event", {}).items():
        lines.append(f"| in-process stage {stage} (µs/event) | {micros} | | |")
    for point in report.get("sweep", []):
        lines.append(f"| sweep batch {point['batch_size']}: decisions/s, p99 ms | {point['throughput_eps']}, "
                     f"{point['p99_ms']} | | |")  # fmt: skip
    return "\n".join(lines)


def _sweep_figure(sweep: Sequence[Mapping[str, Any]], configured: int | None) -> Figure:
    points = [(p["throughput_eps"], p["p99_ms"], p["batch_size"]) for p in sweep if p.get("p99_ms") is not None]
    fig, ax = new_axes(6.4, 4.4)
    ax.plot([x for x, _, _ in points], [y for _, y, _ in points], "o-", color=GENUINE, label="batch sizes")
    for x, y, size in points:
        ax.annotate(f"{size:,}", (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        if size == configured:
            ax.plot([x], [y], "o", markersize=12, markerfacecolor="none", color=FRAUD, label=f"configured ({size:,})")
    xs, ys = [x for x, _, _ in points if x > 0], [y for _, y, _ in points if y > 0]
    if xs and max(xs) > 20 * min(xs):
        ax.set_xscale("log")
    if ys and max(ys) > 20 * min(ys):
        ax.set_yscale("log")
    ax.set(title="Latency / throughput by batch size", xlabel="decisions/s at full speed",
           ylabel="p99 latency (ms, workers' clock)")  # fmt: skip
    ax.legend(loc="upper left")
    return fig


def render_html(report: Mapping[str, Any], title: str = "fraudpipe bench") -> str:
    """The report as one HTML document (module docstring)."""
    rows = [(key, value, target, "yes" if met else "no") for key, value, target, met in verdicts(report)]
    classes = ["lowers" if met else "raises" for *_, met in verdicts(report)]  # green when met, red when not
    sweep = report.get("sweep", [])
    if any(p.get("p99_ms") is not None for p in sweep):
        with mpl.rc_context(STYLE):
            curve = svg_figure("sweep", _sweep_figure(sweep, report.get("batch_size")))
        curve += html_table(["batch size", "decisions/s", "p99 ms"],
                            [(p["batch_size"], p["throughput_eps"], p["p99_ms"]) for p in sweep])  # fmt: skip
    else:
        curve = html_note("No batch-size sweep in this run (--sweep '').")
    figures = [(key, report.get(key)) for key in REPORTED]
    figures += [(f"Redis bytes per card: {family} keys", size)
                for family, size in report.get("redis_bytes_per_card_by_family", {}).items()]  # fmt: skip
    stages = report.get("stages_us_per_event", {}).items()
    runs = report.get("runs", [])
    columns = ["name", "mode", "batch_size", "rate", "events", "eps", "latency_clock", "p50", "p99", "max",
               "cpu_s_per_1k", "rss_mb", "replay_eps", "decision_files", "seconds"]  # fmt: skip
    run_rows = [[r.get(c, r.get("latency_ms", {}).get(c)) for c in columns] for r in runs]
    heading = html.escape(title)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>{heading}</title>'
        f"<style>{CSS}</style></head>\n<body>\n<h1>{heading}</h1>\n"
        f"<h2>Targets</h2>\n{html_table(['figure', 'value', 'target', 'met'], rows, classes)}\n"
        f"<h2>Batch-size sweep</h2>\n{curve}\n"
        f"<h2>Other figures</h2>\n{html_table(['figure', 'value'], figures)}\n"
        f"<h2>In-process stages (µs per event)</h2>\n{html_table(['stage', 'µs/event'], stages)}\n"
        f"<h2>Runs</h2>\n{html_table(columns, run_rows)}\n</body>\n</html>\n"
    )


def write_html_report(report: Mapping[str, Any], path: Path) -> None:
    """:func:`render_html` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_html(render_html(report), path)
