"""Scoring micro-batches, explaining alerts, deciding.

:class:`Scorer` makes one LightGBM call per batch with a fixed number of threads (an unset thread count can cost a
millisecond per call). Reason codes come from LightGBM's own SHAP values (``pred_contrib``, TreeSHAP: about 0.1 ms
a row, the dearest step of the hot path) and are computed only for the rows whose *score* made them alerts: the
features that pushed the score up most, with their values and log-odds contributions.

:class:`Policy` turns scores into approve / review / decline with two thresholds, then applies the rules in force —
data, not code (:class:`fraudpipe.settings.Rule`: an id from :data:`RULES`, which is its reason code, the outcome it
forces at least, its threshold) — which can only make a decision stricter, never looser:

- ``card_blocked``: a card with a confirmed fraud (its label known: :attr:`features.snapshot.StoreReply.blocked`)
  is blocked, and every later payment on it is declined — by the rule alone: the other rules do not fire on it, it
  is not explained by the model and it is not an analyst's alert (:attr:`Verdicts.blocked`);
- ``known_fraud_30d``: a card with at least ``threshold`` frauds known in its last 30 days
  (``card_fraud_count_30d``) is at least ``at_least``;
- ``large_amount``: a payment of at least ``threshold`` is at least ``at_least``.

:meth:`Policy.judge` says, column-wise for a batch, which rows the score made alerts (``by_score``: explain those)
and which rules fired on each row (their reason codes, :class:`Fired`).

:func:`models.cost.cheapest_thresholds` chooses the thresholds on validation, for the least expected cost.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from numpy.typing import ArrayLike, NDArray

from features.definitions import FEATURE_NAMES, feature_index
from fraudpipe.contracts import Contribution, DecisionOutcome
from fraudpipe.settings import Rule
from models.manifest import LoadedModel

__all__ = ["OUTCOMES", "RULES", "Fired", "Policy", "Scorer", "Verdicts", "explain", "forced_levels", "levels"]

_INDEX = feature_index()
RULES = ("card_blocked", "known_fraud_30d", "large_amount")
"""The policy's rules, by stable id (their order is the order of their reason codes)."""
OUTCOMES: tuple[DecisionOutcome, ...] = ("approve", "review", "decline")
"""The outcomes by level (0, 1, 2): :attr:`Verdicts.level` indexes it."""


class Scorer:
    """A verified model, ready for micro-batches.

    ``runtime="lleaves"`` scores with the model compiled to native code by lleaves (the ``compiled`` extra),
    compiled once per model hash into ``cache_dir``; LightGBM stays the reference, and reason codes always come
    from LightGBM. Measured on this machine: the same scores within 1e-15, several times faster per batch
    (scripts/bench_models.py).
    """

    def __init__(self, model: LoadedModel, threads: int = 1, *, runtime: str = "lightgbm",
                 cache_dir: Path | None = None) -> None:  # fmt: skip
        self.model = model
        self.threads = threads
        self.runtime = runtime
        self._compiled: Any = None
        if runtime == "lleaves":
            if cache_dir is None:
                raise ValueError("the lleaves runtime needs a cache folder (the registry's .compiled)")
            self._compiled = _compile(model, cache_dir)
        elif runtime != "lightgbm":
            raise ValueError(f"unknown model runtime {runtime!r} (lightgbm or lleaves)")

    @property
    def version(self) -> str:
        return self.model.version

    def score(self, matrix: NDArray[np.float64]) -> NDArray[np.float64]:
        """Fraud probability of each row (FEATURE_NAMES columns, NaN = missing), one model call."""
        if len(matrix) == 0:
            return np.zeros(0)
        if self._compiled is not None:
            return np.asarray(self._compiled.predict(np.ascontiguousarray(matrix), n_jobs=self.threads))
        return np.asarray(self.model.booster.predict(matrix, num_threads=self.threads), dtype=np.float64)

    def explain(self, matrix: NDArray[np.float64], top: int = 3) -> list[list[Contribution]]:
        """For each row, the ``top`` features that raised its score most (fewer if fewer raised it)."""
        return explain(self.model.booster, matrix, top, self.threads)


def _compile(model: LoadedModel, cache_dir: Path) -> Any:
    """lleaves' native model for ``model``, compiled from its verified text once per hash (cached)."""
    try:
        import lleaves
    except ImportError:
        raise RuntimeError("the lleaves runtime needs the compiled extra: pip install 'fraudpipe[compiled]'") from None
    cache_dir.mkdir(parents=True, exist_ok=True)
    source = cache_dir / f"{model.sha256}.txt"
    if not source.exists():
        temporary = source.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(model.booster.model_to_string())
        os.replace(temporary, source)
    compiled = lleaves.Model(model_file=str(source))
    compiled.compile(cache=str(cache_dir / f"{model.sha256}.o"))
    return compiled


def explain(
    booster: lgb.Booster, matrix: NDArray[np.float64], top: int = 3, threads: int = 1
) -> list[list[Contribution]]:
    """Reason codes of each row of ``matrix`` (see :meth:`Scorer.explain`), from ``booster``'s SHAP values."""
    if len(matrix) == 0:
        return []
    contributions = np.asarray(booster.predict(matrix, pred_contrib=True, num_threads=threads))
    out = []
    for row, values in zip(matrix, contributions[:, : len(FEATURE_NAMES)], strict=True):
        order = np.argsort(-values, kind="stable")[:top]
        out.append(
            [
                Contribution(
                    feature=FEATURE_NAMES[i],
                    value=None if np.isnan(row[i]) else float(row[i]),
                    contribution=float(values[i]),
                    direction="raises" if values[i] > 0 else "lowers",
                )
                for i in order
                if values[i] > 0
            ]
        )
    return out


@dataclass(frozen=True, slots=True)
class Fired:
    """Where one rule fired in a batch: ``rule`` (a :data:`RULES` id), ``rows`` (bool per row), ``value`` (what it
    tested, per row: a count of frauds, an amount in major units), ``threshold`` (the limit it fires at) and
    ``level`` (the outcome it forces at least: 1 review, 2 decline)."""

    rule: str
    rows: NDArray[np.bool_]
    value: NDArray[np.float64]
    threshold: float
    level: int = 1


@dataclass(frozen=True, slots=True)
class Verdicts:
    """The policy's verdicts on a batch, column-wise: ``level`` per row (0 approve, 1 review, 2 decline),
    ``by_score`` where the score alone reached the review threshold (never on a blocked card), ``fired`` the rules
    in :data:`RULES` order, ``blocked`` the rows declined because their card is blocked (no analyst alert)."""

    level: NDArray[np.int8]
    by_score: NDArray[np.bool_]
    fired: tuple[Fired, ...]
    blocked: NDArray[np.bool_]

    def outcomes(self) -> list[DecisionOutcome]:
        """approve / review / decline for each row."""
        return [OUTCOMES[value] for value in self.level.tolist()]


@dataclass(frozen=True, slots=True)
class Policy:
    """``review <= score < decline``: review; ``score >= decline``: decline; then the rules (module docstring)."""

    review: float
    decline: float
    rules: Sequence[Rule] = ()
    """The rules in force, in order (their reason codes come in this order, a blocked card's first)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.review <= self.decline <= 1.0:
            raise ValueError("thresholds must satisfy 0 <= review <= decline <= 1")

    def fired(self, matrix: NDArray[np.float64], blocked: NDArray[np.bool_] | None = None) -> tuple[Fired, ...]:
        """Where each rule fires on ``matrix``'s rows (FEATURE_NAMES columns, NaN = missing) and the ``blocked``
        cards' rows (none when ``None``): ``card_blocked`` first (no row when it is not in force), then the others
        in order; on a blocked card's row only ``card_blocked`` fires."""
        n = len(matrix)
        ids = [rule.id for rule in self.rules]
        blocked = np.zeros(n, dtype=bool) if blocked is None or "card_blocked" not in ids else blocked
        open_ = ~blocked
        tested = {"known_fraud_30d": np.nan_to_num(matrix[:, _INDEX["card_fraud_count_30d"]]),
                  "large_amount": matrix[:, _INDEX["amount"]]}  # fmt: skip
        out = [Fired("card_blocked", blocked, np.full(n, np.nan), math.nan, 2)]
        for rule in self.rules:
            if rule.id == "card_blocked" or rule.threshold is None:
                continue
            value = tested[rule.id]
            level = OUTCOMES.index(rule.at_least)
            out.append(Fired(rule.id, (value >= rule.threshold) & open_, value, rule.threshold, level))
        return tuple(out)

    def judge(self, scores: ArrayLike, matrix: NDArray[np.float64],
              blocked: NDArray[np.bool_] | None = None) -> Verdicts:  # fmt: skip
        """The verdicts on a batch: the thresholds on ``scores``, then the rules on ``matrix`` and the ``blocked``
        cards (class docstring)."""
        s = np.asarray(scores, dtype=np.float64)
        fired = self.fired(matrix, None if blocked is None else np.asarray(blocked, dtype=bool))
        blocked = fired[0].rows
        level = levels(s, self.review, self.decline, forced_levels(fired[1:], len(s)), blocked)
        return Verdicts(level, (s >= self.review) & ~blocked, fired, blocked)

    def decide(self, scores: ArrayLike, matrix: NDArray[np.float64],
               blocked: NDArray[np.bool_] | None = None) -> list[DecisionOutcome]:  # fmt: skip
        """approve / review / decline for each row (:meth:`judge`'s outcomes)."""
        return self.judge(scores, matrix, blocked).outcomes()


def forced_levels(fired: Sequence[Fired], n: int) -> NDArray[np.int8]:
    """The outcome the rules in ``fired`` force at least on each of ``n`` rows: 0 none, 1 review, 2 decline."""
    forced = np.zeros(n, dtype=np.int8)
    for rule in fired:
        forced = np.where(rule.rows, np.maximum(forced, rule.level), forced).astype(np.int8)
    return forced


def levels(scores: NDArray[np.float64], review: float, decline: float, forced: NDArray[np.int8],
           blocked: NDArray[np.bool_]) -> NDArray[np.int8]:  # fmt: skip
    """The policy's decision per row, 0 approve / 1 review / 2 decline: the thresholds on ``scores`` (NaN: none),
    raised to what the rules force (``forced``), and a decline on a ``blocked`` card. The one place a level is made:
    :meth:`Policy.judge` and the cost model's judging (:mod:`models.cost`) both call it."""
    level = np.where(scores >= decline, 2, scores >= review).astype(np.int8)
    return np.where(blocked, 2, np.maximum(level, forced)).astype(np.int8)
