"""Reading back a ``fraudpipe bench`` run (:mod:`streams.bench_runs`): its inputs and decisions with the timestamps
the broker gave them, and whether every input got its decision.

The bench topics are created with :data:`STAMP_AT_APPEND` (``message.timestamp.type=LogAppendTime``): the broker
stamps each message as it appends it, so an input's and its decision's timestamps come from one clock. A topic is
read from its beginning to the high watermarks of the moment, by a consumer of its own (no group offsets, no
commits). A run that does not get every decision back is an :class:`IncompleteRunError`, never partial figures.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable

from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Consumer, TopicPartition

from fraudpipe.settings import KafkaSettings, TopicSettings

__all__ = ["STAMP_AT_APPEND", "IncompleteRunError", "Seen", "appended", "check_complete", "decisions_of", "inputs_of"]

STAMP_AT_APPEND = {"message.timestamp.type": "LogAppendTime"}
"""The bench topics' config: the broker's append time is every message's timestamp."""

Seen = dict[str, tuple[int, float | None]]
"""txn id -> (earliest broker timestamp in ms, the decision's ``latency_ms`` if it carries one)."""


class IncompleteRunError(RuntimeError):
    """A run did not get a decision for every input (the message says which, and where the worker logs are)."""


class _Reader:
    """One topic read from its beginning, incrementally, into :data:`Seen` (a decision's ``latency_ms`` kept)."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self.consumer = Consumer(kafka.consumer_config(f"bench-{uuid.uuid4().hex}", {"log_level": 3}))
        listed = self.consumer.list_topics(topic, timeout=30).topics[topic].partitions
        self.partitions = [TopicPartition(topic, p, -2) for p in sorted(listed)]  # -2: OFFSET_BEGINNING
        self.topic, self.seen = topic, Seen()

    def appended(self) -> int:
        """Messages on the topic so far (the sum of its high watermarks)."""
        return sum(self.consumer.get_watermark_offsets(p, timeout=10, cached=False)[1] for p in self.partitions)

    def read(self, timeout_s: float = 120.0) -> Seen:
        """Everything appended up to now, added to :attr:`seen`."""
        ends = {p.partition: self.consumer.get_watermark_offsets(p, timeout=10, cached=False)[1]
                for p in self.partitions}  # fmt: skip
        if not self.consumer.assignment():  # assigned only now: an assigned consumer fetches ahead, loading the broker
            self.consumer.assign(self.partitions)
        deadline = time.monotonic() + timeout_s
        while any(max(p.offset, 0) < ends[p.partition] for p in self.consumer.position(self.partitions)):
            if time.monotonic() > deadline:
                raise IncompleteRunError(f"{self.topic} could not be read to its end in {timeout_s:.0f} s")
            for message in self.consumer.consume(10_000, timeout=0.5):
                value = message.value()
                if message.error() is not None or value is None:
                    continue
                kind, stamp = message.timestamp()
                if kind != TIMESTAMP_LOG_APPEND_TIME:
                    raise RuntimeError(f"{self.topic} does not stamp messages at append: its latency is not exact")
                body = json.loads(value)
                ident, latency = str(body["txn_id"]), body.get("latency_ms")
                if ident not in self.seen or stamp < self.seen[ident][0]:
                    self.seen[ident] = (stamp, None if latency is None else float(latency))
        return self.seen

    def close(self) -> None:
        self.consumer.close()


def decisions_of(kafka: KafkaSettings, topics: TopicSettings, expected: int, *,
                 processes: list[subprocess.Popen[bytes]] | None = None, stall_s: float = 60.0,
                 watch: Callable[[int], None] | None = None) -> Seen:  # fmt: skip
    """The decisions on ``topics``' scores topic once ``expected`` distinct transactions have one, or once none has
    come for ``stall_s`` seconds (then fewer: :func:`check_complete` says which are missing). The topic is only
    watched (its offsets, every 0.25 s; ``watch`` is told the count each time) until it holds ``expected``
    messages, so the reading does not compete with the workers.

    Raises:
        IncompleteRunError: one of ``processes`` exited.
    """
    reader = _Reader(kafka, topics.full(topics.scores))
    try:
        last, changed = -1, time.monotonic()
        while True:
            for process in processes or []:
                if process.poll() is not None:
                    reader.read()
                    raise IncompleteRunError(f"a worker exited (code {process.returncode}) with "
                                             f"{len(reader.seen):,} of {expected:,} decisions made")  # fmt: skip
            appended = reader.appended()
            if watch is not None:
                watch(appended)
            if appended != last:
                last, changed = appended, time.monotonic()
            if appended >= expected and len(reader.read()) >= expected:
                return reader.seen
            if time.monotonic() - changed > stall_s:
                return reader.read()
            time.sleep(0.25)
    finally:
        reader.close()


def inputs_of(kafka: KafkaSettings, topics: TopicSettings) -> dict[str, int]:
    """txn id -> broker timestamp (ms) of every transaction on ``topics``' input topic."""
    reader = _Reader(kafka, topics.full(topics.transactions))
    try:
        return {ident: stamp for ident, (stamp, _) in reader.read().items()}
    finally:
        reader.close()


def check_complete(inputs: dict[str, int], decided: Seen, produced: int) -> None:
    """Raise :class:`IncompleteRunError` unless each of the ``produced`` transactions is on the input topic and
    decided; the message counts and names (up to five) the missing ones."""
    undecided = sorted(set(inputs) - set(decided))
    if undecided or len(inputs) < produced:
        raise IncompleteRunError(
            f"{len(undecided):,} of {len(inputs):,} transactions got no decision (e.g. "
            f"{', '.join(undecided[:5]) or '-'}); {produced:,} were produced, {len(inputs):,} found on the input topic"
        )


def appended(kafka: KafkaSettings, topic: str) -> int:
    """Messages on ``topic`` so far."""
    reader = _Reader(kafka, topic)
    try:
        return reader.appended()
    finally:
        reader.close()
