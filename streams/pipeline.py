"""The scoring pipeline shared by the stream worker and the REST API: validated transactions in; decisions and
alerts out. Per micro-batch: one feature-store call, one model call, reason codes for the alerts only, one call
to remember the decisions. Pure of Kafka: the agent (:mod:`streams.agents`) and the API publish what it returns.

- **One model per batch.** :class:`Models` follows a registry alias and swaps the model only between batches (the
  agent calls :meth:`Models.refresh` before each one); a version that does not verify is refused, logged, and the
  current one keeps serving.
- **One decision per transaction, recognised by content.** Each decision is remembered (score, outcome, model and
  the digest of the transaction's content, :func:`fraudpipe.codec.digest`) for ``decision_memory_s`` before it is
  published. A transaction whose id is remembered with the same digest is a redelivery: it gets its remembered
  decision again, and the store (which recognises it by id) leaves the features as they are. An id remembered
  with *another* digest is a reused id: that transaction is refused (:attr:`Batch.conflicts`, reason
  ``txn_id_conflict``), never answered with the other payment's decision, and it touches no state — the memory
  is read before the store applies anything. Within a batch the first of two same-id transactions wins.
- **Circuit breaker.** After ``scoring.breaker_failures`` consecutive store failures, batches are decided
  degraded at once for ``breaker_cooldown_s`` (:mod:`streams.breaker`) instead of each waiting out the socket
  timeout.
- **Degraded mode.** When the store cannot be read within its budget (:class:`StoreUnavailableError`), decisions
  follow ``scoring.fallback`` (see :class:`fraudpipe.settings.ScoringSettings`), carry ``degraded=true``, no score,
  and the batch's transactions are returned in :attr:`Batch.unapplied` so the caller can apply them once Redis is
  back. Nothing else changes; the next batch tries Redis again.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import polars as pl
import redis
from numpy.typing import NDArray

from features.batch import feature_matrix
from features.definitions import FEATURE_NAMES
from features.snapshot import StoreReply
from features.store import RedisFeatureStore, StoreUnavailableError, redis_client
from fraudpipe.clock import Clock
from fraudpipe.codec import digest
from fraudpipe.contracts import Alert, Decision, DecisionOutcome, ModelRef, Thresholds, Transaction
from fraudpipe.settings import ScoringSettings, Settings
from models.registry import LoadedModel, Registry, RegistryError
from models.scorer import Policy, Scorer
from streams import metrics
from streams.breaker import Breaker

__all__ = [
    "Batch",
    "DecisionMemory",
    "FeatureStore",
    "InMemoryDecisionMemory",
    "Models",
    "Pipeline",
    "Recalled",
    "from_settings",
]

log = logging.getLogger(__name__)


class FeatureStore(Protocol):
    """What the pipeline needs of a feature store (Redis or its in-memory twin)."""

    def raw(self, txns: Sequence[Transaction]) -> StoreReply: ...


@dataclass(frozen=True, slots=True)
class Recalled:
    """A remembered decision: enough to publish the same one again, and the digest of the content it decided."""

    outcome: DecisionOutcome
    score: float | None
    version: str | None
    sha256: str | None
    digest: str

    @property
    def model(self) -> ModelRef | None:
        if self.version is None or self.sha256 is None:
            return None
        return ModelRef(version=self.version, sha256=self.sha256)

    def dumps(self) -> str:
        return json.dumps([self.outcome, self.score, self.version, self.sha256, self.digest])

    @classmethod
    def loads(cls, text: str | bytes) -> Recalled:
        outcome, score, version, sha256, content = json.loads(text)
        return cls(outcome, score, version, sha256, content)


class DecisionMemory:
    """Decisions by transaction id in Redis (``<prefix>decision:<txn_id>``: :meth:`Recalled.dumps`), each kept
    ``ttl_s``. The first decision of an id stays: a later one never overwrites it."""

    def __init__(self, client: redis.Redis, prefix: str, ttl_s: int) -> None:
        self.client, self.prefix, self.ttl_s = client, prefix, ttl_s

    def _key(self, txn_id: str) -> str:
        return f"{self.prefix}decision:{txn_id}"

    def recall(self, txn_ids: Sequence[str]) -> dict[str, Recalled]:
        """The remembered decisions of those of ``txn_ids`` that have one."""
        if not txn_ids:
            return {}
        unique = list(dict.fromkeys(txn_ids))
        try:
            values = self.client.mget([self._key(t) for t in unique])
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise StoreUnavailableError(f"Redis unavailable: {error}") from None
        return {t: Recalled.loads(v) for t, v in zip(unique, values, strict=True) if v is not None}

    def remember(self, decisions: dict[str, Recalled]) -> dict[str, Recalled]:
        """Remember each decision unless its id already has one (``SET NX GET``, one round trip); returns the
        decisions found already there — another worker decided the same id since :meth:`recall`."""
        if not decisions:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for txn_id, recalled in decisions.items():
            pipe.set(self._key(txn_id), recalled.dumps(), nx=True, ex=self.ttl_s, get=True)
        try:
            earlier = pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise StoreUnavailableError(f"Redis unavailable: {error}") from None
        return {t: Recalled.loads(v) for t, v in zip(decisions, earlier, strict=True) if v is not None}


class InMemoryDecisionMemory:
    """The twin of :class:`DecisionMemory` (no expiry)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def recall(self, txn_ids: Sequence[str]) -> dict[str, Recalled]:
        return {t: Recalled.loads(self.values[t]) for t in txn_ids if t in self.values}

    def remember(self, decisions: dict[str, Recalled]) -> dict[str, Recalled]:
        earlier = {t: Recalled.loads(self.values[t]) for t in decisions if t in self.values}
        for txn_id, recalled in decisions.items():
            self.values.setdefault(txn_id, recalled.dumps())
        return earlier


class Models:
    """The model in force, following ``alias`` in ``registry``; changes only when :meth:`refresh` says so."""

    def __init__(self, registry: Registry, alias: str, *, threads: int, poll_s: float, clock: Clock,
                 runtime: str = "lightgbm") -> None:  # fmt: skip
        self.registry, self.alias, self.threads, self.poll_s, self.clock = registry, alias, threads, poll_s, clock
        self.runtime = runtime
        self.scorer: Scorer | None = None
        self._checked = -math.inf
        self._refused: str | None = None

    def start(self) -> Scorer:
        """Load the alias's version.

        Raises:
            RegistryError / IntegrityError: no version behind the alias, or one that does not verify.
        """
        self.scorer = self._scorer(self.registry.load(self.alias))
        self._checked = self.clock.monotonic()
        return self.scorer

    def _scorer(self, model: LoadedModel) -> Scorer:
        return Scorer(model, self.threads, runtime=self.runtime, cache_dir=self.registry.root / ".compiled")

    def refresh(self, *, force: bool = False) -> bool:
        """Swap in the alias's version if it changed (checked every ``poll_s``, or now with ``force``). Returns
        whether the model changed. A version that does not verify is refused once, and the current one stays."""
        now = self.clock.monotonic()
        if not force and now - self._checked < self.poll_s:
            return False
        self._checked = now
        try:
            target = self.registry.aliases()[self.alias]
        except (OSError, ValueError) as error:
            log.error("cannot read the registry aliases: %s", error)
            return False
        current = self.scorer.version if self.scorer else None
        if target is None or target == current or target == self._refused:
            return False
        try:
            loaded: LoadedModel = self.registry.load(target)
        except RegistryError as error:
            self._refuse(target, current, error)
            return False
        try:
            self.scorer = self._scorer(loaded)
        except Exception as error:  # e.g. the compiled runtime failing on this version
            self._refuse(target, current, error)
            return False
        self._refused = None
        log.info("model %s -> %s", current, target)
        return True

    def _refuse(self, target: str, current: str | None, error: Exception) -> None:
        self._refused = target
        metrics.MODELS_REFUSED.labels(type(error).__name__).inc()
        log.error("refused model %s (keeping %s): %s", target, current, error)


@dataclass(slots=True)
class Batch:
    """What one micro-batch produced, in input order; ``unapplied`` holds the transactions whose features could
    not be applied (degraded): apply them once the store is back; ``conflicts`` the transactions refused because
    their id was already decided for other content (no decision for them: dead-letter them as
    ``txn_id_conflict``)."""

    decisions: list[Decision] = field(default_factory=list)
    conflicts: list[Transaction] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    unapplied: list[Transaction] = field(default_factory=list)
    redelivered: int = 0
    store_s: float = 0.0
    model_s: float = 0.0
    matrix: NDArray[np.float64] | None = None
    """The features of the batch's transactions (rows in decision order), when they could be read."""
    fresh: list[int] = field(default_factory=list)
    """Rows decided now by the model in force (not redeliveries answered from memory)."""


@dataclass(slots=True)
class _Rows:
    """A batch's rows sorted out against the decision memory (indexes into the batch, in input order): ``kept``
    go to the store and get a decision; ``again`` maps a kept row to what it repeats (a remembered decision, or the
    earlier row of the same batch with the same id and content); ``conflicts`` are reused ids with other content."""

    kept: list[int]
    again: dict[int, Recalled | int]
    conflicts: list[int]

    @classmethod
    def sort_out(cls, txns: Sequence[Transaction], digests: list[str], known: dict[str, Recalled]) -> _Rows:
        rows = cls([], {}, [])
        first: dict[str, int] = {}
        for i, txn in enumerate(txns):
            earlier: Recalled | int | None = known.get(txn.txn_id)
            if earlier is None:
                earlier = first.setdefault(txn.txn_id, i)
                if earlier == i:
                    earlier = None
            if earlier is not None and (earlier.digest if isinstance(earlier, Recalled) else digests[earlier]) \
                    != digests[i]:  # fmt: skip
                rows.conflicts.append(i)
                continue
            rows.kept.append(i)
            if earlier is not None:
                rows.again[i] = earlier
        return rows


class Pipeline:
    """Features, score, decision, reason codes for one micro-batch (module docstring)."""

    def __init__(self, store: FeatureStore, memory: DecisionMemory | InMemoryDecisionMemory, models: Models,
                 scoring: ScoringSettings, clock: Clock, *, breaker: Breaker | None = None) -> None:  # fmt: skip
        self.store, self.memory, self.models, self.scoring, self.clock = store, memory, models, scoring, clock
        self.breaker = breaker

    def _policy(self, scorer: Scorer) -> Policy:
        s = self.scoring
        stored = scorer.model.manifest.thresholds
        if s.thresholds_from == "model" and {"review", "decline"} <= set(stored):
            return Policy(float(stored["review"]), float(stored["decline"]), s.review_amount)
        return Policy(s.review_threshold, s.decline_threshold, s.review_amount)

    def _fallback(self, txn: Transaction) -> DecisionOutcome:
        if self.scoring.fallback == "fail_closed" or txn.amount >= self.scoring.fallback_review_amount:
            return "review"
        return "approve"

    def _read(self, txns: Sequence[Transaction], digests: list[str]) -> tuple[_Rows, StoreReply]:
        """The batch's rows sorted out against the decision memory, then the store applied to the rows kept and
        read: one memory read and one store call, guarded by the breaker.

        Raises:
            StoreUnavailableError: Redis did not answer in time, or the breaker is open.
        """
        breaker = self.breaker
        if breaker is not None and not breaker.allows():
            raise StoreUnavailableError("circuit breaker open: Redis failed on the last calls")
        try:
            rows = _Rows.sort_out(txns, digests, self.memory.recall([t.txn_id for t in txns]))
            reply = self.store.raw([txns[i] for i in rows.kept])
        except StoreUnavailableError:
            if breaker is not None:
                breaker.failed()
            raise
        if breaker is not None:
            breaker.succeeded()
        return rows, reply

    def score(self, txns: Sequence[Transaction], received_at: Sequence[float]) -> Batch:
        """Decide every transaction of the batch (except the refused reused ids, :attr:`Batch.conflicts`).
        ``received_at``: monotonic time each reached the worker."""
        batch = Batch()
        if not txns:
            return batch
        scorer = self.models.scorer
        if scorer is None:
            raise RuntimeError("no model loaded: call Models.start() first")
        policy = self._policy(scorer)
        thresholds = Thresholds(review=policy.review, decline=policy.decline)
        ref = ModelRef(version=scorer.version, sha256=scorer.model.sha256)
        started = self.clock.monotonic()
        digests = [digest(txn) for txn in txns]
        try:
            rows, reply = self._read(txns, digests)
        except StoreUnavailableError as error:
            log.warning("degraded batch of %d: %s", len(txns), error)
            batch.store_s = self.clock.monotonic() - started
            batch.unapplied = list(txns)
            for txn, received in zip(txns, received_at, strict=True):
                self._emit(batch, txn, {}, None, None, self._fallback(txn), thresholds, [], received, True)
            return batch
        kept = [txns[i] for i in rows.kept]
        x = feature_matrix(reply, kept)
        batch.store_s = self.clock.monotonic() - started
        started = self.clock.monotonic()
        scores = scorer.score(x)
        outcomes = policy.decide(scores, x)
        batch.model_s = self.clock.monotonic() - started
        models: list[ModelRef | None] = [ref] * len(kept)
        remembered: dict[str, tuple[int, Recalled]] = {}
        for k, i in enumerate(rows.kept):
            if (again := rows.again.get(i)) is None:
                remembered[txns[i].txn_id] = (k, Recalled(outcomes[k], float(scores[k]), ref.version, ref.sha256,
                                                          digests[i]))  # fmt: skip
        try:
            raced = self.memory.remember({txn_id: recalled for txn_id, (_, recalled) in remembered.items()})
        except StoreUnavailableError as error:
            log.warning("decisions of a batch not remembered: %s", error)
            raced = {}
        dropped: set[int] = set()
        for txn_id, earlier in raced.items():  # another worker decided the same id since the memory was read
            k = remembered[txn_id][0]
            if earlier.digest != digests[rows.kept[k]]:
                log.warning("transaction id reused while in flight: the store had applied it (refused)")
                dropped.add(k)
            else:
                rows.again[rows.kept[k]] = earlier
        for k, i in enumerate(rows.kept):
            again = rows.again.get(i)
            if isinstance(again, int):  # a copy of an earlier row of this batch: its decision
                again = self._recalled(outcomes, scores, models, rows.kept.index(again), digests[i])
            if again is not None:
                batch.redelivered += 1
                scores[k], outcomes[k] = (np.nan if again.score is None else again.score), again.outcome
                models[k] = again.model
        decided = [k for k in range(len(kept)) if k not in dropped]
        batch.conflicts = [txns[i] for i in rows.conflicts] + [kept[k] for k in sorted(dropped)]
        batch.matrix = x if not dropped else x[decided]
        batch.fresh = [n for n, k in enumerate(decided) if rows.kept[k] not in rows.again]
        alerting = [k for k in decided if outcomes[k] != "approve"]
        reasons = dict(zip(alerting, scorer.explain(x[alerting], self.scoring.reason_codes), strict=True))
        for k in decided:
            txn = kept[k]
            values = zip(FEATURE_NAMES, x[k].tolist(), strict=True)
            features = {name: (None if math.isnan(v) else v) for name, v in values}
            score = None if math.isnan(scores[k]) else float(scores[k])
            self._emit(batch, txn, features, models[k], score, outcomes[k], thresholds, reasons.get(k, []),
                       received_at[rows.kept[k]], False)  # fmt: skip
        return batch

    @staticmethod
    def _recalled(outcomes: list[DecisionOutcome], scores: NDArray[np.float64], models: list[ModelRef | None],
                  k: int, content: str) -> Recalled:  # fmt: skip
        model = models[k]
        score = None if math.isnan(scores[k]) else float(scores[k])
        return Recalled(outcomes[k], score, model.version if model else None, model.sha256 if model else None,
                        content)  # fmt: skip

    def score_one_by_one(self, txns: Sequence[Transaction], received_at: Sequence[float]) -> Batch:
        """:meth:`score` called per event (one store call, one model call each): the naive design, kept as
        ``fraudpipe bench``'s floor."""
        whole = Batch()
        for txn, received in zip(txns, received_at, strict=True):
            one = self.score([txn], [received])
            whole.decisions += one.decisions
            whole.alerts += one.alerts
            whole.unapplied += one.unapplied
            whole.conflicts += one.conflicts
            whole.redelivered += one.redelivered
            whole.store_s += one.store_s
            whole.model_s += one.model_s
        return whole

    def shadow(self, batch: Batch, models: Models) -> pl.DataFrame | None:
        """What ``models`` (the challenger) would have done with the batch's fresh decisions: one row each with
        its score and would-be decision next to the champion's; ``None`` without a challenger or features."""
        scorer = models.scorer
        if scorer is None or batch.matrix is None or not batch.fresh:
            return None
        x = batch.matrix[batch.fresh]
        scores = scorer.score(x)
        outcomes = self._policy(scorer).decide(scores, x)
        served = [batch.decisions[i] for i in batch.fresh]
        return pl.DataFrame(
            {
                "txn_id": [d.txn_id for d in served],
                "card_token": [d.card_token for d in served],
                "event_time": [d.event_time for d in served],
                "decided_at": [d.decided_at for d in served],
                "model_version": scorer.version,
                "score": scores.astype(np.float64),
                "decision": outcomes,
                "champion_version": [d.model.version if d.model else None for d in served],
                "champion_score": [d.score for d in served],
                "champion_decision": [d.decision for d in served],
            },
            schema_overrides={"champion_version": pl.String, "champion_score": pl.Float64},
        )

    def _emit(self, batch: Batch, txn: Transaction, features: dict[str, float | None], model: ModelRef | None,
              score: float | None, outcome: DecisionOutcome, thresholds: Thresholds, reasons: list[Any],
              received: float, degraded: bool) -> None:  # fmt: skip
        now = self.clock.now()
        latency_ms = max(0.0, (self.clock.monotonic() - received) * 1000)
        batch.decisions.append(
            Decision(
                txn_id=txn.txn_id, card_token=txn.card_token, event_time=txn.event_time, decided_at=now,
                amount=txn.amount, currency=txn.currency, features=features, model=model, score=score,
                decision=outcome, thresholds=thresholds, reason_codes=reasons, latency_ms=latency_ms,
                degraded=degraded,
            )
        )  # fmt: skip
        if outcome != "approve":
            batch.alerts.append(
                Alert(
                    alert_id=Alert.id_for(txn.txn_id), txn_id=txn.txn_id, card_token=txn.card_token,
                    card_last4=txn.card_last4, event_time=txn.event_time, raised_at=now, amount=txn.amount,
                    currency=txn.currency, terminal_id=txn.terminal_id, merchant_id=txn.merchant_id,
                    decision=outcome, score=score, model=model, reason_codes=reasons, degraded=degraded,
                )
            )  # fmt: skip


def from_settings(settings: Settings, clock: Clock) -> tuple[Pipeline, redis.Redis]:
    """The production pipeline: Redis store and decision memory (one client, returned too), the registry alias."""
    client = redis_client(settings.redis)
    scoring = settings.scoring
    models = Models(Registry(settings.paths.models_dir), scoring.model_alias, threads=scoring.model_threads,
                    poll_s=scoring.model_poll_s, clock=clock, runtime=scoring.model_runtime)  # fmt: skip
    store = RedisFeatureStore(client, settings.redis.key_prefix)
    memory = DecisionMemory(client, settings.redis.key_prefix, scoring.decision_memory_s)
    breaker = Breaker(scoring.breaker_failures, scoring.breaker_cooldown_s, clock)
    return Pipeline(store, memory, models, scoring, clock, breaker=breaker), client
