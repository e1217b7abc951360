"""A batch's outputs (:mod:`streams.outputs`): the messages read back, through the contracts, as the events pydantic
builds from the same values (floats exact, times in UTC, missing values, rules and contributions, degraded batches),
the writing structs mirror the contracts, and the decision log's rows are the same built per flush as per batch."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from features.definitions import FEATURE_NAMES
from fraudpipe import contracts
from fraudpipe.codec import decode
from fraudpipe.contracts import Alert, Contribution, Decision, ModelRef, RuleReason, Thresholds
from models.scorer import OUTCOMES, Fired
from streams.outputs import (
    MESSAGE_STRUCTS,
    Decided,
    LogPart,
    alert_messages,
    decision_messages,
    decision_rows,
    reason_texts,
)
from tests import factories

SHA = "ab" * 32


def _decided(n: int, seed: int, *, degraded: bool = False) -> Decided:
    rng = np.random.default_rng(seed)
    t0 = datetime(2024, 3, 1, 23, 59, 59, 999_999, tzinfo=UTC)
    txns = [factories.transaction(txn_id=f"t-{seed}-{i}", amount=round(float(rng.random()) * 1e4 + 0.01, 2),
                                  event_time=(t0 + timedelta(microseconds=int(rng.integers(0, 10**12)))).isoformat())
            for i in range(n)]  # fmt: skip
    scores = rng.random(n) ** 7
    scores[:4] = [0.0, 1.0, 5e-324, np.nan][: min(n, 4)]
    matrix = rng.normal(size=(n, len(FEATURE_NAMES))) * 1e3
    matrix[rng.random(matrix.shape) < 0.2] = np.nan
    level = rng.integers(0, 3, n).astype(np.int8)
    rule = Fired("known_fraud_30d", rng.random(n) < 0.5, rng.integers(0, 3, n).astype(np.float64), 1.0)
    explained = {i: factories.REASONS[:1] for i in range(n) if i % 2}
    versions = [None if i % 5 == 4 else "v0003" for i in range(n)]
    return Decided(txns=txns, decided_at=t0 + timedelta(microseconds=7), latency_ms=rng.random(n) * 30,
                   matrix=None if degraded else matrix, scores=np.full(n, np.nan) if degraded else scores, level=level,
                   versions=versions, sha256s=[None if v is None else SHA for v in versions], review=0.25,
                   decline=0.75, reasons=reason_texts(level > 0, (rule,), explained), degraded=degraded)  # fmt: skip


def _expected_reasons(d: Decided, i: int) -> list[Contribution | RuleReason]:
    return [RuleReason.model_validate(code) if code["kind"] == "rule" else Contribution.model_validate(code)
            for code in json.loads(d.reasons[i])]  # fmt: skip


def _score(d: Decided, i: int) -> float | None:
    return None if np.isnan(d.scores[i]) else float(d.scores[i])


def _model(d: Decided, i: int) -> ModelRef | None:
    version = d.versions[i]
    return None if version is None else ModelRef(version=version, sha256=SHA)


@pytest.mark.parametrize("degraded", [False, True])
def test_each_message_reads_back_as_the_event_pydantic_builds(degraded: bool) -> None:
    d = _decided(60, seed=7, degraded=degraded)
    messages = decision_messages(d)
    assert [key for key, _ in messages] == [t.card_token.encode() for t in d.txns]
    for i, (_, value) in enumerate(messages):
        txn = d.txns[i]
        features = (
            {}
            if d.matrix is None
            else {name: None if np.isnan(v) else float(v) for name, v in zip(FEATURE_NAMES, d.matrix[i], strict=True)}
        )
        expected = Decision(
            txn_id=txn.txn_id, card_token=txn.card_token, event_time=txn.event_time, decided_at=d.decided_at,
            amount=txn.amount, currency=txn.currency, features=features, model=_model(d, i), score=_score(d, i),
            decision=OUTCOMES[d.level[i]], thresholds=Thresholds(review=0.25, decline=0.75),
            reason_codes=_expected_reasons(d, i), latency_ms=float(d.latency_ms[i]), degraded=degraded,
        )  # fmt: skip
        assert decode(value, Decision) == expected
    alerts = alert_messages(d)
    raised = [i for i in range(len(d.txns)) if d.level[i] > 0]
    assert len(alerts) == len(raised) > 0
    for i, (key, value) in zip(raised, alerts, strict=True):
        txn = d.txns[i]
        expected_alert = Alert(
            alert_id=Alert.id_for(txn.txn_id), txn_id=txn.txn_id, card_token=txn.card_token,
            card_last4=txn.card_last4, event_time=txn.event_time, raised_at=d.decided_at, amount=txn.amount,
            currency=txn.currency, terminal_id=txn.terminal_id, merchant_id=txn.merchant_id,
            decision=OUTCOMES[d.level[i]], score=_score(d, i), model=_model(d, i), reason_codes=_expected_reasons(d, i),
            degraded=degraded,
        )  # fmt: skip
        assert key == txn.card_token.encode() and decode(value, Alert) == expected_alert
    assert b"NaN" not in b"".join(v for _, v in messages + alerts)


def test_the_writing_structs_mirror_the_contracts() -> None:
    for name, struct in MESSAGE_STRUCTS.items():
        assert struct.__struct_fields__ == tuple(getattr(contracts, name).model_fields), name


def test_reason_codes_are_rules_then_contributions_within_the_bound() -> None:
    many = [Fired(f"rule_{k}", np.array([True, True, False]), np.array([1.0, np.nan, 0.0]), 2.0) for k in range(20)]
    texts = reason_texts(np.array([True, False, True]), many, {0: factories.REASONS, 2: factories.REASONS})
    first = json.loads(texts[0])
    assert len(first) == 16 and all(code["kind"] == "rule" for code in first)
    assert texts[1] == "[]"  # not alerting: no reasons, though the rules fired
    assert [code["kind"] for code in json.loads(texts[2])] == ["feature"] * 2


def test_log_rows_built_per_flush_equal_those_built_per_batch() -> None:
    parts = [LogPart.of(d) for d in (_decided(30, seed=1), _decided(5, seed=2, degraded=True), _decided(1, seed=3))]
    whole = decision_rows(parts)
    assert_frame_equal(whole, pl.concat([decision_rows([part]) for part in parts]))
    assert all(part.decided.txns == () for part in parts)  # the transactions are not kept while rows wait
    assert whole.height == 36 and whole["degraded"].sum() == 5
    assert whole.filter(pl.col("degraded"))["f_amount"].null_count() == 5
    assert decision_rows([]).height == 0 and decision_rows([]).schema == whole.schema
