"""The scoring agent's work on one batch of ``transactions.v1``: validate, score, decide, log, publish — and say
when the batch is durable. No business ``if`` lives here: :mod:`streams.intake` validates, :mod:`streams.pipeline`
decides, this module loads, calls and publishes.

For each :class:`streams.consumer.Records` batch, :meth:`Scoring.submit`:

1. validates the records on the event loop (:func:`streams.intake.intake`: the contract, and a Kafka key equal to
   the card token; refused ones go to ``transactions.dlq.v1`` with reason and coordinates, their key PAN-masked) and
   drops the payments of erased cards;
2. on the scoring thread, one batch at a time in order: swaps in a newly promoted model (at once on a
   ``model-events.v1`` event, :meth:`Scoring.model_changed`; else checked every ``scoring.model_poll_s``; a batch is
   scored by one version) and scores the valid ones
   (:meth:`streams.pipeline.Pipeline.score`); if the batch raises, each transaction is scored alone, and one that
   still raises is dead-lettered (``processing_error``) while the others are decided;
3. once the batch before it is produced: appends the decisions to the decision log and the reused ids
   (``Batch.conflicts``) to the conflict log (group-commit writers: :class:`fraudpipe.groupcommit.GroupWriter`), and
   produces the decisions, alerts, dead letters (``txn_id_conflict`` for reused ids) and the degraded batch's
   feature repairs — without waiting for the broker;
4. with ``scoring.shadow``, scores the batch with the challenger into the shadow log (failures counted, ignored).

Two batches overlap (:data:`OVERLAP`): while the scoring thread waits for Redis, the interpreter validates the next
batch; and once it is validated, the scoring thread sends its store call while it builds the outputs of the batch
before (:meth:`streams.pipeline.Pipeline.score`'s ``then``). The store still applies batches in the order the
partitions gave them (one scoring thread), and outputs leave in that order too.

The batch's :class:`streams.watermark.Ticket` is told each append's number and, from the delivery thread, when
the broker acknowledged every message: the consumer commits its offsets only then. A crash before that redelivers
the batch, which is decided again from the decision memory (same decision) and logged again (readers de-duplicate).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from fraudpipe.audit import CONFLICT_COLUMNS
from fraudpipe.clock import Clock
from fraudpipe.codec import dead_letter, dead_letter_key, encode
from fraudpipe.contracts import DeadLetter, ModelEvent, Reason, Transaction
from fraudpipe.groupcommit import GroupWriter
from fraudpipe.privacy import ErasureList
from fraudpipe.settings import ScoringSettings, TopicSettings
from models.registry import Registry
from streams import metrics
from streams.consumer import Records
from streams.intake import RawRecord, intake
from streams.outputs import LogPart
from streams.pipeline import Batch, Models, Pipeline
from streams.publisher import Message, Publisher
from streams.watermark import Ticket

__all__ = ["OVERLAP", "Scoring", "Shadow", "Validated", "Writers", "conflict_rows", "score_in_shadow"]

log = logging.getLogger(__name__)

OVERLAP = 2
"""Batches between validation and production at once: one scored on the scoring thread (mostly waiting for Redis,
the interpreter free) while the next is validated on the event loop. Measured with ``fraudpipe bench``: see the
module docstring."""


@dataclass(frozen=True, slots=True)
class Validated:
    """A batch after intake: when (``at``), the valid records and their transactions (same order), the dead letters."""

    at: datetime
    raws: list[RawRecord]
    txns: list[Transaction]
    dead: list[tuple[RawRecord, DeadLetter]]


Scored = tuple[Batch, Batch | None, list[tuple[RawRecord, str]]]
"""What the scoring thread returns for a batch: the decisions, the scored batch (``None`` when it raised and was
scored one by one) and the records that still raised, with the error's name."""


@dataclass(frozen=True, slots=True)
class Writers:
    """The scoring agent's group-commit writers: decisions, conflicts, and the shadow log (with ``scoring.shadow``)."""

    decisions: GroupWriter
    conflicts: GroupWriter
    shadow: GroupWriter | None = None

    def all(self) -> list[GroupWriter]:
        return [w for w in (self.decisions, self.conflicts, self.shadow) if w is not None]


@dataclass(frozen=True, slots=True)
class Shadow:
    """The registry's challenger, scoring in shadow."""

    models: Models

    @classmethod
    def of(cls, registry: Registry, scoring: ScoringSettings, clock: Clock) -> Shadow:
        models = Models(registry, "challenger", threads=scoring.model_threads, poll_s=scoring.model_poll_s,
                        clock=clock)  # fmt: skip
        models.refresh(force=True)  # no challenger yet: the shadow stays idle until one is promoted
        return cls(models)


class Scoring:
    """One scoring agent's batch handler (module docstring); ``topics`` name its outputs."""

    def __init__(self, pipeline: Pipeline, publisher: Publisher, logs: Writers, erasures: ErasureList,
                 scoring: ScoringSettings, topics: TopicSettings, clock: Clock, *,
                 shadow: Shadow | None = None) -> None:  # fmt: skip
        self.pipeline, self.publisher, self.logs, self.erasures = pipeline, publisher, logs, erasures
        self.scoring, self.clock, self.shadow = scoring, clock, shadow
        self.source = topics.full(topics.transactions)
        self.scores, self.alerts = topics.full(topics.scores), topics.full(topics.alerts)
        self.repairs = topics.full(topics.repairs)
        self.dlq = topics.full(TopicSettings.dlq_of(topics.transactions))
        self.caps = scoring.amount_caps()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="scoring")
        self._pending: deque[asyncio.Future[None]] = deque()
        self._upcoming: deque[Validated] = deque()  # validated, not yet taken by the scoring thread
        self._failure: BaseException | None = None

    def start(self) -> None:
        """Load the model in force (no model, no scoring: raises with the reason) and start the log writers."""
        scorer = self.pipeline.models.start()
        metrics.MODEL_INFO.info({"version": scorer.version, "sha256": scorer.model.sha256})
        for writer in self.logs.all():
            writer.start()

    def close(self) -> None:
        """Write what the logs hold and stop their threads and the scoring thread."""
        self._thread.shutdown(wait=True, cancel_futures=True)
        self.pipeline.give_up_ahead()
        for writer in self.logs.all():
            writer.close()

    async def handle(self, records: Records) -> None:
        """Decide one batch and produce its outputs (:meth:`submit`, then wait for that batch)."""
        await self.submit(records)
        await self.drain()

    async def submit(self, records: Records) -> None:
        """Validate the batch here, score it on the scoring thread, and return once another batch may be
        submitted: at most :data:`OVERLAP` batches are between validation and production, and each one's outputs
        are produced in order, after the one before. Raises the error of an earlier batch that could not be
        handled (its ticket was never acknowledged: the agent stops the worker)."""
        self._raise_failure()
        if self.scoring.mode == "passthrough":  # fraudpipe bench's ceiling: consume and produce, nothing else
            out = [(self.scores, r.key or b"", r.value or b"") for r in records.records]
            try:
                await self.publisher.send(out, records.ticket.delivered)
            finally:
                records.ticket.finish()
            return
        try:
            valid = self._validate(records)
        except BaseException:
            records.ticket.finish()
            raise
        self._upcoming.append(valid)
        scored = asyncio.get_running_loop().run_in_executor(self._thread, self._score, records, valid)
        last = self._pending[-1] if self._pending else None
        self._pending.append(asyncio.ensure_future(self._produce(last, records, valid, scored)))
        while len(self._pending) >= OVERLAP:
            await self._produced()

    async def drain(self) -> None:
        """Wait until every submitted batch is produced; raises the error of one that could not be handled."""
        while self._pending:
            await self._produced()

    async def _produced(self) -> None:
        """Wait for the oldest batch in flight to be produced; raise its error."""
        oldest = self._pending[0]
        await asyncio.wait([oldest])
        self._pending.popleft()
        if (error := oldest.exception()) is not None:
            self._failure = error
            raise error

    def _raise_failure(self) -> None:
        """Raise the error of a batch that could not be handled (then every later batch fails too)."""
        if self._failure is not None:
            raise self._failure
        for task in self._pending:
            if task.done() and (error := task.exception()) is not None:
                self._failure = error
                raise error

    async def _produce(self, before: asyncio.Future[None] | None, records: Records, valid: Validated,
                       scored: asyncio.Future[Scored]) -> None:  # fmt: skip
        """The batch's outputs, logged and produced after the batch before it; the ticket finished whatever
        happens (a batch that raised is never acknowledged: its ticket holds the watermark)."""
        ticket = records.ticket
        try:
            if before is not None:
                await asyncio.wait([before])
                if before.exception() is not None:
                    raise RuntimeError("an earlier batch could not be handled")
            decided, batch, failed = await scored
            out = self._outputs(ticket, decided, valid, failed)
            await self.publisher.send(out, ticket.delivered)
            now = time.time()
            for stamp in records.timestamps:
                metrics.END_TO_END.observe(max(0.0, now - stamp))
            self._shadow(batch, ticket)
        finally:
            ticket.finish()

    def _validate(self, records: Records) -> Validated:
        """Intake (the contract, the key) and the erasure list: on the event loop, while the scoring thread scores
        the batch before."""
        now = self.clock.now()
        metrics.EVENTS_IN.labels(self.source).inc(len(records.records))
        metrics.BATCH_SIZE.observe(len(records.records))
        latest = now + timedelta(seconds=self.scoring.max_clock_skew_s)
        result = intake(records.records, Transaction, latest_event_time=latest, failed_at=now, key_of=_card_token,
                        amount_caps=self.caps)  # fmt: skip
        self.erasures.refresh()
        valid, erased = self.erasures.split(result.valid, lambda pair: pair[1].card_token,
                                            lambda pair: pair[1].event_time)  # fmt: skip
        metrics.ERASED.labels(self.source).inc(erased)
        return Validated(now, [record for record, _ in valid], [txn for _, txn in valid], list(result.dead))

    def _score(self, records: Records, valid: Validated) -> Scored:
        """On the scoring thread, one batch at a time in submission order (the store applies batches in the order
        the partitions gave them): the model in force, then the batch scored — or, if it raises, each transaction
        alone. Returns what was decided, the scored batch (``None`` if it raised) and the records that still
        raised (with the error's name)."""
        pipeline, upcoming = self.pipeline, self._upcoming
        if upcoming and upcoming[0] is valid:
            upcoming.popleft()
        following = upcoming[0].txns if upcoming else None  # validated since: its store call overlaps this batch
        self._refresh_model()
        received = [records.received] * len(valid.txns)
        try:
            if self.scoring.mode == "naive":  # fraudpipe bench's floor: one store call and one model call per event
                batch = pipeline.score_one_by_one(valid.txns, received)
            else:
                batch = pipeline.score(valid.txns, received, then=following)
            return batch, batch, []
        except Exception:  # one bad event must not take the batch with it
            log.exception("batch failed; scoring its %d transactions one by one", len(valid.txns))
            decided, failed = self._one_by_one(valid.raws, valid.txns, records.received)
            return decided, None, failed

    def _refresh_model(self) -> None:
        """On the scoring thread: swap in the alias's version if it changed (:meth:`Models.refresh`), counted."""
        models = self.pipeline.models
        if models.refresh():
            current = models.scorer
            assert current is not None
            metrics.MODEL_SWAPS.inc()
            metrics.MODEL_INFO.info({"version": current.version, "sha256": current.model.sha256})

    def model_changed(self, event: ModelEvent) -> None:
        """A registry alias changed (:mod:`streams.model_events`; any thread): the champion's is read again on the
        scoring thread, between two batches, now; the challenger's when the shadow scores next."""
        if self.shadow is not None and event.alias == self.shadow.models.alias:
            self.shadow.models.wake()
        if event.alias != self.pipeline.models.alias:
            return
        self.pipeline.models.wake()
        with contextlib.suppress(RuntimeError):  # closing: nothing more to score
            self._thread.submit(self._refresh_model)

    def _outputs(self, ticket: Ticket, decided: Batch, valid: Validated,
                 failed: list[tuple[RawRecord, str]]) -> list[Message]:  # fmt: skip
        """The batch's messages (decisions, alerts, repairs, dead letters), and its log rows appended (``ticket``
        told each append's number)."""
        out = self._messages(decided)
        now = valid.at
        dead = valid.dead + [(record, _dead(record, Reason.PROCESSING_ERROR, f"{name} while scoring", now))
                             for record, name in failed]  # fmt: skip
        refused = decided.conflicts
        dead += _conflicts(refused, valid.raws, valid.txns, now)
        for record, letter in dead:
            out.append((self.dlq, dead_letter_key(record.key), encode(letter)))
            metrics.DEAD_LETTERS.labels(self.source, letter.reason.value).inc()
        if dead:
            log.warning("dead-lettered %d of %d transactions", len(dead), len(valid.txns) + len(valid.dead))
        for part in decided.decided:  # their log rows are built per flush (streams.outputs.decision_rows)
            ticket.logged(self.logs.decisions, self.logs.decisions.append(LogPart.of(part)))
        if refused:
            ticket.logged(self.logs.conflicts, self.logs.conflicts.append(conflict_rows(refused, now)))
        return out

    def _one_by_one(self, raws: list[RawRecord], txns: list[Transaction],
                    received: float) -> tuple[Batch, list[tuple[RawRecord, str]]]:  # fmt: skip
        """Each transaction scored alone: what was decided, and the records whose scoring raised (with the error)."""
        parts, failed = [], []
        for record, txn in zip(raws, txns, strict=True):
            try:
                parts.append(self.pipeline.score([txn], [received]))
            except Exception as error:
                failed.append((record, type(error).__name__))
        return Batch.concat(parts), failed

    def _messages(self, batch: Batch) -> list[Message]:
        """The batch's messages: decisions and alerts (encoded by the pipeline) and feature repairs; counted."""
        out = [(self.scores, key, value) for key, value in batch.decision_messages]
        out += [(self.alerts, key, value) for key, value in batch.alert_messages]
        out += [(self.repairs, txn.card_token.encode(), encode(txn)) for txn in batch.unapplied]
        for outcome, count in batch.outcomes.items():
            metrics.DECISIONS.labels(outcome).inc(count)
        metrics.DEGRADED.inc(batch.degraded)
        metrics.PUBLISHED.labels("scores").inc(len(batch.decision_messages))
        metrics.PUBLISHED.labels("alerts").inc(len(batch.alert_messages))
        metrics.REPAIRS_SENT.inc(len(batch.unapplied))
        metrics.STORE_SECONDS.observe(batch.store_s)
        metrics.MODEL_SECONDS.observe(batch.model_s)
        metrics.REDELIVERED.inc(batch.redelivered)
        return out

    def _shadow(self, batch: Batch | None, ticket: Ticket) -> None:
        """The challenger's would-be decisions on the batch, into the shadow log (module docstring)."""
        if self.shadow is None or batch is None or self.logs.shadow is None:
            return
        rows = score_in_shadow(self.pipeline, batch, self.shadow.models)
        if rows is not None:
            ticket.logged(self.logs.shadow, self.logs.shadow.append(rows))


def score_in_shadow(pipeline: Pipeline, batch: Batch, models: Models) -> pl.DataFrame | None:
    """The shadow log's rows for ``batch`` scored by ``models`` (the challenger; ``None`` without one or without
    fresh decisions). Any failure is counted and logged, never raised: the champion's decisions are not affected."""
    try:
        models.refresh()
        rows = pipeline.shadow(batch, models)
    except Exception:
        metrics.SHADOW_FAILURES.inc()
        log.exception("shadow scoring failed (the champion's decisions are not affected)")
        return None
    if rows is not None:
        metrics.SHADOW_SCORED.inc(rows.height)
    return rows


def _card_token(txn: Transaction) -> str:
    """What a transaction's Kafka key must be (``transactions.v1`` is keyed by card token)."""
    return txn.card_token


def _dead(record: RawRecord, reason: Reason, detail: str, at: datetime) -> DeadLetter:
    return dead_letter(record.value, reason=reason, detail=detail, source_topic=record.topic,
                       source_partition=record.partition, source_offset=record.offset, failed_at=at)  # fmt: skip


def _conflicts(refused: list[Transaction], records: list[RawRecord], txns: list[Transaction],
               at: datetime) -> list[tuple[RawRecord, DeadLetter]]:  # fmt: skip
    """The dead letters of the transactions refused as reused ids (:attr:`Batch.conflicts`), with their records."""
    if not refused:
        return []
    record_of = {id(txn): record for record, txn in zip(records, txns, strict=True)}
    detail = "txn_id was already decided for a payment with other content"
    return [(record, _dead(record, Reason.TXN_ID_CONFLICT, detail, at))
            for record in (record_of[id(txn)] for txn in refused)]  # fmt: skip


def conflict_rows(refused: list[Transaction], at: datetime) -> pl.DataFrame:
    """The conflict log's rows (``data_dir/conflicts``, by event day): each payment refused because its id was
    already decided for other content, tokenized as the decision log keeps events; ``refused_at`` when. ``fraudpipe
    audit show`` lists them under the id's trail."""
    columns: dict[str, Any] = {name: [getattr(t, name) for t in refused] for name in CONFLICT_COLUMNS}
    columns["refused_at"] = [at] * len(refused)
    optional = {name: pl.String for name in ("card_last4", "terminal_id", "merchant_id")}  # may be all None
    return pl.DataFrame(columns, schema_overrides=optional)
