"""The vectorized feature matrix equals the per-transaction formulas on the same store replies."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from features.batch import feature_matrix
from features.definitions import FEATURE_NAMES
from features.memory import InMemoryFeatureStore
from features.snapshot import REPLY_WIDTH, StoreReply, decode_reply
from fraudpipe.contracts import Label, Transaction
from fraudpipe.simulator.config import default
from fraudpipe.simulator.generate import simulate


def test_matrix_equals_formulas_batch_by_batch() -> None:
    _, days = simulate(default(days=20, customers=80, terminals=160, seed=2, drift={"start_day": 5}), b"k" * 32)
    history = list(days)
    frame = pl.concat([d.transactions for d in history]).drop("is_fraud", "fraud_scenario")
    txns = [Transaction.model_construct(**row) for row in frame.iter_rows(named=True)]
    labels = [Label.model_construct(**row) for row in pl.concat([d.labels for d in history]).iter_rows(named=True)]
    store = InMemoryFeatureStore()
    compared = 0
    for start in range(0, len(txns), 250):
        batch = txns[start : start + 250]
        store.apply_labels([label for label in labels if label.known_at <= batch[0].event_time])
        reply = store.raw(batch + batch[:3])  # with redeliveries
        expected = np.array(
            [[np.nan if x is None else x for x in s.features()] for s in decode_reply(reply, batch + batch[:3])]
        )
        got = feature_matrix(reply, batch + batch[:3])
        assert np.allclose(got, expected, rtol=1e-12, atol=0, equal_nan=True)
        compared += len(batch)
    assert compared == len(txns)


def test_an_empty_batch_and_a_bad_reply() -> None:
    empty = StoreReply.from_rows([], [])
    assert feature_matrix(empty, []).shape == (0, len(FEATURE_NAMES))
    with pytest.raises(ValueError, match="1 rows for 0 transactions"):
        feature_matrix(StoreReply.from_rows([[0] * REPLY_WIDTH], [[0.0] * 4]), [])
