"""The scoring pipeline with its in-memory twins (feature store, decision memory) and a real registry: one
decision per transaction (redeliveries republish it), alerts with reason codes, one model per batch with hot
swaps and refusals, and the degraded mode."""

from __future__ import annotations

import copy
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
from streams.breaker import Breaker
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


def test_a_reused_id_with_other_content_is_refused_and_touches_no_state(champion_dir: Path) -> None:
    store = InMemoryFeatureStore()
    pipeline = _pipeline(champion_dir, store)
    small = factories.transaction(txn_id="t-reused", card_token="tok_a", amount=10.0, event_time=T0.isoformat())
    first = pipeline.score([small], [0.0])
    assert [d.txn_id for d in first.decisions] == ["t-reused"] and not first.conflicts
    # The same id: another card, another amount, a day later; and the same id again within one batch.
    big = factories.transaction(txn_id="t-reused", card_token="tok_b", amount=999_999.0,
                                event_time=(T0 + timedelta(days=1)).isoformat())  # fmt: skip
    state = copy.deepcopy(store.values)
    batch = pipeline.score([big, small], [0.0, 0.0])
    assert batch.conflicts == [big]
    assert [d.txn_id for d in batch.decisions] == ["t-reused"] and batch.redelivered == 1
    assert batch.decisions[0].amount == 10.0 and batch.decisions[0].decision == first.decisions[0].decision
    assert store.values == state  # the refused payment applied nothing: tok_b never saw it


def test_within_a_batch_the_first_of_two_same_ids_wins(champion_dir: Path) -> None:
    pipeline = _pipeline(champion_dir)
    one = factories.transaction(txn_id="t-twice", card_token="tok_a", amount=10.0, event_time=T0.isoformat())
    other = factories.transaction(txn_id="t-twice", card_token="tok_a", amount=5_000.0, event_time=T0.isoformat())
    batch = pipeline.score([one, other, one], [0.0] * 3)
    assert batch.conflicts == [other]
    assert [d.amount for d in batch.decisions] == [10.0, 10.0]
    assert batch.decisions[0].decision == batch.decisions[1].decision
    assert batch.decisions[0].score == batch.decisions[1].score and batch.redelivered == 1
    assert batch.fresh == [0]


def test_an_open_breaker_degrades_at_once_and_a_trial_closes_it(champion_dir: Path) -> None:
    class FlakyStore(InMemoryFeatureStore):
        down = True
        calls = 0

        def raw(self, txns: Any) -> Any:
            self.calls += 1
            if self.down:
                raise StoreUnavailableError("Redis unavailable: test")
            return super().raw(txns)

    store = FlakyStore()
    pipeline = _pipeline(champion_dir, store, breaker_failures=2, breaker_cooldown_s=5.0)
    clock = pipeline.clock
    assert isinstance(clock, FixedClock)
    pipeline.breaker = Breaker(2, 5.0, clock)
    txns = _txns(3)
    for _ in range(5):
        assert all(d.degraded for d in pipeline.score(txns, [0.0] * 3).decisions)
    assert store.calls == 2  # the third batch onwards did not wait for Redis
    store.down = False
    clock.advance(5.0)
    batch = pipeline.score(txns, [0.0] * 3)  # the trial goes through and closes the breaker
    assert store.calls == 3 and not any(d.degraded for d in batch.decisions)
    assert pipeline.breaker.state == "closed"
