"""The scoring consumer on a real broker: batches handed in order, offsets committed only behind done batches
(outputs acknowledged, log rows durable), a drain on revoke and at shutdown, and the start position of a group
that never committed taken from the group before it."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from fraudpipe.settings import KafkaSettings, Settings
from streams.consumer import Records, TransactionConsumer


class _Log:
    """A durable log twin: appends numbered, durable only when flushed."""

    def __init__(self) -> None:
        self.appended = 0
        self.durable = 0
        self.flushes = 0

    def append(self) -> int:
        self.appended += 1
        return self.appended

    def flush(self) -> int:
        self.flushes += 1
        self.durable = self.appended
        return self.durable


def _fill(kafka: KafkaSettings, topic: str, count: int, partitions: int = 3) -> None:
    """``count`` records, round robin over ``partitions``."""
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for i in range(count):
        producer.produce(topic, f"v{i}".encode(), f"k{i}".encode(), partition=i % partitions)
    assert producer.flush(15) == 0


def _committed(kafka: KafkaSettings, group: str, topic: str, partitions: int) -> dict[int, int]:
    probe = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group})
    try:
        found = probe.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        probe.close()
    return {p.partition: p.offset for p in found if p.offset >= 0}


async def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _consumer(settings: Settings, topic: str, hand: Callable[[Records], Any], **kwargs: Any) -> TransactionConsumer:
    return TransactionConsumer(settings.kafka, topic, hand, batch_size=50, within_s=0.005, commit_interval_s=0.1,
                               drain_timeout_s=kwargs.pop("drain_timeout_s", 5.0), **kwargs)  # fmt: skip


@pytest.fixture
def topic(topics: Settings) -> str:
    return topics.topics.full(topics.topics.transactions)


def test_offsets_follow_done_batches_only(settings: Settings, topic: str) -> None:
    _fill(settings.kafka, topic, 300)
    batches: list[Records] = []
    log = _Log()
    expected: dict[tuple[str, int], int] = {}

    async def hand(batch: Records) -> None:
        batches.append(batch)

    async def run() -> None:
        consumer = _consumer(settings, topic, hand, drain_timeout_s=0.5)
        await consumer.start()
        await _until(lambda: sum(len(b.records) for b in batches) == 300)
        # Every record once, in offset order within its partition.
        seen = [(r.partition, r.offset) for b in batches for r in b.records]
        assert len(set(seen)) == 300
        for partition in {p for p, _ in seen}:
            offsets = [o for p, o in seen if p == partition]
            assert offsets == sorted(offsets)
        # The first batch is finished and delivered but its log rows are not durable; the second is done.
        first, second = batches[0], batches[1]
        first.ticket.logged(log, log.append())
        for ticket in (first.ticket, second.ticket):
            ticket.delivered()
            ticket.finish()
        await asyncio.sleep(0.5)
        assert consumer.committed == {}, "nothing committed while the first batch's rows are not durable"
        log.flush()
        await _until(lambda: bool(consumer.committed))
        for b in (first, second):
            for (name, partition), offset in b.ticket.last.items():
                expected[(name, partition)] = max(expected.get((name, partition), 0), offset + 1)
        assert consumer.committed == expected
        await consumer.stop()

    asyncio.run(run())
    committed = _committed(settings.kafka, settings.kafka.scoring_group, topic, settings.topics.partitions)
    assert committed == {partition: offset for (_, partition), offset in expected.items()}, (
        "at shutdown, only the done batches are committed"
    )


def test_shutdown_drains_and_commits_finished_batches(settings: Settings, topic: str) -> None:
    _fill(settings.kafka, topic, 200)
    batches: list[Records] = []
    log = _Log()

    async def hand(batch: Records) -> None:  # the agent: finishes each batch a little later, rows not yet durable
        batches.append(batch)
        batch.ticket.logged(log, log.append())
        batch.ticket.delivered()
        asyncio.get_running_loop().call_later(0.05, batch.ticket.finish)

    async def run() -> None:
        consumer = _consumer(settings, topic, hand)
        await consumer.start()
        await _until(lambda: sum(len(b.records) for b in batches) == 200)
        await consumer.stop()  # the drain flushes the log and commits everything

    asyncio.run(run())
    assert log.flushes >= 1
    committed = _committed(settings.kafka, settings.kafka.scoring_group, topic, settings.topics.partitions)
    assert sum(committed.values()) == 200


def test_a_second_consumer_takes_over_where_the_first_committed(settings: Settings, topic: str) -> None:
    """A rebalance: the first consumer drains and commits what is done; the second starts there, so every record
    is handed at least once and the unfinished ones again."""
    _fill(settings.kafka, topic, 600)
    first: list[Records] = []
    second: list[Records] = []
    stuck: list[Records] = []

    async def hand_first(batch: Records) -> None:
        first.append(batch)
        if len(first) == 2:
            stuck.append(batch)  # never finished: its records must reach the second consumer
            return
        batch.ticket.delivered()
        batch.ticket.finish()

    async def hand_second(batch: Records) -> None:
        second.append(batch)
        batch.ticket.delivered()
        batch.ticket.finish()

    async def run() -> None:
        one = _consumer(settings, topic, hand_first, drain_timeout_s=1.0)
        await one.start()
        await _until(lambda: sum(len(b.records) for b in first) == 600)
        two = _consumer(settings, topic, hand_second)
        await two.start()
        await _until(lambda: bool(second), timeout_s=60)
        await one.stop()
        await _until(lambda: all(p in {(r.topic, r.partition) for b in second for r in b.records}
                                 for p in stuck[0].ticket.last), timeout_s=60)  # fmt: skip
        await two.stop()

    asyncio.run(run())
    handed_again = {(r.partition, r.offset) for b in second for r in b.records}
    assert {(r.partition, r.offset) for r in stuck[0].records} <= handed_again
    everything = {(r.partition, r.offset) for b in first + second for r in b.records}
    assert len(everything) == 600


def test_a_new_group_starts_where_the_group_before_it_committed(settings: Settings, topic: str) -> None:
    _fill(settings.kafka, topic, 90)
    legacy = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": settings.kafka.app_id})
    positions = [TopicPartition(topic, p, 10) for p in range(settings.topics.partitions)]
    legacy.commit(offsets=positions, asynchronous=False)
    legacy.close()
    batches: list[Records] = []

    async def hand(batch: Records) -> None:
        batches.append(batch)

    async def run() -> None:
        consumer = _consumer(settings, topic, hand, drain_timeout_s=0.5)
        await consumer.start()
        await _until(lambda: sum(len(b.records) for b in batches) == 90 - 10 * settings.topics.partitions)
        await asyncio.sleep(0.3)
        await consumer.stop()

    asyncio.run(run())
    assert min(r.offset for b in batches for r in b.records) == 10
    assert sum(len(b.records) for b in batches) == 90 - 10 * settings.topics.partitions


def test_a_batch_waits_to_fill_only_when_the_rate_says_more_records_come_soon(settings: Settings, topic: str) -> None:
    """A backlog comes in batches; records arriving 50 ms apart (20/s, one expected within ``within_s``: 50 ms) are
    handed as soon as each arrives, without waiting for a companion that would come 50 ms later."""
    _fill(settings.kafka, topic, 200, partitions=1)
    batches: list[tuple[float, Records]] = []

    async def hand(batch: Records) -> None:
        batches.append((time.time(), batch))
        batch.ticket.finish()

    async def run() -> None:
        consumer = TransactionConsumer(settings.kafka, topic, hand, batch_size=100, within_s=0.05,
                                       commit_interval_s=0.1, drain_timeout_s=1.0)  # fmt: skip
        await consumer.start()
        await _until(lambda: sum(len(b.records) for _, b in batches) == 200)
        assert max(len(b.records) for _, b in batches) > 1  # the backlog: batches, not records one by one
        await asyncio.sleep(1.0)  # idle: the measured rate falls to none
        backlog = len(batches)
        producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "linger.ms": 0})
        for i in range(20):
            producer.produce(topic, f"slow{i}".encode(), b"k", partition=0)
            producer.flush(5)
            await asyncio.sleep(0.05)
        await _until(lambda: sum(len(b.records) for _, b in batches) == 220)
        waited = [at - stamp for at, b in batches[backlog:] for stamp in b.timestamps]
        assert len(waited) == 20 and statistics.median(waited) < 0.015, waited  # waiting: 25 ms on average
        await consumer.stop()

    asyncio.run(run())
