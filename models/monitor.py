"""Live quality and drift from what the stream wrote: the decision log and the label store (both :class:`DayLog`).

Labels arrive late and mostly for frauds (chargebacks, analyst verdicts; a later version may overturn one), so a
day's quality is only known once its labels have had time to arrive: a day is *matured* when ``as_of`` is at least
``maturity`` past its end, and then an unlabelled decision counts as genuine. Before that, the numbers are
provisional and say so. Only labels known by ``as_of`` are used (never the future), latest version per transaction.

Per event day and model version: decisions, alerts (review or decline) and the alert rate, frauds known, alerts
that were frauds, precision and recall of alerts, average precision of the scores, CP@k (the handbook's card
precision, k cards a day) and label coverage (the share of decisions with a label). Degraded decisions (no score)
count as decisions and alerts by their outcome but stay out of AP and CP@k.

Drift: the served features and scores of a trailing window of decisions, against the reference distributions of
the model that served them (:mod:`models.drift`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from features.definitions import FEATURE_NAMES
from models.drift import Drift, drift_report
from models.evaluation import average_precision, card_precision_at_k

__all__ = [
    "QUALITY_COLUMNS",
    "Window",
    "decay_reason",
    "latest_decisions",
    "latest_labels",
    "live_drift",
    "live_quality",
    "matured_before",
    "rollback_reason",
]

QUALITY_COLUMNS = ("day", "model_version", "matured", "decisions", "alerts", "alert_rate", "frauds", "caught",
                   "precision", "recall", "ap", "cp_at_k", "label_coverage")  # fmt: skip


def latest_decisions(decisions: pl.DataFrame) -> pl.DataFrame:
    """One row per transaction: its first decision (a redelivery appends the same decision again)."""
    return decisions.sort("decided_at").unique("txn_id", keep="first", maintain_order=True)


def latest_labels(labels: pl.DataFrame, as_of: datetime) -> pl.DataFrame:
    """``txn_id``, ``is_fraud``: the latest version of each transaction's label known by ``as_of``."""
    if labels.is_empty():
        return pl.DataFrame(schema={"txn_id": pl.String, "is_fraud": pl.Boolean})
    return (
        labels.filter(pl.col("known_at") <= as_of)
        .sort("label_version", "known_at")
        .group_by("txn_id")
        .agg(pl.col("is_fraud").last())
    )


def matured_before(as_of: datetime, maturity: timedelta) -> date:
    """The first event day not matured by ``as_of``: every day before it ended at least ``maturity`` before
    ``as_of`` (days are UTC days when ``as_of`` is UTC)."""
    return (as_of - maturity).date()


def live_quality(decisions: pl.DataFrame, labels: pl.DataFrame, *, as_of: datetime, maturity: timedelta,
                 k: int = 100) -> pl.DataFrame:  # fmt: skip
    """Quality per event day and model version (QUALITY_COLUMNS), days in order."""
    rows = (
        latest_decisions(decisions)
        .join(latest_labels(labels, as_of), on="txn_id", how="left")
        .with_columns(
            day=pl.col("event_time").dt.date(),
            labelled=pl.col("is_fraud").is_not_null(),
            fraud=pl.col("is_fraud").fill_null(False),
            alert=pl.col("decision") != "approve",
            model_version=pl.col("model_version").fill_null("none"),
        )
    )
    cutoff = matured_before(as_of, maturity)
    out: list[dict[str, Any]] = []
    for (day, version), group in rows.group_by("day", "model_version", maintain_order=True):
        n = group.height
        alerts = int(group.get_column("alert").sum())
        frauds = int(group.get_column("fraud").sum())
        caught = int((group.get_column("alert") & group.get_column("fraud")).sum())
        scored = group.filter(pl.col("score").is_not_null())
        truth = scored.get_column("fraud").cast(pl.Int8).to_numpy()
        scores = scored.get_column("score").to_numpy()
        both = 0 < truth.sum() < len(truth)
        cp = card_precision_at_k([day] * scored.height, scored.get_column("card_token").to_list(), truth, scores, k)
        out.append(
            {
                "day": day,
                "model_version": version,
                "matured": day < cutoff,
                "decisions": n,
                "alerts": alerts,
                "alert_rate": alerts / n,
                "frauds": frauds,
                "caught": caught,
                "precision": caught / alerts if alerts else None,
                "recall": caught / frauds if frauds else None,
                "ap": average_precision(truth, scores) if both else None,
                "cp_at_k": cp.mean if scored.height else None,
                "label_coverage": float(group.get_column("labelled").mean()),  # type: ignore[arg-type]
            }
        )
    schema = {"precision": pl.Float64, "recall": pl.Float64, "ap": pl.Float64, "cp_at_k": pl.Float64}
    frame = pl.DataFrame(out, schema_overrides=schema) if out else pl.DataFrame(schema=dict.fromkeys(QUALITY_COLUMNS))
    return frame.sort("day", "model_version") if out else frame


@dataclass(frozen=True, slots=True)
class Window:
    """The drift of one model's decisions over a trailing window: ``decisions`` compared, per-column drift."""

    model_version: str
    decisions: int
    drift: list[Drift]

    @property
    def breaches(self) -> list[Drift]:
        return [d for d in self.drift if d.level == "breach"]


def live_drift(decisions: pl.DataFrame, references: dict[str, dict[str, Any]], *, since: datetime,
               moderate: float = 0.1, breach: float = 0.25) -> list[Window]:  # fmt: skip
    """Drift of the decisions made since ``since``, per model version that has a reference (``references``:
    version → a manifest's ``reference``), against that reference."""
    recent = latest_decisions(decisions).filter(
        (pl.col("decided_at") >= since) & pl.col("score").is_not_null() & pl.col("model_version").is_not_null()
    )
    out = []
    for (version,), group in recent.group_by("model_version", maintain_order=True):
        reference = references.get(str(version))
        if reference is None or group.is_empty():
            continue
        matrix = group.select([f"f_{name}" for name in FEATURE_NAMES]).to_numpy().astype(np.float64)
        scores = group.get_column("score").to_numpy().astype(np.float64)
        report = drift_report(reference, matrix, scores, moderate=moderate, breach=breach)
        out.append(Window(str(version), group.height, report))
    return out


def rollback_reason(quality: pl.DataFrame, current: str, previous: str, *, margin: float,
                    min_days: int) -> str | None:  # fmt: skip
    """Why the current champion should give way to the previous one, or ``None``: its mean AP over its matured days
    is below the previous champion's (over the previous one's last ``min_days`` matured days) by more than
    ``margin``. Needs ``min_days`` matured days of each, so a day of noise never rolls back."""
    if quality.is_empty():
        return None
    matured = quality.filter(pl.col("matured") & pl.col("ap").is_not_null()).sort("day")
    new = matured.filter(pl.col("model_version") == current).get_column("ap")
    old = matured.filter(pl.col("model_version") == previous).get_column("ap").tail(min_days)
    if new.len() < min_days or old.len() < min_days:
        return None
    new_ap, old_ap = float(new.mean()), float(old.mean())  # type: ignore[arg-type]
    if new_ap >= old_ap - margin:
        return None
    return (f"matured AP of {current} is {new_ap:.4f} over {new.len()} days, below {previous}'s {old_ap:.4f} by more "
            f"than {margin}")  # fmt: skip


def decay_reason(quality: pl.DataFrame, version: str, expected_ap: float | None, *, days: int,
                 max_drop: float) -> str | None:  # fmt: skip
    """Why ``version``'s live quality has decayed, or ``None``: the mean AP of its last ``days`` matured days is
    below ``expected_ap`` (its validation AP, from the manifest) by more than ``max_drop``."""
    if quality.is_empty() or expected_ap is None:
        return None
    recent = (
        quality.filter(pl.col("matured") & pl.col("ap").is_not_null() & (pl.col("model_version") == version))
        .sort("day")
        .get_column("ap")
        .tail(days)
    )
    if recent.len() < days:
        return None
    live = float(recent.mean())  # type: ignore[arg-type]
    if live >= expected_ap - max_drop:
        return None
    return f"matured AP of {version} is {live:.4f} over its last {days} days, {expected_ap:.4f} on validation"
