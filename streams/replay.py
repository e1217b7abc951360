"""Replays a transaction source onto Kafka: transactions to ``transactions.v1``, labels to ``labels.v1``.

One confluent-kafka producer (idempotent, acks=all, lz4, batched), keyed by card token so each card's events keep
their order. Transactions go out in event-time order; a label goes out as soon as replay time (the event time of
the last transaction sent) reaches its ``known_at``; labels still in the future at the end go out last.

Pacing: ``rate`` (messages per second), ``speedup`` (event time runs ``speedup`` times faster than the wall
clock), or neither (as fast as possible). Position = number of messages (transactions + labels) handed to the
producer in merged order; a checkpoint file records the position of the last *delivered* prefix, so ``--resume``
continues where a stopped replay left off, without sending anything twice that had been acknowledged.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from confluent_kafka import KafkaError, Message, Producer

from fraudpipe.files import Reject, TransactionSource
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


def producer_config(kafka: KafkaSettings, delivery_timeout_s: float = 120.0) -> dict[str, object]:
    """Producer settings for replay: idempotent (no duplicates on retry), all in-sync replicas, lz4, big batches;
    a message not acknowledged within ``delivery_timeout_s`` seconds is reported failed."""
    return {
        **kafka.client_config(),
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "lz4",
        "linger.ms": 25,
        "batch.size": 1_000_000,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.timeout.ms": int(delivery_timeout_s * 1000),
        "log_level": 3,
    }


class _Pacer:
    """Sleeps so that messages leave no faster than the chosen pace."""

    def __init__(self, options: ReplayOptions) -> None:
        self.rate, self.speedup = options.rate, options.speedup
        self.start = time.monotonic()
        self.first_event_us: int | None = None
        self.sent = 0

    def wait(self, event_us: int) -> None:
        self.sent += 1
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


def _write_checkpoint(path: Path, source: Path, position: int) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps({"source": str(source), "position": position}) + "\n")
    os.replace(temporary, path)


def read_checkpoint(path: Path, source: Path) -> int:
    """The position saved in ``path`` for ``source`` (0 when there is no checkpoint).

    Raises:
        ValueError: the checkpoint belongs to another source.
    """
    if not path.exists():
        return 0
    saved = json.loads(path.read_text())
    if saved.get("source") != str(source):
        raise ValueError(f"checkpoint {path} is for {saved.get('source')}, not {source}")
    return int(saved["position"])


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
    producer = Producer(producer_config(kafka, options.delivery_timeout_s))

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            stats.failed += 1
            if stats.first_error is None:
                stats.first_error = str(error)
            return
        stats.delivered += 1

    def send(topic: str, key: bytes, value: bytes, event_us: int) -> bool:
        """Produce one message at the next position; False when the position is before the start (skipped)."""
        position = stats.position
        stats.position += 1
        if position < options.start_position:
            stats.skipped += 1
            return False
        pacer.wait(event_us)
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        if stats.position % _POLL_EVERY == 0:
            producer.poll(0)
            if on_progress is not None:
                on_progress(stats)
        # Everything handed over so far must be acknowledged before a position may be saved.
        checkpoint = options.checkpoint
        at_checkpoint = checkpoint is not None and stats.position % options.checkpoint_every == 0
        if at_checkpoint and producer.flush(60) == 0 and stats.failed == 0:
            _write_checkpoint(checkpoint, source.path, stats.position)  # type: ignore[arg-type]
        return True

    rejects_handle = options.rejects.open("w") if options.rejects is not None else None
    began = time.monotonic()
    pacer = _Pacer(options)
    try:
        label_values, label_keys, label_known, label_rejects = (
            source.labels() if source.kind == "simulation" else ([], [], np.array([], np.int64), [])
        )
        _write_rejects(rejects_handle, label_rejects, stats)
        next_label = 0
        for chunk in source.chunks():
            _write_rejects(rejects_handle, chunk.rejects, stats)
            if source.kind != "simulation":
                derived = source.labels_for_chunk()
                label_values, label_keys, label_known = _merge_labels(
                    (label_values[next_label:], label_keys[next_label:], label_known[next_label:]), derived[:3]
                )
                next_label = 0
            due = np.searchsorted(label_known, chunk.event_us, side="right") if len(label_known) else None
            for index, value in enumerate(chunk.values):
                event_us = int(chunk.event_us[index])
                if due is not None:
                    while next_label < due[index]:
                        stats.labels += send(label_topic, label_keys[next_label], label_values[next_label], event_us)
                        next_label += 1
                stats.transactions += send(tx_topic, chunk.keys[index], value, event_us)
        if options.drain_labels:
            while next_label < len(label_values):
                known_us = int(label_known[next_label])
                stats.labels += send(label_topic, label_keys[next_label], label_values[next_label], known_us)
                next_label += 1
        remaining = producer.flush(options.delivery_timeout_s + 10)
        stats.failed += remaining
        if options.checkpoint is not None and stats.failed == 0:
            _write_checkpoint(options.checkpoint, source.path, stats.position)
    finally:
        stats.elapsed_s = time.monotonic() - began
        if rejects_handle is not None:
            rejects_handle.close()
    if on_progress is not None:
        on_progress(stats)
    return stats


def _merge_labels(
    left: tuple[list[bytes], list[bytes], np.ndarray], right: tuple[list[bytes], list[bytes], np.ndarray]
) -> tuple[list[bytes], list[bytes], np.ndarray]:
    values = left[0] + right[0]
    keys = left[1] + right[1]
    known = np.concatenate([left[2], right[2]]).astype(np.int64)
    order = np.argsort(known, kind="stable")
    return [values[i] for i in order], [keys[i] for i in order], known[order]


def _write_rejects(handle: object, rejects: list[Reject], stats: ReplayStats) -> None:
    stats.rejected += len(rejects)
    if handle is not None:
        for reject in rejects:
            handle.write(reject.to_json() + "\n")  # type: ignore[attr-defined]
