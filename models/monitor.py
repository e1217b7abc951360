"""Live quality and drift from what the stream wrote: the decision log and the label store (both :class:`DayLog`).

Labels arrive late and mostly for frauds (chargebacks, analyst verdicts; a later version may overturn one), so a
day's quality is only known once its labels have had time to arrive: a day is *matured* when ``as_of`` is at least
``maturity`` past its end, and then an unlabelled decision counts as genuine. Before that, the numbers are
provisional and say so. Only labels known by ``as_of`` are used (never the future), latest version per transaction.

Per event day and model version: decisions; analysts' alerts (every review and decline but a blocked card's) and
their rate, the model's alerts (its score reached the review threshold) and the rules' apart, blocked cards'
declines; frauds known, frauds caught (declined or reviewed, whoever decided), precision of the alerts and of the
model's own, recall; average precision of the scores, CP@k (the handbook's card precision, k cards a day), label
coverage (the share of decisions with a label); and money under the cost model (:func:`models.cost.money_figures`):
reviews against the daily capacity, fraud amount caught and missed, false declines, the expected cost and the
saving against the rules alone on the same payments. Degraded decisions (no score) count as decisions and as the
rules' alerts by their outcome, but stay out of AP and CP@k.

Drift: the served features and scores of a trailing window of decisions, against the reference distributions of
the model that served them (:mod:`models.drift`: calendar features and windows too small are reported, not judged).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from features.definitions import FEATURE_NAMES
from fraudpipe.settings import CostSettings
from models.cost import Judged, money_figures
from models.drift import Drift, drift_report
from models.evaluation import average_precision, card_precision_at_k

__all__ = [
    "QUALITY_COLUMNS",
    "Window",
    "decay_reason",
    "decided_money",
    "latest_decisions",
    "latest_labels",
    "live_drift",
    "live_quality",
    "matured_before",
    "retrain_reasons",
    "rollback_due",
    "rollback_reason",
]

QUALITY_COLUMNS = ("day", "model_version", "matured", "decisions", "alerts", "alert_rate", "model_alerts",
                   "rule_alerts", "blocked_declines", "frauds", "caught", "precision", "model_precision", "recall",
                   "ap", "cp_at_k", "label_coverage", "reviews", "review_capacity", "fraud_amount",
                   "fraud_amount_caught", "fraud_amount_missed", "amount_recall", "false_declines",
                   "false_decline_amount", "expected_cost", "rules_only_cost", "saving_vs_rules_only")  # fmt: skip
_MONEY = QUALITY_COLUMNS[QUALITY_COLUMNS.index("reviews") :]
_LEVEL = {"approve": 0, "review": 1, "decline": 2}
_REASONS = pl.List(pl.Struct({"kind": pl.String, "rule": pl.String}))


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


def _sources(rows: pl.DataFrame) -> pl.DataFrame:
    """Decision-log rows with who decided: ``level`` (0 approve, 1 review, 2 decline), ``blocked`` (a blocked card's
    decline), ``by_model`` (its score reached the review threshold), ``forced`` (the outcome a rule — or the
    degraded fallback — gave it whatever the score: 0 none, 1 review, 2 decline; a rule's decline of a payment whose
    score stayed under the decline threshold is the rule's)."""
    rules = pl.col("reason_codes").fill_null("[]").str.json_decode(_REASONS)
    return rows.with_columns(
        level=pl.col("decision").replace_strict(_LEVEL, return_dtype=pl.Int8),
        blocked=rules.list.eval(pl.element().struct.field("rule") == "card_blocked").list.any().fill_null(False),
        ruled=rules.list.eval(pl.element().struct.field("kind") == "rule").list.any().fill_null(False),
    ).with_columns(
        by_model=(pl.col("score") >= pl.col("review_threshold")).fill_null(False) & ~pl.col("blocked"),
        forced=pl.when(pl.col("blocked"))
        .then(0)
        .when(pl.col("degraded").fill_null(False))
        .then(pl.col("level"))
        .when(pl.col("ruled"))
        .then(
            pl.when((pl.col("level") == 2) & ~(pl.col("score") >= pl.col("decline_threshold")).fill_null(False))
            .then(2)
            .otherwise(1)
        )
        .otherwise(0)
        .cast(pl.Int8),
    )


def decided_money(decisions: pl.DataFrame, fraud: pl.DataFrame, costs: CostSettings) -> dict[str, Any]:
    """:func:`models.cost.money_figures` of the decision log's ``decisions`` (one per transaction kept) against a
    truth (``fraud``: ``txn_id``, ``is_fraud``; a transaction missing there is genuine), over their event days."""
    rows = _sources(latest_decisions(decisions).join(fraud.select("txn_id", "is_fraud"), on="txn_id", how="left"))
    return _money(rows.with_columns(fraud=pl.col("is_fraud").fill_null(False)), costs)


def _money(rows: pl.DataFrame, costs: CostSettings) -> dict[str, Any]:
    days = rows.get_column("event_time").dt.date().to_list()
    judged = Judged.of(rows.get_column("fraud").to_numpy(), rows.get_column("amount").to_numpy(),
                       rows.get_column("score").fill_null(np.nan).to_numpy(), days,
                       rows.get_column("blocked").to_numpy(), rows.get_column("forced").to_numpy())  # fmt: skip
    return money_figures(judged, rows.get_column("level").to_numpy(), rows.get_column("by_model").to_numpy(), costs)


def live_quality(decisions: pl.DataFrame, labels: pl.DataFrame, *, as_of: datetime, maturity: timedelta,
                 k: int = 100, costs: CostSettings | None = None) -> pl.DataFrame:  # fmt: skip
    """Quality and money per event day and model version (QUALITY_COLUMNS), days in order."""
    costs = costs or CostSettings()
    rows = _sources(
        latest_decisions(decisions)
        .join(latest_labels(labels, as_of), on="txn_id", how="left")
        .with_columns(
            day=pl.col("event_time").dt.date(),
            labelled=pl.col("is_fraud").is_not_null(),
            fraud=pl.col("is_fraud").fill_null(False),
            model_version=pl.col("model_version").fill_null("none"),
        )
    )
    cutoff = matured_before(as_of, maturity)
    out: list[dict[str, Any]] = []
    for (day, version), group in rows.group_by("day", "model_version", maintain_order=True):
        money = _money(group, costs)
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
                "decisions": group.height,
                "alerts": money["alerts"],
                "alert_rate": money["alert_rate"],
                "model_alerts": money["model_alerts"],
                "rule_alerts": money["rule_alerts"],
                "blocked_declines": money["blocked_declines"],
                "frauds": money["frauds"],
                "caught": money["caught"],
                "precision": money["alert_precision"],
                "model_precision": money["model_precision"],
                "recall": money["recall"],
                "ap": average_precision(truth, scores) if both else None,
                "cp_at_k": cp.mean if scored.height else None,
                "label_coverage": float(group.get_column("labelled").mean()),  # type: ignore[arg-type]
                **{name: money[name] for name in _MONEY},
            }
        )
    floats = ("precision", "model_precision", "recall", "ap", "cp_at_k", "amount_recall", "saving_vs_rules_only")
    if not out:
        return pl.DataFrame(schema=dict.fromkeys(QUALITY_COLUMNS))
    return pl.DataFrame(out, schema_overrides=dict.fromkeys(floats, pl.Float64)).sort("day", "model_version")


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
               moderate: float = 0.1, breach: float = 0.25, min_decisions: int = 1) -> list[Window]:  # fmt: skip
    """Drift of the decisions made since ``since``, per model version that has a reference (``references``:
    version → a manifest's ``reference``), against that reference; a version with fewer than ``min_decisions``
    decisions there is reported, never judged (:mod:`models.drift`)."""
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
        report = drift_report(reference, matrix, scores, moderate=moderate, breach=breach, min_values=min_decisions)
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


def rollback_due(history: list[dict[str, Any]], quality: pl.DataFrame, *, margin: float,
                 min_days: int) -> tuple[str, str, str] | None:  # fmt: skip
    """The monitor's automatic rollback: ``(current, previous, why)`` when the champion's last alias change was a
    promotion from a previous version (``history``: the registry's, :meth:`models.registry.Registry.history`) and its
    matured AP fell below that version's (:func:`rollback_reason`); else ``None`` — a rollback is never undone, and
    nothing is rolled back twice."""
    changes = [entry for entry in history if entry["alias"] == "champion"]
    if not changes or changes[-1]["action"] != "promote" or changes[-1]["previous"] is None:
        return None
    current, previous = changes[-1]["version"], changes[-1]["previous"]
    reason = rollback_reason(quality, current, previous, margin=margin, min_days=min_days)
    return None if reason is None else (current, previous, reason)


def retrain_reasons(champion: str, windows: list[Window], quality: pl.DataFrame, expected_ap: float | None, *,
                    days: int, max_drop: float) -> list[str]:  # fmt: skip
    """What calls for retraining ``champion`` (``retrain --only-on-breach``): a drift breach of its decisions in
    ``windows`` (:func:`live_drift`), or its matured AP decayed below ``expected_ap`` (:func:`decay_reason`)."""
    breaches = [d.name for w in windows if w.model_version == champion for d in w.breaches]
    reasons = [f"drift breach for champion {champion} ({', '.join(breaches[:5])})"] if breaches else []
    decay = decay_reason(quality, champion, expected_ap, days=days, max_drop=max_drop)
    return reasons + ([f"decay: {decay}"] if decay else [])
