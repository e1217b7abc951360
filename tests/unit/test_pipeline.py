"""The scoring pipeline with its in-memory twins (feature store, decision memory) and a real registry: one
decision per transaction (redeliveries republish it), alerts with reason codes, one model per batch with hot
swaps and refusals, and the degraded mode."""

from __future__ import annotations

import copy
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from features.definitions import FEATURE_NAMES
from features.memory import InMemoryFeatureStore
from features.store import StoreUnavailableError
from fraudpipe.audit import EVENT_COLUMNS
from fraudpipe.clock import FixedClock
from fraudpipe.contracts import Alert, Contribution, Decision, ModelRef, RuleReason, Thresholds, Transaction
from fraudpipe.settings import ScoringSettings
from models.registry import Registry
from streams.breaker import Breaker
from streams.outputs import LOG_SCHEMA
from streams.pipeline import Batch, InMemoryDecisionMemory, Models, Pipeline, Recalled
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
    assert [d.txn_id for d in batch.decisions()] == [t.txn_id for t in txns]
    assert all(d.model is not None and d.model.version == "v0001" for d in batch.decisions())
    assert all(set(d.features) == set(FEATURE_NAMES) and d.score is not None for d in batch.decisions())
    assert {a.txn_id for a in batch.alerts()} == {d.txn_id for d in batch.decisions() if d.decision != "approve"}
    assert batch.alerts() and all(a.alert_id == f"alert:{a.txn_id}" for a in batch.alerts())
    assert any(a.reason_codes for a in batch.alerts())
    assert all(c.direction == "raises" for a in batch.alerts() for c in a.reason_codes if isinstance(c, Contribution))
    assert all(not d.reason_codes for d in batch.decisions() if d.decision == "approve")


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
    assert [(d.txn_id, d.decision, d.score, d.model) for d in again.decisions()] == [
        (d.txn_id, d.decision, d.score, d.model) for d in first.decisions()
    ]


def test_the_alias_is_followed_between_batches_and_a_broken_version_refused(tmp_path: Path) -> None:
    factories.register_champion(tmp_path)
    pipeline = _pipeline(tmp_path)
    registry = Registry(tmp_path)
    second = factories.register_champion(tmp_path, seed=1)
    assert second == "v0002"
    assert pipeline.models.refresh() is False  # not yet time to look
    assert pipeline.models.refresh(force=True) is True
    assert {d.model.version for d in pipeline.score(_txns(5), [0.0] * 5).decisions() if d.model} == {"v0002"}
    third = factories.register_champion(tmp_path, seed=2)
    registry.promote(third, why="test")
    model_file = registry.versions_dir / third / "model.txt"
    model_file.write_bytes(model_file.read_bytes().replace(b"tree", b"TREE", 1))
    assert pipeline.models.refresh(force=True) is False  # refused: the current one keeps serving
    assert pipeline.models.scorer is not None and pipeline.models.scorer.version == "v0002"
    registry.rollback(why="back to v0002")
    assert pipeline.models.refresh(force=True) is False  # already serving it


class _DownStore(InMemoryFeatureStore):
    def raw(self, txns: Any) -> Any:
        raise StoreUnavailableError("Redis unavailable: test")


@pytest.mark.parametrize(
    ("fallback", "expected"), [("fail_open", ["approve", "review"]), ("fail_closed", ["review"] * 2)]
)
def test_degraded_decisions_follow_the_fallback_policy(champion_dir: Path, fallback: str, expected: list[str]) -> None:
    pipeline = _pipeline(champion_dir, _DownStore(), fallback=fallback, fallback_review_amount=100.0)
    txns = [factories.transaction(txn_id="small", amount=20.0), factories.transaction(txn_id="large", amount=500.0)]
    batch = pipeline.score(txns, [0.0, 0.0])
    assert [d.decision for d in batch.decisions()] == expected
    assert all(d.degraded and d.score is None and d.features == {} for d in batch.decisions())
    assert [a.txn_id for a in batch.alerts()] == [d.txn_id for d in batch.decisions() if d.decision != "approve"]
    assert batch.unapplied == txns


def test_a_reused_id_with_other_content_is_refused_and_touches_no_state(champion_dir: Path) -> None:
    store = InMemoryFeatureStore()
    pipeline = _pipeline(champion_dir, store)
    small = factories.transaction(txn_id="t-reused", card_token="tok_a", amount=10.0, event_time=T0.isoformat())
    first = pipeline.score([small], [0.0])
    assert [d.txn_id for d in first.decisions()] == ["t-reused"] and not first.conflicts
    # The same id: another card, another amount, a day later; and the same id again within one batch.
    big = factories.transaction(txn_id="t-reused", card_token="tok_b", amount=999_999.0,
                                event_time=(T0 + timedelta(days=1)).isoformat())  # fmt: skip
    state = copy.deepcopy(store.values)
    batch = pipeline.score([big, small], [0.0, 0.0])
    assert batch.conflicts == [big]
    assert [d.txn_id for d in batch.decisions()] == ["t-reused"] and batch.redelivered == 1
    assert batch.decisions()[0].amount == 10.0 and batch.decisions()[0].decision == first.decisions()[0].decision
    assert store.values == state  # the refused payment applied nothing: tok_b never saw it


def test_within_a_batch_the_first_of_two_same_ids_wins(champion_dir: Path) -> None:
    pipeline = _pipeline(champion_dir)
    one = factories.transaction(txn_id="t-twice", card_token="tok_a", amount=10.0, event_time=T0.isoformat())
    other = factories.transaction(txn_id="t-twice", card_token="tok_a", amount=5_000.0, event_time=T0.isoformat())
    batch = pipeline.score([one, other, one], [0.0] * 3)
    assert batch.conflicts == [other]
    assert [d.amount for d in batch.decisions()] == [10.0, 10.0]
    assert batch.decisions()[0].decision == batch.decisions()[1].decision
    assert batch.decisions()[0].score == batch.decisions()[1].score and batch.redelivered == 1
    assert batch.fresh == [0]


class _CountingStore(InMemoryFeatureStore):
    def __init__(self) -> None:
        super().__init__()
        self.applied: list[list[str]] = []  # the ids of each call, in the order the store applied them

    def raw(self, txns: Any) -> Any:
        self.applied.append([t.txn_id for t in txns])
        return super().raw(txns)


def _decided(batch: Batch) -> list[tuple[str, str, float | None]]:
    return [(d.txn_id, d.decision, d.score) for d in batch.decisions()]


def test_the_next_batch_begun_ahead_is_decided_as_if_scored_alone(champion_dir: Path) -> None:
    txns = _txns(24)
    first, second, third = txns[:8], txns[8:16], txns[16:]
    alone = _pipeline(champion_dir)
    expected = [_decided(alone.score(b, [0.0] * len(b))) for b in (first, second, third)]
    store = _CountingStore()
    ahead = _pipeline(champion_dir, store)
    got = [_decided(ahead.score(first, [0.0] * 8, then=second)),
           _decided(ahead.score(second, [0.0] * 8, then=third)),
           _decided(ahead.score(third, [0.0] * 8))]  # fmt: skip
    assert got == expected
    assert store.applied == [[t.txn_id for t in b] for b in (first, second, third)]  # each batch sent once


def test_a_batch_other_than_the_one_begun_gives_it_up(champion_dir: Path) -> None:
    txns = _txns(16)
    store = _CountingStore()
    pipeline = _pipeline(champion_dir, store)
    pipeline.score(txns[:8], [0.0] * 8, then=txns[8:])
    single = pipeline.score(txns[8:9], [0.0])  # e.g. the batch scored one by one after an error
    assert [d.txn_id for d in single.decisions()] == ["t-8"]
    rest = pipeline.score(txns[8:], [0.0] * 8)  # begun again: applied once already, read, not applied twice
    assert [d.txn_id for d in rest.decisions()] == [t.txn_id for t in txns[8:]]
    assert len(store.applied) == 4 and store.applied[-1] == [t.txn_id for t in txns[8:]]


def test_a_failure_in_the_next_batchs_store_call_is_met_by_that_batch(champion_dir: Path) -> None:
    class Failing(InMemoryFeatureStore):
        def raw(self, txns: Any) -> Any:
            if any(t.txn_id == "t-9" for t in txns):
                raise RuntimeError("a bug in feature code")
            return super().raw(txns)

    txns = _txns(16)
    pipeline = _pipeline(champion_dir, Failing())
    assert len(pipeline.score(txns[:8], [0.0] * 8, then=txns[8:]).decisions()) == 8  # this batch goes on
    with pytest.raises(RuntimeError, match="a bug"):  # the worker then scores that batch one by one
        pipeline.score(txns[8:], [0.0] * 8)


def test_the_batch_begun_ahead_reads_the_memory_after_this_one_is_remembered(champion_dir: Path) -> None:
    store = InMemoryFeatureStore()
    pipeline = _pipeline(champion_dir, store)
    small = factories.transaction(txn_id="t-reused", card_token="tok_a", amount=10.0, event_time=T0.isoformat())
    again = [factories.transaction(txn_id="t-reused", card_token="tok_a", amount=10.0, event_time=T0.isoformat())]
    first = pipeline.score([small], [0.0], then=again)
    batch = pipeline.score(again, [0.0])
    assert _decided(batch) == _decided(first) and batch.redelivered == 1  # the same content: the same decision
    reused = [factories.transaction(txn_id="t-reused", card_token="tok_b", amount=999_999.0,
                                    event_time=(T0 + timedelta(days=1)).isoformat())]  # fmt: skip
    pipeline.score(_txns(1), [0.0], then=reused)
    refused = pipeline.score(reused, [0.0])
    assert refused.conflicts == reused and not refused.decisions()
    assert not [key for key in store.values if "tok_b" in key]  # refused before its store call: no state


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
        assert all(d.degraded for d in pipeline.score(txns, [0.0] * 3).decisions())
    assert store.calls == 2  # the third batch onwards did not wait for Redis
    store.down = False
    clock.advance(5.0)
    batch = pipeline.score(txns, [0.0] * 3)  # the trial goes through and closes the breaker
    assert store.calls == 3 and not any(d.degraded for d in batch.decisions())
    assert pipeline.breaker.state == "closed"


# --- the column-wise outputs against the contracts ------------------------------------------------------------


def _realistic(champion_dir: Path) -> tuple[Pipeline, list[Transaction], Batch, list[int]]:
    """A batch with every kind of decision: approvals, reviews forced by each rule alone, alerts made by the score
    (with and without a rule), and redeliveries; the pipeline counts the rows it explains."""
    history = _txns(60)
    later = [factories.transaction(txn_id=f"u-{i}", card_token=f"tok_card{i % 7}", amount=15.0 + 3 * i,
                                   event_time=(T0 + timedelta(minutes=i)).isoformat()) for i in range(30)]  # fmt: skip
    fraud = factories.label(txn_id="t-0", card_token="tok_card0", event_time=history[0].event_time,
                            known_at=T0 - timedelta(minutes=30))  # fmt: skip

    def run(**scoring: Any) -> tuple[Pipeline, Batch]:
        store = InMemoryFeatureStore()
        rules = ("known_fraud_30d", {"id": "large_amount", "threshold": 70.0})
        pipeline = _pipeline(champion_dir, store, thresholds_from="settings", reason_codes=2, rules=rules, **scoring)
        pipeline.score(history, [0.0] * len(history))
        store.apply_labels([fraud])
        return pipeline, pipeline.score(later + history[:5], [-0.25] * 35)  # the last five: redelivered

    decided = run()[1].decisions()[:30]
    scores = sorted(d.score for d in decided if d.score is not None)
    # a review threshold above one large payment's score and one of the fraud card's: each rule forces one alone
    large = min(d.score for d in decided if d.amount >= 70.0 and d.score is not None)
    known = min(d.score for d in decided if d.card_token == "tok_card0" and d.score is not None)
    review = max(large, known, scores[20]) + 1e-12
    assert review < scores[-1]  # and the score makes some alerts
    pipeline, _ = run(review_threshold=review, decline_threshold=max(review, scores[27]))
    explained: list[int] = []
    scorer = pipeline.models.scorer
    assert scorer is not None
    explain = scorer.explain

    def counting(matrix: Any, top: int = 3) -> Any:
        explained.append(len(matrix))
        return explain(matrix, top)

    store = InMemoryFeatureStore()
    pipeline.store = store
    pipeline.memory = InMemoryDecisionMemory()
    pipeline.score(history, [0.0] * len(history))
    store.apply_labels([fraud])
    scorer.explain = counting  # type: ignore[method-assign]
    txns = later + history[:5]
    return pipeline, txns, pipeline.score(txns, [-0.25] * len(txns)), explained


def _expected(pipeline: Pipeline, txns: list[Transaction], batch: Batch) -> list[Decision]:
    """What the per-event path built for each decision (pydantic objects), with the reason rule of this change:
    the rules that fired on an alert, then SHAP contributions when its score crossed the review threshold."""
    scorer = pipeline.models.scorer
    assert scorer is not None and batch.matrix is not None
    policy = pipeline._policy(scorer)
    by_id = {d.txn_id: d for d in batch.decisions()}  # scores and outcomes of redeliveries come from memory
    out = []
    for k, txn in enumerate(txns):
        row = batch.matrix[k]
        served = by_id[txn.txn_id]
        score = served.score
        assert score is not None
        reasons: list[Contribution | RuleReason] = []
        blocking = any(rule.id == "card_blocked" for rule in pipeline.scoring.rules)
        large = next((rule.threshold for rule in pipeline.scoring.rules if rule.id == "large_amount"), None)
        if served.decision != "approve" and blocking and pipeline.store.blocked(txn.card_token):  # type: ignore[attr-defined]
            reasons.append(RuleReason(rule="card_blocked"))
        elif served.decision != "approve":
            frauds, amount = float(np.nan_to_num(row[FEATURE_NAMES.index("card_fraud_count_30d")])), row[0]
            if frauds >= 1:
                reasons.append(RuleReason(rule="known_fraud_30d", value=frauds, threshold=1.0))
            if large is not None and amount >= large:
                reasons.append(RuleReason(rule="large_amount", value=amount, threshold=large))
            if score >= policy.review:
                reasons += scorer.explain(row[None, :], pipeline.scoring.reason_codes)[0]
        out.append(
            Decision(
                txn_id=txn.txn_id, card_token=txn.card_token, event_time=txn.event_time, decided_at=T0,
                amount=txn.amount, currency=txn.currency,
                features={n: (None if math.isnan(v) else v) for n, v in zip(FEATURE_NAMES, row.tolist(), strict=True)},
                model=ModelRef(version=scorer.version, sha256=scorer.model.sha256), score=score,
                decision=served.decision, thresholds=Thresholds(review=policy.review, decline=policy.decline),
                reason_codes=reasons, latency_ms=250.0,
            )
        )  # fmt: skip
    return out


def test_every_encoded_message_is_the_contract_event_the_per_event_path_built(champion_dir: Path) -> None:
    pipeline, txns, batch, _ = _realistic(champion_dir)
    decisions = batch.decisions()
    assert [d.txn_id for d in decisions] == [t.txn_id for t in txns] == batch.txn_ids
    assert [key for key, _ in batch.decision_messages] == [t.card_token.encode() for t in txns]
    assert [d.model_dump() for d in decisions] == [d.model_dump() for d in _expected(pipeline, txns, batch)]
    alerts = batch.alerts()
    assert [a.txn_id for a in alerts] == [d.txn_id for d in decisions if d.decision != "approve"]
    by_id = {t.txn_id: t for t in txns}
    for alert, decision in zip(alerts, (d for d in decisions if d.decision != "approve"), strict=True):
        txn = by_id[alert.txn_id]
        assert alert == Alert(
            alert_id=Alert.id_for(txn.txn_id), txn_id=txn.txn_id, card_token=txn.card_token,
            card_last4=txn.card_last4, event_time=txn.event_time, raised_at=decision.decided_at, amount=txn.amount,
            currency=txn.currency, terminal_id=txn.terminal_id, merchant_id=txn.merchant_id,
            decision=decision.decision, score=decision.score, model=decision.model,
            reason_codes=decision.reason_codes, degraded=False,
        )  # fmt: skip
    assert batch.outcomes == {o: sum(d.decision == o for d in decisions) for o in {d.decision for d in decisions}}
    assert batch.redelivered == 5 and batch.degraded == 0


def test_rules_are_reasons_and_only_score_made_alerts_are_explained(champion_dir: Path) -> None:
    pipeline, _, batch, explained = _realistic(champion_dir)
    policy = pipeline._policy(pipeline.models.scorer)  # type: ignore[arg-type]
    kinds = {}
    for d in batch.decisions():
        assert d.score is not None
        rules = [c.rule for c in d.reason_codes if isinstance(c, RuleReason)]
        shap = [c for c in d.reason_codes if isinstance(c, Contribution)]
        assert [c.kind for c in d.reason_codes] == ["rule"] * len(rules) + ["feature"] * len(shap)  # rules first
        assert (d.score >= policy.review) == bool(shap) or d.decision == "approve"
        assert bool(rules or shap) == (d.decision != "approve")
        kinds[d.decision, tuple(rules), bool(shap)] = True
    assert ("review", ("known_fraud_30d",), False) in kinds  # forced by a rule alone: the rule, no SHAP
    assert ("review", ("large_amount",), False) in kinds
    assert any(shap for (_, _, shap) in kinds)
    assert sum(explained) == sum(1 for d in batch.decisions() if d.score is not None and d.score >= policy.review)


def test_the_decision_log_rows_are_the_decisions_as_served(champion_dir: Path) -> None:
    _, txns, batch, _ = _realistic(champion_dir)
    rows = batch.log_rows
    assert rows.schema == LOG_SCHEMA
    for row, decision, txn in zip(rows.iter_rows(named=True), batch.decisions(), txns, strict=True):
        assert row["txn_id"] == decision.txn_id and row["decision"] == decision.decision
        assert row["score"] == decision.score and row["decided_at"] == decision.decided_at
        assert row["model_version"] == decision.model.version  # type: ignore[union-attr]
        assert json.loads(row["reason_codes"]) == [c.model_dump(mode="json") for c in decision.reason_codes]
        assert {n: row[f"f_{n}"] for n in FEATURE_NAMES} == decision.features
        assert {n: row[n] for n in EVENT_COLUMNS} == {n: getattr(txn, n) for n in EVENT_COLUMNS}


def test_degraded_decisions_name_the_fallback_rule(champion_dir: Path) -> None:
    txns = [factories.transaction(txn_id="small", amount=20.0), factories.transaction(txn_id="large", amount=500.0)]
    open_ = _pipeline(champion_dir, _DownStore(), fallback="fail_open", fallback_review_amount=100.0)
    small, large = open_.score(txns, [0.0, 0.0]).decisions()
    assert small.reason_codes == []
    assert large.reason_codes == [RuleReason(rule="fallback_large_amount", value=500.0, threshold=100.0)]
    closed = _pipeline(champion_dir, _DownStore(), fallback="fail_closed")
    batch = closed.score(txns, [0.0, 0.0])
    assert [d.reason_codes for d in batch.decisions()] == [[RuleReason(rule="fallback_fail_closed")]] * 2
    assert batch.degraded == 2 and batch.log_rows.get_column("degraded").all()


# --- the decision memory ----------------------------------------------------------------------------------------


def test_a_remembered_decision_packs_small_and_reads_back() -> None:
    value = Recalled.pack(2, 0.8125, "v0007", "0f" * 16)
    assert len(value) == 25 + len("v0007")
    assert Recalled.loads(value) == Recalled("decline", 0.8125, "v0007", None, "0f" * 16)
    assert Recalled.loads(Recalled.pack(1, math.nan, None, "ab" * 16)) == Recalled("review", None, None, None,
                                                                                   "ab" * 16)  # fmt: skip
    before = json.dumps(["review", 0.5, "v0001", "cd" * 32, "ab" * 16])  # written before this format
    assert Recalled.loads(before) == Recalled("review", 0.5, "v0001", "cd" * 32, "ab" * 16)
    blocked = Recalled.loads(Recalled.pack(2, 0.25, "v0001", "cd" * 16, blocked=True))
    assert blocked == Recalled("decline", 0.25, "v0001", None, "cd" * 16, blocked=True)
    assert Recalled.loads(blocked.dumps()) == blocked


def test_a_redelivery_after_a_model_swap_keeps_the_first_model(tmp_path: Path) -> None:
    factories.register_champion(tmp_path)
    pipeline = _pipeline(tmp_path)
    txns = _txns(6)
    first = pipeline.score(txns, [0.0] * 6).decisions()
    factories.register_champion(tmp_path, seed=1)
    assert pipeline.models.refresh(force=True)
    again = pipeline.score(txns, [0.0] * 6).decisions()
    assert [(d.decision, d.score, d.model) for d in again] == [(d.decision, d.score, d.model) for d in first]
    assert {d.model.version for d in again if d.model} == {"v0001"}


def test_a_zero_amount_authorization_is_scored_like_any_payment(champion_dir: Path) -> None:
    """An account verification (amount 0.00, a classic card-testing probe) is a valid transaction: decided, with
    its features, and its messages are contract events (the card's amount ratio and z-score stay defined)."""
    pipeline = _pipeline(champion_dir)
    txns = [*_txns(6), factories.transaction(txn_id="probe", card_token="tok_card0", amount=0.0,
                                              event_time=T0.isoformat())]  # fmt: skip
    batch = pipeline.score(txns, [0.0] * len(txns))
    (probe,) = [d for d in batch.decisions() if d.txn_id == "probe"]
    assert probe.amount == 0.0 and probe.score is not None and not probe.degraded
    assert probe.features["amount"] == 0.0 and probe.features["card_amount_ratio_30d"] == 0.0
    assert all(math.isfinite(v) for v in probe.features.values() if v is not None)


def _fraud_on(store: InMemoryFeatureStore, txn: Transaction, *, fraud: bool = True, version: int = 1) -> None:
    store.apply_labels([factories.label(txn_id=txn.txn_id, card_token=txn.card_token, event_time=txn.event_time,
                                        known_at=T0 + timedelta(minutes=1), is_fraud=fraud, label_version=version,
                                        terminal_id=txn.terminal_id)])  # fmt: skip


def test_a_card_with_a_confirmed_fraud_is_declined_by_the_block_alone(champion_dir: Path) -> None:
    """Once a fraud on a card is confirmed, every later payment on it is declined with ``card_blocked`` only: no
    model explanation, no analyst alert, whatever the score; other cards are decided as before. A revision that
    clears the fraud lifts the block."""
    store = InMemoryFeatureStore()
    rules = ("card_blocked", "known_fraud_30d", {"id": "large_amount", "threshold": 1.0})
    pipeline = _pipeline(champion_dir, store, thresholds_from="settings", review_threshold=0.0, decline_threshold=0.99,
                         rules=rules)  # fmt: skip
    first = _txns(14)
    pipeline.score(first, [0.0] * len(first))
    _fraud_on(store, first[0])  # tok_card0
    assert store.blocked("tok_card0") == (first[0].txn_id,)
    later = [
        factories.transaction(txn_id=f"later-{i}", card_token=f"tok_card{i % 7}", amount=30.0,
                              event_time=(T0 + timedelta(minutes=i)).isoformat())
        for i in range(14)
    ]  # fmt: skip
    batch = pipeline.score(later, [0.0] * len(later))
    decisions = {d.txn_id: d for d in batch.decisions()}
    for txn in later:
        decision = decisions[txn.txn_id]
        if txn.card_token == "tok_card0":
            assert decision.decision == "decline"
            assert [(r.kind, r.rule) for r in decision.reason_codes] == [("rule", "card_blocked")]
        else:  # every payment is an alert here (review threshold 0): explained, with the amount rule
            assert decision.decision in ("review", "decline")
            assert "card_blocked" not in {getattr(r, "rule", None) for r in decision.reason_codes}
    alerted = {a.txn_id for a in batch.alerts()}
    assert alerted == {t.txn_id for t in later if t.card_token != "tok_card0"}

    _fraud_on(store, first[0], fraud=False, version=2)  # an analyst overturns it: the card is open again
    assert store.blocked("tok_card0") == ()
    again = factories.transaction(txn_id="after-revision", card_token="tok_card0", amount=30.0,
                                  event_time=(T0 + timedelta(hours=1)).isoformat())  # fmt: skip
    (decision,) = pipeline.score([again], [0.0]).decisions()
    assert "card_blocked" not in {getattr(r, "rule", None) for r in decision.reason_codes}


def test_a_block_lists_each_confirmed_fraud_once_and_goes_with_the_last(champion_dir: Path) -> None:
    store = InMemoryFeatureStore()
    txns = [factories.transaction(txn_id=f"b-{i}", card_token="tok_b", event_time=(T0 - timedelta(minutes=i))
                                  .isoformat()) for i in range(3)]  # fmt: skip
    store.raw(txns)
    _fraud_on(store, txns[0])
    _fraud_on(store, txns[0])  # a redelivered label: nothing changes
    _fraud_on(store, txns[1])
    assert store.blocked("tok_b") == ("b-0", "b-1")
    _fraud_on(store, txns[0], fraud=False, version=2)
    assert store.blocked("tok_b") == ("b-1",)
    _fraud_on(store, txns[1], fraud=False, version=2)
    assert store.blocked("tok_b") == () and f"{store.prefix}blocked:tok_b" not in store.values


def test_a_redelivery_is_decided_as_first_whatever_the_block_is_now(champion_dir: Path) -> None:
    """A payment declined because its card was blocked, delivered again after the block was lifted, is still a
    blocked card's decline (no alert); one approved before the block, delivered again once blocked, stays approved."""
    store = InMemoryFeatureStore()
    pipeline = _pipeline(champion_dir, store, thresholds_from="settings", review_threshold=0.99,
                         decline_threshold=0.999)  # fmt: skip
    history = _txns(7)  # one payment per card
    pipeline.score(history, [0.0] * 7)
    _fraud_on(store, history[0])  # tok_card0 blocked
    declined = factories.transaction(txn_id="while-blocked", card_token="tok_card0", event_time=T0.isoformat())
    approved = factories.transaction(txn_id="before-block", card_token="tok_card1", event_time=T0.isoformat())
    first = pipeline.score([declined, approved], [0.0, 0.0])
    assert [d.decision for d in first.decisions()] == ["decline", "approve"] and first.alerts() == []
    _fraud_on(store, history[0], fraud=False, version=2)  # tok_card0 open again
    _fraud_on(store, history[1])  # tok_card1 blocked now
    again = pipeline.score([declined, approved], [0.0, 0.0])
    assert [d.decision for d in again.decisions()] == ["decline", "approve"] and again.alerts() == []
    assert again.redelivered == 2
    assert again.decisions()[0].reason_codes == [RuleReason(rule="card_blocked")]
