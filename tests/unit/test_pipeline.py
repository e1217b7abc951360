"""The scoring pipeline with its in-memory twins (feature store, decision memory) and a real registry: one
decision per transaction (redeliveries republish it), alerts with reason codes, one model per batch with hot
swaps and refusals, and the degraded mode."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from features.definitions import FEATURE_NAMES
from features.memory import InMemoryFeatureStore
from features.store import StoreUnavailableError
from fraudpipe.clock import FixedClock
from fraudpipe.contracts import Transaction
from fraudpipe.settings import ScoringSettings
from models.registry import Registry
from streams.pipeline import InMemoryDecisionMemory, Models, Pipeline
from tests import factories

T0 = datetime(2024, 3, 1, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def champion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    factories.register_champion(root)
    return root


def _pipeline(root: Path, store: Any = None, **scoring: Any) -> Pipeline:
    clock = FixedClock(T0)
    models = Models(Registry(root), "champion", threads=1, poll_s=60, clock=clock)
    models.start()
    return Pipeline(
        store or InMemoryFeatureStore(), InMemoryDecisionMemory(), models, ScoringSettings(**scoring), clock
    )


def _txns(n: int, **overrides: Any) -> list[Transaction]:
    return [
        factories.transaction(
            txn_id=f"t-{i}", card_token=f"tok_card{i % 7}", event_time=(T0 - timedelta(minutes=n - i)).isoformat(),
            amount=20.0 + i, **overrides,
        )
        for i in range(n)
    ]  # fmt: skip


def test_every_transaction_gets_one_decision_and_alerts_carry_reasons(champion_dir: Path) -> None:
    pipeline = _pipeline(champion_dir, thresholds_from="settings", review_threshold=0.0, decline_threshold=0.99)
    txns = _txns(40)
    batch = pipeline.score(txns, [0.0] * len(txns))
    assert [d.txn_id for d in batch.decisions] == [t.txn_id for t in txns]
    assert all(d.model is not None and d.model.version == "v0001" for d in batch.decisions)
    assert all(set(d.features) == set(FEATURE_NAMES) and d.score is not None for d in batch.decisions)
    assert {a.txn_id for a in batch.alerts} == {d.txn_id for d in batch.decisions if d.decision != "approve"}
    assert batch.alerts and all(a.alert_id == f"alert:{a.txn_id}" for a in batch.alerts)
    assert any(a.reason_codes for a in batch.alerts)
    assert all(c.direction == "raises" for a in batch.alerts for c in a.reason_codes)
    assert all(not d.reason_codes for d in batch.decisions if d.decision == "approve")


def test_a_redelivered_transaction_gets_the_same_decision_again(champion_dir: Path) -> None:
    pipeline = _pipeline(champion_dir)
    txns = _txns(30)
    first = pipeline.score(txns, [0.0] * 30)
    # Redelivered with later payments of the same cards already applied: state differs, the decision must not.
    later = [factories.transaction(txn_id=f"later-{i}", card_token=f"tok_card{i % 7}", event_time=T0.isoformat(),
                                   amount=900.0) for i in range(7)]  # fmt: skip
    pipeline.score(later, [0.0] * 7)
    again = pipeline.score(txns, [0.0] * 30)
    assert again.redelivered == 30
    assert [(d.txn_id, d.decision, d.score, d.model) for d in again.decisions] == [
        (d.txn_id, d.decision, d.score, d.model) for d in first.decisions
    ]


def test_the_alias_is_followed_between_batches_and_a_broken_version_refused(tmp_path: Path) -> None:
    factories.register_champion(tmp_path)
    pipeline = _pipeline(tmp_path)
    registry = Registry(tmp_path)
    second = factories.register_champion(tmp_path, seed=1)
    assert second == "v0002"
    assert pipeline.models.refresh() is False  # not yet time to look
    assert pipeline.models.refresh(force=True) is True
    assert {d.model.version for d in pipeline.score(_txns(5), [0.0] * 5).decisions if d.model} == {"v0002"}
    third = factories.register_champion(tmp_path, seed=2)
    registry.promote(third, why="test")
    model_file = registry.versions_dir / third / "model.txt"
    model_file.write_bytes(model_file.read_bytes().replace(b"tree", b"TREE", 1))
    assert pipeline.models.refresh(force=True) is False  # refused: the current one keeps serving
    assert pipeline.models.scorer is not None and pipeline.models.scorer.version == "v0002"
    registry.rollback(why="back to v0002")
    assert pipeline.models.refresh(force=True) is False  # already serving it


class _DownStore:
    def raw(self, txns: Any) -> list[Any]:
        raise StoreUnavailableError("Redis unavailable: test")


@pytest.mark.parametrize(
    ("fallback", "expected"), [("fail_open", ["approve", "review"]), ("fail_closed", ["review"] * 2)]
)
def test_degraded_decisions_follow_the_fallback_policy(champion_dir: Path, fallback: str, expected: list[str]) -> None:
    pipeline = _pipeline(champion_dir, _DownStore(), fallback=fallback, fallback_review_amount=100.0)
    txns = [factories.transaction(txn_id="small", amount=20.0), factories.transaction(txn_id="large", amount=500.0)]
    batch = pipeline.score(txns, [0.0, 0.0])
    assert [d.decision for d in batch.decisions] == expected
    assert all(d.degraded and d.score is None and d.features == {} for d in batch.decisions)
    assert [a.txn_id for a in batch.alerts] == [d.txn_id for d in batch.decisions if d.decision != "approve"]
    assert batch.unapplied == txns
