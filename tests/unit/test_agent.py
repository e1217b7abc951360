"""The scoring agent's batch handler (:class:`streams.scoring.Scoring`) with in-memory twins (feature store,
decision memory, a publisher that keeps what it is given) and a real registry and logs: decisions and alerts per
transaction, dead letters for poison, an event whose scoring raises dead-lettered alone while the rest of its batch
is scored — and the batch's ticket done only once its outputs are acknowledged and its log rows durable."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from features.memory import InMemoryFeatureStore
from features.snapshot import StoreReply
from fraudpipe.clock import SystemClock, micros_of
from fraudpipe.codec import decode, encode
from fraudpipe.contracts import Alert, DeadLetter, Decision, Reason
from fraudpipe.groupcommit import GroupWriter
from fraudpipe.logstore import DayLog
from fraudpipe.privacy import ErasureList, subject_digest
from fraudpipe.settings import ScoringSettings, TopicSettings
from models.registry import Registry
from streams.consumer import Records
from streams.intake import RawRecord
from streams.outputs import decision_rows
from streams.pipeline import InMemoryDecisionMemory, Models, Pipeline
from streams.scoring import Scoring, Writers
from streams.watermark import Watermark
from tests import factories

KEY = b"unit-test-audit-key-0123456789abcdef"
TOPIC = "transactions.v1"


class _Store(InMemoryFeatureStore):
    """The twin, with one transaction id that makes feature code raise."""

    def raw(self, txns: Any) -> StoreReply:
        if any(t.txn_id == "explodes" for t in txns):
            raise ZeroDivisionError("feature bug")
        return super().raw(txns)


class _Published:
    """The in-memory twin of the Kafka publisher: what was produced, by topic; acknowledged when told."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bytes]] = []
        self.unacknowledged: list[Callable[[], None]] = []

    async def send(self, messages: Any, done: Callable[[], None]) -> None:
        self.messages += messages
        self.unacknowledged.append(done)

    async def publish(self, messages: Any) -> None:
        self.messages += messages

    def acknowledge(self) -> None:
        for done in self.unacknowledged:
            done()
        self.unacknowledged.clear()

    def of(self, topic: str, kind: type[Any]) -> list[Any]:
        return [decode(value, kind) for name, _, value in self.messages if name == topic]


def test_the_agent_scores_alerts_and_dead_letters(tmp_path: Path) -> None:
    factories.register_champion(tmp_path)
    clock = SystemClock()
    models = Models(Registry(tmp_path), "champion", threads=1, poll_s=60, clock=clock)
    scoring = ScoringSettings(thresholds_from="settings", review_threshold=0.0, decline_threshold=0.999)
    pipeline = Pipeline(_Store(), InMemoryDecisionMemory(), models, scoring, clock)
    published = _Published()
    writers = Writers(*(GroupWriter(DayLog(tmp_path / name, "event_time"), interval_s=60, max_rows=10**6,
                                    combine=combine)
                        for name, combine in (("decisions", decision_rows), ("conflicts", None))))  # fmt: skip
    # tok_gone was erased after its payment: a replay of that payment is dropped, not scored.
    erased = {subject_digest(KEY, "tok_gone").encode(): str(micros_of(datetime(2025, 1, 1, tzinfo=UTC))).encode()}
    erasures = ErasureList(lambda: erased, KEY, poll_s=60, clock=clock)
    handler = Scoring(pipeline, published, writers, erasures, scoring, TopicSettings(), clock)
    handler.start()
    valid = [factories.transaction(txn_id=f"ok-{i}", card_token=f"tok_c{i % 3}") for i in range(6)]
    gone = factories.transaction(txn_id="erased", card_token="tok_gone")
    explodes = factories.transaction(txn_id="explodes")
    reused = valid[0].model_copy(update={"amount": 999_999.0})  # a reused id: ok-0 again, with another amount
    sent: list[tuple[bytes | None, bytes]] = [(t.card_token.encode(), encode(t)) for t in valid[:3]]
    sent += [(b"k", b'{"txn_id": 1'), (b"tok_gone", encode(gone)), (explodes.card_token.encode(), encode(explodes))]
    sent += [(t.card_token.encode(), encode(t)) for t in valid[3:]]
    # The key must be the card token: another card's key, no key, a PAN as the key.
    sent += [(b"tok_c2", encode(valid[0].model_copy(update={"txn_id": "k1"}))),
             (None, encode(valid[0].model_copy(update={"txn_id": "k2"}))), (b"4111111111111111", b"{}")]  # fmt: skip
    watermark = Watermark()
    first = [RawRecord(TOPIC, 0, offset, key, value) for offset, (key, value) in enumerate(sent)]
    second = [RawRecord(TOPIC, 0, len(sent), reused.card_token.encode(), encode(reused))]
    batches = [Records(b, [0.0] * len(b), clock.monotonic(), watermark.open({(TOPIC, 0): b[-1].offset}))
               for b in (first, second)]  # fmt: skip

    async def run() -> None:
        for batch in batches:
            await handler.handle(batch)

    asyncio.run(run())
    assert watermark.advance() == {}, "outputs not acknowledged, log rows not durable"
    published.acknowledge()
    assert watermark.advance() == {}, "log rows not durable yet"
    handler.close()
    assert watermark.advance() == {(TOPIC, 0): len(sent) + 1}
    decisions = published.of("scores.v1", Decision)
    alerts = published.of("alerts.v1", Alert)
    dead = published.of("transactions.dlq.v1", DeadLetter)
    assert sorted(d.txn_id for d in decisions) == sorted(t.txn_id for t in valid)
    assert {a.txn_id for a in alerts} == {d.txn_id for d in decisions if d.decision != "approve"} != set()
    assert sorted(d.reason for d in dead) == sorted([Reason.INVALID_JSON, Reason.PROCESSING_ERROR,
        Reason.KEY_MISMATCH, Reason.MISSING_KEY, Reason.MISSING_FIELD, Reason.TXN_ID_CONFLICT])  # fmt: skip
    dlq_keys = [key for name, key, _ in published.messages if name == "transactions.dlq.v1"]
    assert b"4111111111111111" not in dlq_keys and b"411111******1111" in dlq_keys
    refused = DayLog(tmp_path / "conflicts", "event_time").read()
    assert refused["txn_id"].to_list() == ["ok-0"] and refused["amount"].to_list() == [999_999.0]
    assert "ZeroDivisionError" in next(d.detail for d in dead if d.reason == Reason.PROCESSING_ERROR)
    logged = DayLog(tmp_path / "decisions", "event_time").read()
    assert sorted(logged.get_column("txn_id").to_list()) == sorted(t.txn_id for t in valid)
    assert set(logged["customer_id"]) == {"C-17"} and set(logged["merchant_name"]) == {"Café Zürich — 東京"}
