"""Poison input: the whole invalid corpus (plus a payload over 1 MB) interleaved with valid transactions in a real
worker — each poison record in the DLQ exactly once with its reason and no PAN, every valid one scored, no agent
crash — and the same corpus against ``POST /v1/score``: 4xx with the reason, never 5xx. A fuzz run of the codec
finds nothing it cannot refuse cleanly."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraudpipe.codec import DecodeError, decode
from fraudpipe.contracts import DeadLetter, Label, Reason, Transaction
from fraudpipe.settings import ApiSettings, Settings, TopicSettings
from streams.api import create_app
from tests.factories import VISA_TEST_PAN, transaction, transaction_fields
from tests.reliability.conftest import Decisions, Row, Tail, record, send, start
from tests.unit.test_contracts import INVALID_TRANSACTIONS

HUGE = b'{"txn_id": "huge", "merchant_name": "' + b"x" * 1_100_000 + b'"}'
"""Over a megabyte: the broker takes it (the topic allows 2 MB here), the worker refuses it by size."""
CORPUS = {name: raw for name, (raw, _) in INVALID_TRANSACTIONS.items() if raw is not None} | {"over 1 MB": HUGE}
EXPECTED = {name: reason for name, (raw, reason) in INVALID_TRANSACTIONS.items() if raw is not None} | {
    "over 1 MB": Reason.PAYLOAD_TOO_LARGE
}


def _unicode_valid(n: int) -> list[Transaction]:
    names = ["Café Zürich — 東京", "Ωmega ✓ 🚀", "Łódź kebab", "مطعم", "Straße 7"]
    return [transaction(txn_id=f"valid-{i}", card_token=f"tok_poison{i % 7}", merchant_name=names[i % len(names)])
            for i in range(n)]  # fmt: skip


def test_a_poison_corpus_in_a_real_worker(champion: Settings, tmp_path: Path,
                                          stop: list[subprocess.Popen[bytes]]) -> None:  # fmt: skip
    config = champion
    topic = config.topics.full(config.topics.transactions)
    admin = AdminClient({"bootstrap.servers": config.kafka.bootstrap_servers})
    allow_2_mb = ConfigEntry("max.message.bytes", str(2 * 1024 * 1024), incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[allow_2_mb])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)
    worker, log = start(config, tmp_path)
    stop.append(worker)
    valid = _unicode_valid(60)
    producer = Producer(config.kafka.client_config() | {"message.max.bytes": 2 * 1024 * 1024 + 1024})
    poison = list(CORPUS.items())
    for i, txn in enumerate(valid):
        send(config, [txn])
        if i < len(poison):
            producer.produce(topic, key=f"poison-{i}".encode(), value=poison[i][1])
    assert producer.flush(30) == 0
    decisions = Decisions(config)
    decisions.wait_for(len(valid), 120, log)
    letters = Tail(config, TopicSettings.dlq_of(config.topics.transactions))
    while len(letters.poll(1.0)) < len(poison):
        assert worker.poll() is None, log.read_text()[-3000:]
    letters.poll(2.0)
    found = [decode(value, DeadLetter) for value in letters.values]
    by_key = Counter((letter.source_partition, letter.source_offset) for letter in found)
    assert len(found) == len(poison) and max(by_key.values()) == 1, "a poison record dead-lettered twice"
    assert sorted(letter.reason.value for letter in found) == sorted(EXPECTED[name].value for name, _ in poison)
    assert all(VISA_TEST_PAN not in letter.payload and VISA_TEST_PAN not in letter.detail for letter in found)
    decisions.poll(1.0)
    lost, duplicated = decisions.judge(valid)
    text = log.read_text()
    assert "Traceback" not in text and "crashed" not in text.lower(), text[-3000:]
    assert worker.poll() is None
    record(Row(f"poison corpus ({len(poison)} kinds) interleaved with valid events", len(valid) + len(poison), lost,
               duplicated, 0, None))  # fmt: skip
    assert lost == 0 and duplicated == 0


def test_the_corpus_against_the_api_gets_4xx_never_5xx(champion: Settings) -> None:
    open_api = champion.model_copy(update={"api": ApiSettings(require_auth=False)})  # keys: test_api_attacks
    with TestClient(create_app(open_api)) as client:
        for name, raw in CORPUS.items():
            response = client.post("/v1/score", content=raw, headers={"Content-Type": "application/json"})
            assert 400 <= response.status_code < 500, (name, response.status_code, response.text[:200])
            if response.status_code == 422:
                assert response.json()["reason"] == EXPECTED[name].value, name
            assert VISA_TEST_PAN not in response.text, name
        ok = client.post("/v1/score", content=_unicode_valid(1)[0].model_dump_json(),
                         headers={"Content-Type": "application/json"})  # fmt: skip
        assert ok.status_code == 200, ok.text


_JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=12,
)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """A valid transaction with one field replaced, removed or added (JSON, NaN and huge numbers allowed)."""
    fields = transaction_fields()
    name = draw(st.sampled_from([*fields, "unexpected"]))
    if draw(st.booleans()):
        fields[name] = draw(_JSON)
    else:
        fields.pop(name, None)
    return json.dumps(fields).encode()


@settings(max_examples=3_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.one_of(st.binary(max_size=2_000), st.text(max_size=500).map(str.encode),
                     _JSON.map(lambda v: json.dumps(v).encode()), _mutated()))  # fmt: skip
def test_the_codec_refuses_anything_cleanly(raw: bytes) -> None:
    for kind in (Transaction, Label):
        refused: DecodeError | None = None
        try:
            decode(raw, kind)
        except DecodeError as error:
            refused = error
        except Exception as error:  # anything else is a crash of the worker's intake
            pytest.fail(f"{type(error).__name__} on {raw[:80]!r}: {error}")
        if refused is not None:
            assert isinstance(refused.reason, Reason) and VISA_TEST_PAN not in refused.detail
