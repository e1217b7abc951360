"""Evaluation metrics, pure: scores and truths in, numbers out. The protocol (windows, delay gap, removing cards
already known compromised) lives with training; these functions measure a finished test window.

- ``roc_auc`` and ``average_precision``: scikit-learn's, on transactions.
- ``recall_at_fpr``: the best true-positive rate at a false-positive rate no higher than the bound.
- ``card_precision_at_k``: the handbook's CP@k. Each day, cards are ranked by their highest score that day and
  the top ``k`` are "investigated"; the day's value is the number of truly compromised cards among them divided
  by ``k``; a card found compromised is removed from the following days (it would be blocked). Returns the
  per-day values in day order and their mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

__all__ = ["CardPrecision", "average_precision", "card_precision_at_k", "recall_at_fpr", "roc_auc"]


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
