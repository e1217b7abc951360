"""Retraining from what the system served: the decision log (features exactly as served) and the labels matured
by ``as_of`` — a challenger, judged against the champion on the same recent holdout, promoted only through a gate.

Windows, all made of matured days (a day whose labels have had ``maturity`` to arrive; see :mod:`models.monitor`),
most recent last: ``train_days`` to fit on, then ``valid_days`` for early stopping and thresholds, then
``holdout_days`` that neither model trained on. Labels count only if known by ``as_of`` (latest version each), and an
unlabelled matured decision is genuine. Degraded decisions (no features) are left out.

Before fitting, the training rows pass a data-validation gate (:func:`validate`): enough rows and frauds, a fraud
rate within bounds, no feature missing far more often than in the champion's reference, no infinite value, no
feature wildly off the champion's reference (PSI past ``max_psi``: a unit or pipeline break, not drift). A failure
stops the run with the list of what failed.

The thresholds are the cheapest on the validation window under the cost model (:func:`models.cost.cheapest_thresholds`,
with the serving rules in force).

The promotion gate (:func:`gate`): the challenger's AP and CP@k on the holdout beat the champion's by at least their
margins, neither AUC nor recall at 1 % FPR drops by more than ``max_drop``, and (unless ``max_cost_increase`` is
unset) the challenger's policy does not cost more than the champion's by more than that fraction — each model with
its own thresholds. The champion is re-scored on the holdout's served features, so both are judged on the very same
rows.

Given a segment table (``segments``), the challenger's model card shows its metrics and fairness per segment on the
holdout (:func:`models.fairness.card_segments`, bounds from ``governance``), and with ``governance.gate_ratios`` the
gate also refuses a challenger whose false-positive-rate (or recall) ratio to the reference segment leaves the
bound for a segment large enough to judge (:func:`models.fairness.disparity_breaches`) — with a champion or
without one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from features.definitions import FEATURE_NAMES
from fraudpipe.settings import CostSettings, GovernanceSettings, RetrainSettings, ScoringSettings, TrainingSettings
from models.constraint import Constraint, constrain
from models.cost import cheapest_thresholds, judged, policy_figures
from models.dataset import fingerprint
from models.drift import psi
from models.evaluation import measure
from models.fairness import Segments, card_segments, disparity_breaches
from models.monitor import latest_decisions, latest_labels, matured_before
from models.protocol import window_of
from models.reference import reference
from models.registry import Registry
from models.train import fit, lgb_params, matrix, window_counts

__all__ = ["DataValidationError", "Outcome", "Plan", "gate", "plan", "retrain", "served_rows", "validate"]


class DataValidationError(ValueError):
    """The training rows failed the data-validation gate: ``failures`` says how."""

    def __init__(self, failures: list[str]) -> None:
        super().__init__("training data failed validation: " + "; ".join(failures))
        self.failures = failures


def served_rows(decisions: pl.DataFrame, labels: pl.DataFrame, as_of: datetime) -> pl.DataFrame:
    """META and every feature as served, one row per scored transaction, with the truth known by ``as_of``."""
    rows = latest_decisions(decisions).filter(pl.col("score").is_not_null())
    rows = rows.join(latest_labels(labels, as_of), on="txn_id", how="left")
    return rows.select(
        "txn_id",
        "card_token",
        "event_time",
        pl.col("is_fraud").fill_null(False),
        pl.lit(None, dtype=pl.String).alias("fraud_scenario"),
        *[pl.col(f"f_{name}").alias(name) for name in FEATURE_NAMES],
    ).sort("event_time")


@dataclass(frozen=True, slots=True)
class Plan:
    """The three windows, as [first day, end day) pairs."""

    train: tuple[date, date]
    valid: tuple[date, date]
    holdout: tuple[date, date]

    def as_dict(self) -> dict[str, str]:
        return {f"{name}_{end}": str(day) for name in ("train", "valid", "holdout")
                for end, day in zip(("from", "until"), getattr(self, name), strict=True)}  # fmt: skip


def plan(as_of: datetime, settings: RetrainSettings, maturity: timedelta) -> Plan:
    """The most recent windows whose days are all matured by ``as_of``."""
    end = matured_before(as_of, maturity)
    holdout = (end - timedelta(days=settings.holdout_days), end)
    valid = (holdout[0] - timedelta(days=settings.valid_days), holdout[0])
    return Plan((valid[0] - timedelta(days=settings.train_days), valid[0]), valid, holdout)


def validate(rows: pl.DataFrame, champion_reference: dict[str, Any] | None, settings: RetrainSettings) -> list[str]:
    """What is wrong with training ``rows`` (empty: nothing)."""
    failures = []
    n = rows.height
    frauds = int(rows.get_column("is_fraud").sum()) if n else 0
    if n < settings.min_rows:
        failures.append(f"{n} rows, fewer than {settings.min_rows}")
    if frauds < settings.min_frauds:
        failures.append(f"{frauds} frauds, fewer than {settings.min_frauds}")
    if n and not settings.min_fraud_rate <= frauds / n <= settings.max_fraud_rate:
        failures.append(f"fraud rate {frauds / n:.4f} outside [{settings.min_fraud_rate}, {settings.max_fraud_rate}]")
    if n == 0:
        return failures
    values = matrix(rows)
    for i, name in enumerate(FEATURE_NAMES):
        column = values[:, i]
        if np.isinf(column).any():
            failures.append(f"{name}: infinite values")
            continue
        if champion_reference is None:
            continue
        expected = champion_reference["features"][name]
        missing = float(np.isnan(column).mean())
        if missing > expected["missing"] + settings.max_null_increase:
            failures.append(f"{name}: missing in {missing:.0%} of rows, {expected['missing']:.0%} in the reference")
        shift = psi(expected, column)
        if shift > settings.max_psi:
            failures.append(f"{name}: PSI {shift:.2f} against the champion's reference (bound {settings.max_psi})")
    return failures


def gate(champion: dict[str, Any], challenger: dict[str, Any], settings: RetrainSettings) -> list[str]:
    """Why the challenger may not replace the champion (empty: it may). Metrics as :func:`models.evaluation.measure`
    gives them, both on the same holdout."""
    refusals = []
    for name, margin in (("ap", settings.margin_ap), ("cp_at_k", settings.margin_cp)):
        new, old = challenger.get(name), champion.get(name)
        if new is None or old is None:
            refusals.append(f"{name} not measurable on the holdout")
        elif new < old + margin:
            refusals.append(f"{name} {new:.4f} does not beat the champion's {old:.4f} by {margin}")
    for name in ("auc", "recall_at_1pct_fpr"):
        new, old = challenger.get(name), champion.get(name)
        if new is not None and old is not None and new < old - settings.max_drop:
            refusals.append(
                f"{name} collapses: {new:.4f} against the champion's {old:.4f} (max drop {settings.max_drop})"
            )
    new, old = challenger.get("expected_cost"), champion.get("expected_cost")
    bound = settings.max_cost_increase
    if bound is not None and new is not None and old is not None and new > old * (1 + bound):
        refusals.append(f"expected cost {new:,.2f} exceeds the champion's {old:,.2f} by more than {bound:.0%}")
    return refusals


@dataclass(slots=True)
class Outcome:
    """What a retraining run did: the windows, row counts, both models' holdout metrics, the verdict."""

    plan: Plan
    counts: dict[str, Any]
    champion: str | None
    challenger: str | None = None
    promoted: bool = False
    refusals: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0

    def report(self) -> dict[str, Any]:
        return {
            "windows": self.plan.as_dict(),
            "counts": self.counts,
            "champion": self.champion,
            "challenger": self.challenger,
            "promoted": self.promoted,
            "refusals": self.refusals,
            "metrics": self.metrics,
            "train_seconds": round(self.seconds, 2),
        }


def _headline(metrics: dict[str, Any], policy: dict[str, Any]) -> dict[str, Any]:
    keys = ("auc", "ap", "cp_at_k", "recall_at_1pct_fpr", "n_test", "n_test_fraud")
    money = ("expected_cost", "saving_vs_rules_only", "alert_rate", "amount_recall")
    return {**{key: metrics.get(key) for key in keys}, **{key: policy[key] for key in money}}


def retrain(decisions: pl.DataFrame, labels: pl.DataFrame, registry: Registry, *, as_of: datetime,
            maturity: timedelta, settings: RetrainSettings, training: TrainingSettings, k: int = 100,
            by: str | None = None, segments: Segments | None = None, governance: GovernanceSettings | None = None,
            costs: CostSettings | None = None, scoring: ScoringSettings | None = None,
            tuning: dict[str, Any] | None = None, constraint: Constraint | None = None) -> Outcome:  # fmt: skip
    """Train a challenger on the served history matured by ``as_of``, register it (alias ``challenger``), and
    promote it to ``champion`` if it passes the gate. ``tuning``: the study ``training`` came from, for the
    manifest (:func:`models.tune.summary`). ``constraint``: train under it (:func:`models.constraint.constrain`:
    held on the training window, AP judged on validation; the segments say who is who).

    Raises:
        DataValidationError: the training rows failed validation (nothing trained or registered).
        ValueError: a window without rows.
    """
    windows = plan(as_of, settings, maturity)
    rows = served_rows(decisions, labels, as_of)
    train, valid, holdout = (window_of(rows, span) for span in (windows.train, windows.valid, windows.holdout))
    counts = {"train": window_counts(train), "valid": window_counts(valid), "holdout": window_counts(holdout)}
    aliases = registry.aliases()
    champion_version = aliases.get("champion")
    champion = registry.load(champion_version) if champion_version else None
    outcome = Outcome(windows, counts, champion_version)
    failures = validate(train, champion.manifest.reference if champion else None, settings)
    if failures:
        raise DataValidationError(failures)
    if valid.height == 0 or holdout.height == 0:
        raise ValueError(f"no decisions in the {'validation' if valid.height == 0 else 'holdout'} window")
    costs, scoring = costs or CostSettings(), scoring or ScoringSettings()
    started = time.perf_counter()
    fitted, constrained = fit(train, training, valid), dict[str, Any]()
    if constraint is not None:
        if segments is None:
            raise ValueError(f"the fairness constraint needs a segment table with {constraint.column!r} "
                             "(FRAUD_GOVERNANCE__SEGMENTS_PATH, keyed by card_token)")  # fmt: skip
        fitted, constrained = constrain(train, valid, fitted, training, constraint, segments,
                                        governance or GovernanceSettings(), costs=costs, scoring=scoring)  # fmt: skip
    outcome.seconds = time.perf_counter() - started  # every model trained, under a constraint
    valid_scores = np.asarray(fitted.booster.predict(matrix(valid), num_threads=training.threads), dtype=np.float64)
    thresholds = cheapest_thresholds(judged(valid, valid_scores, scoring), costs, scoring.rules)
    inputs = matrix(holdout)
    scores = np.asarray(fitted.booster.predict(inputs, num_threads=training.threads), dtype=np.float64)
    new, _ = measure(holdout, scores, k)
    policy = policy_figures(judged(holdout, scores, scoring), thresholds["review"], thresholds["decline"], costs)
    outcome.metrics["challenger"] = _headline(new, policy)
    if champion is not None:
        old_scores = np.asarray(champion.booster.predict(inputs, num_threads=training.threads), dtype=np.float64)
        old, _ = measure(holdout, old_scores, k)
        served = champion.manifest.thresholds
        old_policy = policy_figures(judged(holdout, old_scores, scoring), served["review"], served["decline"], costs)
        outcome.metrics["champion"] = _headline(old, old_policy)
        outcome.refusals = gate(outcome.metrics["champion"], outcome.metrics["challenger"], settings)
    fields = {
        "created_by": by,
        "params": lgb_params(training),
        "rounds": fitted.rounds,
        "windows": {"source": "decision log", "as_of": as_of.isoformat(), **windows.as_dict(), **counts},
        "metrics": {
            **new,
            "policy": policy,
            "train_seconds": round(outcome.seconds, 2),
            "champion_on_holdout": outcome.metrics.get("champion"),
        },
        "thresholds": thresholds,
        "data_fingerprint": fingerprint(train),
        "reference": reference(inputs, scores),
        "tuning": tuning or {},
        "fairness_constraint": constrained,
        "notes": "retrained from the decision log",
    }
    segment_metrics = None
    bounds = governance or GovernanceSettings()
    if segments is None and bounds.gate_ratios:  # a gate asked for and not judged is a refusal, not a pass
        outcome.refusals.append("fairness: not judged — no segment table to judge the holdout by "
                                "(FRAUD_GOVERNANCE__SEGMENTS_PATH, keyed by card_token)")  # fmt: skip
    if segments is not None:
        segment_metrics = card_segments(holdout.with_columns(score=pl.Series(scores)), thresholds, segments,
                                        window="holdout", bound=bounds.disparity_bound,
                                        min_decisions=bounds.min_segment_decisions)  # fmt: skip
        if bounds.gate_ratios:
            outcome.refusals += disparity_breaches(
                segment_metrics,
                bounds.gate_ratios,
                min_frauds=bounds.min_segment_frauds,
                min_false_positives=bounds.min_segment_false_positives,
                confidence=bounds.breach_confidence,
            )
    manifest = registry.register(fitted.booster, fields, segment_metrics=segment_metrics)
    outcome.challenger = manifest.version
    registry.promote(manifest.version, alias="challenger", by=by, why="retrained challenger")
    if not outcome.refusals:
        why = "retrain: " + ", ".join(f"{m} {outcome.metrics['challenger'][m]:.4f}" for m in ("ap", "cp_at_k"))
        registry.promote(manifest.version, by=by, why=why)
        outcome.promoted = True
    return outcome
