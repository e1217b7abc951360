"""confluent-kafka against the real broker: topic creation and a keyed produce/consume round trip."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from fraudpipe.codec import decode, encode
from fraudpipe.contracts import Transaction
from fraudpipe.settings import Settings, TopicSettings
from tests import factories
from tests.integration.conftest import run_cli


def consume_all(bootstrap: str, topic: str, expected: int, *, group: str, timeout_s: float = 60) -> list:
    """Every message of ``topic`` from the start, until ``expected`` arrived or the timeout passed."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=500, timeout=0.5):
                assert message.error() is None, message.error()
                messages.append(message)
    finally:
        consumer.close()
    return messages


def test_topics_create_is_idempotent_and_applies_settings(settings: Settings, tmp_path: Path) -> None:
    first = run_cli(settings, "topics", "create", "--partitions", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("created") == 10
    second = run_cli(settings, "topics", "create", "--partitions", "2", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("exists") == 10
    assert "created" not in second.stdout

    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    names = [settings.topics.full(n) for n in ("transactions.v1", "scores.v1", TopicSettings.dlq_of("labels.v1"))]
    metadata = admin.list_topics(timeout=10)
    assert all(len(metadata.topics[name].partitions) == 2 for name in names)
    resource = ConfigResource(ConfigResource.Type.TOPIC, settings.topics.full("scores.v1"))
    configs = admin.describe_configs([resource])[resource].result(timeout=10)
    assert configs["retention.ms"].value == str(settings.topics.retention_ms)

    third = run_cli(settings, "topics", "create", "--partitions", "4", cwd=tmp_path)
    assert third.returncode == 0
    assert "2 partitions, settings say 4" in third.stderr


def test_keyed_round_trip_preserves_every_event_and_per_card_order(topics: Settings) -> None:
    topic = topics.topics.full(topics.topics.transactions)
    sent = [
        factories.transaction(txn_id=f"txn-{i:04d}", card_token=f"card-{i % 7}", amount=float(i + 1))
        for i in range(300)
    ]
    producer = Producer({**topics.kafka.client_config(), "enable.idempotence": True, "linger.ms": 5})
    for event in sent:
        producer.produce(topic, key=event.card_token.encode(), value=encode(event))
    assert producer.flush(30) == 0

    received = consume_all(topics.kafka.bootstrap_servers, topic, len(sent), group=f"{topics.kafka.app_id}-check")
    assert len(received) == len(sent)
    decoded = [decode(message.value(), Transaction) for message in received]
    assert sorted(decoded, key=lambda e: e.txn_id) == sent
    assert all(message.key() == event.card_token.encode() for message, event in zip(received, decoded, strict=True))

    per_card: dict[str, list[str]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for message, event in zip(received, decoded, strict=True):
        per_card[event.card_token].append(event.txn_id)
        partitions[event.card_token].add(message.partition())
    assert all(ids == sorted(ids) for ids in per_card.values())
    assert all(len(p) == 1 for p in partitions.values())
