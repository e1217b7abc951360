"""The scorer agent in Faust's test context with in-memory twins (feature store, decision memory, output
channels instead of topics) and a real registry: decisions and alerts per transaction, dead letters for poison,
and an event whose scoring raises dead-lettered alone while the rest of its batch is scored."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import streams.agents as agents
from features.memory import InMemoryFeatureStore
from features.snapshot import StoreReply
from fraudpipe.clock import SystemClock, micros_of
from fraudpipe.codec import decode, encode
from fraudpipe.contracts import Alert, DeadLetter, Decision, Reason
from fraudpipe.logstore import DayLog
from fraudpipe.privacy import ErasureList, subject_digest
from fraudpipe.settings import ScoringSettings
from models.registry import Registry
from streams.pipeline import InMemoryDecisionMemory, Models, Pipeline
from tests import factories

KEY = b"unit-test-audit-key-0123456789abcdef"


class _Store(InMemoryFeatureStore):
    """The twin, with one transaction id that makes feature code raise."""

    def raw(self, txns: Any) -> StoreReply:
        if any(t.txn_id == "explodes" for t in txns):
            raise ZeroDivisionError("feature bug")
        return super().raw(txns)


class _Published:
    """The in-memory twin of the Kafka publisher: what was published, by topic."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bytes]] = []

    async def publish(self, messages: Any) -> None:
        self.messages += messages

    def of(self, topic: str, kind: type[Any]) -> list[Any]:
        return [decode(value, kind) for name, _, value in self.messages if name == topic]


def test_the_agent_scores_alerts_and_dead_letters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    factories.register_champion(tmp_path)
    clock = SystemClock()
    models = Models(Registry(tmp_path), "champion", threads=1, poll_s=60, clock=clock)
    scoring = ScoringSettings(thresholds_from="settings", review_threshold=0.0, decline_threshold=0.999)
    pipeline = Pipeline(_Store(), InMemoryDecisionMemory(), models, scoring, clock)
    monkeypatch.setattr(agents, "make_pipeline", lambda: pipeline)
    published = _Published()
    monkeypatch.setattr(agents, "make_publisher", lambda: published)
    monkeypatch.setattr(agents, "make_decision_log", lambda: DayLog(tmp_path / "decisions", "event_time"))
    monkeypatch.setattr(agents, "make_conflict_log", lambda: DayLog(tmp_path / "conflicts", "event_time"))
    # tok_gone was erased after its payment: a replay of that payment is dropped, not scored.
    erased = {subject_digest(KEY, "tok_gone").encode(): str(micros_of(datetime(2025, 1, 1, tzinfo=UTC))).encode()}
    monkeypatch.setattr(agents, "make_erasures", lambda: ErasureList(lambda: erased, KEY, poll_s=60, clock=clock))
    valid = [factories.transaction(txn_id=f"ok-{i}", card_token=f"tok_c{i % 3}") for i in range(6)]
    gone = factories.transaction(txn_id="erased", card_token="tok_gone")

    async def run() -> tuple[list[Decision], list[Alert], list[DeadLetter]]:
        async with agents.score_transactions.test_context() as agent:
            for txn in valid[:3]:
                await agent.put(value=encode(txn), key=txn.card_token.encode(), wait=False)
            await agent.put(value=b'{"txn_id": 1', key=b"k", wait=False)
            await agent.put(value=encode(gone), key=b"tok_gone", wait=False)
            explodes = factories.transaction(txn_id="explodes")
            await agent.put(value=encode(explodes), key=explodes.card_token.encode(), wait=False)
            for txn in valid[3:]:
                await agent.put(value=encode(txn), key=txn.card_token.encode(), wait=False)
            # The key must be the card token: another card's key, no key, a PAN as the key.
            await agent.put(value=encode(valid[0].model_copy(update={"txn_id": "k1"})), key=b"tok_c2", wait=False)
            await agent.put(value=encode(valid[0].model_copy(update={"txn_id": "k2"})), key=None, wait=False)
            await agent.put(value=b"{}", key=b"4111111111111111", wait=False)
            # A reused id: ok-0 again, with another amount.
            reused = valid[0].model_copy(update={"amount": 999_999.0})
            await agent.put(value=encode(reused), key=reused.card_token.encode(), wait=False)
            await asyncio.sleep(1.0)
        return (
            published.of("scores.v1", Decision),
            published.of("alerts.v1", Alert),
            published.of("transactions.dlq.v1", DeadLetter),
        )

    decisions, alerts, dead = asyncio.run(run())
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
