"""No PAN anywhere after the ingestion edge. A CSV of payments identified by Luhn-valid card numbers (some rows with
a card number in the merchant name too) is replayed with its fraud labels through a worker running every agent and
every file sink; a PAN is sent straight onto the topic as a card token; the API is called with one; an erasure
is asked by PAN. Then every topic, every Redis key and value, every file written, every log and command output,
and the metrics page are searched for the card numbers (whole, or with separators): none is found."""

from __future__ import annotations

import csv
import re
import socket
import subprocess
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import redis as redis_lib
from confluent_kafka import Consumer, Producer
from fastapi.testclient import TestClient

from fraudpipe.codec import decode
from fraudpipe.contracts import DeadLetter, Reason
from fraudpipe.pan import luhn_valid
from fraudpipe.settings import ApiSettings, Settings, SinkSettings, TopicSettings
from streams.api import create_app
from streams.topics import topic_specs
from tests.factories import transaction_json
from tests.integration.conftest import run_cli
from tests.reliability.conftest import Decisions, Tail, start


def _pans(n: int) -> list[str]:
    """``n`` Luhn-valid 16-digit numbers on test BINs."""
    found: list[str] = []
    body = 400000_000000_000
    while len(found) < n:
        body += 7919
        for check in range(10):
            candidate = f"{body:015d}{check}"
            if luhn_valid(candidate):
                found.append(candidate)
                break
    return found


def _leaks(text: str, pans: list[str]) -> list[str]:
    """The PANs of ``pans`` in ``text``, whole or with separators. (A search for any Luhn-valid run would flag the
    long decimals of scores and model files: these are the card numbers that went in, so these are what to find.)"""
    digits = re.sub(r"[ -]", "", text)
    return [pan for pan in pans if pan in digits]


def _redis_values(client: redis_lib.Redis, key: bytes) -> list[bytes]:
    kind = client.type(key)
    if kind == b"string":
        return [client.get(key) or b""]
    if kind == b"hash":
        return [b"".join(item) for item in client.hgetall(key).items()]
    if kind == b"stream":
        return [b"".join(part for item in fields.items() for part in item) for _, fields in client.xrange(key)]
    raise AssertionError(f"unexpected Redis type {kind!r} at {key!r}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_pan_reaches_topics_redis_files_logs_or_metrics(champion: Settings, tmp_path: Path,
                                                           stop: list[subprocess.Popen[bytes]],
                                                           store_client: redis_lib.Redis) -> None:  # fmt: skip
    pans = _pans(40)
    metrics_port = _free_port()
    config = champion.model_copy(update={"sinks": SinkSettings(
        enabled=("log", "redis_stream", "jsonl"), jsonl_path=tmp_path / "alerts.jsonl",
        redis_stream_key=champion.sinks.redis_stream_key)})  # fmt: skip
    start_at = datetime.now(UTC) - timedelta(days=2)
    rows = []
    for i in range(400):
        pan = pans[i % len(pans)]
        name = f"refund to {pans[(i + 1) % len(pans)]}" if i % 50 == 7 else f"Shop {i % 13}"
        rows.append({"txn_id": f"pan-{i}", "event_time": (start_at + timedelta(minutes=5 * i)).isoformat(),
                     "card_id": pan if i % 3 else f"{pan[:4]} {pan[4:8]} {pan[8:12]} {pan[12:]}",
                     "amount": f"{10 + i % 90}.50", "terminal_id": f"T{i % 17}", "merchant_name": name,
                     "label": "1" if i % 40 == 3 else "0"})  # fmt: skip
    source = tmp_path / "payments.csv"
    with source.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    worker, log = start(config, tmp_path, FRAUD_METRICS__PORT=str(metrics_port),
                        FRAUD_SCORING__RULES='["card_blocked", {"id": "large_amount", "threshold": 50}]')  # fmt: skip
    stop.append(worker)
    outputs = []
    replay = run_cli(config, "replay", str(source), "--rate", "2000", "--label-delay", "1h", "--rejects",
                     str(tmp_path / "rejects.jsonl"), cwd=tmp_path, timeout=120)  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    outputs += [replay.stdout, replay.stderr]
    producer = Producer(config.kafka.client_config())
    producer.produce(config.topics.full(config.topics.transactions), key=b"raw",
                     value=transaction_json(txn_id="raw-pan", card_token=pans[0]))  # fmt: skip
    assert producer.flush(30) == 0
    accepted = 400 - sum(1 for i in range(400) if i % 50 == 7)
    Decisions(config).wait_for(accepted, 120, log)
    letters = Tail(config, TopicSettings.dlq_of(config.topics.transactions))
    deadline = time.monotonic() + 30
    while not letters.poll(0.5):
        assert time.monotonic() < deadline, "the PAN sent as a card token was not dead-lettered"
    assert decode(letters.values[0], DeadLetter).reason is Reason.PAN_DETECTED
    time.sleep(3)  # alerts through the sinks, labels through their agent
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        outputs.append(response.read().decode())
    open_api = config.model_copy(update={"api": ApiSettings(require_auth=False)})  # keys: test_api_attacks
    with TestClient(create_app(open_api)) as client:
        refused = client.post("/v1/score", content=transaction_json(card_token=pans[1]),
                              headers={"Content-Type": "application/json"})  # fmt: skip
        assert refused.status_code == 422
        outputs.append(refused.text)
    for command in (["privacy", "erase", "--pan", pans[2]], ["audit", "show", "pan-1"], ["audit", "verify"]):
        done = run_cli(config, *command, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        outputs += [done.stdout, done.stderr]

    leaks: dict[str, list[str]] = {}
    for i, text in enumerate(outputs):
        if found := _leaks(text, pans):
            leaks[f"output {i}"] = found
    consumer = Consumer({"bootstrap.servers": config.kafka.bootstrap_servers, "group.id": "pan-scan",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([spec.name for spec in topic_specs(config.topics)])
    seen = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for message in consumer.consume(num_messages=1_000, timeout=1.0):
            seen += 1
            if message.key() == b"raw" and message.topic() == config.topics.full(config.topics.transactions):
                continue  # what the misbehaving producer sent, before the edge; its dead letter is checked
            text = (message.key() or b"").decode(errors="replace") + (message.value() or b"").decode(errors="replace")
            if found := _leaks(text, pans):
                leaks[f"topic {message.topic()}"] = found
    consumer.close()
    assert seen > accepted  # the scan read the topics
    for key in store_client.scan_iter(match=f"{config.redis.key_prefix}*", count=1_000):
        for value in [key, *_redis_values(store_client, key)]:
            if found := _leaks(value.decode(errors="replace"), pans):
                leaks[f"redis {key.decode()}"] = found
    scanned: list[Path] = []
    for path in tmp_path.rglob("*"):
        if not path.is_file() or path == source:
            continue
        scanned.append(path)
        if path.suffix == ".parquet":
            frame = pl.read_parquet(path)
            text = "\n".join(str(v) for c in frame.columns for v in frame[c].cast(pl.String).to_list())
        else:
            text = path.read_bytes().decode(errors="replace")
        if found := _leaks(text, pans):
            leaks[str(path.relative_to(tmp_path))] = found
    # the scan read the worker's log, the model, the decision, delivery and label logs, the alert and reject files and
    # the erasure receipt (how many parquet parts a log has depends on how the worker batched: not counted)
    expected = ("worker-*.log", "models/versions/*/model.txt", "data/decisions/*/*.parquet",
                "data/deliveries/*/*.parquet", "data/labels/*/*.parquet", "alerts.jsonl", "rejects.jsonl",
                "data/privacy/receipts/*.json")  # fmt: skip
    assert [pattern for pattern in expected if not any(p.match(pattern) for p in scanned)] == [], scanned
    assert not leaks, leaks
