"""Service faults under a running worker: the broker paused (SIGSTOP 30 s) then restarted, Redis killed and
restarted, Redis stalling 2 s again and again, the dead-letter topic refusing writes. Each runs on its own broker
or Redis (started here, stopped by PID), so the shared services of the suite are never disturbed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from fraudpipe.codec import decode
from fraudpipe.contracts import DeadLetter, Reason, Transaction
from fraudpipe.settings import Settings, TopicSettings
from streams.topics import create_topics, topic_specs
from tests import factories
from tests.reliability.conftest import ROOT, Decisions, Row, Tail, mismatched, record, send, start


def _free_pair() -> int:
    """A port whose successor is free too (the KRaft controller listens on port + 1)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no free port pair")


class OwnKafka:
    """A broker of our own through scripts/services.sh (its own state folder and ports)."""

    def __init__(self, folder: Path) -> None:
        self.bootstrap = f"127.0.0.1:{_free_pair()}"
        self.folder = folder
        self.env = os.environ | {
            "FRAUDPIPE_SERVICES_DIR": str(folder),
            "FRAUD_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
        }

    def run(self, action: str) -> None:
        done = subprocess.run(["bash", str(ROOT / "scripts" / "services.sh"), action, "kafka"], env=self.env,
                              capture_output=True, text=True, timeout=180, check=False)  # fmt: skip
        if done.returncode != 0:  # never a skip: this suite's broker is started here, from the repository's script
            pytest.fail(f"services.sh {action} kafka failed: {done.stderr[-2000:]}")

    @property
    def pid(self) -> int:
        return int((self.folder / "kafka.pid").read_text())


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[OwnKafka]:
    broker = OwnKafka(tmp_path / "kafka-state")
    broker.run("start")
    yield broker
    with contextlib.suppress(OSError, ValueError):  # never leave a stopped broker behind
        os.kill(broker.pid, signal.SIGCONT)
    broker.run("stop")


def _own_redis(port: int, folder: Path, *extra: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is needed (scripts/services.sh installs and runs it)"
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder), "--save", "",
                                "--appendonly", "yes", "--appendfsync", "always", *extra],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    client = redis_lib.Redis(port=port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.ping()
            return process
        except redis_lib.ConnectionError:
            time.sleep(0.1)
    raise AssertionError("redis-server did not start")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until_equal(client: redis_lib.Redis, prefix: str, txns: list[Transaction], since: float,
                 timeout_s: float = 60) -> tuple[int, float]:  # fmt: skip
    """Mismatched keys once the worker's repairs have had up to ``timeout_s`` to land, and the seconds from
    ``since`` (monotonic) until the state was whole again."""
    deadline = time.monotonic() + timeout_s
    while (wrong := mismatched(client, prefix, txns)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return wrong, time.monotonic() - since


def test_broker_paused_30_s_then_restarted(settings: Settings, own_kafka: OwnKafka, history: list[Transaction],
                                           tmp_path: Path, stop: list[subprocess.Popen[bytes]],
                                           store_client: redis_lib.Redis) -> None:  # fmt: skip
    config = settings.model_copy(update={"kafka": settings.kafka.model_copy(
        update={"bootstrap_servers": own_kafka.bootstrap})})  # fmt: skip
    create_topics(config.kafka, topic_specs(config.topics), timeout_s=30)
    factories.register_champion(config.paths.models_dir)
    worker, log = start(config, tmp_path)
    stop.append(worker)
    third = len(history) // 3
    decisions = Decisions(config)
    send(config, history[: 2 * third])
    decisions.wait_for(third, 120, log)
    os.kill(own_kafka.pid, signal.SIGSTOP)
    time.sleep(30)
    os.kill(own_kafka.pid, signal.SIGCONT)
    resumed = time.monotonic()
    before = len(decisions.poll(0.5))
    after_pause = decisions.first_after(resumed, before, log=log) if len(decisions.ids()) < 2 * third else 0.0
    decisions.wait_for(2 * third, 180, log)
    own_kafka.run("stop")
    own_kafka.run("start")
    restarted = time.monotonic()
    send(config, history[2 * third :])
    before = len(decisions.poll(0.5))
    after_restart = decisions.first_after(restarted, before, timeout_s=180, log=log)
    decisions.wait_for(len(history), 180, log)
    decisions.poll(2.0)
    assert worker.poll() is None, "the worker died instead of recovering"
    lost, duplicated = decisions.judge(history)
    wrong = mismatched(store_client, config.redis.key_prefix, history)
    record(Row("broker SIGSTOP 30 s / SIGCONT, then broker restart", len(history), lost, duplicated, wrong,
               round(max(after_pause, after_restart), 1)))  # fmt: skip
    assert lost == 0 and wrong == 0


def test_redis_killed_and_restarted_mid_replay(topics: Settings, history: list[Transaction], tmp_path: Path,
                                               stop: list[subprocess.Popen[bytes]]) -> None:  # fmt: skip
    port = _free_port()
    folder = tmp_path / "redis"
    own = _own_redis(port, folder)
    stop.append(own)
    config = topics.model_copy(update={"redis": topics.redis.model_copy(update={"url": f"redis://127.0.0.1:{port}/0"})})
    factories.register_champion(config.paths.models_dir)
    worker, log = start(config, tmp_path)
    stop.append(worker)
    first = int(0.3 * len(history))
    send(config, history[:first])
    decisions = Decisions(config)
    decisions.wait_for(first, 120, log)
    own.send_signal(signal.SIGKILL)
    own.wait(10)
    send(config, history[first:])  # while Redis is down: a worker faster than the replay cannot finish first
    time.sleep(5)
    back = time.monotonic()
    stop.append(_own_redis(port, folder))
    decisions.wait_for(len(history), 180, log)
    decisions.poll(2.0)
    degraded = sum(d.degraded for d in decisions.decisions)
    lost, duplicated = decisions.judge(history)
    wrong, recovery = _until_equal(redis_lib.Redis(port=port), config.redis.key_prefix, history, back)
    record(Row(f"Redis kill -9 for 5 s, restart ({degraded} degraded decisions; recovery = state whole again)",
               len(history), lost, duplicated, wrong, round(recovery, 1)))  # fmt: skip
    assert degraded > 0, "the outage was not seen: the test proves nothing"
    assert lost == 0 and wrong == 0
    assert all(d.score is None for d in decisions.decisions if d.degraded)


def test_redis_stalling_2_s_repeatedly(topics: Settings, history: list[Transaction], tmp_path: Path,
                                       stop: list[subprocess.Popen[bytes]]) -> None:  # fmt: skip
    port = _free_port()
    stop.append(_own_redis(port, tmp_path / "redis", "--enable-debug-command", "local"))
    config = topics.model_copy(update={"redis": topics.redis.model_copy(update={"url": f"redis://127.0.0.1:{port}/0"})})
    factories.register_champion(config.paths.models_dir)
    worker, log = start(config, tmp_path)
    stop.append(worker)
    decisions = Decisions(config)
    send(config, history[:500])
    decisions.wait_for(500, 120, log)
    # Two groups: Faust's (the other agents' topics) and the scoring consumer's, which may have decided the first
    # 500 before Faust's joined: wait for both before counting.
    deadline = time.monotonic() + 60
    while "Joined group" not in log.read_text():
        assert time.monotonic() < deadline, "Faust's consumer never joined its group"
        time.sleep(0.5)
    joins, assigned = (log.read_text().count(mark) for mark in ("Joined group", "[INFO] assigned ["))
    stalls = threading.Event()

    def stall() -> None:
        client = redis_lib.Redis(port=port, socket_timeout=10)
        for _ in range(6):
            client.execute_command("DEBUG", "SLEEP", "2")
            time.sleep(2)
        stalls.set()

    staller = threading.Thread(target=stall, daemon=True)
    staller.start()
    send(config, history[500:])
    staller.join(60)
    assert stalls.is_set()
    last_stall = time.monotonic()
    decisions.wait_for(len(history), 180, log)
    decisions.poll(2.0)
    degraded = sum(d.degraded for d in decisions.decisions)
    slowest = max(d.latency_ms for d in decisions.decisions)
    lost, duplicated = decisions.judge(history)
    wrong, recovery = _until_equal(redis_lib.Redis(port=port), config.redis.key_prefix, history, last_stall)
    record(Row(f"Redis stalls 2 s x6 ({degraded} degraded, slowest decision {slowest:.0f} ms; recovery = state "
               "whole after the last stall)", len(history), lost, duplicated, wrong, round(recovery, 1)))  # fmt: skip
    assert lost == 0 and wrong == 0 and duplicated == 0
    assert degraded > 0, "no stall was felt: the test proves nothing"
    text = log.read_text()
    assert joins == 1 and text.count("Joined group") == joins, "the worker was evicted from Faust's group"
    assert assigned == 1 and text.count("[INFO] assigned [") == assigned, "evicted from the scoring group"


def test_dead_letter_topic_refusing_writes_holds_the_offset(champion: Settings, history: list[Transaction],
                                                            tmp_path: Path, stop: list[subprocess.Popen[bytes]],
                                                            store_client: redis_lib.Redis) -> None:  # fmt: skip
    config = champion
    admin = AdminClient({"bootstrap.servers": config.kafka.bootstrap_servers})
    dlq = config.topics.full(TopicSettings.dlq_of(config.topics.transactions))
    spec = next(spec for spec in topic_specs(config.topics) if spec.name == dlq)

    worker, log = start(config, tmp_path)
    stop.append(worker)
    txns = history[:1_000]
    decisions = Decisions(config)
    send(config, txns[:500])
    decisions.wait_for(500, 120, log)
    for future in admin.delete_topics([dlq]).values():  # the broker creates no topic on its own: writes fail
        future.result(30)
    producer = Producer(config.kafka.client_config())
    topic = config.topics.full(config.topics.transactions)
    poison_key = txns[500].card_token.encode()
    produced: list[tuple[int, int]] = []
    producer.produce(topic, key=poison_key, value=b'{"txn_id": "poison", "amount": ',
                     on_delivery=lambda err, msg: produced.append((msg.partition(), msg.offset())))  # fmt: skip
    assert producer.flush(30) == 0
    send(config, txns[500:])
    time.sleep(15)
    partition, offset = produced[0]
    consumer = Consumer({"bootstrap.servers": config.kafka.bootstrap_servers, "group.id": config.kafka.scoring_group})
    (committed,) = consumer.committed([TopicPartition(topic, partition)], timeout=10)
    consumer.close()
    assert committed.offset <= offset, "the offset moved past an event whose dead letter was not written"
    held = time.monotonic()
    create_topics(config.kafka, [spec], timeout_s=30)
    letters = Tail(config, TopicSettings.dlq_of(config.topics.transactions))
    deadline = time.monotonic() + 90
    while not letters.poll(0.5) and time.monotonic() < deadline:
        pass
    recovery = time.monotonic() - held
    decisions.wait_for(len(txns), 120, log)
    letters.poll(3.0)
    found = [decode(v, DeadLetter) for v in letters.values]
    assert [(d.reason, d.source_offset) for d in found] == [(Reason.INVALID_JSON, offset)]
    decisions.poll(1.0)
    lost, duplicated = decisions.judge(txns)
    wrong = mismatched(store_client, config.redis.key_prefix, txns)
    record(Row("DLQ refusing writes when a poison event arrives", len(txns) + 1, lost, duplicated, wrong,
               round(recovery, 1)))  # fmt: skip
    assert lost == 0 and wrong == 0
