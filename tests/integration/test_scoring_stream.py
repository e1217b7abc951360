"""The scorer end to end, as users run it: ``fraudpipe simulate`` output replayed with ``fraudpipe replay`` onto
real Kafka, scored by a ``fraudpipe worker`` against real Redis.

- every transaction gets exactly one distinct decision (after de-duplicating by id), fraud gets alerts, a poison
  record lands in the DLQ and the stream goes on, and a promotion mid-stream switches the model between batches:
  in each partition, decisions name the old version, then the new one, never back;
- Redis stopped mid-stream: degraded decisions while it is away, scored ones again when it is back, and the
  transactions decided while it was away are applied to it afterwards.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import polars as pl
import pytest
import redis as redis_lib
from confluent_kafka import Producer

from features.definitions import FEATURE_NAMES
from features.plan import marker_key
from fraudpipe.codec import decode, encode
from fraudpipe.contracts import Alert, DeadLetter, Decision, Reason, Transaction
from fraudpipe.logstore import DayLog
from fraudpipe.settings import Settings
from tests import factories
from tests.integration.conftest import run_cli, start_worker
from tests.integration.test_kafka import consume_all

KEY = b"scoring-stream-tokenization-key0"


@pytest.fixture(scope="module")
def stream_sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight days of 900 cards: about 12k payments with every fraud scenario."""
    out = tmp_path_factory.mktemp("stream-sim")
    return factories.simulated_folder(out, days=8, customers=900, terminals=1_800, seed=11, key=KEY)


def test_replayed_stream_is_scored_once_with_a_promotion_mid_stream(
    topics: Settings, stream_sim: Path, tmp_path: Path, stop: list[subprocess.Popen[bytes]]
) -> None:
    factories.register_champion(topics.paths.models_dir)
    worker, log = start_worker(topics, tmp_path, FRAUD_SCORING__MODEL_POLL_S="0.5", FRAUD_SCORING__BATCH_SIZE="200")
    stop.append(worker)
    history = pl.read_parquet(stream_sim / "transactions" / "**" / "*.parquet")
    n = history.height
    assert n >= 10_000
    half = run_cli(topics, "replay", str(stream_sim), "--rate", "4000", "--no-drain-labels", cwd=tmp_path,
                   timeout=120)  # fmt: skip
    assert half.returncode == 0, half.stderr
    scores_topic = topics.topics.full(topics.topics.scores)
    # Promote a second version while the worker is busy with the backlog.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen = consume_all(topics.kafka.bootstrap_servers, scores_topic, n // 3, group=f"probe-{time.monotonic()}",
                           timeout_s=2)  # fmt: skip
        if len(seen) >= n // 3:
            break
    factories.register_champion(topics.paths.models_dir, seed=1)
    time.sleep(1.5)  # > model_poll_s: the worker may have finished the backlog already; the late payment gets v0002
    poison = Producer(topics.kafka.client_config())
    poison.produce(topics.topics.full(topics.topics.transactions), key=b"x", value=b'{"txn_id": "broken"')
    late = factories.transaction(txn_id="after-the-poison", card_token="tok_late")
    poison.produce(topics.topics.full(topics.topics.transactions), key=b"tok_late", value=encode(late))
    assert poison.flush(30) == 0

    messages = consume_all(topics.kafka.bootstrap_servers, scores_topic, n + 1, group="all-scores", timeout_s=180)
    decisions = [(m.partition(), m.offset(), decode(m.value(), Decision)) for m in messages]
    by_id: dict[str, set[tuple[str, float | None]]] = defaultdict(set)
    for _, _, d in decisions:
        by_id[d.txn_id].add((d.decision, d.score))
    assert set(by_id) == set(history.get_column("txn_id").to_list()) | {"after-the-poison"}, log.read_text()[-3000:]
    assert all(len(outcomes) == 1 for outcomes in by_id.values())

    versions_by_partition: dict[int, list[str]] = defaultdict(list)
    for partition, _, d in sorted(decisions, key=lambda item: item[:2]):
        assert d.model is not None
        if not versions_by_partition[partition] or versions_by_partition[partition][-1] != d.model.version:
            versions_by_partition[partition].append(d.model.version)
    assert all(v in (["v0001"], ["v0001", "v0002"], ["v0002"]) for v in versions_by_partition.values())
    assert any(v[-1] == "v0002" for v in versions_by_partition.values())

    # The decision log holds each decision once de-duplicated, with the features as served.
    decision_log = DayLog(topics.paths.data_dir / "decisions", "event_time")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and decision_log.read(unique_by=["txn_id"]).height < n + 1:
        time.sleep(1)
    logged = decision_log.read(unique_by=["txn_id"])
    assert logged.height == n + 1
    assert {f"f_{name}" for name in FEATURE_NAMES} <= set(logged.columns)
    assert set(logged.get_column("model_version").unique().to_list()) == {"v0001", "v0002"}
    served = {d.txn_id: d.features["amount"] for _, _, d in decisions}
    assert all(served[t] == a for t, a in zip(logged["txn_id"], logged["f_amount"], strict=True))

    alerts = consume_all(topics.kafka.bootstrap_servers, topics.topics.full(topics.topics.alerts), n,
                         group="all-alerts", timeout_s=10)  # fmt: skip
    alerted = {decode(m.value(), Alert).txn_id for m in alerts}
    frauds = set(history.filter(pl.col("is_fraud")).get_column("txn_id").to_list())
    assert len(alerted & frauds) / len(frauds) > 0.3
    dlq = consume_all(topics.kafka.bootstrap_servers, topics.topics.full("transactions.dlq.v1"), 1, group="dlq",
                      timeout_s=10)  # fmt: skip
    letters = [decode(m.value(), DeadLetter) for m in dlq]
    assert [(d.payload, d.reason) for d in letters] == [('{"txn_id": "broken"', Reason.INVALID_JSON)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is needed (scripts/services.sh installs and runs it)"
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis_lib.Redis(port=port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.ping()
            return process
        except redis_lib.ConnectionError:
            time.sleep(0.1)
    raise AssertionError("redis-server did not start")


def test_redis_stopped_mid_stream_degrades_then_recovers(
    topics: Settings, tmp_path: Path, stop: list[subprocess.Popen[bytes]]
) -> None:
    port = _free_port()
    own = _redis(port, tmp_path)
    stop.append(own)
    settings = topics.model_copy(
        update={"redis": topics.redis.model_copy(update={"url": f"redis://127.0.0.1:{port}/0"})}
    )
    factories.register_champion(settings.paths.models_dir)
    cooldown_s = 1.0  # the circuit breaker's: after 3 failed calls, batches are degraded at once for that long
    worker, log = start_worker(settings, tmp_path, FRAUD_SCORING__BREAKER_COOLDOWN_S=str(cooldown_s))
    stop.append(worker)
    producer = Producer(settings.kafka.client_config())
    topic = settings.topics.full(settings.topics.transactions)
    scores = settings.topics.full(settings.topics.scores)

    sent: dict[str, Transaction] = {}

    def send(prefix: str, count: int) -> None:
        for i in range(count):
            txn = factories.transaction(txn_id=f"{prefix}-{i}", card_token=f"tok_{prefix}{i % 5}")
            producer.produce(topic, key=txn.card_token.encode(), value=encode(txn))
            sent[txn.txn_id] = txn
        assert producer.flush(30) == 0

    send("before", 20)
    assert len(consume_all(settings.kafka.bootstrap_servers, scores, 20, group="g1", timeout_s=60)) == 20, (
        log.read_text()[-3000:]
    )
    own.terminate()
    own.wait(10)
    send("during", 20)
    got = consume_all(settings.kafka.bootstrap_servers, scores, 40, group="g2", timeout_s=60)
    during = [decode(m.value(), Decision) for m in got if decode(m.value(), Decision).txn_id.startswith("during")]
    assert len(during) == 20 and all(d.degraded and d.score is None for d in during), log.read_text()[-3000:]
    stop.append(_redis(port, tmp_path))  # back, empty
    time.sleep(cooldown_s + 0.5)  # the breaker may have opened during the outage: it lets calls through again
    send("after", 20)
    got = consume_all(settings.kafka.bootstrap_servers, scores, 60, group="g3", timeout_s=60)
    after = [d for d in (decode(m.value(), Decision) for m in got) if d.txn_id.startswith("after")]
    assert len(after) == 20 and not any(d.degraded for d in after) and all(d.score is not None for d in after)
    client = redis_lib.Redis(port=port)
    prefix = settings.redis.key_prefix
    deadline = time.monotonic() + 30

    def repaired() -> bool:
        return all(client.hexists(marker_key(prefix, txn), txn.txn_id) for i, txn in sent.items() if "during" in i)

    while time.monotonic() < deadline and not repaired():
        time.sleep(0.5)
    assert repaired(), "degraded transactions never applied"
