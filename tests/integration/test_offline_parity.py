"""Offline features equal online features: a simulated history replayed through real Redis (transactions by event
time, each label once its known_at has passed) gives, feature by feature, what the offline builder computes."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import redis

from features.definitions import FEATURE_NAMES
from features.offline import build_features
from features.store import RedisFeatureStore
from fraudpipe.contracts import Label, Transaction
from fraudpipe.settings import Settings
from fraudpipe.simulator.config import default
from fraudpipe.simulator.generate import simulate


def test_offline_builder_equals_the_online_store(store_client: redis.Redis, settings: Settings) -> None:
    _, days = simulate(default(days=32, customers=90, terminals=180, seed=3), b"parity-key-parity-key-parity-key")
    history = list(days)
    transactions = pl.concat([d.transactions for d in history])
    labels = pl.concat([d.labels for d in history])
    offline = build_features(transactions, labels, batch_size=97)

    store = RedisFeatureStore(store_client, settings.redis.key_prefix)
    txns = [
        Transaction.model_construct(**r) for r in transactions.drop("is_fraud", "fraud_scenario").iter_rows(named=True)
    ]
    pending = sorted(
        (Label.model_construct(**r) for r in labels.iter_rows(named=True)), key=lambda label: label.known_at
    )
    online: list[list[float | None]] = []
    next_label = 0
    for txn in sorted(txns, key=lambda t: t.event_time):
        due = [label for label in pending[next_label:] if label.known_at <= txn.event_time]
        next_label += len(due)
        store.apply_labels(due)
        online += [s.features() for s in store.apply([txn])]

    expected = offline.drop("txn_id").to_numpy()
    got = np.array([[math.nan if v is None else v for v in row] for row in online])
    assert offline.height == len(online) == transactions.height
    mismatched = [
        (FEATURE_NAMES[col], int(row))
        for col in range(len(FEATURE_NAMES))
        for row in np.flatnonzero(~np.isclose(got[:, col], expected[:, col], rtol=1e-9, atol=0, equal_nan=True))
    ]
    assert not mismatched, mismatched[:10]
    assert np.nanmax(expected[:, FEATURE_NAMES.index("terminal_fraud_rate_30d")]) > 0  # labels did reach features
