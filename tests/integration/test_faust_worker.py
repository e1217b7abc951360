"""The Faust worker, started as users start it (``fraudpipe worker``), against the real broker and Redis.

Valid transactions are consumed, scored and committed (one decision each on ``scores.v1``); every poison record
lands in ``transactions.dlq.v1`` exactly once, with its reason, its source coordinates and no PAN. Without a
champion the worker refuses to start, with one line saying why.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from fraudpipe.codec import decode, encode
from fraudpipe.contracts import DeadLetter, Decision, Reason
from fraudpipe.settings import Settings, TopicSettings
from tests import factories
from tests.factories import VISA_TEST_PAN, transaction_json
from tests.integration.conftest import settings_env
from tests.integration.test_kafka import consume_all

POISON: list[tuple[bytes, Reason]] = [
    (b"", Reason.EMPTY_PAYLOAD),
    (b'{"txn_id": "x", "amount": NaN', Reason.INVALID_JSON),
    (transaction_json(amount=-1.0), Reason.AMOUNT_NEGATIVE),
    (transaction_json(currency="XXX"), Reason.INVALID_CURRENCY),
    (transaction_json(merchant_name=f"card {VISA_TEST_PAN}"), Reason.PAN_DETECTED),
    (json.dumps({"card_number": VISA_TEST_PAN}).encode(), Reason.MISSING_FIELD),
    (b"\xff\xfe{}", Reason.NOT_UTF8),
]


@pytest.fixture
def worker(topics: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    factories.register_champion(topics.paths.models_dir)
    log = (tmp_path / "worker.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "fraudpipe", "worker", "-l", "info"],
        cwd=tmp_path,
        env=settings_env(topics),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield process
    if process.poll() is None:
        process.kill()
        process.wait(10)
    log.close()


def _committed_all(settings: Settings, topic: str, timeout_s: float) -> bool:
    """True once the worker's group has committed the end offset of every partition of ``topic``."""
    probe = Consumer({**settings.kafka.client_config(), "group.id": settings.kafka.scoring_group})
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.topics.partitions)]
        ends = [probe.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            committed = [tp.offset for tp in probe.committed(partitions, timeout=10)]
            if committed == ends:
                return True
            time.sleep(0.5)
        return False
    finally:
        probe.close()


def test_worker_scores_nothing_away_and_dead_letters_poison(
    topics: Settings, worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    topic = topics.topics.full(topics.topics.transactions)
    dlq = topics.topics.full(TopicSettings.dlq_of(topics.topics.transactions))
    coordinates: dict[tuple[int, int], Reason] = {}
    expected: dict[bytes, Reason] = {}

    def delivered(error: object, message: object) -> None:
        assert error is None, error
        if message.value() in expected:  # type: ignore[attr-defined]
            coordinates[(message.partition(), message.offset())] = expected[message.value()]  # type: ignore[attr-defined]

    producer = Producer(topics.kafka.client_config())
    valid = [factories.transaction(txn_id=f"ok-{i}", card_token=f"card-{i % 5}") for i in range(60)]
    for i, event in enumerate(valid):
        producer.produce(topic, key=event.card_token.encode(), value=encode(event), on_delivery=delivered)
        if i % 10 == 5:
            raw, reason = POISON[(i // 10) % len(POISON)]
            expected[raw] = reason
            producer.produce(topic, key=b"card-0", value=raw, on_delivery=delivered)
    for raw, reason in POISON:
        if raw not in expected:
            expected[raw] = reason
            producer.produce(topic, key=b"card-1", value=raw, on_delivery=delivered)
    assert producer.flush(30) == 0
    assert len(coordinates) == len(POISON)

    letters = consume_all(
        topics.kafka.bootstrap_servers, dlq, len(POISON), group=f"{topics.kafka.app_id}-dlq", timeout_s=90
    )
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert len(letters) == len(POISON), log[-3000:]
    decoded = [decode(message.value(), DeadLetter) for message in letters]
    assert {(d.source_partition, d.source_offset): d.reason for d in decoded} == coordinates
    assert all(d.source_topic == topic for d in decoded)
    assert not any(VISA_TEST_PAN.encode() in message.value() for message in letters)

    scores = consume_all(
        topics.kafka.bootstrap_servers, topics.topics.full(topics.topics.scores), len(valid) + 1,
        group=f"{topics.kafka.app_id}-scores", timeout_s=30,
    )  # fmt: skip
    decisions = [decode(message.value(), Decision) for message in scores]
    assert sorted(d.txn_id for d in decisions) == sorted(e.txn_id for e in valid)
    assert all(message.key() == d.card_token.encode() for message, d in zip(scores, decisions, strict=True))
    assert all(d.model is not None and d.model.version == "v0001" and not d.degraded for d in decisions)

    assert _committed_all(topics, topic, timeout_s=60), "the worker did not commit every consumed offset"
    again = consume_all(
        topics.kafka.bootstrap_servers, dlq, len(POISON) + 1, group=f"{topics.kafka.app_id}-2", timeout_s=5
    )
    assert len(again) == len(POISON), "a poison record was dead-lettered twice"
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) is not None
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert VISA_TEST_PAN not in log
    assert "[^--Web]" not in log, "Faust's web server ran although settings.web.enabled is false"


def test_without_a_champion_the_worker_refuses_to_start(topics: Settings, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fraudpipe", "worker"], cwd=tmp_path, env=settings_env(topics), capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "no champion yet" in result.stderr and "Traceback" not in result.stderr
