"""Worker faults on real Kafka and Redis: kill -9, SIGTERM, a worker joining and leaving, an exception in feature
code, a slow event killed mid-flight. Every transaction sent gets exactly one decision (redelivered copies are
counted), and the online state equals the twin's (nothing applied twice, nothing missed)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import redis as redis_lib
from confluent_kafka import Consumer, TopicPartition

from fraudpipe.codec import decode
from fraudpipe.contracts import DeadLetter, Reason, Transaction
from fraudpipe.logstore import DayLog
from fraudpipe.settings import Settings, TopicSettings
from tests.reliability.conftest import Decisions, Row, Tail, mismatched, record, send, start, wait_exit


def _offsets(settings: Settings) -> list[tuple[int, int]]:
    """Per partition of ``transactions.v1``: the worker group's committed offset (0 if none) and the high watermark."""
    topic = settings.topics.full(settings.topics.transactions)
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                         "group.id": settings.kafka.scoring_group, "enable.auto.commit": False})  # fmt: skip
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.topics.partitions)]
        committed = consumer.committed(partitions, timeout=10)
        return [(max(tp.offset, 0), consumer.get_watermark_offsets(tp, timeout=10)[1]) for tp in committed]
    finally:
        consumer.close()


def _committed(settings: Settings) -> int:
    """Sum over the partitions of ``transactions.v1`` of the worker group's committed offsets."""
    return sum(done for done, _ in _offsets(settings))


def _lag(settings: Settings) -> int:
    """Messages of ``transactions.v1`` the worker group has not committed yet."""
    return sum(high - done for done, high in _offsets(settings))


def _until_lag_zero(settings: Settings, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while (lag := _lag(settings)) > 0:
        assert time.monotonic() < deadline, f"lag still {lag} after {timeout_s} s: a partition is stuck"
        time.sleep(1)


def _restart_and_judge(settings: Settings, tmp_path: Path, stop: list[subprocess.Popen[bytes]],
                       decisions: Decisions, txns: list[Transaction], store_client: redis_lib.Redis,
                       before: int) -> tuple[int, int, int, float]:  # fmt: skip
    """Start a fresh worker, wait until every transaction of ``txns`` is decided; (lost, duplicated, mismatched
    keys, seconds from the restart to the first decision past ``before``)."""
    restarted = time.monotonic()
    worker, log = start(settings, tmp_path)
    stop.append(worker)
    recovery = decisions.first_after(restarted, before, log=log)
    decisions.wait_for(len(txns), 180, log)
    decisions.poll(2.0)
    lost, duplicated = decisions.judge(txns)
    return lost, duplicated, mismatched(store_client, settings.redis.key_prefix, txns), recovery


def test_kill_9_mid_stream_then_restart(champion: Settings, history: list[Transaction], tmp_path: Path,
                                       stop: list[subprocess.Popen[bytes]],
                                       store_client: redis_lib.Redis) -> None:  # fmt: skip
    settings = champion
    half = len(history) // 2
    send(settings, history[:half])
    worker, log = start(settings, tmp_path)
    stop.append(worker)
    decisions = Decisions(settings)
    decisions.wait_for(int(0.3 * len(history)), 120, log)
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    before = len(decisions.poll(1.0))
    uncommitted = before - _committed(settings)  # decided, but past the offsets the group had committed
    send(settings, history[half:])  # the rest arrives while no worker runs: however fast it was, the restart has work
    lost, duplicated, wrong, recovery = _restart_and_judge(settings, tmp_path, stop, decisions, history,
                                                           store_client, before)  # fmt: skip
    record(Row("kill -9 mid-stream (30 %), restart", len(history), lost, duplicated, wrong, round(recovery, 1)))
    assert lost == 0 and wrong == 0
    assert duplicated <= uncommitted, "duplicates are at most the decisions the group had not committed yet"
    _until_lag_zero(settings)


def test_sigterm_stops_within_10_s_with_offsets_committed(champion: Settings, history: list[Transaction],
                                                          tmp_path: Path, stop: list[subprocess.Popen[bytes]],
                                                          store_client: redis_lib.Redis) -> None:  # fmt: skip
    settings = champion
    half = len(history) // 2
    send(settings, history[:half])
    worker, log = start(settings, tmp_path)
    stop.append(worker)
    decisions = Decisions(settings)
    decisions.wait_for(int(0.3 * len(history)), 120, log)
    worker.send_signal(signal.SIGTERM)
    took = wait_exit(worker, 10)
    before = len(decisions.poll(1.0))
    send(settings, history[half:])  # the rest arrives while no worker runs: a graceful stop may drain the first half
    lost, duplicated, wrong, recovery = _restart_and_judge(settings, tmp_path, stop, decisions, history,
                                                           store_client, before)  # fmt: skip
    record(Row(f"SIGTERM mid-stream (exit in {took:.1f} s), restart", len(history), lost, duplicated, wrong,
               round(recovery, 1)))  # fmt: skip
    assert lost == 0 and wrong == 0
    assert duplicated <= settings.topics.partitions * 200, "a graceful stop redelivers at most the last commit gap"
    _until_lag_zero(settings)


def test_a_second_worker_joins_and_leaves_under_load(champion: Settings, history: list[Transaction], tmp_path: Path,
                                                     stop: list[subprocess.Popen[bytes]],
                                                     store_client: redis_lib.Redis) -> None:  # fmt: skip
    settings = champion
    first, log = start(settings, tmp_path)
    stop.append(first)
    third = len(history) // 3
    send(settings, history[:third])
    decisions = Decisions(settings)
    decisions.wait_for(third // 2, 120, log)
    second, _ = start(settings, tmp_path)
    stop.append(second)
    send(settings, history[third : 2 * third])
    decisions.wait_for(third + third // 2, 180, log)
    second.send_signal(signal.SIGTERM)
    wait_exit(second, 10)
    left = time.monotonic()
    before = len(decisions.poll(0.5))
    send(settings, history[2 * third :])
    recovery = decisions.first_after(left, before, log=log)
    decisions.wait_for(len(history), 180, log)
    decisions.poll(2.0)
    lost, duplicated = decisions.judge(history)
    wrong = mismatched(store_client, settings.redis.key_prefix, history)
    _until_lag_zero(settings)
    record(Row("second worker joins then leaves (rebalances)", len(history), lost, duplicated, wrong,
               round(recovery, 1)))  # fmt: skip
    assert lost == 0 and wrong == 0


def test_an_exception_in_feature_code_dead_letters_that_event_only(champion: Settings,
                                                                   history: list[Transaction], tmp_path: Path,
                                                                   stop: list[subprocess.Popen[bytes]],
                                                                   store_client: redis_lib.Redis) -> None:  # fmt: skip
    settings = champion
    txns = history[:2_000]
    bad = txns[700]
    worker, log = start(settings, tmp_path, faulty=True, FRAUDPIPE_FAULT_RAISE=bad.txn_id)
    stop.append(worker)
    send(settings, txns)
    decisions = Decisions(settings)
    decisions.wait_for(len(txns) - 1, 120, log)
    dlq = Tail(settings, TopicSettings.dlq_of(settings.topics.transactions))
    deadline = time.monotonic() + 30
    while not dlq.poll(0.5) and time.monotonic() < deadline:
        pass
    letters = [decode(v, DeadLetter) for v in dlq.poll(1.0)]
    assert [(d.reason, d.source_offset >= 0) for d in letters] == [(Reason.PROCESSING_ERROR, True)]
    assert '"' + bad.txn_id + '"' in letters[0].payload and "RuntimeError" in letters[0].detail
    decisions.poll(1.0)
    lost, duplicated = decisions.judge([t for t in txns if t is not bad])
    assert bad.txn_id not in decisions.ids() and worker.poll() is None  # the worker goes on
    wrong = mismatched(store_client, settings.redis.key_prefix, [t for t in txns if t is not bad])
    record(Row("exception in feature code for one event", len(txns), lost, duplicated, wrong, None))
    assert lost == 0 and wrong == 0


def test_a_slow_event_killed_mid_flight_is_decided_after_restart(champion: Settings, history: list[Transaction],
                                                                 tmp_path: Path, stop: list[subprocess.Popen[bytes]],
                                                                 store_client: redis_lib.Redis) -> None:  # fmt: skip
    settings = champion
    txns = history[:2_000]
    slow = txns[1_000]
    worker, log = start(settings, tmp_path, faulty=True, FRAUDPIPE_FAULT_SLOW=f"{slow.txn_id}:60")
    stop.append(worker)
    send(settings, txns)
    deadline = time.monotonic() + 120
    while "injected: sleeping" not in log.read_text():
        assert time.monotonic() < deadline and worker.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    decisions = Decisions(settings)
    before = len(decisions.poll(1.0))
    assert slow.txn_id not in decisions.ids()
    lost, duplicated, wrong, recovery = _restart_and_judge(settings, tmp_path, stop, decisions, txns, store_client,
                                                           before)  # fmt: skip
    record(Row("slow event (handler sleeps), kill -9, restart", len(txns), lost, duplicated, wrong,
               round(recovery, 1)))  # fmt: skip
    assert slow.txn_id in decisions.ids() and lost == 0 and wrong == 0


def test_kill_9_between_produce_and_commit_redelivers_and_logs_once(champion: Settings, history: list[Transaction],
                                                                    tmp_path: Path,
                                                                    stop: list[subprocess.Popen[bytes]],
                                                                    store_client: redis_lib.Redis) -> None:  # fmt: skip
    """Every decision published, none of its log rows durable (a long flush interval), so no offset committed: a
    kill -9 then loses the buffered rows, and the restart redelivers everything — same decisions, and the decision
    log read back holds each transaction once."""
    settings = champion
    txns = history[:1_500]
    send(settings, txns)
    worker, log = start(settings, tmp_path, FRAUD_LOGS__FLUSH_INTERVAL_S="300")
    stop.append(worker)
    decisions = Decisions(settings)
    decisions.wait_for(len(txns), 120, log)
    time.sleep(2 * settings.scoring.commit_interval_s)
    assert _committed(settings) == 0, "offsets committed before the decision-log rows were durable"
    decision_log = DayLog(settings.paths.data_dir / "decisions", "event_time")
    assert decision_log.files() == [], "the rows were meant to be still buffered"
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    before = len(decisions.poll(1.0))
    lost, duplicated, wrong, _ = _restart_and_judge(settings, tmp_path, stop, decisions, txns, store_client, before)
    _until_lag_zero(settings)
    record(Row("kill -9 between produce and commit, restart", len(txns), lost, duplicated, wrong, 0.0))
    assert lost == 0 and wrong == 0
    assert duplicated == len(txns), "every decision was published again, the same (judge fails on a different one)"
    logged = decision_log.read()
    assert logged.height == len(txns) and logged["txn_id"].n_unique() == len(txns), "logged once each"
