"""The holes an attacker found first, tried against a real worker on real Kafka and Redis (each failed before the
mend, see issue 21): one worker takes every attack in turn, then the outputs are searched.

- **A reused transaction id** (10 EUR approved; then the same id, another card, 999,999 EUR, a day later) is a dead
  letter ``txn_id_conflict``: never answered with the first payment's decision, never applied to the other card's
  features, and listed by ``fraudpipe audit show``. The first payment sent again (a redelivery) still gets its one
  decision.
- **A PAN in any identifier** (``txn_id``, ``terminal_id``, ``merchant_id``, ``customer_id``, ``device_id``, with the
  separators people use) is refused as ``pan_detected``; a PAN as the record's key is masked in the dead letter's
  key; the PAN is nowhere in ``scores.v1``, ``alerts.v1``, the dead letters, Redis key names or the decision log.
- **Currencies**: 2,000,000 VND (about 80 USD) is decided; 0.5 JPY is refused as ``amount_precision``.
- **Keys**: a record keyed by another card, or with no key, is refused (``key_mismatch``, ``missing_key``).
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from features.store import redis_client
from fraudpipe.codec import DecodeError, decode, encode
from fraudpipe.contracts import DeadLetter, Reason, Transaction
from fraudpipe.settings import Settings, TopicSettings
from tests.factories import VISA_TEST_PAN, transaction, transaction_json
from tests.integration.conftest import run_cli
from tests.reliability.conftest import Decisions, Tail, send, start

PAN_SPELLINGS = {
    "txn_id": VISA_TEST_PAN,
    "terminal_id": "4111-1111-1111-1111",
    "merchant_id": "4111.1111.1111.1111",
    "customer_id": f"cust_{VISA_TEST_PAN}",
    "device_id": "4111/1111/1111/1111",
}
PAN_DIGITS = (VISA_TEST_PAN, "4111-1111-1111-1111", "4111.1111.1111.1111", "4111/1111/1111/1111")


def _produce(config: Settings, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = Producer(config.kafka.client_config())
    topic = config.topics.full(config.topics.transactions)
    for key, value in records:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def _holds_pan(data: bytes | str | None) -> bool:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else (data or "")
    return any(spelling in text for spelling in PAN_DIGITS)


def test_the_attacks_on_a_real_worker(champion: Settings, tmp_path: Path,
                                      stop: list[subprocess.Popen[bytes]]) -> None:  # fmt: skip
    config = champion
    worker, log = start(config, tmp_path)
    stop.append(worker)
    now = datetime.now(UTC).replace(microsecond=0)
    victim, attacker = "tok_" + "a1" * 16, "tok_" + "b2" * 16
    small = transaction(
        txn_id="atk-reused", card_token=victim, amount=10.0, event_time=(now - timedelta(days=2)).isoformat()
    )
    send(config, [small])
    decisions = Decisions(config)
    decisions.wait_for(1, 120, log)

    big = transaction(txn_id="atk-reused", card_token=attacker, amount=999_999.0,
                      event_time=(now - timedelta(days=1)).isoformat())  # fmt: skip
    records: list[tuple[bytes | None, bytes]] = [(attacker.encode(), encode(big))]
    for field, spelling in PAN_SPELLINGS.items():
        raw = transaction_json(**{field: spelling, "txn_id": f"atk-pan-{field}", "event_time": now.isoformat()})
        if field == "txn_id":
            raw = transaction_json(txn_id=spelling, event_time=now.isoformat())
        records.append((json.loads(raw)["card_token"].encode(), raw))
    ordinary = transaction(txn_id="atk-keyed", event_time=now.isoformat())
    records += [
        (VISA_TEST_PAN.encode(), encode(ordinary)),  # a PAN as the key (and not the card token)
        (None, encode(ordinary.model_copy(update={"txn_id": "atk-keyless"}))),
        (attacker.encode(), encode(ordinary.model_copy(update={"txn_id": "atk-other-card"}))),
        (
            ordinary.card_token.encode(),
            transaction_json(txn_id="atk-jpy", amount=0.5, currency="JPY", event_time=now.isoformat()),
        ),
    ]
    vnd = transaction(txn_id="atk-vnd", amount=2_000_000.0, currency="VND", event_time=now.isoformat())
    records += [(vnd.card_token.encode(), encode(vnd)), (victim.encode(), encode(small))]  # small: a redelivery
    _produce(config, records)
    expected = {"atk-reused": Reason.TXN_ID_CONFLICT, "atk-keyed": Reason.KEY_MISMATCH,
                "atk-keyless": Reason.MISSING_KEY, "atk-other-card": Reason.KEY_MISMATCH,
                "atk-jpy": Reason.AMOUNT_PRECISION}  # fmt: skip
    expected |= {f"atk-pan-{field}": Reason.PAN_DETECTED for field in PAN_SPELLINGS}

    letters = Tail(config, TopicSettings.dlq_of(config.topics.transactions))
    decisions.wait_for(2, 120, log)  # atk-reused (and its redelivery) and atk-vnd
    for _ in range(60):
        if len(letters.poll(1.0)) >= len(expected):
            break
        assert worker.poll() is None, log.read_text()[-3000:]
    letters.poll(2.0)
    for _ in range(60):  # the redelivery of the first payment may come after the last dead letter
        if sum(d.txn_id == "atk-reused" for d in decisions.decisions) >= 2:
            break
        decisions.poll(1.0)
    found = [decode(value, DeadLetter) for value in letters.values]
    reasons = Counter(letter.reason for letter in found)
    assert reasons == Counter(expected.values()), reasons

    # The reused id: one payment decided (10 EUR, its redelivery the same decision), the other refused.
    reused = [d for d in decisions.decisions if d.txn_id == "atk-reused"]
    assert len(reused) == 2 and {(d.amount, d.card_token, d.decision, d.score) for d in reused} == {
        (10.0, victim, reused[0].decision, reused[0].score)}  # fmt: skip
    conflict = next(letter for letter in found if letter.reason == Reason.TXN_ID_CONFLICT)
    assert '"amount":999999.0' in conflict.payload
    client = redis_client(config.redis)
    try:
        keys = [key.decode() for key in client.scan_iter(match=f"{config.redis.key_prefix}*", count=1_000)]
        assert f"{config.redis.key_prefix}card:{attacker}" not in keys  # the refused payment applied nothing
        assert not [key for key in keys if _holds_pan(key)]
    finally:
        client.close()
    shown = run_cli(config, "audit", "show", "atk-reused", "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    trail = json.loads(shown.stdout)
    assert [(c["card_token"], c["amount"]) for c in trail["conflicts"]] == [(attacker, 999_999.0)]
    assert trail["decision"]["redeliveries"] == 1

    # Currencies: 2,000,000 VND decided as any payment.
    assert [d.amount for d in decisions.decisions if d.txn_id == "atk-vnd"] == [2_000_000.0]

    # No PAN in any output: decisions, alerts, dead letters (their keys masked), the decision log.
    alerts = Tail(config, config.topics.alerts).poll(1.0)
    assert not [v for v in [*decisions.values, *alerts] if _holds_pan(v)]
    assert not [letter for letter in found if _holds_pan(letter.payload) or _holds_pan(letter.detail)]
    dlq_keys = _dead_letter_keys(config)
    assert b"411111******1111" in dlq_keys and not [key for key in dlq_keys if _holds_pan(key)]
    logged = pl.read_parquet(Path(config.paths.data_dir) / "decisions" / "**" / "*.parquet")
    assert not [row for row in logged.select(pl.all().cast(pl.String)).iter_rows() if _holds_pan(" ".join(
        value or "" for value in row))]  # fmt: skip
    assert not [t for t in logged["txn_id"].to_list() if t.startswith("atk-pan") or t.startswith("atk-key")]
    assert worker.poll() is None and "Traceback" not in log.read_text()


def _dead_letter_keys(config: Settings) -> list[bytes | None]:
    """The keys of every record of ``transactions.dlq.v1``."""
    name = config.topics.full(TopicSettings.dlq_of(config.topics.transactions))
    consumer = Consumer({"bootstrap.servers": config.kafka.bootstrap_servers, "group.id": "atk-keys",
                         "enable.auto.commit": False})  # fmt: skip
    try:
        partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
        consumer.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in partitions])
        keys: list[bytes | None] = []
        for _ in range(10):
            keys += [m.key() for m in consumer.consume(num_messages=1_000, timeout=0.5) if m.error() is None]
        return keys
    finally:
        consumer.close()


def test_a_transaction_is_refused_with_its_reason_not_its_value() -> None:
    """The contract's refusal names the field and never repeats the PAN (as the worker's dead letter and the API's
    error body show it)."""
    for field, spelling in PAN_SPELLINGS.items():
        with pytest.raises(DecodeError) as refused:
            decode(transaction_json(**{field: spelling}), Transaction)
        assert refused.value.reason == Reason.PAN_DETECTED and field in refused.value.detail
        assert not _holds_pan(refused.value.detail)
    with pytest.raises(DecodeError) as unknown:
        decode(transaction_json()[:-1] + f', "{VISA_TEST_PAN}": 1}}'.encode(), Transaction)
    assert unknown.value.reason == Reason.EXTRA_FIELD and not _holds_pan(unknown.value.detail)
