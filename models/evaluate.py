"""``fraudpipe evaluate``: the published protocol, end to end, on any labelled history.

Following ../shared/REFERENCE.md (the handbook's protocol): label-derived features use only labels known ``delay_days``
after each fraud — by default from the start of the day the protocol counts the card as known compromised
(:data:`VISIBILITY`), never the payment's own label; the model trains on the training window (and ``history_days``
before it) for the configured number of rounds — no early stopping, since the protocol leaves no labelled days between
training and test to stop on; the delay gap is skipped; the test window loses the payments of cards already known
compromised (:func:`models.protocol.drop_known_compromised`). Metrics are computed on what is left.

The report's ``policy`` is the serving policy applied to the whole test window (:func:`models.cost.policy_figures`):
a card with a fraud label known before the payment (the labels as the system received them,
:meth:`models.dataset.History.blocked`) is declined by the ``card_blocked`` rule, the serving rules apply, and the
model decides the rest with thresholds chosen for the least expected cost on the delay gap's days
(scored by the same model; the training window when there is no gap) — never on the days it reports.

``oracle_cp_at_k`` is the CP@k a perfect ranking would reach on the same rows (each day, the compromised cards not
yet found, up to k): the ceiling a week allows. :func:`weekly` gathers several consecutive test weeks (the protocol
slid a week at a time, the handbook's prequential validation) into one report: the first week's keys as they are,
then ``weeks`` (each week's ``test_start``, ``auc``, ``ap``, ``cp_at_k``, ``oracle_cp_at_k``), ``mean`` and ``std``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import polars as pl

from features.definitions import FEATURE_NAMES
from fraudpipe.settings import CostSettings, ScoringSettings, TrainingSettings
from models.cost import cheapest_thresholds, judged, policy_figures
from models.dataset import History
from models.evaluation import CardPrecision, card_precision_at_k, measure
from models.protocol import Windows, known_compromised, window_of
from models.train import Progress, feature_rows, fit, lgb_params, matrix, window_counts

__all__ = [
    "SUMMARIZED",
    "VISIBILITY",
    "Evaluation",
    "Split",
    "Visibility",
    "evaluate",
    "protocol_rows",
    "split",
    "weekly",
]

SUMMARIZED = ("auc", "ap", "cp_at_k", "oracle_cp_at_k")
"""The figures each test week reports, and their mean and standard deviation over the weeks."""

Visibility = Literal["aligned", "exact"]
VISIBILITY: tuple[Visibility, ...] = ("aligned", "exact")
"""When the truth labels become visible to the label-derived features: ``aligned`` (the default) from the start of the
day the protocol counts the card as known compromised — the day after the fraud's day plus the delay — so a test
payment still counted as a detection target never sees its card's label; ``exact``, exactly ``delay_days`` after
the fraud (a payment later that same day sees a label its card's removal does not yet reflect)."""


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The JSON report, the booster, the scored test rows (META + ``score``) and the CP@k details."""

    report: dict[str, Any]
    booster: lgb.Booster
    test: pl.DataFrame
    card_precision: CardPrecision


@dataclass(frozen=True, slots=True)
class Split:
    """One run of the protocol's rows (META + features): ``rows`` from the history's first day to the test window's
    end, ``train`` (history and training days), ``everything`` the test window's payments, ``blocked`` which of them
    belong to a card already known compromised, ``test`` the rest (the rows measured)."""

    rows: pl.DataFrame
    train: pl.DataFrame
    everything: pl.DataFrame
    blocked: pl.Series
    test: pl.DataFrame


def protocol_rows(history: History, days: tuple[date, date], delay_days: int,
                  visibility: Visibility = "aligned") -> pl.DataFrame:  # fmt: skip
    """META and every feature of the payments of ``[days)``, label-derived features computed with the truth labels
    visible as ``visibility`` says (:data:`VISIBILITY`). A row does not depend on the span asked for (features are
    point in time), so several runs of the protocol may share one call."""
    labels = history.truth_labels(timedelta(days=delay_days), aligned=visibility == "aligned")
    return feature_rows(history, days, labels)


def split(history: History, windows: Windows, visibility: Visibility = "aligned", *,
          rows: pl.DataFrame | None = None) -> Split:  # fmt: skip
    """The protocol's rows for ``windows`` (:func:`protocol_rows`, or taken from ``rows`` when it covers them).

    Raises:
        ValueError: the training or the test window holds no payment.
    """
    if rows is None:
        rows = protocol_rows(history, (windows.history[0], windows.test[1]), windows.delay_days, visibility)
    rows = window_of(rows, (windows.history[0], windows.test[1]))
    train = window_of(rows, (windows.history[0], windows.train[1]))
    revealing = window_of(rows, (windows.train[0], windows.test[1]))
    everything = window_of(rows, windows.test)
    blocked = known_compromised(everything, revealing, windows.delay_days)
    test = everything.filter(~blocked)
    if train.height == 0 or test.height == 0:
        raise ValueError(f"no transactions in the {'training' if train.height == 0 else 'test'} window")
    return Split(rows, train, everything, blocked, test)


def evaluate(history: History, windows: Windows, settings: TrainingSettings, *, k: int = 100,
             costs: CostSettings | None = None, scoring: ScoringSettings | None = None,
             visibility: Visibility = "aligned", progress: Progress | None = None) -> Evaluation:  # fmt: skip
    """Train and test under the protocol (module docstring).

    Raises:
        ValueError: a window holds no data, or the training window lacks frauds.
    """
    data = split(history, windows, visibility)
    rows, train, everything, test = data.rows, data.train, data.everything, data.test
    fitted = fit(train, settings, progress=progress)

    def scored(frame: pl.DataFrame) -> np.ndarray:
        return np.asarray(fitted.booster.predict(matrix(frame), num_threads=settings.threads), dtype=np.float64)

    all_scores = scored(everything)
    scores = all_scores[~data.blocked.to_numpy()]
    metrics, cp = measure(test, scores, k)
    truth = test.get_column("is_fraud").cast(pl.Int8).to_numpy()
    days = test.get_column("event_time").dt.date().to_list()
    metrics["oracle_cp_at_k"] = card_precision_at_k(days, test.get_column("card_token").to_list(), truth, truth, k).mean
    costs, scoring = costs or CostSettings(), scoring or ScoringSettings()
    chosen_on = "delay" if windows.delay_days else "train"
    choice = window_of(rows, windows.delay) if windows.delay_days else train
    thresholds = cheapest_thresholds(judged(choice, scored(choice), scoring, history.blocked(choice)), costs,
                                     scoring.rules)  # fmt: skip
    policy = policy_figures(judged(everything, all_scores, scoring, history.blocked(everything)),
                            thresholds["review"], thresholds["decline"], costs)  # fmt: skip
    report = {
        **metrics,
        "policy": {**policy, "thresholds_chosen_on": chosen_on},
        "windows": {
            "history": window_counts(window_of(rows, windows.history)),
            "train": window_counts(window_of(rows, windows.train)),
            "delay": window_counts(window_of(rows, windows.delay)),
            "test": window_counts(test),
        },
        "n_test_removed_known_compromised": everything.height - test.height,
        "protocol": {
            "train_start": str(windows.train_start),
            "test_start": str(windows.test[0]),
            "train_days": windows.train_days,
            "delay_days": windows.delay_days,
            "test_days": windows.test_days,
            "history_days": windows.history_days,
            "label_visibility": visibility,
        },
        "rounds": fitted.rounds,
        "train_seconds": round(fitted.seconds, 2),
        "params": lgb_params(settings),
        "features": list(FEATURE_NAMES),
        "data_fingerprint": history.fingerprint(),
        "rejected_rows": history.rejected,
    }
    return Evaluation(report, fitted.booster, test.with_columns(score=pl.Series(scores)), cp)


def weekly(evaluations: list[Evaluation]) -> dict[str, Any]:
    """One report for several test weeks (module docstring), in the order given."""
    weeks = [{"test_start": e.report["protocol"]["test_start"], **{name: e.report[name] for name in SUMMARIZED}}
             for e in evaluations]  # fmt: skip

    def spread(reduce: Any) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name in SUMMARIZED:
            values = [week[name] for week in weeks if week[name] is not None]
            out[name] = float(reduce(values)) if values else None
        return out

    return {**evaluations[0].report, "weeks": weeks, "mean": spread(np.mean), "std": spread(np.std)}
