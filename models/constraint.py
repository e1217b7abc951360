"""Training under a fairness constraint: ``fraudpipe train`` / ``retrain`` with ``--fairness-constraint``.

The protected attribute (a segment column such as ``home_country``, joined to the training rows by card) is used
here only, to weigh the training loss — never as a model input, never at decision time: the model is the same
LightGBM booster on :data:`features.definitions.FEATURE_NAMES`, served like any other.

**The method: a penalty on the segments' soft alert rates.** The objective is LightGBM's log-loss (frauds weighted
by ``scale_pos_weight``) plus ``strength * rows * sum_g w_g (ln r_g - ln r)^2``, where ``r_g`` is segment ``g``'s
*soft* false-positive rate (the mean over its genuine payments of ``sigmoid((f - t) / softness)``, ``f`` the raw
score, ``t`` the logit of the review threshold the model trained without it was given), ``r`` the same over the
genuine payments of the segments counted and ``w_g`` a segment's share of them. Equalised odds adds the same term
over frauds (soft recall). The gradient is exact; the Hessian is the log-loss's alone. Segments with too few genuine
payments (``min_segment_decisions``) or frauds (``min_segment_frauds``), and cards the segment table does not know,
are left out
spread the pull over the bulk of genuine scores and barely moved the hard ratio, 0.1 made the boosting unstable
(hand-made biased data, 60,000 payments).

**Why this, and not fairlearn's reductions or reweighting** (default preset, seed 0, 5,000 cards; the home-country
false-positive-rate ratio of the model's own alerts): fairlearn's ``GridSearch`` (FPR parity) spans an 8-dimensional
grid for 9 countries and its points collapsed AP from 0.83 to 0.44-0.50; ``ExponentiatedGradient`` (274 s) returned a
mixture of hard classifiers, 0/1 outputs with no ranking, where this system needs a score for its cost-chosen
thresholds (AP 0.71); reweighting each country's genuine payments by its validation ratio (6 rounds) moved nothing.
The penalty keeps one scoring booster and acts where a false positive is made: genuine payments near the threshold.

**Training under the bound.** The constraint is held on the training window, as fairlearn's reductions hold theirs:
the baseline first, then each of ``strengths`` in turn, each model at its own cost-chosen thresholds; the first
whose worst ratio there lies within [``bound``, 1 / ``bound``] with a validation AP at most ``max_ap_loss`` below the
baseline's is kept, else the one with the smallest worst ratio within that AP (the baseline if none). A ratio counts
only for a segment large enough to judge (the promotion gate's minimums). Every try is recorded in the manifest
(``fairness_constraint``, with its ratios on both windows) and shown on the model card. Whether the constraint holds
on data the model never saw is the promotion gate's and the monitor's to judge (:mod:`models.fairness`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import polars as pl
from numpy.typing import NDArray

from features.definitions import FEATURE_NAMES
from fraudpipe.settings import CostSettings, GovernanceSettings, ScoringSettings, TrainingSettings
from models.cost import cheapest_thresholds, judged
from models.evaluation import average_precision
from models.fairness import GATE_COUNTS, UNKNOWN, Segments, card_segments, segments_of
from models.train import Fitted, Progress, lgb_params, matrix

__all__ = ["KINDS", "Constraint", "as_binary", "constrain", "fit_penalised", "penalty_objective", "segment_codes"]

Kind = Literal["none", "false_positive_rate_parity", "equalized_odds"]
KINDS: tuple[str, ...] = ("none", "false_positive_rate_parity", "equalized_odds")
_RATIOS = {"false_positive_rate_parity": ("fpr",), "equalized_odds": ("fpr", "recall")}
"""The ratios each constraint evens out (:data:`models.fairness.RATIOS`)."""


@dataclass(frozen=True, slots=True)
class Constraint:
    """A fairness constraint to train under: ``kind`` on segment ``column``, its ratios held within
    [``bound``, 1 / ``bound``] (``governance.disparity_bound``)."""

    kind: Kind
    column: str
    bound: float = 0.8
    strengths: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)
    softness: float = 0.3
    max_ap_loss: float = 0.02

    @classmethod
    def of(cls, governance: GovernanceSettings, kind: str | None = None, column: str | None = None,
           bound: float | None = None) -> Constraint | None:  # fmt: skip
        """The constraint ``governance`` sets (``fairness_constraint`` …), each part overridden when given;
        ``None`` for ``none``."""
        chosen = kind or governance.fairness_constraint
        if chosen == "none":
            return None
        if chosen not in KINDS:
            raise ValueError(f"fairness constraint must be one of {', '.join(KINDS)}; got {chosen!r}")
        return cls(chosen, column or governance.fairness_column,  # type: ignore[arg-type]
                   governance.disparity_bound if bound is None else bound, governance.fairness_strengths,
                   max_ap_loss=governance.fairness_max_ap_loss)  # fmt: skip


def segment_codes(rows: pl.DataFrame, segments: Segments, column: str) -> tuple[NDArray[np.intp], list[str]]:
    """Each row's segment of ``column`` (joined by ``card_token``) as a code into the returned names; a card the
    table does not know is :data:`models.fairness.UNKNOWN`.

    Raises:
        ValueError: the segment table has no such column.
    """
    if column not in segments.table.columns:
        raise ValueError(f"segment table has no column {column!r} (it has {', '.join(segments.table.columns)})")
    table = segments.table.select(pl.col(segments.key).alias("card_token"), pl.col(column).alias("_segment"))
    values = (rows.select("card_token").join(table, on="card_token", how="left", maintain_order="left")
              .get_column("_segment").fill_null(UNKNOWN).to_numpy())  # fmt: skip
    names, codes = np.unique(values, return_inverse=True)
    return codes.astype(np.intp), [str(name) for name in names]


def _sigmoid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=np.float64)


@dataclass(slots=True)
class _Part:
    """One class's share of the penalty: its rows, their segment codes, the segments counted (weight > 0)."""

    rows: NDArray[np.bool_]
    codes: NDArray[np.intp]
    counts: NDArray[np.float64]
    weights: NDArray[np.float64] = field(init=False)

    def __post_init__(self) -> None:
        total = self.counts.sum()
        self.weights = self.counts / total if total else self.counts

    def gradient(self, f: NDArray[np.float64], threshold: float, softness: float) -> tuple[float, NDArray[np.float64]]:
        """The penalty ``sum_g w_g (ln r_g - ln r)^2`` of these rows and its gradient in their raw scores."""
        s = _sigmoid((f[self.rows] - threshold) / softness)
        n = self.counts.sum()
        if n == 0:  # no segment large enough: nothing to even out
            return 0.0, np.zeros_like(s)
        counted = self.weights[self.codes] > 0
        counts = np.maximum(self.counts, 1.0)
        r_g = np.maximum(np.bincount(self.codes, weights=s * counted, minlength=len(counts)) / counts, 1e-12)
        r = max(float((s * counted).sum() / n), 1e-12)
        d = np.where(self.weights > 0, np.log(r_g) - math.log(r), 0.0)
        common = 2.0 * float((self.weights * d).sum()) / (r * n)
        per = 2.0 * d / (r_g * n)
        grad = np.where(counted, per[self.codes] - common, 0.0) * s * (1.0 - s) / softness
        return float((self.weights * d * d).sum()), grad


def penalty_objective(
    truth: NDArray[Any],
    codes: NDArray[np.intp],
    *,
    kind: Kind,
    threshold: float,
    strength: float,
    softness: float = 0.3,
    min_genuine: int = 200,
    min_frauds: int = 30,
    positive_weight: float = 1.0,
    left_out: int | None = None,
) -> Callable[..., tuple[Any, ...]]:
    """LightGBM's binary log-loss (frauds weighted ``positive_weight``: its ``scale_pos_weight``, which LightGBM
    ignores under a custom objective) plus the module's penalty, as a custom objective ``(raw scores, data) ->
    (grad, hess)``; ``threshold`` in logits. Segments with fewer than ``min_genuine`` genuine payments
    (``min_frauds`` frauds for the recall part), and segment ``left_out`` (cards the table does not know), are not
    penalised."""
    y = np.asarray(truth, dtype=np.float64)
    weight = np.where(y == 1, positive_weight, 1.0)
    groups = int(codes.max(initial=0)) + 1
    sides = [(y == 0, min_genuine)] + ([(y == 1, min_frauds)] if kind == "equalized_odds" else [])
    parts = []
    for rows, least in sides:
        counts = np.bincount(codes[rows], minlength=groups).astype(np.float64)
        counted = counts >= least
        if left_out is not None:
            counted[left_out] = False
        parts.append(_Part(rows, codes[rows], np.where(counted, counts, 0.0)))
    scale = strength * len(y)

    def objective(preds: NDArray[np.float64], _: Any) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        p = _sigmoid(preds)
        grad, hess = weight * (p - y), weight * np.maximum(p * (1.0 - p), 1e-6)
        for part in parts:
            _, g = part.gradient(preds, threshold, softness)
            grad[part.rows] += scale * g
        return grad, hess

    return objective


def as_binary(booster: lgb.Booster, init: float, rounds: int) -> lgb.Booster:
    """A booster trained with a custom objective from ``init`` (logit) as a plain binary model of its first
    ``rounds``: the objective named (so ``predict`` gives probabilities) and ``init`` added to every leaf of the
    first tree — what LightGBM's own ``boost_from_average`` does — so it scores like any other version."""
    text = booster.model_to_string(num_iteration=rounds)
    plain = lgb.Booster(model_str=text.replace("\nfeature_names=", "\nobjective=binary sigmoid:1\nfeature_names=", 1))
    leaves = plain.dump_model(num_iteration=1)["tree_info"][0]["num_leaves"]
    for leaf in range(leaves):
        plain.set_leaf_output(0, leaf, plain.get_leaf_output(0, leaf) + init)
    return lgb.Booster(model_str=plain.model_to_string())


def fit_penalised(x: NDArray[np.float64], truth: NDArray[Any], codes: NDArray[np.intp], settings: TrainingSettings,
                  objective: Callable[..., Any], valid: tuple[NDArray[np.float64], NDArray[Any]] | None = None,
                  progress: Progress | None = None) -> Fitted:  # fmt: skip
    """:func:`models.train.fit_arrays` under ``objective`` (:func:`penalty_objective`), from the prior's logit;
    returns a plain binary booster (:func:`as_binary`)."""
    prior = float(np.clip(np.mean(truth), 1e-6, 1 - 1e-6))
    init = math.log(prior / (1 - prior))
    data = lgb.Dataset(x, truth, feature_name=list(FEATURE_NAMES), init_score=np.full(len(truth), init))
    callbacks: list[Callable[[Any], None]] = []
    if progress is not None:
        callbacks.append(lambda env: progress(env.iteration + 1, env.end_iteration))
    sets: list[lgb.Dataset] = []
    if valid is not None:
        sets = [lgb.Dataset(valid[0], valid[1], reference=data, init_score=np.full(len(valid[1]), init))]
        callbacks.append(lgb.early_stopping(settings.early_stopping_rounds, verbose=False))
    started = time.perf_counter()
    params = {key: value for key, value in lgb_params(settings).items() if key != "scale_pos_weight"}
    params["objective"] = objective  # scale_pos_weight is the objective's (penalty_objective's positive_weight)
    booster = lgb.train(params, data, settings.rounds, valid_sets=sets, valid_names=["valid"] * len(sets),
                        callbacks=callbacks)  # fmt: skip
    rounds = booster.best_iteration if sets and booster.best_iteration > 0 else booster.current_iteration()
    return Fitted(as_binary(booster, init, rounds), rounds, time.perf_counter() - started)


def _measured(rows: pl.DataFrame, scores: NDArray[np.float64], thresholds: dict[str, Any], segments: Segments,
              constraint: Constraint, governance: GovernanceSettings) -> dict[str, Any]:  # fmt: skip
    """AP and the constrained ratios, at ``thresholds``, of the segments of ``rows`` large enough to judge
    (flaggable, and both it and the reference with ``min_segment_false_positives`` false positives for a
    false-positive-rate ratio, ``min_segment_frauds`` frauds for a recall ratio)."""
    card = card_segments(rows.with_columns(score=pl.Series(scores)), thresholds, segments, window="",
                         bound=constraint.bound, min_decisions=governance.min_segment_decisions)  # fmt: skip
    least = {"fpr": governance.min_segment_false_positives, "recall": governance.min_segment_frauds}
    column = card["columns"][0]
    reference = next(s for s in column["segments"] if s["reference"])
    ratios: dict[str, dict[str, float]] = {}
    for metric in _RATIOS[constraint.kind]:
        counted, minimum = GATE_COUNTS[metric][0], least[metric]
        ratios[metric] = {
            s["value"]: round(s["ratios"][metric], 4) for s in column["segments"]
            if s["flaggable"] and s["ratios"].get(metric) is not None and min(s[counted], reference[counted]) >= minimum
        }  # fmt: skip
    spread = [abs(math.log(r)) for by in ratios.values() for r in by.values() if r > 0]
    return {"ap": round(average_precision(rows.get_column("is_fraud").to_numpy(), scores), 4),
            "worst_ratio": round(math.exp(max(spread, default=0.0)), 4), "reference": reference["value"],
            "ratios": ratios}  # fmt: skip


def constrain(train: pl.DataFrame, valid: pl.DataFrame, baseline: Fitted, settings: TrainingSettings,
              constraint: Constraint, segments: Segments, governance: GovernanceSettings, *,
              costs: CostSettings | None = None, scoring: ScoringSettings | None = None,
              progress: Progress | None = None) -> tuple[Fitted, dict[str, Any]]:  # fmt: skip
    """The booster to register under ``constraint`` — ``baseline`` (trained without it) or a penalised one, chosen
    as the module says — and the record of the choice for the manifest's ``fairness_constraint``.

    Raises:
        ValueError: the segment table has no such column, or fewer than two segments are large enough to constrain.
    """
    costs, scoring = costs or CostSettings(), scoring or ScoringSettings()
    by_column = segments_of(segments.table, segments.key, [constraint.column], source=segments.source)
    codes, names = segment_codes(train, segments, constraint.column)
    truth = train.get_column("is_fraud").cast(pl.Int8).to_numpy()
    genuine = np.bincount(codes[truth == 0], minlength=len(names))
    if int((genuine >= governance.min_segment_decisions).sum()) < 2:
        raise ValueError(f"fairness constraint on {constraint.column!r}: fewer than two segments with "
                         f"{governance.min_segment_decisions} genuine training payments")  # fmt: skip
    x, x_valid = matrix(train), matrix(valid)
    checked = (x_valid, valid.get_column("is_fraud").cast(pl.Int8).to_numpy())

    def judge(fitted: Fitted) -> dict[str, Any]:
        """The model at its own thresholds (the cheapest on validation): ratios on the training window, where the
        constraint is trained, and on the validation window; AP on validation."""
        scores = np.asarray(fitted.booster.predict(x_valid, num_threads=settings.threads), dtype=np.float64)
        thresholds = cheapest_thresholds(judged(valid, scores, scoring), costs, scoring.rules)
        on_train = np.asarray(fitted.booster.predict(x, num_threads=settings.threads), dtype=np.float64)
        trained = _measured(train, on_train, thresholds, by_column, constraint, governance)
        checked_on = _measured(valid, scores, thresholds, by_column, constraint, governance)
        return {"ap": checked_on["ap"], "review": round(float(thresholds["review"]), 6),
                "worst_ratio": trained["worst_ratio"], "reference": trained["reference"], "ratios": trained["ratios"],
                "validation": {k: checked_on[k] for k in ("worst_ratio", "reference", "ratios")}}  # fmt: skip

    before = judge(baseline)
    low, high = constraint.bound, 1 / constraint.bound
    record: dict[str, Any] = {
        "kind": constraint.kind, "column": constraint.column, "band": [round(low, 4), round(high, 4)],
        "softness": constraint.softness, "max_ap_loss": constraint.max_ap_loss, "window": "training",
        "baseline": before, "tried": [], "strength": 0.0, "chosen": before,
    }  # fmt: skip
    if before["worst_ratio"] <= high:
        return baseline, record
    review = min(max(before["review"], 1e-6), 1 - 1e-6)
    best: tuple[float, Fitted] = (0.0, baseline)
    for strength in constraint.strengths:
        objective = penalty_objective(truth, codes, kind=constraint.kind, threshold=math.log(review / (1 - review)),
                                      strength=strength, softness=constraint.softness,
                                      min_genuine=governance.min_segment_decisions,
                                      min_frauds=governance.min_segment_frauds,
                                      positive_weight=settings.scale_pos_weight,
                                      left_out=names.index(UNKNOWN) if UNKNOWN in names else None)  # fmt: skip
        fitted = fit_penalised(x, truth, codes, settings, objective, checked, progress)
        after = judge(fitted)
        record["tried"].append({"strength": strength, "rounds": fitted.rounds, **after})
        if after["ap"] < before["ap"] - constraint.max_ap_loss:
            continue
        if after["worst_ratio"] < record["chosen"]["worst_ratio"]:
            best, record["chosen"] = (strength, fitted), after
        if after["worst_ratio"] <= high:
            break
    record["strength"], chosen = best
    return chosen, record
