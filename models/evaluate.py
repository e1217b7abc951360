"""``fraudpipe evaluate``: the published protocol, end to end, on any labelled history.

Following ../shared/REFERENCE.md (the handbook's protocol): label-derived features use only labels known
``delay_days`` after each fraud; the model trains on the training window (and ``history_days`` before it) for the
configured number of rounds — no early stopping, since the protocol leaves no labelled days between training and
test to stop on; the delay gap is skipped; the test window loses the payments of cards already known compromised
(:func:`models.protocol.drop_known_compromised`). Metrics are computed on what is left.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

from features.definitions import FEATURE_NAMES
from fraudpipe.settings import TrainingSettings
from models.dataset import History
from models.evaluation import CardPrecision, measure
from models.protocol import Windows, drop_known_compromised, window_of
from models.train import Progress, feature_rows, fit, lgb_params, matrix, window_counts

__all__ = ["Evaluation", "evaluate"]


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The JSON report, the booster, the scored test rows (META + ``score``) and the CP@k details."""

    report: dict[str, Any]
    booster: lgb.Booster
    test: pl.DataFrame
    card_precision: CardPrecision


def evaluate(history: History, windows: Windows, settings: TrainingSettings, *, k: int = 100,
             progress: Progress | None = None) -> Evaluation:  # fmt: skip
    """Train and test under the protocol (module docstring).

    Raises:
        ValueError: a window holds no data, or the training window lacks frauds.
    """
    labels = history.truth_labels(timedelta(days=windows.delay_days))
    rows = feature_rows(history, (windows.history[0], windows.test[1]), labels)
    train = window_of(rows, (windows.history[0], windows.train[1]))
    everything = window_of(rows, windows.test)
    test = drop_known_compromised(everything, window_of(rows, (windows.train[0], windows.test[1])),
                                  windows.delay_days)  # fmt: skip
    if train.height == 0 or test.height == 0:
        raise ValueError(f"no transactions in the {'training' if train.height == 0 else 'test'} window")
    fitted = fit(train, settings, progress=progress)
    scores = np.asarray(fitted.booster.predict(matrix(test), num_threads=settings.threads), dtype=np.float64)
    metrics, cp = measure(test, scores, k)
    report = {
        **metrics,
        "windows": {
            "history": window_counts(window_of(rows, windows.history)),
            "train": window_counts(window_of(rows, windows.train)),
            "delay": window_counts(window_of(rows, windows.delay)),
            "test": window_counts(test),
        },
        "n_test_removed_known_compromised": everything.height - test.height,
        "protocol": {
            "train_start": str(windows.train_start),
            "train_days": windows.train_days,
            "delay_days": windows.delay_days,
            "test_days": windows.test_days,
            "history_days": windows.history_days,
        },
        "rounds": fitted.rounds,
        "train_seconds": round(fitted.seconds, 2),
        "params": lgb_params(settings),
        "features": list(FEATURE_NAMES),
        "data_fingerprint": history.fingerprint(),
        "rejected_rows": history.rejected,
    }
    return Evaluation(report, fitted.booster, test.with_columns(score=pl.Series(scores)), cp)
