"""Replays a transaction source onto Kafka: transactions to ``transactions.v1``, labels to ``labels.v1``.

One confluent-kafka producer (idempotent, acks=all, lz4, batched), keyed by card token so each card's events keep
their order. Transactions go out in event-time order; a label goes out before the first transaction whose event time
is after its ``known_at``; labels still in the future at the end go out last.

Pacing: ``rate`` (messages per second), ``speedup`` (event time runs ``speedup`` times faster than the wall
clock), or neither (as fast as possible). Position = number of messages (transactions + labels) handed to the
producer in merged order; a checkpoint file records the position of the last *delivered* prefix, so ``--resume``
continues where a stopped replay left off, without sending anything twice that had been acknowledged.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from confluent_kafka import KafkaError, Message, Producer

from fraudpipe.files import Chunk, LabelBatch, Reject, TransactionSource
from fraudpipe.settings import KafkaSettings, TopicSettings

__all__ = ["ReplayOptions", "ReplayStats", "producer_config", "replay"]

_POLL_EVERY = 2_000


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """How to replay: pacing (``rate`` msg/s or ``speedup`` x event time, else as fast as possible), where to start
    (``start_position``), where to keep the checkpoint and how often (messages), where to write rejects."""

    rate: float | None = None
    speedup: float | None = None
    start_position: int = 0
    checkpoint: Path | None = None
    checkpoint_every: int = 100_000
    rejects: Path | None = None
    drain_labels: bool = True
    delivery_timeout_s: float = 120.0
    linger_ms: float | None = None
    """How long the producer waits to fill a batch (ms). ``None``: 25 at full speed (it moves the most), 1 when
    paced (``rate`` or ``speedup``: payments arrive one by one, so the replayer's own batching neither delays nor
    bunches them, and latency measured from their timestamps is the pipeline's)."""

    @property
    def linger(self) -> float:
        """The producer's ``linger.ms`` (:attr:`linger_ms`)."""
        if self.linger_ms is not None:
            return self.linger_ms
        return 25.0 if self.rate is None and self.speedup is None else 1.0


@dataclass(slots=True)
class ReplayStats:
    """Counts of a replay. ``failed`` messages were not delivered; the command exits non-zero when it is > 0."""

    transactions: int = 0
    labels: int = 0
    rejected: int = 0
    delivered: int = 0
    failed: int = 0
    skipped: int = 0
    elapsed_s: float = 0.0
    first_error: str | None = None
    position: int = 0

    @property
    def produced(self) -> int:
        return self.transactions + self.labels

    @property
    def rate(self) -> float:
        return self.produced / self.elapsed_s if self.elapsed_s > 0 else 0.0


def producer_config(kafka: KafkaSettings, delivery_timeout_s: float = 120.0, linger_ms: float = 25.0
                    ) -> dict[str, object]:  # fmt: skip
    """Producer settings for replay (:meth:`fraudpipe.settings.KafkaSettings.producer_config`), with big batches
    (waiting up to ``linger_ms`` ms to fill one); a message not acknowledged within ``delivery_timeout_s`` seconds is
    reported failed."""
    return kafka.producer_config({
        "linger.ms": linger_ms,
        "batch.size": 1_000_000,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.timeout.ms": int(delivery_timeout_s * 1000),
        # Report only failures: a Python callback per acknowledged message would cost ~0.5 µs each. Delivered =
        # produced - failed once flush() returns 0 (every message then has been acknowledged or has failed).
        "delivery.report.only.error": True,
        "log_level": 3,
    })  # fmt: skip


class _Pacer:
    """Sleeps so that messages leave no faster than the chosen pace."""

    def __init__(self, options: ReplayOptions) -> None:
        self.rate, self.speedup = options.rate, options.speedup
        self.start: float | None = None  # the first message's time: reading the source does not count
        self.first_event_us: int | None = None
        self.sent = 0

    def wait(self, event_us: int) -> None:
        self.sent += 1
        if self.start is None:
            self.start = time.monotonic()
        if self.rate:
            target = self.start + self.sent / self.rate
        elif self.speedup:
            if self.first_event_us is None:
                self.first_event_us = event_us
            target = self.start + (event_us - self.first_event_us) / 1e6 / self.speedup
        else:
            return
        delay = target - time.monotonic()
        if delay > 0.002:
            time.sleep(delay)


def _write_checkpoint(path: Path, source: TransactionSource, position: int) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    saved = {"source": str(source.path), "window": source.window, "position": position}
    temporary.write_text(json.dumps(saved) + "\n")
    os.replace(temporary, path)


def read_checkpoint(path: Path, source: Path, window: str | None = None) -> int:
    """The position saved in ``path`` for ``source`` replayed over ``window`` (:attr:`TransactionSource.window`;
    0 when there is no checkpoint): positions count the messages of that window.

    Raises:
        ValueError: the checkpoint belongs to another source or another window.
    """
    if not path.exists():
        return 0
    saved = json.loads(path.read_text())
    if saved.get("source") != str(source):
        raise ValueError(f"checkpoint {path} is for {saved.get('source')}, not {source}")
    if saved.get("window") != window:
        were = saved.get("window") or "the whole file"
        raise ValueError(f"checkpoint {path} is for {were}, not {window or 'the whole file'}: give the same "
                         "--since / --until to resume")  # fmt: skip
    return int(saved["position"])


def _read_ahead(source: TransactionSource, depth: int = 2) -> Iterator[Chunk]:
    """The source's chunks, read and validated in a background thread (polars releases the GIL) while the caller
    produces the previous chunk. An error in the reader is raised in the caller."""
    chunks: queue.Queue[Chunk | BaseException | None] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def read() -> None:
        try:
            for chunk in source.chunks():
                while not stop.is_set():
                    try:
                        chunks.put(chunk, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            chunks.put(None)
        except BaseException as error:
            chunks.put(error)

    reader = threading.Thread(target=read, name="replay-reader", daemon=True)
    reader.start()
    try:
        while (item := chunks.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join(timeout=5)


class _Labels:
    """Labels waiting for their ``known_at``, in order."""

    def __init__(self, batch: LabelBatch) -> None:
        self.values, self.keys, self.known_us = batch.values, batch.keys, batch.known_us
        self.next = 0

    def add(self, batch: LabelBatch) -> None:
        values = self.values[self.next :] + batch.values
        keys = self.keys[self.next :] + batch.keys
        known = np.concatenate([self.known_us[self.next :], batch.known_us]).astype(np.int64)
        order = np.argsort(known, kind="stable")
        self.values, self.keys = [values[i] for i in order], [keys[i] for i in order]
        self.known_us, self.next = known[order], 0

    def merged(self, chunk: Chunk, tx_topic: str, label_topic: str) -> list[tuple[str, bytes, bytes, int]]:
        """(topic, key, value, replay time µs) of the chunk's transactions with the labels due among them."""
        times = chunk.event_us.tolist()
        if self.next >= len(self.values) or self.known_us[self.next] >= times[-1]:
            return list(zip([tx_topic] * len(times), chunk.keys, chunk.values, times, strict=True))
        due = np.searchsorted(self.known_us, chunk.event_us, side="left").tolist()  # known strictly before
        out: list[tuple[str, bytes, bytes, int]] = []
        for index, event_us in enumerate(times):
            while self.next < due[index]:
                out.append((label_topic, self.keys[self.next], self.values[self.next], event_us))
                self.next += 1
            out.append((tx_topic, chunk.keys[index], chunk.values[index], event_us))
        return out

    def rest(self, label_topic: str) -> list[tuple[str, bytes, bytes, int]]:
        out = [
            (label_topic, self.keys[i], self.values[i], int(self.known_us[i]))
            for i in range(self.next, len(self.values))
        ]
        self.next = len(self.values)
        return out


def replay(
    source: TransactionSource,
    kafka: KafkaSettings,
    topics: TopicSettings,
    options: ReplayOptions,
    *,
    on_progress: Callable[[ReplayStats], None] | None = None,
) -> ReplayStats:
    """Produce every valid transaction and label of ``source``; write rejects; return the counts."""
    stats = ReplayStats()
    tx_topic, label_topic = topics.full(topics.transactions), topics.full(topics.labels)
    producer = Producer(producer_config(kafka, options.delivery_timeout_s, options.linger))
    pacer = _Pacer(options)
    paced = options.rate is not None or options.speedup is not None
    checkpoint, every = options.checkpoint, options.checkpoint_every

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            stats.failed += 1
            if stats.first_error is None:
                stats.first_error = str(error)

    def send(messages: list[tuple[str, bytes, bytes, int]]) -> None:
        skip = min(max(options.start_position - stats.position, 0), len(messages))
        stats.position += skip
        stats.skipped += skip
        produce, poll = producer.produce, producer.poll
        first, tx_before, labels_before = stats.position, stats.transactions, stats.labels
        position, tx = first, 0

        def publish_counts() -> None:  # the loop keeps plain locals; stats are brought up to date now and then
            stats.position, stats.transactions = position, tx_before + tx
            stats.labels = labels_before + (position - first) - tx

        for topic, key, value, event_us in messages[skip:] if skip else messages:
            if paced:
                pacer.wait(event_us)
            try:
                produce(topic, value, key, on_delivery=delivered)
            except BufferError:  # the local queue is full: let librdkafka drain it, then retry once more
                poll(0.5)
                produce(topic, value, key, on_delivery=delivered)
            tx += topic == tx_topic
            position += 1
            if position % _POLL_EVERY == 0:
                poll(0)
                publish_counts()
                if on_progress is not None:
                    on_progress(stats)
            # A position is saved only once everything before it is acknowledged.
            if checkpoint is not None and position % every == 0 and producer.flush(60) == 0 and not stats.failed:
                _write_checkpoint(checkpoint, source, position)
        publish_counts()

    rejects_handle = options.rejects.open("w") if options.rejects is not None else None
    began = time.monotonic()
    try:
        initial = source.labels()
        _write_rejects(rejects_handle, initial.rejects, stats)
        labels = _Labels(initial)
        for chunk in _read_ahead(source):
            _write_rejects(rejects_handle, chunk.rejects, stats)
            if chunk.labels is not None:
                _write_rejects(rejects_handle, chunk.labels.rejects, stats)
                labels.add(chunk.labels)
            if chunk.values:
                send(labels.merged(chunk, tx_topic, label_topic))
        if options.drain_labels:
            send(labels.rest(label_topic))
        unacknowledged = producer.flush(options.delivery_timeout_s + 10)  # runs the delivery callbacks first
        stats.failed += unacknowledged
        stats.delivered = stats.produced - stats.failed
        if checkpoint is not None and stats.failed == 0:
            _write_checkpoint(checkpoint, source, stats.position)
    finally:
        stats.elapsed_s = time.monotonic() - began
        if rejects_handle is not None:
            rejects_handle.close()
    if on_progress is not None:
        on_progress(stats)
    return stats


def _write_rejects(handle: object, rejects: list[Reject], stats: ReplayStats) -> None:
    stats.rejected += len(rejects)
    if handle is not None:
        for reject in rejects:
            handle.write(reject.to_json() + "\n")  # type: ignore[attr-defined]
