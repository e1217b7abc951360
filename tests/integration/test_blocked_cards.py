"""Blocked cards through a real worker, Kafka and Redis: a fraud label confirmed on a card blocks it, and every later
payment on it is declined with ``card_blocked`` alone (no model explanation, no alert for analysts) — across a
worker restart, since the block lives in the online store — until a revision clears the fraud."""

from __future__ import annotations

import subprocess
import time
from datetime import timedelta
from pathlib import Path

import redis as redis_lib
from confluent_kafka import Producer

from features.store import RedisFeatureStore
from fraudpipe.codec import decode, encode
from fraudpipe.contracts import Alert, Decision, Label, RuleReason, Transaction
from fraudpipe.settings import Settings
from tests import factories
from tests.integration.conftest import start_worker
from tests.integration.test_kafka import consume_all

CARD = "tok_blockedcard"


def _send(producer: Producer, topic: str, event: Transaction | Label) -> None:
    producer.produce(topic, key=event.card_token.encode(), value=encode(event))
    assert producer.flush(30) == 0


def _until(check: object, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_confirmed_fraud_blocks_the_card_across_a_restart_until_it_is_revised(
    topics: Settings, store_client: redis_lib.Redis, tmp_path: Path, stop: list[subprocess.Popen[bytes]]
) -> None:
    factories.register_champion(topics.paths.models_dir)
    store = RedisFeatureStore(store_client, topics.redis.key_prefix)
    producer = Producer(topics.kafka.client_config())
    payments, labels = topics.topics.full(topics.topics.transactions), topics.topics.full(topics.topics.labels)
    scores, alerts = topics.topics.full(topics.topics.scores), topics.topics.full(topics.topics.alerts)
    first = factories.transaction(txn_id="blk-0", card_token=CARD, amount=40.0)

    def payment(i: int) -> Transaction:
        at = first.event_time + timedelta(hours=i)
        return factories.transaction(txn_id=f"blk-{i}", card_token=CARD, amount=40.0, event_time=at.isoformat())

    def decided(count: int) -> dict[str, Decision]:
        seen = consume_all(topics.kafka.bootstrap_servers, scores, count, group=f"s-{time.monotonic()}",
                           timeout_s=90)  # fmt: skip
        assert len(seen) >= count, log.read_text()[-3000:]
        return {d.txn_id: d for d in (decode(m.value(), Decision) for m in seen)}

    def fraud(version: int, is_fraud: bool) -> Label:
        return factories.label(txn_id=first.txn_id, card_token=CARD, event_time=first.event_time,
                               known_at=first.event_time + timedelta(minutes=30), is_fraud=is_fraud,
                               label_version=version, terminal_id=first.terminal_id, source="analyst")  # fmt: skip

    worker, log = start_worker(topics, tmp_path)
    stop.append(worker)
    _send(producer, payments, first)
    assert "card_blocked" not in {getattr(r, "rule", None) for r in decided(1)["blk-0"].reason_codes}
    _send(producer, labels, fraud(1, True))
    _until(lambda: store.blocked(CARD) == ("blk-0",), "the label agent to block the card")
    _send(producer, payments, payment(1))
    blocked = decided(2)["blk-1"]
    assert blocked.decision == "decline" and blocked.reason_codes == [RuleReason(rule="card_blocked")]

    worker.terminate()
    assert worker.wait(60) == 0, log.read_text()[-3000:]
    worker, log = start_worker(topics, tmp_path)  # the block is in Redis: a new worker knows it
    stop.append(worker)
    _send(producer, payments, payment(2))
    again = decided(3)["blk-2"]
    assert again.decision == "decline" and again.reason_codes == [RuleReason(rule="card_blocked")]

    _send(producer, labels, fraud(2, False))  # an analyst overturns the chargeback: the card is open again
    _until(lambda: store.blocked(CARD) == (), "the revision to lift the block")
    _send(producer, payments, payment(3))
    reopened = decided(4)["blk-3"]
    assert "card_blocked" not in {getattr(r, "rule", None) for r in reopened.reason_codes}

    alerted = {decode(m.value(), Alert).txn_id for m in consume_all(topics.kafka.bootstrap_servers, alerts, 4,
                                                                      group="alerts", timeout_s=5)}  # fmt: skip
    assert not alerted & {"blk-1", "blk-2"}  # a blocked card's declines are nobody's work
