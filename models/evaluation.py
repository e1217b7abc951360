"""Evaluation metrics, pure: scores and truths in, numbers out. The protocol (windows, delay gap, removing cards
already known compromised) lives with training; these functions measure a finished test window.

- ``roc_auc`` and ``average_precision``: scikit-learn's, on transactions.
- ``recall_at_fpr``: the best true-positive rate at a false-positive rate no higher than the bound.
- ``measure``: all of them for scored rows (META columns of :mod:`models.train`), recall per fraud scenario at the
  1 % FPR threshold included.
- ``card_precision_at_k``: the handbook's CP@k. Each day, cards are ranked by their highest score that day and
  the top ``k`` are "investigated"; the day's value is the number of truly compromised cards among them divided
  by ``k``; a card found compromised is removed from the following days (it would be blocked). Returns the
  per-day values in day order and their mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

__all__ = [
    "CardPrecision",
    "average_precision",
    "card_precision_at_k",
    "measure",
    "recall_at_fpr",
    "roc_auc",
    "threshold_at_fpr",
]


def roc_auc(truth: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve of transaction scores (``truth`` 1 = fraud)."""
    return float(roc_auc_score(truth, scores))


def average_precision(truth: ArrayLike, scores: ArrayLike) -> float:
    """Average precision (area under the precision-recall curve, step-wise) of transaction scores."""
    return float(average_precision_score(truth, scores))


def recall_at_fpr(truth: ArrayLike, scores: ArrayLike, max_fpr: float = 0.01) -> float:
    """Highest recall reachable with a false-positive rate at most ``max_fpr``."""
    fpr, tpr, _ = roc_curve(truth, scores)
    allowed = tpr[fpr <= max_fpr]
    return float(allowed.max()) if len(allowed) else 0.0


@dataclass(frozen=True, slots=True)
class CardPrecision:
    """CP@k: ``per_day`` values in day order, their ``mean``, and the cards found, in the order found."""

    per_day: list[float]
    mean: float
    detected: list[str]


def card_precision_at_k(days: Sequence[object], cards: Sequence[str], truth: Sequence[int] | ArrayLike,
                        scores: ArrayLike, k: int = 100) -> CardPrecision:  # fmt: skip
    """The handbook's card precision@k over the days present (see the module docstring)."""
    frame = pl.DataFrame(
        {"day": list(days), "card": list(cards), "fraud": np.asarray(truth, dtype=np.int8), "score": np.asarray(scores)}
    )
    detected: list[str] = []
    per_day: list[float] = []
    for day in sorted(frame.get_column("day").unique().to_list()):
        ranked = (
            frame.filter((pl.col("day") == day) & ~pl.col("card").is_in(detected))
            .group_by("card")
            .agg(pl.col("score").max(), pl.col("fraud").max())
            .sort(["score", "card"], descending=[True, False])
            .head(k)
        )
        found = ranked.filter(pl.col("fraud") == 1).get_column("card").to_list()
        per_day.append(len(found) / k)
        detected += found
    return CardPrecision(per_day, float(np.mean(per_day)) if per_day else 0.0, detected)


def threshold_at_fpr(truth: ArrayLike, scores: ArrayLike, max_fpr: float = 0.01) -> float:
    """The lowest score threshold (flag ``score >= threshold``) whose false-positive rate is at most ``max_fpr``."""
    fpr, _, thresholds = roc_curve(truth, scores)
    allowed = thresholds[fpr <= max_fpr]
    return float(allowed.min()) if len(allowed) else float("inf")


MAX_FPR = 0.01


def measure(rows: pl.DataFrame, scores: np.ndarray, k: int) -> tuple[dict[str, Any], CardPrecision]:
    """Every metric of scored ``rows`` (META columns): AUC, AP, CP@k, recall at 1 % FPR, recall per scenario."""
    truth = rows.get_column("is_fraud").cast(pl.Int8).to_numpy()
    days = rows.get_column("event_time").dt.date().to_list()
    cp = card_precision_at_k(days, rows.get_column("card_token").to_list(), truth, scores, k)
    both = 0 < truth.sum() < len(truth)
    metrics: dict[str, Any] = {
        "auc": roc_auc(truth, scores) if both else None,
        "ap": average_precision(truth, scores) if both else None,
        "cp_at_k": cp.mean,
        "k": k,
        "n_test": rows.height,
        "n_test_fraud": int(truth.sum()),
        "cp_at_k_per_day": [
            {"day": str(day), "value": value} for day, value in zip(sorted(set(days)), cp.per_day, strict=True)
        ],
        "recall_at_1pct_fpr": recall_at_fpr(truth, scores, MAX_FPR) if both else None,
    }
    scenario = rows.get_column("fraud_scenario")
    if both and scenario.drop_nulls().len():
        threshold = threshold_at_fpr(truth, scores, MAX_FPR)
        flagged = scores >= threshold
        metrics["scenario_recall_at_1pct_fpr"] = {
            str(name): float(flagged[(scenario == name).fill_null(False).to_numpy()].mean())
            for name in sorted(scenario.drop_nulls().unique().to_list())
        }
    return metrics, cp
