"""The scoring pipeline shared by the stream worker and the REST API: validated transactions in; decisions and
alerts out, encoded. Per micro-batch: one feature-store call, one model call, reason codes for the alerts only, one
call to remember the decisions, and the outputs built from the batch's columns (:mod:`streams.outputs`): no
pydantic object per decision, the log's rows built once per flush of the decision log. Pure of Kafka: the agent
(:mod:`streams.agents`) and the API publish what it returns (:class:`Batch`).

- **One model per batch.** :class:`Models` follows a registry alias and swaps the model only between batches (the
  agent calls :meth:`Models.refresh` before each one); a version that does not verify is refused, logged, and the
  current one keeps serving.
- **One decision per transaction, recognised by content.** Each decision is remembered (outcome, score, model
  version and the digest of the transaction's content, :func:`fraudpipe.codec.digest`) for ``decision_memory_s``
  before it is published. A transaction whose id is remembered with the same digest is a redelivery: it gets its
  remembered decision again, and the store (which recognises it by id) leaves the features as they are. An id
  remembered with *another* digest is a reused id: that transaction is refused (:attr:`Batch.conflicts`, reason
  ``txn_id_conflict``), never answered with the other payment's decision, and it touches no state — the memory
  is read before the store applies anything. Within a batch the first of two same-id transactions wins.
- **The next batch's store call overlaps this one's outputs.** Given the batch that follows (``then``),
  :meth:`Pipeline.score` reads the memory for it in the call that remembers this batch's decisions (one round
  trip: :meth:`DecisionMemory.remember_then_recall`), sends its store call, and builds this batch's reason codes
  and outputs while Redis applies the next one: the same order of memory and store calls as one batch after the
  other, less waiting.
- **Reason codes where they explain.** An alert carries the policy rules that fired on it (``known_fraud_30d``,
  ``large_amount``: :mod:`models.scorer`); TreeSHAP runs only for the alerts whose score crossed the review
  threshold, and their contributions follow the rules. A review forced by a rule alone carries the rule, no SHAP.
  A payment on a blocked card (a confirmed fraud: :attr:`features.snapshot.StoreReply.blocked`, as the store read
  it with the batch) is declined with ``card_blocked`` alone: no SHAP, no alert message.
  A redelivered decision's reasons are worked out again from its features as read again.
- **Circuit breaker.** After ``scoring.breaker_failures`` consecutive store failures, batches are decided
  degraded at once for ``breaker_cooldown_s`` (:mod:`streams.breaker`) instead of each waiting out the socket
  timeout.
- **Degraded mode.** When the store cannot be read within its budget (:class:`StoreUnavailableError`), decisions
  follow ``scoring.fallback`` (see :class:`fraudpipe.settings.ScoringSettings`; the reason code names it:
  ``fallback_fail_closed`` or ``fallback_large_amount``), carry ``degraded=true``, no score, and the batch's
  transactions are returned in :attr:`Batch.unapplied` so the caller can apply them once Redis is back. Nothing
  else changes; the next batch tries Redis again.
"""

from __future__ import annotations

import json
import logging
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import polars as pl
import redis
from numpy.typing import NDArray

from features.batch import feature_matrix
from features.snapshot import StoreReply
from features.store import RedisFeatureStore, StoreUnavailableError, redis_client
from fraudpipe import keys
from fraudpipe.clock import Clock
from fraudpipe.codec import decode, digest
from fraudpipe.contracts import Alert, Decision, DecisionOutcome, Transaction
from fraudpipe.settings import ScoringSettings, Settings
from models.registry import LoadedModel, Registry, RegistryError
from models.scorer import OUTCOMES, Fired, Policy, Scorer
from streams import metrics
from streams.breaker import Breaker
from streams.outputs import (
    Decided,
    LogPart,
    alert_messages,
    decision_messages,
    decision_rows,
    reason_texts,
)

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

Message = tuple[bytes, bytes]
"""A message to publish: (key, value) — the card token, the event's JSON."""


class FeatureStore(Protocol):
    """What the pipeline needs of a feature store (Redis or its in-memory twin)."""

    def raw(self, txns: Sequence[Transaction]) -> StoreReply: ...

    def begin(self, txns: Sequence[Transaction]) -> Any: ...

    def end(self, flight: Any) -> StoreReply: ...

    def cancel(self, flight: Any) -> None: ...


_PACKED = struct.Struct("<Bd16s")
"""A remembered decision: outcome level (1 byte: 0 approve, 1 review, 2 decline, 3 declined because the card was
blocked), score (float64, NaN = none), raw content digest (16 bytes), then the model version (UTF-8, the rest of the
value; empty = none)."""
_BLOCKED = 3


@dataclass(frozen=True, slots=True)
class Recalled:
    """A remembered decision: enough to publish the same one again, and the digest of the content it decided.
    ``sha256`` is the model file's hash when the memory kept it (values written before it kept only the version:
    :meth:`Models.sha256_of` finds it in the registry)."""

    outcome: DecisionOutcome
    score: float | None
    version: str | None
    sha256: str | None
    digest: str
    blocked: bool = False
    """Declined because the card was blocked (no alert was raised)."""

    @staticmethod
    def pack(level: int, score: float, version: str | None, content: str, blocked: bool = False) -> bytes:
        """The memory's value of a decision: ``level`` (0 approve, 1 review, 2 decline; ``blocked``: a blocked
        card's decline), ``score`` (NaN = none), the model version, the content digest (32 hex characters): 25 bytes
        and the version."""
        return _PACKED.pack(_BLOCKED if blocked else level, score, bytes.fromhex(content)) + (version or "").encode()

    def dumps(self) -> bytes:
        """This decision as the memory's value (:meth:`pack`)."""
        score = math.nan if self.score is None else self.score
        return self.pack(OUTCOMES.index(self.outcome), score, self.version, self.digest, self.blocked)

    @classmethod
    def loads(cls, value: str | bytes) -> Recalled:
        """A remembered decision from the memory's value: packed (:meth:`pack`) or, as written before, the JSON
        list ``[outcome, score, version, sha256, digest]``."""
        data = value.encode() if isinstance(value, str) else value
        if data[:1] == b"[":
            outcome, score, version, sha256, content = json.loads(data)
            return cls(outcome, score, version, sha256, content)
        level, score, content = _PACKED.unpack_from(data)
        version = data[_PACKED.size :].decode() or None
        blocked = level == _BLOCKED
        outcome = OUTCOMES[2 if blocked else level]
        return cls(outcome, None if math.isnan(score) else score, version, None, content.hex(), blocked)


_GENERATION = """
local span = tonumber(ARGV[2])
local gen = math.floor(tonumber(redis.call('TIME')[1]) / span)
local this, last = ARGV[1] .. gen .. ':', ARGV[1] .. (gen - 1) .. ':'
"""
"""The decision memory's scripts begin here: ``ARGV[1]`` the key stem (``<prefix>decision:``), ``ARGV[2]`` a
generation's length in seconds; ``this`` and ``last``, the stems of the current generation's hashes by Redis' clock
(one clock for every worker) and of the one before."""

_REMEMBER_RECALL = (
    _GENERATION
    + """
local n = tonumber(ARGV[3])
local expire_at, found, touched = (gen + 2) * span, {}, {}
for i = 4, 3 + 3 * n, 3 do
  local slot, id = ARGV[i], ARGV[i + 1]
  local key, earlier = this .. slot, redis.call('HGET', last .. slot, id)
  if not earlier then
    if redis.call('HSETNX', key, id, ARGV[i + 2]) == 0 then
      earlier = redis.call('HGET', key, id)
    elseif not touched[key] then
      touched[key] = true
      redis.call('EXPIREAT', key, expire_at)
    end
  end
  found[#found + 1] = earlier
end
for i = 4 + 3 * n, #ARGV, 2 do
  local slot, id = ARGV[i], ARGV[i + 1]
  found[#found + 1] = redis.call('HGET', this .. slot, id) or redis.call('HGET', last .. slot, id)
end
return found
"""
)
"""Remember, then recall: ``ARGV[3]`` triples from 4 (slot, id, value), each value set in the current generation
unless one of the live generations has the id; then pairs (slot, id) looked up in the two live generations. Returns
the values already there for the triples (nil where there was none), then the values found for the pairs."""

_FORGET = (
    _GENERATION
    + """
local removed = 0
for i = 3, #ARGV, 2 do
  local slot, id = ARGV[i], ARGV[i + 1]
  removed = removed + redis.call('HDEL', this .. slot, id) + redis.call('HDEL', last .. slot, id)
end
return removed
"""
)
"""Delete ids (``ARGV`` pairs from 3: slot, id) from the live generations; returns how many entries went."""


class DecisionMemory:
    """Decisions by transaction id in Redis: :meth:`Recalled.pack`'s bytes (~30) in small hashes, each kept at
    least ``ttl_s``. The first decision of an id stays: a later one never overwrites it.

    Layout: ``<prefix>decision:<generation>:<slot>`` is a hash from transaction id to decision. A generation lasts
    ``ttl_s`` by Redis' clock (:data:`_GENERATION`) and its hashes expire when the second one after it begins, so a
    decision is remembered between ``ttl_s`` and twice that; reads look in the two live generations. An id's slot is
    its CRC-32 modulo ``slots``. Kept small (fewer entries than Redis' ``hash-max-listpack-entries``, 512 by
    default: ``slots`` about a generation's decisions / 200), a hash is one compact listpack: 54 bytes a decision,
    where a key per id with its own expiry took 181 (``used_memory``, 200,000 ids); fewer slots still work, at 90
    bytes a decision in larger hashes. The price is Redis' CPU: ~7.5 µs a decision to remember and recall it (Lua
    and five commands an id) against 3.7 for ``MGET`` and ``SET NX GET EX``. Changing ``slots`` on a running system
    loses the memory of the decisions made before (their ids are looked for in other hashes): change it between
    deployments, not during one.
    """

    def __init__(self, client: redis.Redis, prefix: str, ttl_s: int, slots: int) -> None:
        self.client, self.ttl_s, self.slots = client, ttl_s, slots
        self._head = [keys.decisions(prefix), ttl_s]
        self._script = client.register_script(_REMEMBER_RECALL)
        self._forget = client.register_script(_FORGET)

    @classmethod
    def of(cls, client: redis.Redis, settings: Settings) -> DecisionMemory:
        """The memory ``settings`` describe (the worker's, the API's and erasure's: one layout)."""
        scoring = settings.scoring
        return cls(client, settings.redis.key_prefix, scoring.decision_memory_s, scoring.decision_memory_slots)

    def _slotted(self, txn_ids: Sequence[str], *values: Sequence[bytes]) -> list[Any]:
        """``[slot, id, value…, slot, id, value…]``: each id after its slot, then its ``values``."""
        slots, args = self.slots, list[Any]()
        for txn_id, *rest in zip(txn_ids, *values, strict=True):
            args += (zlib.crc32(txn_id.encode()) % slots, txn_id, *rest)
        return args

    def _call(self, script: Any, args: list[Any]) -> Any:
        try:
            return script(args=self._head + args)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise StoreUnavailableError(f"Redis unavailable: {error}") from None

    def recall(self, txn_ids: Sequence[str]) -> dict[str, Recalled]:
        """The remembered decisions of those of ``txn_ids`` that have one."""
        return self.remember_then_recall((), (), txn_ids)[1]

    def remember(self, txn_ids: Sequence[str], values: Sequence[bytes]) -> dict[str, Recalled]:
        """Remember each decision (``values``: :meth:`Recalled.pack`) unless its id already has one; returns the
        decisions found already there — another worker decided the same id since :meth:`recall`."""
        return self.remember_then_recall(txn_ids, values, ())[0]

    def remember_then_recall(self, txn_ids: Sequence[str], values: Sequence[bytes],
                             then: Sequence[str]) -> tuple[dict[str, Recalled], dict[str, Recalled]]:  # fmt: skip
        """:meth:`remember` these decisions, then :meth:`recall` the ids ``then`` (the next batch's), in one script
        call: one round trip where the two took two."""
        if not txn_ids and not then:
            return {}, {}
        unique = list(dict.fromkeys(then))
        found = self._call(self._script, [len(txn_ids), *self._slotted(txn_ids, values), *self._slotted(unique)])
        earlier, recalled = found[: len(txn_ids)], found[len(txn_ids) :]
        return ({t: Recalled.loads(v) for t, v in zip(txn_ids, earlier, strict=True) if v is not None},
                {t: Recalled.loads(v) for t, v in zip(unique, recalled, strict=True) if v is not None})  # fmt: skip

    def forget(self, txn_ids: Sequence[str]) -> int:
        """Delete the decisions of ``txn_ids`` (erasure); returns how many were remembered."""
        return int(self._call(self._forget, self._slotted(list(dict.fromkeys(txn_ids))))) if txn_ids else 0


class InMemoryDecisionMemory:
    """The twin of :class:`DecisionMemory` (no expiry)."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    def recall(self, txn_ids: Sequence[str]) -> dict[str, Recalled]:
        return {t: Recalled.loads(self.values[t]) for t in txn_ids if t in self.values}

    def remember(self, txn_ids: Sequence[str], values: Sequence[bytes]) -> dict[str, Recalled]:
        earlier = {t: Recalled.loads(self.values[t]) for t in txn_ids if t in self.values}
        for txn_id, value in zip(txn_ids, values, strict=True):
            self.values.setdefault(txn_id, value)
        return earlier

    def remember_then_recall(self, txn_ids: Sequence[str], values: Sequence[bytes],
                             then: Sequence[str]) -> tuple[dict[str, Recalled], dict[str, Recalled]]:  # fmt: skip
        return self.remember(txn_ids, values), self.recall(then)


class Models:
    """The model in force, following ``alias`` in ``registry``; changes only when :meth:`refresh` says so."""

    def __init__(self, registry: Registry, alias: str, *, threads: int, poll_s: float, clock: Clock,
                 runtime: str = "lightgbm") -> None:  # fmt: skip
        self.registry, self.alias, self.threads, self.poll_s, self.clock = registry, alias, threads, poll_s, clock
        self.runtime = runtime
        self.scorer: Scorer | None = None
        self._checked = -math.inf
        self._woken = False
        self._refused: str | None = None
        self._sha256s: dict[str, str | None] = {}

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
        """Swap in the alias's version if it changed (checked every ``poll_s``, or now with ``force`` or after
        :meth:`wake`; the flag is cleared before the alias is read, so a wake during a check is never lost). Returns
        whether the model changed. A version that does not verify is refused once, and the current one stays."""
        now = self.clock.monotonic()
        if not force and not self._woken and now - self._checked < self.poll_s:
            return False
        self._checked, self._woken = now, False
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

    def wake(self) -> None:
        """Make the next :meth:`refresh` read the alias whatever ``poll_s`` says (a model event arrived: any
        thread may call this)."""
        self._woken = True

    def sha256_of(self, version: str | None) -> str | None:
        """The model file SHA-256 of ``version`` (the one serving, or the registry's manifest; cached); ``None``
        for no version, or one the registry no longer knows (logged)."""
        if version is None:
            return None
        if self.scorer is not None and self.scorer.version == version:
            return self.scorer.model.sha256
        if version not in self._sha256s:
            try:
                self._sha256s[version] = self.registry.manifest(version).model_sha256
            except RegistryError as error:
                log.error("remembered decision of model %s, unknown to the registry: %s", version, error)
                return None
        return self._sha256s[version]

    def _refuse(self, target: str, current: str | None, error: Exception) -> None:
        self._refused = target
        metrics.MODELS_REFUSED.labels(type(error).__name__).inc()
        log.error("refused model %s (keeping %s): %s", target, current, error)


@dataclass(slots=True)
class Batch:
    """What one micro-batch produced, column-wise, decisions in input order (the refused ones left out).

    ``decided`` the decisions column-wise (one :class:`streams.outputs.Decided` per scored part: the decision log's
    rows, :attr:`log_rows`), ``decision_messages`` the ``scores.v1`` messages and ``alert_messages`` the
    ``alerts.v1`` ones (reviews and declines), each a (card token, contract JSON) pair, in decision order;
    ``outcomes`` counts the decisions by outcome and ``degraded`` those decided degraded. ``unapplied`` holds the
    transactions whose features could not be applied (degraded): apply them once the store is back; ``conflicts``
    the transactions refused because their id was already decided for other content (no decision for them:
    dead-letter them as ``txn_id_conflict``)."""

    decided: list[Decided] = field(default_factory=list)
    decision_messages: list[Message] = field(default_factory=list)
    alert_messages: list[Message] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    degraded: int = 0
    conflicts: list[Transaction] = field(default_factory=list)
    unapplied: list[Transaction] = field(default_factory=list)
    redelivered: int = 0
    store_s: float = 0.0
    model_s: float = 0.0
    matrix: NDArray[np.float64] | None = None
    """The features of the batch's decisions (rows in decision order), when they could be read."""
    fresh: list[int] = field(default_factory=list)
    """Rows decided now by the model in force (not redeliveries answered from memory)."""

    @property
    def txn_ids(self) -> list[str]:
        """The transaction id of each decision, in order (of :attr:`decision_messages` too)."""
        return [txn.txn_id for part in self.decided for txn in part.txns]

    @property
    def log_rows(self) -> pl.DataFrame:
        """The decision log's rows of the batch (:func:`streams.outputs.decision_rows`; the scoring agent's writer
        builds them per flush instead, from :attr:`decided`)."""
        return decision_rows([LogPart.of(part) for part in self.decided])

    def decisions(self) -> list[Decision]:
        """The decisions as contract events, decoded from :attr:`decision_messages` (tests, the API's answer):
        not for the hot path."""
        return [decode(value, Decision) for _, value in self.decision_messages]

    def alerts(self) -> list[Alert]:
        """The alerts as contract events, decoded from :attr:`alert_messages` (tests): not for the hot path."""
        return [decode(value, Alert) for _, value in self.alert_messages]

    @classmethod
    def concat(cls, parts: Sequence[Batch]) -> Batch:
        """The batches one after another (timings summed; no features: shadow scoring skips it); a single one as
        it is."""
        if len(parts) == 1:
            return parts[0]
        whole = cls()
        for part in parts:
            whole.decision_messages += part.decision_messages
            whole.alert_messages += part.alert_messages
            for outcome, count in part.outcomes.items():
                whole.outcomes[outcome] = whole.outcomes.get(outcome, 0) + count
            whole.degraded += part.degraded
            whole.conflicts += part.conflicts
            whole.unapplied += part.unapplied
            whole.redelivered += part.redelivered
            whole.store_s += part.store_s
            whole.model_s += part.model_s
            whole.decided += part.decided
        return whole

    @classmethod
    def of(cls, decided: Decided) -> Batch:
        """The outputs of ``decided``, built column-wise (:mod:`streams.outputs`)."""
        counts = np.bincount(decided.level, minlength=len(OUTCOMES)).tolist()
        return cls(decided=[decided], decision_messages=decision_messages(decided),
                   alert_messages=alert_messages(decided),
                   outcomes={o: c for o, c in zip(OUTCOMES, counts, strict=True) if c},
                   degraded=len(decided.txns) if decided.degraded else 0)  # fmt: skip


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


@dataclass(frozen=True, slots=True)
class _Ahead:
    """The next batch, its memory read and its store call sent while the one before is decided."""

    txns: Sequence[Transaction]
    digests: list[str]
    rows: _Rows
    flight: Any


class Pipeline:
    """Features, score, decision, reason codes and outputs for one micro-batch (module docstring). Not
    thread-safe: one thread scores."""

    def __init__(self, store: FeatureStore, memory: DecisionMemory | InMemoryDecisionMemory, models: Models,
                 scoring: ScoringSettings, clock: Clock, *, breaker: Breaker | None = None) -> None:  # fmt: skip
        self.store, self.memory, self.models, self.scoring, self.clock = store, memory, models, scoring, clock
        self.breaker = breaker
        self._ahead: _Ahead | None = None

    def _policy(self, scorer: Scorer) -> Policy:
        s = self.scoring
        stored = scorer.model.manifest.thresholds
        if s.thresholds_from == "model" and {"review", "decline"} <= set(stored):
            return Policy(float(stored["review"]), float(stored["decline"]), s.rules)
        return Policy(s.review_threshold, s.decline_threshold, s.rules)

    def _begin(self, txns: Sequence[Transaction], digests: list[str],
               known: dict[str, Recalled] | None = None) -> tuple[_Rows, Any]:  # fmt: skip
        """The batch's rows sorted out against the decision memory (``known``: what it holds for them, read already;
        ``None``: read it now), and the store call for the rows kept sent (:meth:`_end` reads it), guarded by the
        breaker.

        Raises:
            StoreUnavailableError: Redis did not answer in time, or the breaker is open.
        """
        breaker = self.breaker
        if breaker is not None and not breaker.allows():
            raise StoreUnavailableError("circuit breaker open: Redis failed on the last calls")
        try:
            if known is None:
                known = self.memory.recall([t.txn_id for t in txns])
            rows = _Rows.sort_out(txns, digests, known)
            return rows, self.store.begin([txns[i] for i in rows.kept])
        except StoreUnavailableError:
            if breaker is not None:
                breaker.failed()
            raise

    def _end(self, flight: Any) -> StoreReply:
        """The state a store call :meth:`_begin` sent read back, told to the breaker.

        Raises:
            StoreUnavailableError: Redis did not answer in time.
        """
        try:
            reply = self.store.end(flight)
        except StoreUnavailableError:
            if self.breaker is not None:
                self.breaker.failed()
            raise
        if self.breaker is not None:
            self.breaker.succeeded()
        return reply

    def _read(self, txns: Sequence[Transaction]) -> tuple[list[str], _Rows, StoreReply]:
        """The batch's digests, its rows sorted out against the memory and its state after the store applied the
        rows kept: begun with the batch before (``then``) if it was, else now.

        Raises:
            StoreUnavailableError: Redis did not answer in time, or the breaker is open.
        """
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.txns is not txns:  # not the batch it was begun for: given up
            self.store.cancel(ahead.flight)
            ahead = None
        if ahead is None:
            digests = [digest(txn) for txn in txns]
            rows, flight = self._begin(txns, digests)
        else:
            digests, rows, flight = ahead.digests, ahead.rows, ahead.flight
        return digests, rows, self._end(flight)

    def _begin_next(self, txns: Sequence[Transaction], known: dict[str, Recalled] | None) -> None:
        """Send the next batch's store call, its memory read already (``known``) or read now (module docstring). If
        that fails, this batch goes on: the next one tries again when it is scored, and meets the failure there
        (degraded, or scored one by one), not this one."""
        digests = [digest(txn) for txn in txns]
        try:
            rows, flight = self._begin(txns, digests, known)
        except Exception:  # the next batch's failure, handled when it is scored
            return
        self._ahead = _Ahead(txns, digests, rows, flight)

    def give_up_ahead(self) -> None:
        """Give up the next batch's store call, if one was begun (at shutdown; it is sent again if scored)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            self.store.cancel(ahead.flight)

    def _latency_ms(self, received_at: Sequence[float]) -> NDArray[np.float64]:
        return np.maximum(0.0, (self.clock.monotonic() - np.asarray(received_at, dtype=np.float64)) * 1000)

    def score(self, txns: Sequence[Transaction], received_at: Sequence[float], *,
              then: Sequence[Transaction] | None = None) -> Batch:  # fmt: skip
        """Decide every transaction of the batch (except the refused reused ids, :attr:`Batch.conflicts`).
        ``received_at``: monotonic time each reached the worker. ``then``: the batch that will be scored next,
        whose store call is sent once this batch's state is read (module docstring)."""
        if not txns:
            return Batch()
        scorer = self.models.scorer
        if scorer is None:
            raise RuntimeError("no model loaded: call Models.start() first")
        policy = self._policy(scorer)
        started = self.clock.monotonic()
        try:
            digests, rows, reply = self._read(txns)
        except StoreUnavailableError as error:
            log.warning("degraded batch of %d: %s", len(txns), error)
            return self._degraded(txns, received_at, policy, self.clock.monotonic() - started)
        kept = [txns[i] for i in rows.kept]
        x = feature_matrix(reply, kept)
        store_s = self.clock.monotonic() - started
        started = self.clock.monotonic()
        scores = scorer.score(x)
        verdicts = policy.judge(scores, x, reply.blocked_rows(kept))
        model_s = self.clock.monotonic() - started
        level, blocked = verdicts.level.copy(), verdicts.blocked.copy()
        versions: list[str | None] = [scorer.version] * len(kept)
        fresh = [k for k, i in enumerate(rows.kept) if i not in rows.again]
        ids = [kept[k].txn_id for k in fresh]
        values = [Recalled.pack(int(level[k]), float(scores[k]), scorer.version, digests[rows.kept[k]],
                                bool(blocked[k])) for k in fresh]  # fmt: skip
        known: dict[str, Recalled] | None = None
        try:  # the next batch's memory read after this batch's decisions are remembered, as if it came after
            raced, known = self.memory.remember_then_recall(ids, values, [t.txn_id for t in then or ()])
        except StoreUnavailableError as error:
            log.warning("decisions of a batch not remembered: %s", error)
            raced = {}
        if then:
            self._begin_next(then, known)
        dropped: set[int] = set()
        position = {i: k for k, i in enumerate(rows.kept)}
        for txn_id, earlier in raced.items():  # another worker decided the same id since the memory was read
            k = fresh[ids.index(txn_id)]
            if earlier.digest != digests[rows.kept[k]]:
                log.warning("transaction id reused while in flight: the store had applied it (refused)")
                dropped.add(k)
            else:
                rows.again[rows.kept[k]] = earlier
        sha256s: list[str | None] = [scorer.model.sha256] * len(kept)
        redelivered = 0
        for k, i in enumerate(rows.kept):
            again = rows.again.get(i)
            if again is None:
                continue
            redelivered += 1
            if isinstance(again, int):  # a copy of an earlier row of this batch: its decision
                j = position[again]
                scores[k], level[k], versions[k], sha256s[k] = scores[j], level[j], versions[j], sha256s[j]
                blocked[k] = blocked[j]
            else:  # the decision as first made: a blocked card's decline stays one (no alert), whatever the block now
                scores[k] = np.nan if again.score is None else again.score
                level[k], blocked[k] = OUTCOMES.index(again.outcome), again.blocked
                versions[k] = again.version
                sha256s[k] = again.sha256 or self.models.sha256_of(again.version)
        decided = np.array([k for k in range(len(kept)) if k not in dropped], dtype=np.intp)
        alerting, blocked = level[decided] >= 1, blocked[decided]
        # the score made them alerts (a blocked card's decline is the rule's alone)
        explain = np.flatnonzero(alerting & ~blocked & (scores[decided] >= policy.review)).tolist()
        codes = scorer.explain(x[decided[explain]], self.scoring.reason_codes) if explain else []
        fired = tuple(Fired(f.rule, blocked if f.rule == "card_blocked" else f.rows[decided] & ~blocked,
                            f.value[decided], f.threshold, f.level) for f in verdicts.fired)  # fmt: skip
        batch = Batch.of(
            Decided(
                txns=[kept[k] for k in decided], decided_at=self.clock.now(),
                latency_ms=self._latency_ms([received_at[rows.kept[k]] for k in decided]), matrix=x[decided],
                scores=scores[decided], level=level[decided], versions=[versions[k] for k in decided],
                sha256s=[sha256s[k] for k in decided], review=policy.review, decline=policy.decline,
                reasons=reason_texts(alerting, fired, dict(zip(explain, codes, strict=True))), degraded=False,
                blocked=blocked,
            )
        )  # fmt: skip
        batch.conflicts = [txns[i] for i in rows.conflicts] + [kept[k] for k in sorted(dropped)]
        batch.redelivered, batch.store_s, batch.model_s = redelivered, store_s, model_s
        batch.matrix = x if not dropped else x[decided]
        batch.fresh = [n for n, k in enumerate(decided.tolist()) if rows.kept[k] not in rows.again]
        return batch

    def _degraded(self, txns: Sequence[Transaction], received_at: Sequence[float], policy: Policy,
                  store_s: float) -> Batch:  # fmt: skip
        """The batch decided by ``scoring.fallback`` without features or score (module docstring)."""
        n = len(txns)
        amounts = np.array([txn.amount for txn in txns], dtype=np.float64)
        if self.scoring.fallback == "fail_closed":
            rule = Fired("fallback_fail_closed", np.ones(n, dtype=bool), np.full(n, np.nan), math.nan)
        else:
            limit = self.scoring.fallback_review_amount
            rule = Fired("fallback_large_amount", amounts >= limit, amounts, limit)
        level = rule.rows.astype(np.int8)
        batch = Batch.of(
            Decided(
                txns=txns, decided_at=self.clock.now(), latency_ms=self._latency_ms(received_at), matrix=None,
                scores=np.full(n, np.nan), level=level, versions=[None] * n, sha256s=[None] * n,
                review=policy.review, decline=policy.decline, reasons=reason_texts(rule.rows, (rule,), {}),
                degraded=True,
            )
        )  # fmt: skip
        batch.unapplied, batch.store_s = list(txns), store_s
        return batch

    def score_one_by_one(self, txns: Sequence[Transaction], received_at: Sequence[float]) -> Batch:
        """:meth:`score` called per event (one store call, one model call each): the naive design, kept as
        ``fraudpipe bench``'s floor."""
        return Batch.concat([self.score([txn], [received]) for txn, received in zip(txns, received_at, strict=True)])

    def shadow(self, batch: Batch, models: Models) -> pl.DataFrame | None:
        """What ``models`` (the challenger) would have done with the batch's fresh decisions: one row each with
        its score and would-be decision (with its rules' reason codes) next to the champion's; ``None`` without a
        challenger or features."""
        scorer = models.scorer
        if scorer is None or batch.matrix is None or not batch.fresh:
            return None
        x = batch.matrix[batch.fresh]
        scores = scorer.score(x)
        blocked = np.concatenate([np.zeros(len(d.txns), dtype=bool) if d.blocked is None else d.blocked
                                  for d in batch.decided])[batch.fresh]  # fmt: skip
        policy = self._policy(scorer)
        verdicts = policy.judge(scores, x, blocked)
        served = batch.log_rows[batch.fresh]
        return served.select(
            "txn_id", "card_token", "event_time", "decided_at", "amount",
            pl.lit(scorer.version).alias("model_version"),
            pl.Series("score", scores.astype(np.float64)),
            pl.Series("decision", verdicts.outcomes(), dtype=pl.String),
            pl.lit(policy.review).alias("review_threshold"),
            pl.lit(policy.decline).alias("decline_threshold"),
            pl.lit(False).alias("degraded"),
            pl.Series("reason_codes", reason_texts(verdicts.level >= 1, verdicts.fired, {}), dtype=pl.String),
            pl.col("model_version").alias("champion_version"),
            pl.col("score").alias("champion_score"),
            pl.col("decision").alias("champion_decision"),
        )  # fmt: skip


def from_settings(settings: Settings, clock: Clock) -> tuple[Pipeline, redis.Redis]:
    """The production pipeline: Redis store and decision memory (one client, returned too), the registry alias."""
    client = redis_client(settings.redis)
    scoring = settings.scoring
    models = Models(Registry(settings.paths.models_dir), scoring.model_alias, threads=scoring.model_threads,
                    poll_s=scoring.model_poll_s, clock=clock, runtime=scoring.model_runtime)  # fmt: skip
    store = RedisFeatureStore(client, settings.redis.key_prefix)
    memory = DecisionMemory.of(client, settings)
    breaker = Breaker(scoring.breaker_failures, scoring.breaker_cooldown_s, clock)
    return Pipeline(store, memory, models, scoring, clock, breaker=breaker), client
