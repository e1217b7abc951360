"""Training LightGBM on offline features, in time order.

``feature_rows`` computes the point-in-time features of a span of days (each payment sees only the history before
it and the labels known by then; :mod:`features.vectorized`, held equal to the online store). ``fit`` trains one
booster, deterministically for a seed (``deterministic``, row-wise histograms, fixed threads).

Class imbalance (about 1 fraud in 120 payments) is handled deliberately, and by default not by reweighting: the model
is trained on the plain log-loss so its scores stay calibrated probabilities, and the imbalance is dealt with where it
matters — thresholds are chosen on validation scores for the least expected cost under a daily review capacity
(:func:`models.cost.cheapest_thresholds`), and early stopping watches average precision, not accuracy. Measured on
the handbook preset (seed 0, 3 model seeds): ``scale_pos_weight=5`` lowered AP from 0.718 to 0.714 at equal AUC, so
it stays 1 in the settings; ``fraudpipe tune`` searches it with the other parameters (:mod:`models.tune`).

``train_version`` is what ``fraudpipe train`` runs: fit on a training window, leave a gap of ``delay_days`` whose labels
are not known yet when the model goes live, early-stop on the validation window after the gap (the days the model
would really score next), then measure there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl
from numpy.typing import NDArray

from features.definitions import FEATURE_NAMES
from features.vectorized import build_features_fast
from features.windows import PLACE_KEPT_DAYS
from fraudpipe.settings import CostSettings, ScoringSettings, TrainingSettings
from models.cost import cheapest_thresholds, judged, policy_figures
from models.dataset import History
from models.evaluation import measure
from models.protocol import Windows, window_of
from models.reference import reference

__all__ = [
    "LOOKBACK",
    "META",
    "Fitted",
    "Refit",
    "Trained",
    "feature_rows",
    "fit",
    "fit_arrays",
    "latest_windows",
    "lgb_params",
    "matrix",
    "train_version",
    "window_counts",
]

LOOKBACK = timedelta(days=PLACE_KEPT_DAYS)
"""History every feature of a payment can reach back to (the longest window: places' 30 days ending 7 days ago)."""
META = ("txn_id", "card_token", "event_time", "is_fraud", "fraud_scenario")
"""Columns kept next to the features: identity, time, truth."""

RISING = frozenset(
    {"amount", "card_amount_ratio_30d", "card_amount_zscore_30d", "card_new_terminal", "card_new_device"}
)
"""Features the score may only rise with, the others fixed (LightGBM monotone constraints): a larger amount, or a
new terminal or device, never makes a payment look safer. Checked by the behavioural tests."""

Progress = Callable[[int, int], None]
"""Called with (rounds done, rounds at most) while training."""
Refit = Callable[[pl.DataFrame, pl.DataFrame, "Fitted"], tuple["Fitted", dict[str, Any]]]
"""Given the training rows, the validation rows and the booster fitted on them, the booster to keep and what to record
of the choice: :func:`models.constraint.constrain` under a fairness constraint."""


def feature_rows(history: History, days: tuple[date, date], labels: pl.DataFrame) -> pl.DataFrame:
    """META and every feature for the payments of ``[days)``, from the LOOKBACK of history before them."""
    span = window_of(history.transactions, (days[0] - LOOKBACK, days[1]))
    features = build_features_fast(span, labels)
    rows = pl.concat([span.select(META), features.drop("txn_id")], how="horizontal")
    return window_of(rows, days)


def matrix(rows: pl.DataFrame) -> NDArray[np.float64]:
    """The model input of ``rows``: FEATURE_NAMES columns, NaN = missing."""
    return rows.select(FEATURE_NAMES).cast(pl.Float64).to_numpy()


def lgb_params(settings: TrainingSettings) -> dict[str, Any]:
    """LightGBM parameters of ``settings`` (binary log-loss, deterministic)."""
    return {
        "objective": "binary",
        "metric": "average_precision",
        "learning_rate": settings.learning_rate,
        "num_leaves": settings.num_leaves,
        "min_data_in_leaf": settings.min_data_in_leaf,
        "feature_fraction": settings.feature_fraction,
        "bagging_fraction": settings.bagging_fraction,
        "bagging_freq": 1,
        "lambda_l2": settings.lambda_l2,
        "scale_pos_weight": settings.scale_pos_weight,
        "monotone_constraints": [1 if name in RISING else 0 for name in FEATURE_NAMES],
        "seed": settings.seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": settings.threads,
        "verbose": -1,
    }


@dataclass(frozen=True, slots=True)
class Fitted:
    """A trained booster, the rounds it kept and how long training took."""

    booster: lgb.Booster
    rounds: int
    seconds: float


def fit(train: pl.DataFrame, settings: TrainingSettings, valid: pl.DataFrame | None = None,
        progress: Progress | None = None) -> Fitted:  # fmt: skip
    """Train on ``train`` rows; with ``valid`` rows holding frauds, stop when their AP has not improved for
    ``early_stopping_rounds`` and keep the best round; without, train ``rounds`` rounds.

    Raises:
        ValueError: the training rows hold no fraud or no genuine payment.
    """
    truth = train.get_column("is_fraud").cast(pl.Int8).to_numpy()
    checked = None
    if valid is not None and valid.get_column("is_fraud").any():
        checked = (matrix(valid), valid.get_column("is_fraud").cast(pl.Int8).to_numpy())
    return fit_arrays(matrix(train), truth, settings, checked, progress)


def fit_arrays(x: NDArray[np.float64], truth: NDArray[Any], settings: TrainingSettings,
               valid: tuple[NDArray[np.float64], NDArray[Any]] | None = None,
               progress: Progress | None = None) -> Fitted:  # fmt: skip
    """:func:`fit` on inputs already built (:func:`matrix`) and their truths (1 = fraud); ``valid`` likewise.

    Raises:
        ValueError: the training rows hold no fraud or no genuine payment.
    """
    if truth.min(initial=1) == truth.max(initial=0):
        raise ValueError("the training window needs both frauds and genuine payments")
    data = lgb.Dataset(x, truth, feature_name=list(FEATURE_NAMES), free_raw_data=True)
    callbacks: list[Callable[[Any], None]] = []
    if progress is not None:
        callbacks.append(lambda env: progress(env.iteration + 1, env.end_iteration))
    sets, names = [], []
    if valid is not None:
        sets, names = [lgb.Dataset(valid[0], valid[1], reference=data)], ["valid"]
        callbacks.append(lgb.early_stopping(settings.early_stopping_rounds, verbose=False))
    started = time.perf_counter()
    booster = lgb.train(lgb_params(settings), data, settings.rounds, valid_sets=sets, valid_names=names,
                        callbacks=callbacks)  # fmt: skip
    rounds = booster.best_iteration if sets and booster.best_iteration > 0 else booster.current_iteration()
    if rounds < booster.current_iteration():
        booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=rounds))
    return Fitted(booster, rounds, time.perf_counter() - started)


def window_counts(rows: pl.DataFrame) -> dict[str, Any]:
    """Days, transactions, frauds and cards of ``rows``."""
    day = rows.get_column("event_time").dt.date()
    return {
        "from": str(day.min()) if rows.height else None,
        "to": str(day.max()) if rows.height else None,
        "transactions": rows.height,
        "frauds": int(rows.get_column("is_fraud").sum()),
        "cards": rows.get_column("card_token").n_unique(),
    }


def latest_windows(history: History, train_days: int, delay_days: int, valid_days: int) -> Windows:
    """The most recent training / gap / validation windows the history holds in full."""
    last = history.days[1]
    start = last + timedelta(days=1) - timedelta(days=train_days + delay_days + valid_days)
    return Windows(start, train_days, delay_days, valid_days)


@dataclass(frozen=True, slots=True)
class Trained:
    """A version ready to register: the booster, its manifest fields, and its validation rows (META + score)."""

    fitted: Fitted
    fields: dict[str, Any]
    valid: pl.DataFrame


def train_version(history: History, windows: Windows, settings: TrainingSettings, *, k: int = 100,
                  costs: CostSettings | None = None, scoring: ScoringSettings | None = None,
                  tuning: dict[str, Any] | None = None, progress: Progress | None = None,
                  refit: Refit | None = None) -> Trained:  # fmt: skip
    """Fit on the training window (and ``history_days`` before it) with the labels the system received, early-stop
    on the validation window after the delay gap (``windows.test``), measure there — every payment, as the live
    system would score it — and choose the thresholds there: the cheapest under ``costs`` with ``scoring``'s rules
    in force (:func:`models.cost.cheapest_thresholds`), whose money figures join the metrics as ``policy``.
    ``tuning``: the study ``settings`` came from, for the manifest (:func:`models.tune.summary`). ``refit``: what
    replaces the booster fitted (a fairness constraint's choice), its record kept as ``fairness_constraint``.

    Raises:
        ValueError: an empty window, or a training window without frauds.
    """
    rows = feature_rows(history, (windows.history[0], windows.test[1]), history.labels)
    train = window_of(rows, (windows.history[0], windows.train[1]))
    valid = window_of(rows, windows.test)
    if train.height == 0 or valid.height == 0:
        raise ValueError(f"no transactions in the {'training' if train.height == 0 else 'validation'} window")
    fitted = fit(train, settings, valid, progress)
    constraint: dict[str, Any] = {}
    if refit is not None:
        fitted, constraint = refit(train, valid, fitted)
    inputs = matrix(valid)
    scores = np.asarray(fitted.booster.predict(inputs, num_threads=settings.threads), dtype=np.float64)
    metrics, _ = measure(valid, scores, k)
    costs, scoring = costs or CostSettings(), scoring or ScoringSettings()
    judged_valid = judged(valid, scores, scoring)
    thresholds = cheapest_thresholds(judged_valid, costs, scoring.rules)
    policy = policy_figures(judged_valid, thresholds["review"], thresholds["decline"], costs)
    fields = {
        "params": lgb_params(settings),
        "rounds": fitted.rounds,
        "windows": {
            "history": window_counts(window_of(rows, windows.history)),
            "train": window_counts(window_of(rows, windows.train)),
            "delay_days": windows.delay_days,
            "validation": window_counts(valid),
        },
        "metrics": {**metrics, "train_seconds": round(fitted.seconds, 2), "policy": policy},
        "thresholds": thresholds,
        "data_fingerprint": history.fingerprint(),
        "reference": reference(inputs, scores),
        "tuning": tuning or {},
        "fairness_constraint": constraint,
    }
    return Trained(fitted, fields, valid.with_columns(score=pl.Series(scores)))
