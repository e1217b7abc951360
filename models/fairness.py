"""Fairness of decisions across customer segments: who gets alerted, who is burdened by false alerts, whose frauds
are caught. Pure: frames in, a :class:`Fairness` out.

Segments come from a table keyed like the decisions (the simulator's ``customers.parquet``: ``card_token`` →
``home_country``, ``age_band``); they are never model features (a guard test holds the feature list apart from
``settings.governance.protected_attributes``). A decision whose key has no row in the table falls in the segment
``(unknown)``, reported and never flagged.

A model card judges a model the same way on its validation (or holdout) window: :func:`scored_fairness` takes a
score at or above the version's review threshold as an alert and the truth as known.

Decisions are judged once their day has matured (:func:`models.monitor.matured_before`): the latest label known by
``as_of`` decides fraud or genuine, and an unlabelled decision is genuine. An *alert* is a review or a decline.

Per segment value, measured by fairlearn's ``MetricFrame`` (alerts as predictions, frauds as the truth; fairlearn's
selection rate, false-positive rate and true-positive rate, and the counts, precision and score metrics it lacks as
small functions passed to it): decisions, alerts, frauds, true and false positives, alert rate, approval rate,
false-positive rate (alerts among genuine payments), precision and recall of alerts, and AUC / AP of the scores when
there are scores and both classes. Per segment column, one *reference* segment (the largest known one, or the one
named) and each segment's ratios to it: alert rate, false-positive rate, recall (equal opportunity) and approval
rate (the four-fifths rule). A ratio outside ``[bound, 1 / bound]`` is a *flag* when both the segment and the
reference hold at least ``min_decisions`` decisions: smaller segments are reported, their rates being noise, but
never flagged. A ratio is ``None`` when the reference's rate is 0 or either rate is undefined.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from statistics import NormalDist
from typing import Any

import numpy as np
import polars as pl

from models.evaluation import average_precision, roc_auc
from models.monitor import latest_decisions, latest_labels, matured_before

__all__ = [
    "GATE_COUNTS",
    "RATIOS",
    "UNKNOWN",
    "ColumnFairness",
    "Fairness",
    "Flag",
    "SegmentStats",
    "Segments",
    "card_segments",
    "disparity_breaches",
    "fairness",
    "judged_decisions",
    "ratio_interval",
    "scored_fairness",
    "segments_of",
]

UNKNOWN = "(unknown)"
RATIOS = {
    "alert_rate": "alert-rate ratio",
    "fpr": "false-positive-rate ratio",
    "recall": "recall ratio (equal opportunity)",
    "approval_rate": "approval-rate ratio (four-fifths rule)",
}
"""The ratios to the reference segment, in report order, with their names."""


@dataclass(frozen=True, slots=True)
class Segments:
    """A segment table: one row per ``key`` value, every column a string; ``columns`` to report by, in order;
    ``source`` says where the table came from (shown in reports)."""

    table: pl.DataFrame
    key: str
    columns: tuple[str, ...]
    source: str = ""


def segments_of(table: pl.DataFrame, key: str, columns: Sequence[str], source: str = "") -> Segments:
    """``table`` as :class:`Segments`: the key and ``columns`` only, cast to strings.

    Raises:
        ValueError: no columns, the key or a column missing (the message lists what the table has), the key among
            the columns, a column named ``alert``, ``fraud`` or ``score``, or a key value on more than one row.
    """
    if not columns:
        raise ValueError("no segment columns to report by")
    missing = [name for name in (key, *columns) if name not in table.columns]
    if missing:
        raise ValueError(f"segment table has no column {', '.join(missing)} (it has {', '.join(table.columns)})")
    if key in columns:
        raise ValueError(f"the key {key!r} cannot also be a segment column")
    reserved = sorted({"alert", "fraud", "score"} & set(columns))
    if reserved:
        raise ValueError(f"segment column {', '.join(reserved)}: a name fairness uses for its own columns; rename it")
    picked = table.select(pl.col(name).cast(pl.String) for name in dict.fromkeys((key, *columns)))
    repeated = picked.height - picked.get_column(key).n_unique()
    if repeated:
        raise ValueError(f"segment table has {repeated:,} repeated values of its key {key!r}: one row per key")
    return Segments(picked, key, tuple(dict.fromkeys(columns)), source)


def judged_decisions(decisions: pl.DataFrame, labels: pl.DataFrame, *, as_of: datetime, maturity: timedelta,
                     days: int | None = None) -> pl.DataFrame:  # fmt: skip
    """The decisions of the ``days`` latest matured event days (all matured days when ``None``), one per
    transaction, with ``day``, ``alert`` (review or decline) and ``fraud`` (the latest label known by ``as_of``;
    unlabelled is genuine); in decision order."""
    end = matured_before(as_of, maturity)
    rows = decisions.with_columns(day=pl.col("event_time").dt.date()).filter(pl.col("day") < end)
    if days is not None:
        rows = rows.filter(pl.col("day") >= end - timedelta(days=days))
    return (
        latest_decisions(rows)
        .join(latest_labels(labels, as_of), on="txn_id", how="left")
        .with_columns(alert=pl.col("decision").is_in(["review", "decline"]), fraud=pl.col("is_fraud").fill_null(False))
    )


@dataclass(frozen=True, slots=True)
class SegmentStats:
    """One segment's numbers (rates in [0, 1]; ``None`` where undefined) and its ratios to the reference."""

    value: str
    decisions: int
    alerts: int
    frauds: int
    true_positives: int
    false_positives: int
    alert_rate: float
    approval_rate: float
    fpr: float | None
    precision: float | None
    recall: float | None
    auc: float | None = None
    ap: float | None = None
    reference: bool = False
    flaggable: bool = False
    """At least ``min_decisions`` decisions, and a known segment."""
    ratios: Mapping[str, float | None] | None = None
    flags: tuple[str, ...] = ()
    """The RATIOS keys whose ratio is outside the bound (only when flaggable)."""


@dataclass(frozen=True, slots=True)
class ColumnFairness:
    """One segment column: its reference segment's value and every segment, in value order, ``(unknown)`` last."""

    column: str
    reference: str
    segments: list[SegmentStats]


@dataclass(frozen=True, slots=True)
class Flag:
    """A segment whose ratio to the reference is outside ``[bound, 1 / bound]``."""

    column: str
    segment: str
    reference: str
    metric: str
    ratio: float
    value: float
    reference_value: float

    def message(self, bound: float) -> str:
        """One line: the segment, which ratio, its value, both rates and the band it left."""
        band = f"[{bound:.2f}, {1 / bound:.2f}]"
        return (f"{self.column}={self.segment}: {RATIOS[self.metric]} {self.ratio:.3f} to {self.reference} "
                f"({self.value:.4f} against {self.reference_value:.4f}; outside {band})")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Fairness:
    """The whole judgement: every decision, each column's segments, the bound and minimum used, how many decisions
    had no segment row."""

    overall: SegmentStats
    columns: list[ColumnFairness]
    bound: float
    min_decisions: int
    unmatched: int

    @property
    def flags(self) -> list[Flag]:
        """Every flag, column by column, segments in order, metrics in RATIOS order."""
        out = []
        for column in self.columns:
            ref = next(s for s in column.segments if s.reference)
            for segment in column.segments:
                for metric in segment.flags:
                    ratio = (segment.ratios or {})[metric]
                    value, base = getattr(segment, metric), getattr(ref, metric)
                    assert ratio is not None and value is not None and base is not None
                    out.append(Flag(column.column, segment.value, ref.value, metric, ratio, value, base))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: bound, min_decisions, unmatched, overall, columns (segments with ratios and flags), flags."""
        return {
            "bound": self.bound,
            "band": [self.bound, 1 / self.bound],
            "min_decisions": self.min_decisions,
            "unmatched": self.unmatched,
            "overall": _plain(self.overall),
            "columns": [
                {"column": c.column, "reference": c.reference, "segments": [_plain(s) for s in c.segments]}
                for c in self.columns
            ],
            "flags": [asdict(flag) | {"message": flag.message(self.bound)} for flag in self.flags],
        }


def _plain(stats: SegmentStats) -> dict[str, Any]:
    out = asdict(stats)
    out["ratios"] = dict(stats.ratios) if stats.ratios is not None else None
    out["flags"] = list(stats.flags)
    return out


def fairness(judged: pl.DataFrame, segments: Segments, *, bound: float, min_decisions: int,
             reference: Mapping[str, str] | None = None) -> Fairness:  # fmt: skip
    """Judge ``judged`` rows (one per decision: ``segments.key``, ``alert``, ``fraud``, optionally ``score``) by
    each of ``segments.columns`` (see the module docstring); ``reference`` names a column's reference segment.

    Raises:
        ValueError: ``judged`` is empty or lacks the key, ``bound`` is not in (0, 1], or a named reference segment
            is absent.
    """
    if not 0.0 < bound <= 1.0:
        raise ValueError(f"the disparity bound must be in (0, 1]; got {bound}")
    if segments.key not in judged.columns:
        raise ValueError(f"the decisions have no column {segments.key!r} to find their segments by")
    if judged.is_empty():
        raise ValueError("no decisions to judge")
    keep = [name for name in ("alert", "fraud", "score") if name in judged.columns]
    rows = (
        judged.select(pl.col(segments.key).cast(pl.String), *keep)
        .join(segments.table, on=segments.key, how="left")
        .with_columns(pl.col(name).fill_null(UNKNOWN) for name in segments.columns)
    )
    unmatched = rows.height - rows.join(segments.table, on=segments.key, how="semi").height
    overall: SegmentStats | None = None
    columns = []
    for name in segments.columns:
        everyone, stats = _by_segment(rows, name)
        overall = overall or everyone
        columns.append(_column(name, stats, (reference or {}).get(name), bound=bound, min_decisions=min_decisions))
    assert overall is not None  # Segments has at least one column
    return Fairness(overall, columns, bound, min_decisions, unmatched)


def _column(column: str, stats: dict[str, SegmentStats], reference: str | None, *, bound: float,
            min_decisions: int) -> ColumnFairness:  # fmt: skip
    known = [s for s in stats.values() if s.value != UNKNOWN] or list(stats.values())
    if reference is None and known:
        reference = min(known, key=lambda s: (-s.decisions, s.value)).value
    if reference not in stats:
        present = ", ".join(sorted(stats)) or "none"
        raise ValueError(f"reference segment {column}={reference} has no decisions (segments: {present})")
    ref = stats[reference]
    enough = ref.decisions >= min_decisions
    out = []
    for value in sorted(stats, key=lambda v: (v == UNKNOWN, v)):
        s = stats[value]
        ratios = {metric: _ratio(getattr(s, metric), getattr(ref, metric)) for metric in RATIOS}
        flaggable = s.decisions >= min_decisions and value != UNKNOWN
        flags = tuple(metric for metric, ratio in ratios.items()
                      if flaggable and enough and value != reference and ratio is not None
                      and not bound <= ratio <= 1 / bound)  # fmt: skip
        out.append(_replace(s, reference=value == reference, flaggable=flaggable, ratios=ratios, flags=flags))
    return ColumnFairness(column, reference, out)


def _replace(stats: SegmentStats, **changes: Any) -> SegmentStats:
    return SegmentStats(**(asdict(stats) | changes))


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None or base == 0 else value / base


def _by_segment(rows: pl.DataFrame, column: str) -> tuple[SegmentStats, dict[str, SegmentStats]]:
    """Every row's numbers and each ``column`` segment's, measured by fairlearn's ``MetricFrame`` (alerts as the
    predictions, frauds as the truth; the scores', where there are, in a second frame on the scored rows)."""
    from fairlearn.metrics import MetricFrame  # pandas with it: never imported by the worker

    alert_metrics, score_metrics = _metrics()
    truth = rows.get_column("fraud").to_numpy().astype(bool)
    alerts = MetricFrame(metrics=alert_metrics, y_true=truth, y_pred=rows.get_column("alert").to_numpy().astype(bool),
                         sensitive_features=rows.get_column(column).to_numpy())  # fmt: skip
    overall, by_group = _stats("all", alerts.overall.to_dict()), {}
    for value, measured in alerts.by_group.iterrows():
        by_group[str(value)] = _stats(str(value), measured.to_dict())
    if "score" in rows.columns:
        scored = rows.filter(pl.col("score").is_not_null())
        if scored.height:
            ranks = MetricFrame(metrics=score_metrics, y_true=scored.get_column("fraud").to_numpy().astype(int),
                                y_pred=scored.get_column("score").to_numpy().astype(np.float64),
                                sensitive_features=scored.get_column(column).to_numpy())  # fmt: skip
            overall = _replace(overall, **_defined(ranks.overall.to_dict()))
            for value, measured in ranks.by_group.iterrows():
                by_group[str(value)] = _replace(by_group[str(value)], **_defined(measured.to_dict()))
    return overall, by_group


def _stats(value: str, measured: Mapping[str, float]) -> SegmentStats:
    """A segment's :class:`SegmentStats` from what fairlearn measured: counts as integers, and each rate ``None``
    where it is undefined (fairlearn reports 0 for a false-positive rate without genuine payments, a recall
    without frauds)."""
    n, alerts, frauds = int(measured["decisions"]), int(measured["alerts"]), int(measured["frauds"])
    return SegmentStats(
        value=value,
        decisions=n,
        alerts=alerts,
        frauds=frauds,
        true_positives=int(measured["true_positives"]),
        false_positives=int(measured["false_positives"]),
        alert_rate=float(measured["alert_rate"]) if n else 0.0,
        approval_rate=1.0 - float(measured["alert_rate"]) if n else 0.0,
        fpr=float(measured["fpr"]) if n > frauds else None,
        precision=float(measured["precision"]) if alerts else None,
        recall=float(measured["recall"]) if frauds else None,
    )


def _defined(measured: Mapping[str, float]) -> dict[str, float | None]:
    return {name: None if np.isnan(v) else float(v) for name, v in measured.items()}


def _metrics() -> tuple[dict[str, Any], dict[str, Any]]:
    """The metrics of the two frames: fairlearn's rates, and the counts and score metrics it does not have."""
    from fairlearn.metrics import count, false_positive_rate, selection_rate, true_positive_rate
    from sklearn.metrics import precision_score

    def positives(truth: Any, alert: Any) -> int:
        return int(np.asarray(alert, dtype=bool).sum())

    def frauds(truth: Any, alert: Any) -> int:
        return int(np.asarray(truth, dtype=bool).sum())

    def true_positives(truth: Any, alert: Any) -> int:
        return int((np.asarray(truth, dtype=bool) & np.asarray(alert, dtype=bool)).sum())

    def false_positives(truth: Any, alert: Any) -> int:
        return int((~np.asarray(truth, dtype=bool) & np.asarray(alert, dtype=bool)).sum())

    def precision(truth: Any, alert: Any) -> float:
        return float(precision_score(truth, alert, zero_division=0.0))

    def both_classes(metric: Any) -> Any:
        def measure(truth: Any, scores: Any) -> float:
            truth = np.asarray(truth)
            return metric(truth, scores) if 0 < truth.sum() < len(truth) else float("nan")

        return measure

    alert_metrics = {"decisions": count, "alerts": positives, "frauds": frauds, "true_positives": true_positives,
                     "false_positives": false_positives, "alert_rate": selection_rate, "fpr": false_positive_rate,
                     "precision": precision, "recall": true_positive_rate}  # fmt: skip
    return alert_metrics, {"auc": both_classes(roc_auc), "ap": both_classes(average_precision)}


def scored_fairness(rows: pl.DataFrame, thresholds: Mapping[str, Any], segments: Segments, *, bound: float,
                    min_decisions: int) -> Fairness:  # fmt: skip
    """:func:`fairness` of a model on scored rows (``card_token`` or the segments' key, ``is_fraud``, ``score``):
    an alert is a score at or above ``thresholds["review"]`` — the model's own alerts, before the serving policy's
    rules (a card with a known fraud, a large amount), which apply to every model alike."""
    judged = rows.with_columns(alert=pl.col("score") >= float(thresholds["review"]),
                               fraud=pl.col("is_fraud").cast(pl.Boolean))  # fmt: skip
    return fairness(judged, segments, bound=bound, min_decisions=min_decisions)


def card_segments(rows: pl.DataFrame, thresholds: Mapping[str, Any], segments: Segments, *, window: str,
                  bound: float, min_decisions: int) -> dict[str, Any]:  # fmt: skip
    """What a model card shows per segment (:meth:`Fairness.to_dict` of :func:`scored_fairness`, plus the
    ``window`` the rows are from, the segments' ``source`` and ``key``): the registry's ``segment_metrics``."""
    judged = scored_fairness(rows, thresholds, segments, bound=bound, min_decisions=min_decisions)
    return {"window": window, "source": segments.source, "key": segments.key, **judged.to_dict()}


GATE_COUNTS = {"fpr": ("false_positives", "false positives"), "recall": ("frauds", "frauds")}
"""What a gated ratio's two rates are counted in: a false-positive rate in false positives, a recall in frauds."""
_EVENTS = {"fpr": "false_positives", "recall": "true_positives"}
"""The events each rate is a share of (its numerator): the width of the ratio's interval comes from them."""


_TOTALS = {"fpr": lambda s: s["decisions"] - s["frauds"], "recall": lambda s: s["frauds"]}
"""What each rate is a share of: genuine payments for a false-positive rate, frauds for a recall."""


def ratio_interval(metric: str, segment: Mapping[str, Any], reference: Mapping[str, Any],
                   confidence: float) -> tuple[float, float] | None:  # fmt: skip
    """The ``confidence`` interval of ``segment``'s ``metric`` ratio to ``reference`` (``fpr`` or ``recall``; each a
    binomial share, the log of their ratio taken as normal: variance (1 - rate) / events for each, the delta
    method). A rate of no event at all is taken as half an event (Haldane's correction), so a segment where none of
    many frauds was caught still has an interval — near 0, not none. ``None`` without a denominator on either side
    (no genuine payment, or no fraud)."""
    ratio = (segment.get("ratios") or {}).get(metric)
    if ratio is None:
        return None
    rates = []
    for side in (segment, reference):
        events, total = side[_EVENTS[metric]], _TOTALS[metric](side)
        if total <= 0:
            return None
        rates.append((max(events, 0.5) / total, max(events, 0.5)))
    (a, n), (b, m) = rates
    spread = math.sqrt((1 - a) / n + (1 - b) / m)
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    return a / b * math.exp(-z * spread), a / b * math.exp(z * spread)


def disparity_breaches(card: Mapping[str, Any], ratios: Sequence[str], *, min_frauds: int, min_false_positives: int,
                       confidence: float = 0.95, where: str = "on the holdout") -> list[str]:  # fmt: skip
    """Each of ``ratios`` (``fpr``, ``recall``) of ``card`` (:meth:`Fairness.to_dict`, e.g. :func:`card_segments`
    on a challenger's holdout) that is *clearly* outside its band — its ``confidence`` interval
    (:func:`ratio_interval`) lies wholly outside — for a segment where both it and the reference are large enough
    to judge: at least ``min_false_positives`` false positives for an FPR ratio, ``min_frauds`` frauds for a recall
    ratio, and both flaggable (``min_decisions``, not ``(unknown)``). A ratio made of a few dozen events moves
    by a quarter from one window to the next for a model that treats everyone alike: judged on its value alone, a
    fair model would be refused, and the monitor would raise and drop breaches at random. One line each, saying
    ``where``; the retraining gate refuses a challenger for them, the monitor counts them. Empty: none."""
    low, high = card["band"]
    least = {"fpr": min_false_positives, "recall": min_frauds}
    breaches = []
    for column in card["columns"]:
        ref = next(s for s in column["segments"] if s["reference"])
        for segment in column["segments"]:
            if segment["reference"] or not segment["flaggable"] or not ref["flaggable"]:
                continue
            for metric in ratios:
                counted, noun = GATE_COUNTS[metric]
                if min(segment[counted], ref[counted]) < least[metric]:
                    continue
                interval = ratio_interval(metric, segment, ref, confidence)
                if interval is None or (interval[1] >= low and interval[0] <= high):
                    continue
                breaches.append(
                    f"fairness: {column['column']}={segment['value']} {RATIOS[metric]} "
                    f"{segment['ratios'][metric]:.3f} ({confidence:.0%} interval {interval[0]:.2f}-{interval[1]:.2f}) "
                    f"to {ref['value']} outside [{low:.2f}, {high:.2f}] {where} ({segment[counted]} against "
                    f"{ref[counted]} {noun})"
                )
    return breaches
