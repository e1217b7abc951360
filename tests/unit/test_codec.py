"""The column-wise encoder: one contract event per row of a frame, read back by the contract as the event pydantic
builds from the same values (floats exact, times in UTC, nulls, nested events, pre-encoded JSON)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from fraudpipe.codec import decode, encode, encode_many
from fraudpipe.contracts import Decision, ModelRef, RuleReason, Thresholds
from tests import factories


def _frame(scores: list[float | None], times: list[datetime], reasons: list[str]) -> pl.DataFrame:
    n = len(scores)
    model = pl.struct(schema_version=pl.lit(1), version=pl.lit("v0003"), sha256=pl.lit("ab" * 32))
    return pl.DataFrame(
        {
            "txn_id": [f"t-{i}" for i in range(n)],
            "card_token": ["tok_a"] * n,
            "event_time": pl.Series(times, dtype=pl.Datetime("us", "UTC")),
            "decided_at": pl.Series(times, dtype=pl.Datetime("us", "UTC")),
            "amount": [12.34] * n,
            "currency": ["EUR"] * n,
            "features": ['{"amount":12.34,"card_count_1h":null}'] * n,
            "score": pl.Series(scores, dtype=pl.Float64),
            "decision": ["review"] * n,
            "latency_ms": [0.5] * n,
            "reason_codes": reasons,
        }
    ).with_columns(
        pl.when(pl.col("score").is_not_null()).then(model).alias("model"),
        pl.struct(review=pl.lit(0.25), decline=pl.lit(0.75)).alias("thresholds"),
    )


def test_each_row_reads_back_as_the_event_pydantic_builds() -> None:
    rng = np.random.default_rng(7)
    scores: list[float | None] = [float(s) for s in rng.random(200) ** 7] + [None, 0.0, 1.0, 5e-324, 1e-300]
    t0 = datetime(2024, 3, 1, 23, 59, 59, 999_999, tzinfo=UTC)
    times = [t0 + timedelta(microseconds=int(x)) for x in rng.integers(0, 10**12, len(scores))]
    rule = RuleReason(rule="known_fraud_30d", value=1.0, threshold=1.0)
    texts = [json.dumps([rule.model_dump(mode="json")]) if i % 3 else "[]" for i in range(len(scores))]
    encoded = encode_many(_frame(scores, times, texts), Decision, raw=("features", "reason_codes"))
    for i, value in enumerate(encoded):
        expected = Decision(
            txn_id=f"t-{i}", card_token="tok_a", event_time=times[i], decided_at=times[i], amount=12.34,
            currency="EUR", features={"amount": 12.34, "card_count_1h": None},
            model=None if scores[i] is None else ModelRef(version="v0003", sha256="ab" * 32), score=scores[i],
            decision="review", thresholds=Thresholds(review=0.25, decline=0.75),
            reason_codes=[rule] if i % 3 else [], latency_ms=0.5,
        )  # fmt: skip
        assert decode(value, Decision) == expected
    assert encoded[0].startswith(b'{"schema_version":1,') and b"NaN" not in b"".join(encoded)


def test_a_frame_that_is_not_the_contract_is_refused() -> None:
    frame = pl.DataFrame({"txn_id": ["a"], "nonsense": [1]})
    with pytest.raises(ValueError, match="unknown \\['nonsense'\\]"):
        encode_many(frame, Decision)
    assert encode_many(_frame([], [], []), Decision, raw=("features", "reason_codes")) == []


def test_encode_stays_the_canonical_form() -> None:
    assert encode(factories.decision()).startswith(b'{"schema_version":1,"txn_id":"txn-000001","card_token":')
