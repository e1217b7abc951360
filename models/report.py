"""One self-contained HTML report for a trained fraud model: pictures first, the numbers beside them.

Top to bottom the report shows: the headline metrics table; the windows table (train / validation / test spans and
counts); the decision policy's workload and money on the same window, when there is one; the ROC curve (AUC in the
legend, the chance diagonal, a marker at a false-positive rate of 1 %); the precision-recall curve (AP in the
legend, the fraud base rate as a line); the score distributions of fraud and genuine transactions (same bins,
log-scaled counts); card precision@k per day with its mean; the top 20 features by total gain; and a few alerts with
their reasons (contributions that raise the score in red, those that lower it in green).

``render_report`` is pure: data in, one HTML string out. Images are inline SVG drawn with matplotlib's
object-oriented ``Figure`` API (no pyplot, no GUI backend, no global state), their text kept as text; the output is
the same for the same data. When the test window holds only one class, ROC and precision-recall are undefined and a
note stands in place of both curves. ``write_report`` writes that string to a file atomically.

The other HTML reports (the fairness report, :mod:`models.fairness_report`) share this one's look and drawing:
``STYLE`` and ``CSS``, ``new_axes``, ``svg_figure``, ``html_table``, ``html_note`` and ``write_html``.
"""

from __future__ import annotations

import html
import io
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

__all__ = [
    "CSS",
    "FRAUD",
    "GENUINE",
    "GREY",
    "STYLE",
    "ReportData",
    "html_note",
    "html_table",
    "new_axes",
    "render_report",
    "report_data",
    "svg_figure",
    "write_html",
    "write_report",
]

TOP_FEATURES = 20
FRAUD, GENUINE, GREY = "#c0392b", "#2e86c1", "#7f8c8d"
# Text stays text in the SVG (smaller, searchable); a fixed salt makes the SVG ids, hence the report, reproducible.
STYLE: dict[Any, Any] = {"svg.fonttype": "none", "svg.hashsalt": "fraudpipe", "font.size": 9}
_NO_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}
CSS = """
body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 1.5em 1.5em 0}
th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
caption{text-align:left;font-weight:600;padding-bottom:.3em}
figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}
figure svg{max-width:100%;height:auto}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em 1em}
.alerts{display:flex;flex-wrap:wrap;align-items:flex-start}
tr.raises td{color:#c0392b} tr.lowers td{color:#1e8449}
"""


@dataclass(frozen=True, slots=True)
class ReportData:
    """What the report shows. ``truth`` (0/1, 1 = fraud) and ``scores`` (probabilities) are parallel arrays, one
    entry per test transaction; ``cp_per_day`` is (ISO day, CP@k that day) in day order; ``importance`` maps a
    feature to its total gain; each explanation is ``{"txn_id", "score", "reasons": [{"feature", "value",
    "contribution", "direction": "raises" | "lowers"}, ...]}``; ``windows`` maps a window name to its fields."""

    title: str
    metrics: Mapping[str, object]
    truth: np.ndarray
    scores: np.ndarray
    cp_per_day: Sequence[tuple[str, float]]
    k: int
    importance: Mapping[str, float]
    explanations: Sequence[Mapping[str, object]]
    windows: Mapping[str, object] = field(default_factory=dict)
    policy: Mapping[str, object] = field(default_factory=dict)
    """The decision policy's workload and money on the same window (:func:`models.cost.policy_figures`), if any."""
    weeks: Sequence[Mapping[str, Any]] = ()
    """Several test weeks' figures (:func:`models.evaluate.weekly`), when the protocol ran on more than one."""


def report_data(title: str, booster: Any, rows: Any, metrics: dict[str, Any], windows: dict[str, Any]) -> ReportData:
    """The report's inputs from scored rows (:data:`models.train.META` columns + ``score``, a polars frame) and the
    metrics :func:`models.evaluation.measure` gave them; the three highest scores are explained."""
    from features.definitions import FEATURE_NAMES
    from models.scorer import explain
    from models.train import matrix

    top = rows.with_row_index("_i").sort("score", descending=True).head(3)
    reasons = explain(booster, matrix(top), top=5)
    return ReportData(
        title=title,
        metrics={k: v for k, v in metrics.items() if not isinstance(v, (list, dict))},
        truth=rows.get_column("is_fraud").cast(int).to_numpy(),
        scores=rows.get_column("score").to_numpy(),
        cp_per_day=[(item["day"], item["value"]) for item in metrics["cp_at_k_per_day"]],
        k=metrics["k"],
        importance=dict(zip(FEATURE_NAMES, np.asarray(booster.feature_importance("gain")).tolist(), strict=True)),
        explanations=[
            {"txn_id": txn, "score": score, "reasons": [r.model_dump() for r in codes]}
            for txn, score, codes in zip(top["txn_id"], top["score"], reasons, strict=True)
        ],
        windows=windows,
        policy={k: v for k, v in (metrics.get("policy") or {}).items() if not isinstance(v, (list, dict))},
    )


def render_report(data: ReportData) -> str:
    """The report as one HTML document (no external files or network: images inline as SVG)."""
    truth = np.asarray(data.truth).astype(np.int8).ravel()
    scores = np.asarray(data.scores, dtype=np.float64).ravel()
    if truth.shape != scores.shape:
        raise ValueError(f"truth has {truth.size} entries but scores {scores.size}")
    frauds = int(truth.sum())
    with mpl.rc_context(STYLE):
        if 0 < frauds < truth.size:
            curves = svg_figure("roc", _roc(truth, scores)) + svg_figure("pr", _precision_recall(truth, scores))
        else:
            curves = html_note(
                f"No ROC or precision-recall curve: both need frauds and genuine transactions, and the test "
                f"window has {frauds:,} frauds among {truth.size:,} transactions."
            )
        distributions = svg_figure("scores", _distributions(truth, scores))
        per_day = svg_figure("cp", _cp_per_day(data.cp_per_day, data.k)) if data.cp_per_day else html_note("No days.")
        gains = svg_figure("importance", _importance(data.importance)) if data.importance else html_note("No features.")
        weekly = _weeks(data.weeks) if len(data.weeks) > 1 else ""
    alerts = "".join(_explanation(alert) for alert in data.explanations) or html_note("No alerts explained.")
    title = html.escape(data.title)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{CSS}</style></head>\n<body>\n<h1>{title}</h1>\n"
        f"<h2>Headline metrics</h2>\n{html_table(['metric', 'value'], data.metrics.items())}\n"
        f"<h2>Windows</h2>\n{_windows(data.windows)}\n"
        + (f"<h2>Decisions and money</h2>\n{_policy(data.policy)}\n" if data.policy else "")
        + (f"<h2>Test weeks</h2>\n{weekly}\n" if weekly else "")
        + f"<h2>Ranking</h2>\n{curves}\n<h2>Score distributions</h2>\n{distributions}\n"
        f"<h2>Card precision@{data.k} per day</h2>\n{per_day}\n"
        f"<h2>Feature importance (gain, top {TOP_FEATURES})</h2>\n{gains}\n"
        f'<h2>Explained alerts</h2>\n<div class="alerts">{alerts}</div>\n</body>\n</html>\n'
    )


def write_report(data: ReportData, path: Path) -> None:
    """render_report to ``path`` atomically (temp file in the same folder + os.replace)."""
    write_html(render_report(data), path)


def write_html(document: str, path: Path) -> None:
    """``document`` to ``path`` atomically (temp file in the same folder + os.replace)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")  # not mkstemp: keep the umask's mode
    try:
        with temporary.open("x", encoding="utf-8") as file:
            file.write(document)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _roc(truth: np.ndarray, scores: np.ndarray) -> Figure:
    fpr, tpr, _ = roc_curve(truth, scores)
    auc = float(roc_auc_score(truth, scores))
    tpr_at_1pct = float(tpr[fpr <= 0.01].max())  # fpr[0] is 0, so never empty
    fig, ax = new_axes(4.8, 4.4)
    ax.plot(fpr, tpr, color=FRAUD, label=f"model (AUC = {auc:.4f})")
    ax.plot([0, 1], [0, 1], color=GREY, linestyle="--", linewidth=1, label="chance")
    ax.plot([0.01], [tpr_at_1pct], "ko", label=f"FPR 1 %: TPR {tpr_at_1pct:.3f}")
    ax.set(title="ROC curve", xlabel="false-positive rate", ylabel="true-positive rate (recall)", xlim=(0, 1))
    ax.legend(loc="lower right")
    return fig


def _precision_recall(truth: np.ndarray, scores: np.ndarray) -> Figure:
    precision, recall, _ = precision_recall_curve(truth, scores, drop_intermediate=True)
    ap, base_rate = float(average_precision_score(truth, scores)), float(truth.mean())
    fig, ax = new_axes(4.8, 4.4)
    ax.plot(recall, precision, color=FRAUD, drawstyle="steps-post", label=f"model (AP = {ap:.4f})")
    ax.axhline(base_rate, color=GREY, linestyle="--", linewidth=1, label=f"base rate {base_rate:.4f}")
    ax.set(title="Precision-recall curve", xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="upper right")
    return fig


def _distributions(truth: np.ndarray, scores: np.ndarray) -> Figure:
    bins = np.histogram_bin_edges(scores, bins=50).tolist()
    fig, ax = new_axes(6.4, 3.6)
    for label, mask, colour in (("genuine", truth == 0, GENUINE), ("fraud", truth == 1, FRAUD)):
        if mask.any():
            ax.hist(scores[mask], bins=bins, color=colour, alpha=0.55, label=f"{label} ({int(mask.sum()):,})")
    if scores.size:
        ax.set_yscale("log")
        ax.legend(loc="upper right")
    ax.set(title="Scores by class (same bins)", xlabel="score", ylabel="transactions (log scale)")
    return fig


def _cp_per_day(cp_per_day: Sequence[tuple[str, float]], k: int) -> Figure:
    days, values = [day for day, _ in cp_per_day], np.array([value for _, value in cp_per_day], dtype=np.float64)
    mean = float(values.mean())
    fig, ax = new_axes(min(max(6.4, 0.22 * len(days)), 14.0), 3.6)
    ax.bar(np.arange(len(days)), values, color=GENUINE)
    ax.axhline(mean, color=FRAUD, linestyle="--", label=f"mean {mean:.3f}")
    ax.set_xticks(np.arange(len(days)), days, rotation=90, fontsize=7, parse_math=False)
    ax.set(title=f"Card precision@{k} per day", ylabel=f"CP@{k}", ylim=(0, max(1.0, float(values.max()))))
    ax.legend(loc="upper right")
    return fig


def _importance(importance: Mapping[str, float]) -> Figure:
    top = sorted(importance.items(), key=lambda item: (-item[1], item[0]))[:TOP_FEATURES][::-1]  # largest on top
    fig, ax = new_axes(6.4, 0.9 + 0.24 * len(top))
    ax.barh(np.arange(len(top)), [gain for _, gain in top], color=GENUINE)
    ax.set_yticks(np.arange(len(top)), [name for name, _ in top], parse_math=False)  # a name may hold "$"
    ax.set(title="Feature importance", xlabel="total gain")
    return fig


def _explanation(alert: Mapping[str, object]) -> str:
    reasons = alert.get("reasons", ())
    rows, classes = [], []
    for reason in reasons if isinstance(reasons, Iterable) else ():
        if isinstance(reason, Mapping):
            rows.append([reason.get(key) for key in ("feature", "value", "contribution", "direction")])
            classes.append(str(reason.get("direction")) if reason.get("direction") in ("raises", "lowers") else "")
    caption = f"{_text(alert.get('txn_id'))} — score {_text(alert.get('score'))}"
    return html_table(["feature", "value", "contribution", "direction"], rows, classes, caption)


def _weeks(weeks: Sequence[Mapping[str, Any]]) -> str:
    """Each test week's AUC, AP, CP@k and the oracle's CP@k, as a table and a plot; mean ± std below."""
    names = ("auc", "ap", "cp_at_k", "oracle_cp_at_k")
    fig, ax = new_axes(7.0, 3.2)
    starts = [str(w["test_start"]) for w in weeks]
    for name in names:
        ax.plot(starts, [np.nan if w[name] is None else w[name] for w in weeks], marker="o", label=name)
    ax.set(title="Per test week", xlabel="test week from", ylim=(0, 1.02))
    ax.legend(loc="lower left", fontsize="small")
    rows = [[w["test_start"], *(w[name] for name in names)] for w in weeks]
    for label, reduce in (("mean", np.mean), ("std", np.std)):
        rows.append([label, *(float(reduce([w[n] for w in weeks if w[n] is not None])) for n in names)])
    return svg_figure("weeks", fig) + html_table(["test week from", *names], rows)


def _policy(policy: Mapping[str, object]) -> str:
    note = html_note(
        "The serving policy on this window: the model's thresholds, the rules in force, blocked cards "
        "declined; money under the cost model (FRAUD_COST__*), against the same rules without a model."
    )
    return note + html_table(["figure", "value"], policy.items())


def _windows(windows: Mapping[str, object]) -> str:
    spans = {name: span if isinstance(span, Mapping) else {"value": span} for name, span in windows.items()}
    if not spans:
        return html_note("No windows given.")
    columns = list(dict.fromkeys(key for span in spans.values() for key in span))
    rows = [[name, *(span.get(column) for column in columns)] for name, span in spans.items()]
    return html_table(["window", *map(str, columns)], rows)


def html_table(header: Sequence[str], rows: Iterable[Sequence[object]], classes: Sequence[str] = (),
               caption: str = "") -> str:  # fmt: skip
    """An HTML table: ``header`` cells, then one row per item of ``rows`` (``classes[i]``: the CSS class of row
    ``i``, if any); numbers right-aligned, every cell escaped."""
    head = "".join(f"<th>{html.escape(name)}</th>" for name in header)
    body = []
    for index, row in enumerate(rows):
        css = f' class="{classes[index]}"' if index < len(classes) and classes[index] else ""
        cells = "".join(f"<td{_numeric(value)}>{html.escape(_text(value))}</td>" for value in row)
        body.append(f"<tr{css}>{cells}</tr>")
    title = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{title}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _text(value: object) -> str:
    """A cell's text: floats to 4 decimals, integers with thousands separators, nothing as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        return f"{float(value):.4f}"
    return str(value)


def _numeric(value: object) -> str:
    numeric = isinstance(value, int | float | np.number) and not isinstance(value, bool | np.bool_)
    return ' class="num"' if numeric else ""


def html_note(text: str) -> str:
    """``text``, escaped, as a highlighted note paragraph."""
    return f'<p class="note">{html.escape(text)}</p>'


def new_axes(width: float, height: float) -> tuple[Figure, Axes]:
    """A figure of ``width`` x ``height`` inches with one axes; constrained layout (no tight_layout warnings)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    ax.grid(alpha=0.3)
    return fig, ax


def svg_figure(name: str, fig: Figure) -> str:
    """``fig`` as an inline SVG in a ``<figure id=name>``; its ids are prefixed with ``name`` to stay unique."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata=_NO_METADATA)
    svg = buffer.getvalue()
    svg = re.sub(r'(\bid="|xlink:href="#|url\(#)', rf"\g<1>{name}-", svg[svg.index("<svg") :])
    return f'<figure id="{name}">{svg}</figure>'
