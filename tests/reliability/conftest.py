"""The reliability suite's harness: real Kafka and Redis (the integration fixtures), workers as subprocesses with
short group timeouts, a tail on ``scores.v1``, and the checks every fault is judged by.

- **lost**: transactions sent that never got a decision;
- **duplicated**: decisions published more than once for a transaction (redeliveries: allowed, counted, bounded);
  a transaction with two *different* decisions fails the test outright;
- **mismatched**: online state (every card, terminal and merchant key, and the applied-markers) that differs from
  the in-memory twin fed every transaction exactly once, in order — the sequential reference the offline builder
  is proven equal to (``tests/integration/test_offline_parity.py``);
- **recovery**: seconds from the fault ending (restart, resume) to the first decision after it.

Each test records its row in ``var/test-artifacts/reliability.json`` (or ``$FRAUDPIPE_ARTIFACTS``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import redis as redis_lib
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from features.memory import InMemoryFeatureStore
from features.store import RedisFeatureStore
from fraudpipe.codec import decode, encode
from fraudpipe.contracts import Decision, Transaction
from fraudpipe.settings import Settings
from tests import factories
from tests.integration.conftest import (  # noqa: F401 (fixtures)
    kafka_bootstrap,
    redis_url,
    settings,
    settings_env,
    stop,
    store_client,
    topics,
)

ROOT = Path(__file__).resolve().parents[2]
SIM_KEY = b"reliability-suite-tokenization-k"
FAST_GROUP = {
    "BROKER_SESSION_TIMEOUT": "10",
    "BROKER_HEARTBEAT_INTERVAL": "1",
    "BROKER_REBALANCE_TIMEOUT": "20",
    "BROKER_COMMIT_INTERVAL": "1",
    "FRAUD_SCORING__BATCH_SIZE": "200",
}
"""Worker environment: group membership decided in seconds, not a minute (Faust reads these variables)."""


@pytest.fixture(scope="session")
def history(tmp_path_factory: pytest.TempPathFactory) -> list[Transaction]:
    """Three simulated days of 500 cards (about 3k payments), in event-time order, as the worker will see them."""
    folder = factories.simulated_folder(tmp_path_factory.mktemp("reliability-sim"), days=3, customers=500,
                                        terminals=1_000, seed=17, key=SIM_KEY)  # fmt: skip
    frame = pl.read_parquet(folder / "transactions" / "**" / "*.parquet").sort("event_time", "txn_id")
    fields = [name for name in Transaction.model_fields if name != "schema_version" and name in frame.columns]
    return [Transaction(**row) for row in frame.select(fields).iter_rows(named=True)]


def start(config: Settings, cwd: Path, *, faulty: bool = False, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    """A worker (the real CLI; ``faulty``: through ``faulty_worker.py``) logging to a new file in ``cwd``."""
    log = cwd / f"worker-{time.monotonic_ns()}.log"
    command = [sys.executable, str(Path(__file__).with_name("faulty_worker.py"))] if faulty else [
        sys.executable, "-m", "fraudpipe", "worker"]  # fmt: skip
    with log.open("wb") as output:
        process = subprocess.Popen([*command, "-l", "info"], cwd=cwd, env=settings_env(config) | FAST_GROUP | env,
                                   stdout=output, stderr=subprocess.STDOUT)  # fmt: skip
    return process, log


def send(config: Settings, txns: list[Transaction]) -> None:
    """Produce ``txns`` to ``transactions.v1``, keyed by card token, in order."""
    producer = Producer(config.kafka.client_config() | {"linger.ms": 20})
    topic = config.topics.full(config.topics.transactions)
    for txn in txns:
        producer.produce(topic, key=txn.card_token.encode(), value=encode(txn))
        producer.poll(0)
    assert producer.flush(30) == 0


class Tail:
    """Every message of a topic from the start, read incrementally. It assigns itself every partition (no consumer
    group): a broker paused or restarted under it cannot take its assignment away."""

    def __init__(self, config: Settings, topic: str) -> None:
        name = config.topics.full(topic)
        self.consumer = Consumer({"bootstrap.servers": config.kafka.bootstrap_servers,
                                  "group.id": f"tail-{time.monotonic_ns()}", "enable.auto.commit": False})  # fmt: skip
        partitions = self.consumer.list_topics(name, timeout=10).topics[name].partitions
        self.consumer.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in partitions])
        self.values: list[bytes] = []

    def poll(self, seconds: float = 0.5) -> list[bytes]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for message in self.consumer.consume(num_messages=1_000, timeout=0.2):
                assert message.error() is None, message.error()
                self.values.append(message.value())
        return self.values

    def close(self) -> None:
        self.consumer.close()


class Decisions(Tail):
    """The tail of ``scores.v1`` as decisions, with the suite's judgements."""

    def __init__(self, config: Settings) -> None:
        super().__init__(config, config.topics.scores)
        self.decisions: list[Decision] = []

    def poll(self, seconds: float = 0.5) -> list[bytes]:
        values = super().poll(seconds)
        self.decisions += [decode(v, Decision) for v in values[len(self.decisions) :]]
        return values

    def ids(self) -> set[str]:
        return {d.txn_id for d in self.decisions}

    def wait_for(self, count: int, timeout_s: float, log: Path | None = None) -> float:
        """Poll until ``count`` distinct transactions are decided; returns when (monotonic)."""
        deadline = time.monotonic() + timeout_s
        while len(self.ids()) < count:
            if time.monotonic() > deadline:
                tail = log.read_text()[-3000:] if log is not None else ""
                pytest.fail(f"{len(self.ids())} of {count} transactions decided after {timeout_s} s\n{tail}")
            self.poll(0.5)
        return time.monotonic()

    def first_after(self, moment: float, before: int, timeout_s: float = 120, log: Path | None = None) -> float:
        """Seconds from ``moment`` until the topic holds more than ``before`` messages."""
        deadline = time.monotonic() + timeout_s
        while len(self.values) <= before:
            if time.monotonic() > deadline:
                pytest.fail(f"no decision after the fault\n{log.read_text()[-3000:] if log is not None else ''}")
            self.poll(0.1)
        return time.monotonic() - moment

    def judge(self, sent: list[Transaction]) -> tuple[int, int]:
        """(lost, duplicated); fails on a transaction with two different decisions or one never sent."""
        outcomes: dict[str, set[tuple[str, float | None]]] = defaultdict(set)
        for d in self.decisions:
            outcomes[d.txn_id].add((d.decision, d.score))
        conflicting = {txn: seen for txn, seen in outcomes.items() if len(seen) > 1}
        assert not conflicting, f"transactions with different decisions: {list(conflicting.items())[:3]}"
        ids = {t.txn_id for t in sent}
        assert set(outcomes) <= ids, f"decisions for transactions never sent: {sorted(set(outcomes) - ids)[:5]}"
        return len(ids - set(outcomes)), len(self.decisions) - len(outcomes)


_ENTITY_KINDS = ("card", "terminal", "merchant", "applied")  # entity states and apply-once markers


def online_state(client: redis_lib.Redis, prefix: str) -> dict[str, Any]:
    """Every entity state (decoded, as the twin holds it) and apply-once marker hash under ``prefix``."""
    state = RedisFeatureStore(client, prefix).state()
    return {name: value for name, value in state.items() if _kind(name, prefix) in _ENTITY_KINDS}


def _kind(name: str, prefix: str) -> str:
    return name[len(prefix) :].split(":", 1)[0]


def mismatched(client: redis_lib.Redis, prefix: str, txns: list[Transaction]) -> int:
    """Keys whose online state differs from the twin fed ``txns`` once each, in event-time order (0 = equal)."""
    twin = InMemoryFeatureStore(prefix)
    ordered = sorted(txns, key=lambda t: t.event_time)
    for i in range(0, len(ordered), 500):
        twin.raw(ordered[i : i + 500])
    expected = {k: v for k, v in twin.values.items() if _kind(k, prefix) in _ENTITY_KINDS}
    found = online_state(client, prefix)
    return sum(found.get(k) != v for k, v in expected.items()) + len(set(found) - set(expected))


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the closing note's table."""

    fault: str
    sent: int
    lost: int
    duplicated: int
    mismatched: int
    recovery_s: float | None


def record(row: Row) -> None:
    """Add ``row`` to the suite's results file (one JSON object per fault)."""
    folder = Path(os.environ.get("FRAUDPIPE_ARTIFACTS", ROOT / "var" / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "reliability.json"
    rows = json.loads(path.read_text()) if path.exists() else {}
    rows[row.fault] = asdict(row)
    path.write_text(json.dumps(rows, indent=2) + "\n")


def wait_exit(process: subprocess.Popen[bytes], timeout_s: float) -> float:
    """Seconds ``process`` took to exit (fails after ``timeout_s``)."""
    started = time.monotonic()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        pytest.fail(f"process {process.pid} still running {timeout_s} s after being told to stop")
    return time.monotonic() - started


@pytest.fixture
def champion(topics: Settings) -> Settings:  # noqa: F811 (the fixture)
    """``topics`` with a champion registered."""
    factories.register_champion(topics.paths.models_dir)
    return topics
