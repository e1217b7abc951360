"""The scorer agent in Faust's test context with in-memory twins (feature store, decision memory, output
channels instead of topics) and a real registry: decisions and alerts per transaction, dead letters for poison,
and an event whose scoring raises dead-lettered alone while the rest of its batch is scored."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import streams.agents as agents
from features.memory import InMemoryFeatureStore
from fraudpipe.clock import SystemClock
from fraudpipe.codec import decode, encode
from fraudpipe.contracts import Alert, DeadLetter, Decision, Reason
from fraudpipe.settings import ScoringSettings
from models.registry import Registry
from streams.pipeline import InMemoryDecisionMemory, Models, Pipeline
from tests import factories


class _Store(InMemoryFeatureStore):
    """The twin, with one transaction id that makes feature code raise."""

    def raw(self, txns: Any) -> list[Any]:
        if any(t.txn_id == "explodes" for t in txns):
            raise ZeroDivisionError("feature bug")
        return super().raw(txns)


async def _drain(channel: Any, kind: type[Any]) -> list[Any]:
    out = []
    while True:
        try:
            event = await asyncio.wait_for(channel.get(), timeout=0.5)
        except TimeoutError:
            return out
        out.append(decode(event.value, kind))


def test_the_agent_scores_alerts_and_dead_letters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    factories.register_champion(tmp_path)
    clock = SystemClock()
    models = Models(Registry(tmp_path), "champion", threads=1, poll_s=60, clock=clock)
    scoring = ScoringSettings(thresholds_from="settings", review_threshold=0.0, decline_threshold=0.999)
    pipeline = Pipeline(_Store(), InMemoryDecisionMemory(), models, scoring, clock)
    monkeypatch.setattr(agents, "make_pipeline", lambda: pipeline)
    channels = {name: agents.app.channel() for name in ("scores_topic", "alerts_topic", "transactions_dlq_topic")}
    for name, channel in channels.items():
        monkeypatch.setattr(agents, name, channel)
    valid = [factories.transaction(txn_id=f"ok-{i}", card_token=f"tok_c{i % 3}") for i in range(6)]

    async def run() -> tuple[list[Decision], list[Alert], list[DeadLetter]]:
        taps = {name: channel.__aiter__() for name, channel in channels.items()}  # subscribers see what is sent
        async with agents.score_transactions.test_context() as agent:
            for txn in valid[:3]:
                await agent.put(value=encode(txn), key=txn.card_token.encode(), wait=False)
            await agent.put(value=b'{"txn_id": 1', key=b"k", wait=False)
            await agent.put(value=encode(factories.transaction(txn_id="explodes")), key=b"k", wait=False)
            for txn in valid[3:]:
                await agent.put(value=encode(txn), key=txn.card_token.encode(), wait=False)
            await asyncio.sleep(1.0)
            return (
                await _drain(taps["scores_topic"], Decision),
                await _drain(taps["alerts_topic"], Alert),
                await _drain(taps["transactions_dlq_topic"], DeadLetter),
            )

    decisions, alerts, dead = asyncio.run(run())
    assert sorted(d.txn_id for d in decisions) == sorted(t.txn_id for t in valid)
    assert {a.txn_id for a in alerts} == {d.txn_id for d in decisions if d.decision != "approve"} != set()
    assert sorted(d.reason for d in dead) == sorted([Reason.INVALID_JSON, Reason.PROCESSING_ERROR])
    assert "ZeroDivisionError" in next(d.detail for d in dead if d.reason == Reason.PROCESSING_ERROR)
