"""``fraudpipe tune``: LightGBM parameters chosen on selection folds that end before the window a report gives.

A number a user can trust comes from data the choices never saw. The folds are the evaluation protocol
(:mod:`models.evaluate`: training week, delay gap, test week, known-compromised cards removed, labels visible as
the protocol assumes) slid back a week at a time from ``until``: fold *i* tests the week ending ``7 * i`` days
before ``until``, so no fold reads a payment or a label of a day from ``until`` on. ``until`` must be at most the
first day of the test week a report gives (``evaluate --tuned`` refuses a study past it); the handbook's model
selection takes the day after the reported training week, whose labels are known when the reported model goes live.

Each trial trains one booster per fold with what Optuna's TPE sampler proposes — LightGBM's parameters and how many
days of history before the training window to train on too (up to the folds' ``history_days``) — and scores it by
the folds' mean ``metric`` (AP by default: threshold-free and smoother than CP@k on a week of cards). The sampler is
seeded: the same data and seed give the same study. The first trial is the current settings, so the choice is never
worse on the folds than what it replaces. Features are computed once for every fold; only the boosters change.

The result (:func:`tune`) is a plain dict written as the command's JSON report and read back by ``train``,
``retrain`` and ``evaluate`` (``--tuned``): :func:`tuned_settings` applies its ``chosen`` parameters,
:func:`tuned_history_days` its history, :func:`summary` is what a manifest and a report keep of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import optuna
import polars as pl

from fraudpipe.settings import TrainingSettings
from models.dataset import History
from models.evaluate import Visibility, protocol_rows, split
from models.evaluation import measure
from models.protocol import Windows
from models.train import fit_arrays, matrix

__all__ = [
    "HISTORY",
    "METRICS",
    "SEARCHED",
    "SPACE",
    "Fold",
    "fold_windows",
    "folds",
    "summary",
    "tune",
    "tuned_history_days",
    "tuned_settings",
]

METRICS = ("ap", "auc", "cp_at_k")
"""What a study may maximise: the folds' mean of one of the protocol's figures."""

_NO_L2 = 1e-8
"""The smallest L2 penalty searched (a log scale cannot hold 0; this one changes nothing)."""

Progress = Callable[[int, int, float | None], None]
"""Called after each trial with (trials done, trials in all, best value so far)."""


@dataclass(frozen=True, slots=True)
class Fold:
    """One selection fold: its windows, its training rows' inputs and truths and how many days before the training
    window each was made (0: in it; up to the windows' ``history_days``), its test rows (META + features) and their
    inputs."""

    windows: Windows
    x: np.ndarray
    y: np.ndarray
    before: np.ndarray
    test: pl.DataFrame
    test_x: np.ndarray

    def describe(self) -> dict[str, Any]:
        w = self.windows
        return {"train_start": str(w.train[0]), "test_start": str(w.test[0]), "test_end": str(w.test[1]),
                "n_test": self.test.height, "n_test_fraud": int(self.test.get_column("is_fraud").sum())}  # fmt: skip


def fold_windows(until: date, n: int, train_days: int, delay_days: int, test_days: int,
                 history_days: int) -> list[Windows]:  # fmt: skip
    """The ``n`` folds' windows, latest first: fold *i*'s test window ends ``test_days * i`` days before ``until``;
    ``history_days``: the most days before each training window a study may add to it."""
    out = []
    for i in range(n):
        test_end = until - timedelta(days=test_days * i)
        train_start = test_end - timedelta(days=test_days + delay_days + train_days)
        out.append(Windows(train_start, train_days, delay_days, test_days, history_days))
    return out


def folds(history: History, windows: Sequence[Windows], visibility: Visibility = "aligned") -> list[Fold]:
    """Each window's rows, as the protocol builds them (:func:`models.evaluate.split`).

    Raises:
        ValueError: a fold's training or test window holds no payment, or its training window no fraud.
    """
    if not windows:
        return []
    days = (min(w.history[0] for w in windows), max(w.test[1] for w in windows))
    delays = {w.delay_days for w in windows}
    rows = protocol_rows(history, days, delays.pop(), visibility) if len(delays) == 1 else None
    out = []
    for w in windows:
        data = split(history, w, visibility, rows=rows)
        y = data.train.get_column("is_fraud").cast(pl.Int8).to_numpy()
        if y.min(initial=1) == y.max(initial=0):
            raise ValueError(f"the fold training from {w.train[0]} needs frauds and genuine payments")
        day = data.train.get_column("event_time").dt.date()
        before = (pl.lit(w.train_start) - day).dt.total_days().clip(lower_bound=0)
        out.append(Fold(w, matrix(data.train), y, data.train.select(before).to_series().to_numpy(), data.test,
                        matrix(data.test)))  # fmt: skip
    return out


SPACE: dict[str, tuple[float, float, bool]] = {
    "learning_rate": (0.01, 0.2, True),
    "num_leaves": (7, 127, True),
    "min_data_in_leaf": (10, 400, True),
    "feature_fraction": (0.4, 1.0, False),
    "bagging_fraction": (0.5, 1.0, False),
    "lambda_l2": (_NO_L2, 100.0, True),
    "scale_pos_weight": (1.0, 20.0, True),
    "rounds": (100, 800, True),
}
"""The search space, (low, high, log scale) per parameter of :data:`SEARCHED`: the ranges a fraud model on a week or
two of payments sensibly uses (log scales where a factor matters more than a difference), widened to hold the
settings' own value."""
SEARCHED = tuple(SPACE)
"""The training settings a study chooses (:class:`fraudpipe.settings.TrainingSettings`); the others stay."""
HISTORY = "history_days"
"""The window a study also chooses: days of history before the training window trained on too (from 0 to the folds'
``history_days``; ``train`` and ``evaluate`` take it as their ``--history-days``)."""


def _suggest(trial: optuna.Trial, current: dict[str, Any], history_days: int) -> dict[str, Any]:
    space = SPACE | ({HISTORY: (0, history_days, False)} if history_days else {})
    out: dict[str, Any] = {}
    for name, (low, high, log) in space.items():
        low, high = min(low, current[name]), max(high, current[name])
        if isinstance(current[name], int):
            out[name] = trial.suggest_int(name, int(low), int(high), log=log)
        else:
            out[name] = trial.suggest_float(name, low, high, log=log)
    return out


def _fold_scores(fold: Fold, settings: TrainingSettings, history_days: int, k: int) -> dict[str, float | None]:
    """The protocol's figures of a booster trained on the fold with ``settings`` and ``history_days`` of history."""
    kept = fold.before <= history_days
    booster = fit_arrays(fold.x[kept], fold.y[kept], settings).booster
    scores = np.asarray(booster.predict(fold.test_x, num_threads=settings.threads), dtype=np.float64)
    figures, _ = measure(fold.test, scores, k)
    return {name: figures[name] for name in METRICS}


def tune(fold_list: Sequence[Fold], settings: TrainingSettings, *, trials: int, until: date, metric: str = "ap",
         k: int = 100, history_days: int = 0, visibility: Visibility = "aligned",
         progress: Progress | None = None) -> dict[str, Any]:  # fmt: skip
    """Run the study (module docstring) and return its report: the folds, every trial (parameters, each fold's
    figures, the mean), the best, the current settings' value and the ``chosen`` parameters. ``history_days`` is
    the current choice of history (the first trial's); the study chooses it up to the folds' own.

    Raises:
        ValueError: an unknown metric, no fold, or fewer than one trial.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}")
    if not fold_list or trials < 1:
        raise ValueError("tuning needs at least one fold and one trial")
    history: list[dict[str, Any]] = []

    most = min(fold.windows.history_days for fold in fold_list)

    def objective(trial: optuna.Trial) -> float:
        params = _suggest(trial, current, most)
        trained = settings.model_copy(update={name: params[name] for name in SEARCHED})
        started = time.perf_counter()
        per_fold = [_fold_scores(fold, trained, params.get(HISTORY, 0), k) for fold in fold_list]
        value = _mean([f[metric] for f in per_fold])
        value = float("nan") if value is None else value
        history.append({"number": trial.number, "params": params, "value": value,
                        "folds": [f[metric] for f in per_fold], "seconds": round(time.perf_counter() - started, 2),
                        "mean": {name: _mean([f[name] for f in per_fold]) for name in METRICS}})  # fmt: skip
        return value

    def report(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        if progress is not None:
            progress(len(study.trials), trials, study.best_value)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=settings.seed))
    current = {name: getattr(settings, name) for name in SEARCHED}
    current["lambda_l2"] = max(current["lambda_l2"], _NO_L2)  # a log scale has no 0
    if most:
        current[HISTORY] = min(history_days, most)
    study.enqueue_trial(current)
    started = time.perf_counter()
    study.optimize(objective, n_trials=trials, callbacks=[report])
    best = history[study.best_trial.number]
    return {
        "metric": metric,
        "k": k,
        "until": str(until),
        "label_visibility": visibility,
        "sampler": f"TPE (optuna {optuna.__version__}, seed {settings.seed})",
        "folds": [fold.describe() for fold in fold_list],
        "trials": history,
        "best": {"number": best["number"], "value": best["value"], "mean": best["mean"]},
        "current": {"params": current, "value": history[0]["value"], "mean": history[0]["mean"]},
        "chosen": best["params"],
        "seconds": round(time.perf_counter() - started),
    }


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def tuned_settings(settings: TrainingSettings, tuned: dict[str, Any]) -> TrainingSettings:
    """``settings`` with a study's chosen parameters (:func:`tune`'s report).

    Raises:
        ValueError: the report has no ``chosen`` parameters, or names one a study does not choose.
    """
    chosen = tuned.get("chosen")
    if not isinstance(chosen, dict) or not chosen:
        raise ValueError("not a fraudpipe tune report (no 'chosen' parameters)")
    unknown = sorted(set(chosen) - {*SEARCHED, HISTORY})
    if unknown:
        raise ValueError(f"not a fraudpipe tune report: it chooses {', '.join(unknown)}")
    return TrainingSettings.model_validate(settings.model_dump() | {k: v for k, v in chosen.items() if k in SEARCHED})


def tuned_history_days(tuned: dict[str, Any]) -> int | None:
    """The days of history before the training window a study chose (``None``: it did not choose them)."""
    value = tuned.get("chosen", {}).get(HISTORY)
    return None if value is None else int(value)


def summary(tuned: dict[str, Any]) -> dict[str, Any]:
    """What a manifest or a report keeps of a study: metric, the folds' span, trials, the chosen parameters and
    their value against the settings they replaced."""
    fold_list = tuned["folds"]
    return {
        "metric": tuned["metric"],
        "until": tuned["until"],
        "folds": len(fold_list),
        "first_test_start": min(f["test_start"] for f in fold_list),
        "trials": len(tuned["trials"]),
        "best_value": tuned["best"]["value"],
        "current_value": tuned["current"]["value"],
        "chosen": tuned["chosen"],
    }
