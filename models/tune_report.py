"""One self-contained HTML report of a ``fraudpipe tune`` study, in the model report's look (:mod:`models.report`).

Top to bottom: the study (metric, folds' span, sampler, time); the chosen parameters beside the settings they
replace, with both values on the folds; the search's history (each trial's mean over the folds as a dot, the best
so far as a step line, the settings' own value as a dashed line); the folds (windows and sizes) with the chosen
parameters' figure on each; and the ten best trials.

``render_tune`` is pure and deterministic: the same report, the same bytes.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

from models.report import CSS, FRAUD, GENUINE, GREY, STYLE, html_table, new_axes, svg_figure

__all__ = ["render_tune"]

_BEST = 10


def render_tune(report: Mapping[str, Any], *, title: str) -> str:
    """The study (:func:`models.tune.tune`'s report) as one HTML document."""
    metric, trials = report["metric"], report["trials"]
    best = trials[report["best"]["number"]]
    context = [
        ("metric maximised", f"mean {metric} over the folds"),
        ("folds end before", report["until"]),
        ("folds", len(report["folds"])),
        ("label visibility", report["label_visibility"]),
        ("trials", len(trials)),
        ("sampler", report["sampler"]),
        ("seconds", report["seconds"]),
    ]
    current = report["current"]
    params = [(name, current["params"].get(name), report["chosen"][name]) for name in report["chosen"]]
    figures = [(f"mean {name}", current["mean"].get(name), best["mean"].get(name)) for name in best["mean"]]
    folds = [[f["train_start"], f["test_start"], f["test_end"], f["n_test"], f["n_test_fraud"], value]
             for f, value in zip(report["folds"], best["folds"], strict=True)]  # fmt: skip
    ranked = sorted((t for t in trials if t["value"] == t["value"]), key=lambda t: -t["value"])[:_BEST]
    names = list(report["chosen"])
    top = [[t["number"], t["value"], *(t["params"][n] for n in names)] for t in ranked]
    with mpl.rc_context(STYLE):
        plot = svg_figure("history", _history(trials, metric, current["value"]))
    heading = html.escape(title)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>{heading}</title>'
        f"<style>{CSS}</style></head>\n<body>\n<h1>{heading}</h1>\n"
        f"{html_table(['', ''], context)}\n"
        f"<h2>Chosen against the settings</h2>\n{html_table(['', 'settings', 'chosen'], [*figures, *params])}\n"
        f"<h2>Search history</h2>\n{plot}\n"
        f"<h2>Folds</h2>\n"
        f"{html_table(['train from', 'test from', 'test until', 'test payments', 'frauds', metric], folds)}\n"
        f"<h2>Best trials</h2>\n{html_table(['trial', metric, *names], top)}\n"
        "</body>\n</html>\n"
    )


def _history(trials: list[Mapping[str, Any]], metric: str, current: float) -> Figure:
    values = np.array([t["value"] for t in trials], dtype=np.float64)
    numbers = np.arange(len(values))
    fig, ax = new_axes(7.5, 3.2)
    ax.scatter(numbers, values, s=14, color=GENUINE, label="trial")
    best = np.fmax.accumulate(np.where(np.isnan(values), -np.inf, values))
    ax.step(numbers, np.where(np.isinf(best), np.nan, best), where="post", color=FRAUD, label="best so far")
    ax.axhline(current, color=GREY, linestyle="--", label="the settings (trial 0)")
    ax.set(xlabel="trial", ylabel=f"mean {metric} over the folds")
    ax.legend(loc="lower right")
    return fig
