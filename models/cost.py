"""Money: what a decision policy costs, what it saves against the rules alone, and the thresholds that cost least.

The cost model (the ``cost`` settings, :class:`fraudpipe.settings.CostSettings`; every manifest records the one
its thresholds were chosen with), in the payments' own currency unit:

- a fraud that is approved costs its amount plus ``chargeback_fee``;
- a review costs ``review_cost`` (the analyst's time) whatever the truth, and a reviewed fraud is caught;
- a genuine payment that is declined costs ``false_decline_share`` of its amount (lost margin, a customer annoyed);
- a declined fraud and an approved genuine payment cost nothing;
- analysts can review ``review_capacity`` payments a day (on average over the days judged).

Who decided counts apart (:class:`Judged`): a *blocked* card's payment is declined by the ``card_blocked`` rule and
is nobody's alert; a *forced* payment is taken by a rule (``known_fraud_30d``, ``large_amount``) to at least the
rule's outcome whatever its score; the model decides the rest with two thresholds (``score >= review``: review;
``score >= decline``: decline). The rules-only baseline is the same policy without the model: blocked cards
declined, forced payments given their rule's outcome, everything else approved.

:func:`cheapest_thresholds` chooses ``review`` and ``decline`` on validation rows: the pair of cuts of the ranking
with the least expected cost whose reviews fit the capacity (every pair of candidate cuts, from cumulative sums —
one matrix of costs, no search heuristics). :func:`policy_figures` gives what a fraud team reads off a window: alert
and decline rates, fraud amount caught and missed, false declines, reviews per day, the expected cost and the saving
against the rules alone; :func:`money_figures` the same for decisions already made (``fraudpipe monitor``, from the
decision log).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from numpy.typing import ArrayLike, NDArray

from features.definitions import FEATURE_NAMES, feature_index
from fraudpipe.settings import CostSettings, Rule, ScoringSettings
from models.scorer import Policy, forced_levels, levels

__all__ = ["Judged", "cheapest_thresholds", "judged", "money_figures", "offline_rules", "policy_figures"]

_INDEX = feature_index()
_MAX_CUTS = 1_500
"""Candidate cuts of the ranking per threshold: every distinct score when there are fewer, else a geometric grid
that keeps the top of the ranking (where thresholds land) dense."""


@dataclass(frozen=True, slots=True)
class Judged:
    """Rows to judge a policy on, column-wise: ``truth`` (1 fraud), ``amount``, ``score`` (NaN: none), the UTC
    ``days`` they fall on, ``blocked`` (declined by the card_blocked rule) and ``forced`` (the outcome a rule forces
    at least: 0 none, 1 review, 2 decline)."""

    truth: NDArray[np.bool_]
    amount: NDArray[np.float64]
    score: NDArray[np.float64]
    days: int
    blocked: NDArray[np.bool_]
    forced: NDArray[np.int8]

    @classmethod
    def of(cls, truth: ArrayLike, amount: ArrayLike, score: ArrayLike, days: Sequence[object],
           blocked: ArrayLike | None = None, forced: ArrayLike | None = None) -> Judged:  # fmt: skip
        t = np.asarray(truth, dtype=bool)
        none = np.zeros(len(t), dtype=bool)
        return cls(t, np.asarray(amount, dtype=np.float64), np.asarray(score, dtype=np.float64),
                   max(len(set(days)), 1), none if blocked is None else np.asarray(blocked, dtype=bool),
                   np.zeros(len(t), np.int8) if forced is None else np.asarray(forced, dtype=np.int8))  # fmt: skip


def offline_rules(matrix: NDArray[np.float64], rules: Sequence[Rule]) -> tuple[NDArray[np.bool_], NDArray[np.int8]]:
    """``(blocked, forced)`` of feature rows built offline, where the online block is not recorded: a card with a
    fraud known in its last 30 days (``card_fraud_count_30d >= 1``) is blocked when ``card_blocked`` is in force (a
    block lasts as long as the card's labels, at least that)."""
    known = np.nan_to_num(matrix[:, _INDEX["card_fraud_count_30d"]]) >= 1
    fired = Policy(0.0, 1.0, rules).fired(matrix, known)
    return fired[0].rows, forced_levels(fired[1:], len(matrix))


def judged(rows: pl.DataFrame, scores: ArrayLike, scoring: ScoringSettings,
           blocked: ArrayLike | None = None) -> Judged:  # fmt: skip
    """Feature rows (``is_fraud``, ``event_time`` and every feature) with their ``scores``, to judge a policy on:
    the rules in force in ``scoring`` where each fires (:func:`offline_rules`), or the ``blocked`` rows when they
    are known (``None``: from the rules)."""
    values = rows.select(FEATURE_NAMES).cast(pl.Float64).to_numpy()
    ruled_blocked, forced = offline_rules(values, scoring.rules)
    if blocked is not None:
        ruled_blocked = np.asarray(blocked, dtype=bool)
        forced = np.where(ruled_blocked, 0, forced).astype(np.int8)
    return Judged.of(rows.get_column("is_fraud").to_numpy(), values[:, _INDEX["amount"]], scores,
                     rows.get_column("event_time").dt.date().to_list(), ruled_blocked, forced)  # fmt: skip


def _levels(rows: Judged, review: float, decline: float) -> NDArray[np.int8]:
    """0 approve / 1 review / 2 decline per row under the policy (rules included)."""
    return levels(rows.score, review, decline, rows.forced, rows.blocked)


def _cost(rows: Judged, level: NDArray[np.int8], costs: CostSettings) -> float:
    fraud, amount = rows.truth, rows.amount
    missed = (level == 0) & fraud
    false_decline = (level == 2) & ~fraud
    return float(
        (amount[missed] + costs.chargeback_fee).sum()
        + costs.review_cost * (level == 1).sum()
        + costs.false_decline_share * amount[false_decline].sum()
    )


def cheapest_thresholds(rows: Judged, costs: CostSettings, rules: Sequence[Rule] = ()) -> dict[str, Any]:
    """The ``review`` / ``decline`` thresholds with the least expected cost on ``rows`` whose reviews (by score and
    by rule) fit ``costs.review_capacity`` a day, with that cost per day, the cost model and the ``rules`` in force
    (those ``rows`` were judged with). The blocked rows do not move the choice.

    Cuts: the model flags the ``i`` best-scored rows for decline and the ``j >= i`` best for review or decline;
    ``cost(i, j)`` adds the declines' cost above ``i``, the reviews between ``i`` and ``j`` and what the rows below
    ``j`` cost when approved (a row a rule reviews is reviewed instead), each from a cumulative sum. The rows a rule
    declines are declined whatever the thresholds: like the blocked ones, they do not move the choice.
    """
    open_ = ~rows.blocked & (rows.forced < 2)
    order = np.argsort(-np.nan_to_num(rows.score[open_], nan=-1.0), kind="stable")
    s = np.nan_to_num(rows.score[open_], nan=-1.0)[order]
    fraud, amount, forced = rows.truth[open_][order], rows.amount[open_][order], rows.forced[open_][order] == 1
    declined = np.where(fraud, 0.0, costs.false_decline_share * amount)
    approved = np.where(forced, costs.review_cost, np.where(fraud, amount + costs.chargeback_fee, 0.0))

    def cumulative(values: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.concatenate([[0.0], np.cumsum(values)])

    cut_declined, cut_approved = cumulative(declined), cumulative(approved)
    cut_forced = cumulative(forced.astype(np.float64))
    cuts = _cuts(s)
    i, j = cuts[:, None], cuts[None, :]
    reviews = (j - i) + (cut_forced[-1] - cut_forced[j])
    total = cut_declined[i] + costs.review_cost * (j - i) + (cut_approved[-1] - cut_approved[j])
    allowed = (i <= j) & (reviews <= costs.review_capacity * rows.days)
    if not allowed.any():  # the rules alone exceed the capacity: the model adds no review
        allowed = (i <= j) & (j == i)
    best = np.unravel_index(np.argmin(np.where(allowed, total, np.inf)), total.shape)
    decline, review = _threshold(s, int(cuts[best[0]])), _threshold(s, int(cuts[best[1]]))
    chosen = {"review": review, "decline": max(decline, review)}
    day_cost = _cost(rows, _levels(rows, chosen["review"], chosen["decline"]), costs) / rows.days
    return {**chosen, "chosen_by": "expected cost", "cost": costs.model_dump(), "expected_cost_per_day": day_cost,
            "rules": [rule.model_dump() for rule in rules]}  # fmt: skip


def _cuts(ranked: NDArray[np.float64]) -> NDArray[np.int64]:
    """Where the ranking (scores, descending) may be cut: between two different scores, at its top and its end."""
    n = len(ranked)
    cuts = np.concatenate([[0], np.flatnonzero(np.diff(ranked) < 0) + 1, [n]]).astype(np.int64)
    if len(cuts) > _MAX_CUTS:
        wanted = np.unique(np.geomspace(1, n, _MAX_CUTS).astype(np.int64))
        cuts = np.unique(np.concatenate([[0, n], cuts[np.minimum(np.searchsorted(cuts, wanted), len(cuts) - 1)]]))
    return cuts


def _threshold(ranked: NDArray[np.float64], cut: int) -> float:
    """The threshold that flags exactly the ``cut`` best of ``ranked``: its lowest flagged score (above the top
    score for none)."""
    if cut == 0:
        return float(min(1.0, np.nextafter(ranked[0], np.inf))) if len(ranked) else 1.0
    return float(max(ranked[cut - 1], 0.0))


def policy_figures(rows: Judged, review: float, decline: float, costs: CostSettings) -> dict[str, Any]:
    """What the policy with these thresholds does on ``rows`` (:func:`money_figures`), with the thresholds."""
    by_model = (np.nan_to_num(rows.score, nan=-1.0) >= review) & ~rows.blocked
    figures = money_figures(rows, _levels(rows, review, decline), by_model, costs)
    return {"review": review, "decline": decline, **figures}


def money_figures(rows: Judged, level: NDArray[np.int8], by_model: NDArray[np.bool_],
                  costs: CostSettings) -> dict[str, Any]:  # fmt: skip
    """What decisions (``level`` per row: 0 approve, 1 review, 2 decline; ``by_model`` where the score alone made
    the row an alert) did on ``rows``: workload (analyst alerts — every review and decline but a blocked card's —,
    the model's and the rules' apart), money, and the saving against the rules alone (the same rows and rules, no
    model)."""
    fraud, amount, n = rows.truth, rows.amount, len(rows.truth)
    alerts = (level >= 1) & ~rows.blocked
    caught = (level >= 1) & fraud
    rules_only = np.where(rows.blocked, 2, rows.forced).astype(np.int8)
    cost, baseline = _cost(rows, level, costs), _cost(rows, rules_only, costs)
    missed_amount = float(amount[(level == 0) & fraud].sum())
    baseline_missed = float(amount[(rules_only == 0) & fraud].sum())
    fraud_amount = float(amount[fraud].sum())
    false_decline = (level == 2) & ~fraud
    return {
        "payments": n,
        "days": rows.days,
        "alerts": int(alerts.sum()),
        "alert_rate": float(alerts.sum() / n) if n else None,
        "alert_precision": float((alerts & fraud).sum() / alerts.sum()) if alerts.any() else None,
        "model_alerts": int(by_model.sum()),
        "model_precision": float((by_model & fraud).sum() / by_model.sum()) if by_model.any() else None,
        "rule_alerts": int((alerts & ~by_model).sum()),
        "blocked_declines": int(rows.blocked.sum()),
        "decline_rate": float((level == 2).mean()) if n else None,
        "reviews": int((level == 1).sum()),
        "reviews_per_day": float((level == 1).sum() / rows.days),
        "review_capacity": costs.review_capacity,
        "frauds": int(fraud.sum()),
        "caught": int(caught.sum()),
        "recall": float(caught.sum() / fraud.sum()) if fraud.any() else None,
        "fraud_amount": fraud_amount,
        "fraud_amount_caught": fraud_amount - missed_amount,
        "fraud_amount_missed": missed_amount,
        "amount_recall": (fraud_amount - missed_amount) / fraud_amount if fraud_amount else None,
        "false_declines": int(false_decline.sum()),
        "false_decline_amount": float(amount[false_decline].sum()),
        "expected_cost": cost,
        "expected_cost_per_day": cost / rows.days,
        "rules_only_cost": baseline,
        "saving_vs_rules_only": 1.0 - cost / baseline if baseline else None,
        "fraud_cut_vs_rules_only": 1.0 - missed_amount / baseline_missed if baseline_missed else None,
        "cost": costs.model_dump(),
    }
