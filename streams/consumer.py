"""The scoring worker's consumer of ``transactions.v1``: librdkafka batches handed to the scoring agent, offsets
committed only behind durable outputs.

Faust delivers one event per record, and its per-record machinery (aiokafka, the stream, the acks) costs more CPU
than scoring the record. :class:`TransactionConsumer` is a Faust service instead: a thread owns a confluent-kafka
consumer (cooperative-sticky assignment, no auto-commit, no auto offset store), takes up to ``batch_size`` records
at a time, opens a :class:`streams.watermark.Ticket` for each batch and hands it to the scoring agent through a
Faust channel (:class:`Records`). The channel holds at most ``max_batches_in_flight`` batches; the thread waits for
room.

How long a batch waits to fill depends on the rate the thread measures (:func:`waits_to_fill`): when at least two
more records are expected within ``batch_within_ms``, a batch waits for them up to that long (``consume(n,
timeout)``: fewer, larger batches, less CPU per record); when fewer are, waiting would only add latency, so a batch
is what is there once the first record arrives (a payment at 100/s is scored at once instead of waiting 10 ms for a
companion that comes 10 ms later).

Commits (module :mod:`streams.watermark` for the rule): every ``commit_interval_s`` the thread commits the
watermark — for each partition, one past the last record of the batches whose outputs the broker acknowledged and
whose log rows are durable, in order — asynchronously. On a revoke it *drains*: it flushes the logs the open tickets
wait for, waits (up to ``drain_timeout_s``) for those tickets to be done, and commits synchronously; a batch not
done by then is not committed and is redelivered to the partition's next owner, never skipped. At shutdown the
same drain and a synchronous commit, then the consumer leaves the group. A record handed to the agent but not
finished when the process dies is redelivered from the last commit.

The group is ``kafka.scoring_group`` (Faust's own consumer, for the other agents' topics, is in ``kafka.app_id``:
two clients with different assignors cannot share a group). A partition the scoring group has never committed
starts where ``kafka.app_id`` left it (the group that consumed ``transactions.v1`` before this consumer existed),
so an upgrade neither re-reads nor skips.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from mode import Service

from fraudpipe.settings import KafkaSettings
from streams.intake import RawRecord
from streams.watermark import Partition, Ticket, Watermark

__all__ = ["Records", "TransactionConsumer", "consumer_config", "waits_to_fill"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Records:
    """One batch of ``transactions.v1`` for the scoring agent: the records in consume order, their Kafka timestamps
    (seconds since the epoch), when the batch was taken (monotonic seconds), and its ticket (finish it)."""

    records: list[RawRecord]
    timestamps: list[float]
    received: float
    ticket: Ticket


_RATE_WINDOW_S = 0.5
"""How often the consumer's measure of the arrival rate is renewed (records taken in the last window / its length)."""


def waits_to_fill(rate_eps: float, within_s: float) -> bool:
    """Whether a batch waits up to ``within_s`` to fill, records arriving at ``rate_eps``: only if at least two more
    are expected in that time (module docstring)."""
    return rate_eps * within_s >= 2.0


def consumer_config(kafka: KafkaSettings, group: str) -> dict[str, Any]:
    """librdkafka settings of the scoring consumer (module docstring)."""
    return kafka.consumer_config(group, {
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 20,
        "queued.max.messages.kbytes": 16_384,  # prefetch ~3 s at 10k/s of 0.5 KB payments (librdkafka: 64 MB)
        "log_level": 3,
    })  # fmt: skip


class TransactionConsumer(Service):
    """The consumer thread as a Faust (mode) service: started and stopped with the worker (module docstring).

    ``hand(records)`` is awaited on the event loop for each batch (the channel's ``send``); ``clock`` is monotonic
    seconds."""

    def __init__(self, kafka: KafkaSettings, topic: str, hand: Callable[[Records], Any], *, batch_size: int,
                 within_s: float, commit_interval_s: float, drain_timeout_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(**kwargs)
        self.kafka, self.topic, self.hand = kafka, topic, hand
        self.batch_size, self.within_s, self.commit_interval_s = batch_size, within_s, commit_interval_s
        self.drain_timeout_s, self.clock = drain_timeout_s, clock
        self.watermark = Watermark()
        self.committed: dict[Partition, int] = {}
        self._stopping = threading.Event()
        self._abandoned = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: Consumer | None = None
        self.rate_eps = 0.0
        """Records taken per second over the last window (:data:`_RATE_WINDOW_S`)."""
        self._window = (0.0, 0)  # its start (monotonic s) and the records taken since

    async def on_start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._consumer = Consumer(consumer_config(self.kafka, self.kafka.scoring_group))
        self._thread = threading.Thread(target=self._run, name="fraudpipe-transactions", daemon=True)
        self._thread.start()

    def abandon(self) -> None:
        """The agent stopped: batches not finished now never will be, so draining waits for none of them (they are
        redelivered); what is done is still flushed and committed."""
        self._abandoned.set()

    async def on_stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    # --- the thread ------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None and self._loop is not None
        try:
            consumer.subscribe([self.topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost)
            due = self.clock() + self.commit_interval_s
            self._window = (self.clock(), 0)
            while not self._stopping.is_set():
                messages = self._take(consumer)
                if messages:
                    self._hand(messages)
                if self.clock() >= due:
                    self._commit(self.watermark.advance(), asynchronous=True)
                    due = self.clock() + self.commit_interval_s
            self._drain()
        except Exception as error:  # the worker must not go on without its consumer
            log.exception("the transactions consumer failed")
            asyncio.run_coroutine_threadsafe(self.crash(error), self._loop)
        finally:
            consumer.close()  # leaves the group: the revoke callback drains and commits once more

    def _take(self, consumer: Consumer) -> list[Message]:
        """The next batch: waiting up to ``within_s`` for it to fill when the rate says more records come soon,
        else what is there once the first one arrives (:func:`waits_to_fill`); the rate measured anew."""
        if waits_to_fill(self.rate_eps, self.within_s):
            messages = consumer.consume(self.batch_size, self.within_s)
        else:
            messages = consumer.consume(1, max(self.within_s, 0.1))
            if messages and self.batch_size > 1:
                messages += consumer.consume(self.batch_size - 1, 0)
        start, taken = self._window
        taken += len(messages)
        now = self.clock()
        if now - start >= _RATE_WINDOW_S:
            self.rate_eps, taken, start = taken / (now - start), 0, now
        self._window = (start, taken)
        return messages

    def _hand(self, messages: list[Message]) -> None:
        received = self.clock()
        records, stamps, last = [], [], {}
        for message in messages:
            if (error := message.error()) is not None:
                if error.fatal():
                    raise KafkaException(error)
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer: %s", error)
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            assert topic is not None and partition is not None and offset is not None  # a record, not an error
            records.append(RawRecord(topic, partition, offset, message.key(), message.value()))
            stamps.append(message.timestamp()[1] / 1000)
            last[(topic, partition)] = offset
        if not records:
            return
        assert self._loop is not None
        batch = Records(records, stamps, received, self.watermark.open(last))
        handed = asyncio.run_coroutine_threadsafe(self.hand(batch), self._loop)
        while not self._stopping.is_set():  # wait for room in the channel; a stop leaves the batch uncommitted
            try:
                handed.result(timeout=0.1)
                return
            except TimeoutError:
                continue

    def _commit(self, positions: dict[Partition, int], *, asynchronous: bool) -> None:
        if not positions or self._consumer is None:
            return
        offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in positions.items()]
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as error:  # e.g. a rebalance in progress: the next commit carries the positions
            log.warning("commit of %d partitions failed: %s", len(offsets), error)
            return
        self.committed |= positions

    def _drain(self) -> None:
        """Flush the logs the open batches wait for, wait for them (up to ``drain_timeout_s``), commit."""
        deadline = self.clock() + self.drain_timeout_s
        while self.watermark.pending() and self.clock() < deadline and not self._abandoned.is_set():
            for writer in self.watermark.writers():
                writer.flush()
            self.watermark.advance()
            if self.watermark.pending():
                time.sleep(0.01)
        for writer in self.watermark.writers():  # what the done batches wrote, at least
            writer.flush()
        self.watermark.advance()
        if left := self.watermark.pending():
            log.warning("%d batches not finished: their records will be redelivered", left)
        self._commit(self.watermark.positions(), asynchronous=False)

    # --- rebalance callbacks (called by librdkafka inside consume(), on this thread) --------------------------------

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.watermark.acquire((p.topic, p.partition) for p in partitions)
        log.info("assigned %s", sorted(p.partition for p in partitions))
        unset = [p for p in consumer.committed(partitions, timeout=10) if p.offset == OFFSET_INVALID]
        if unset and (legacy := self._legacy_positions(unset)):
            for partition in partitions:
                partition.offset = legacy.get((partition.topic, partition.partition), partition.offset)
            consumer.incremental_assign(partitions)

    def _legacy_positions(self, partitions: list[TopicPartition]) -> dict[Partition, int]:
        """Where ``kafka.app_id`` (the group before this consumer) committed ``partitions``, for those it did."""
        admin = AdminClient({**self.kafka.client_config(), "log_level": 3})
        request = ConsumerGroupTopicPartitions(self.kafka.app_id, [TopicPartition(p.topic, p.partition)
                                                                   for p in partitions])  # fmt: skip
        try:
            (future,) = admin.list_consumer_group_offsets([request], request_timeout=10).values()
            found = future.result().topic_partitions
        except KafkaException as error:
            log.warning("cannot read the offsets of group %s: %s", self.kafka.app_id, error)
            return {}
        return {(p.topic, p.partition): p.offset for p in found if p.error is None and p.offset >= 0}

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = [(p.topic, p.partition) for p in partitions]
        if not self._stopping.is_set():  # at shutdown the thread has drained already
            log.info("revoked %s: draining", sorted(p for _, p in gone))
            self._drain()
        self.watermark.release(gone)

    def _lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = sorted(p.partition for p in partitions)
        log.warning("lost %s: their uncommitted records go to their next owner", lost)
        self.watermark.release((p.topic, p.partition) for p in partitions)
