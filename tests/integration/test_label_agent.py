"""The label agent in a real worker against real Kafka and Redis: labels are applied to the online store once per
(transaction, version) whatever the redeliveries, appended to the day-partitioned label log, and a refused label
goes to ``labels.dlq.v1`` while the others go on. The worker runs the label agent only (``FRAUD_WORKER__AGENTS``): a
transaction sent meanwhile is not scored."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import redis as redis_lib
from confluent_kafka import Producer

from features.store import RedisFeatureStore
from fraudpipe.codec import decode, encode
from fraudpipe.contracts import DeadLetter, Reason
from fraudpipe.logstore import DayLog
from fraudpipe.settings import Settings, TopicSettings
from tests import factories
from tests.integration.conftest import settings_env
from tests.integration.test_kafka import consume_all


def test_labels_are_applied_once_logged_and_poison_dead_lettered(
    topics: Settings, store_client: redis_lib.Redis, tmp_path: Path
) -> None:
    factories.register_champion(topics.paths.models_dir)
    store = RedisFeatureStore(store_client, topics.redis.key_prefix)
    payments = [factories.transaction(txn_id=f"p-{i}", card_token="tok_labelled", terminal_id="T-9") for i in range(3)]
    store.apply(payments)  # the payments the labels are about
    labels = [
        factories.label(txn_id=p.txn_id, card_token=p.card_token, event_time=p.event_time, known_at=p.event_time,
                        terminal_id="T-9")
        for p in payments
    ]  # fmt: skip
    overturned = factories.label(txn_id="p-0", card_token="tok_labelled", event_time=payments[0].event_time,
                                 known_at=payments[0].event_time, terminal_id="T-9", is_fraud=False, label_version=2,
                                 source="analyst")  # fmt: skip
    producer = Producer(topics.kafka.client_config())
    topic = topics.topics.full(topics.topics.labels)
    for label in [*labels, *labels, overturned]:  # every label twice, then one revision
        producer.produce(topic, key=label.card_token.encode(), value=encode(label))
    producer.produce(topic, key=b"x", value=b'{"txn_id": "p-9", "is_fraud": "maybe"}')
    unscored = factories.transaction(txn_id="not-for-this-worker")
    producer.produce(topics.topics.full(topics.topics.transactions), key=b"k", value=encode(unscored))
    assert producer.flush(30) == 0

    log = tmp_path / "worker.log"
    with log.open("wb") as output:
        worker = subprocess.Popen([sys.executable, "-m", "fraudpipe", "worker", "-l", "info"], cwd=tmp_path,
                                  env=settings_env(topics) | {"FRAUD_WORKER__AGENTS": '["labels"]'}, stdout=output,
                                  stderr=subprocess.STDOUT)  # fmt: skip
    try:
        dlq = consume_all(topics.kafka.bootstrap_servers, topics.topics.full(TopicSettings.dlq_of("labels.v1")), 1,
                          group="labels-dlq", timeout_s=90)  # fmt: skip
        assert [decode(m.value(), DeadLetter).reason for m in dlq] == [Reason.MISSING_FIELD], log.read_text()[-2000:]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and store_client.get(f"{topics.redis.key_prefix}label:p-0") != b"2,0":
            time.sleep(0.3)
        scores = consume_all(topics.kafka.bootstrap_servers, topics.topics.full(topics.topics.scores), 1,
                             group="scores", timeout_s=3)  # fmt: skip
        assert scores == []
    finally:
        worker.terminate()
        worker.wait(30)
    assert [store_client.get(f"{topics.redis.key_prefix}label:p-{i}") for i in range(3)] == [b"2,0", b"1,1", b"1,1"]
    # Two frauds count once each (the duplicates and the overturned one do not): the card's fraud ring holds 2.
    state = store.card_state("tok_labelled")
    assert state is not None and sum(state["f"][1::2]) == 2
    assert store.blocked("tok_labelled") == ("p-1", "p-2")  # blocked by its confirmed frauds, not the overturned one
    day_log = DayLog(topics.paths.data_dir / "labels", "event_time")
    rows = day_log.read()
    assert rows.height == 7  # as received: the reader de-duplicates
    latest = day_log.read(unique_by=["txn_id", "label_version"])
    assert sorted(zip(latest["txn_id"], latest["label_version"], strict=True)) == [
        ("p-0", 1), ("p-0", 2), ("p-1", 1), ("p-2", 1)
    ]  # fmt: skip
    assert pl.scan_parquet(topics.paths.data_dir / "labels" / "**" / "*.parquet").collect().height == 7
