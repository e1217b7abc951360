"""Offline features equal online features: a simulated history replayed through real Redis (transactions by event
time, each label once its known_at has passed) gives, feature by feature, what the offline builder computes."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import redis

from features.backfill import backfill
from features.definitions import FEATURE_NAMES
from features.offline import build_features
from features.store import RedisFeatureStore
from fraudpipe.contracts import Label, Transaction
from fraudpipe.files import open_source
from fraudpipe.settings import Settings
from fraudpipe.simulator.config import default
from fraudpipe.simulator.generate import simulate
from fraudpipe.simulator.output import write_simulation

KEY = b"parity-key-parity-key-parity-key"


def test_offline_builder_equals_the_online_store(store_client: redis.Redis, settings: Settings) -> None:
    _, days = simulate(default(days=32, customers=90, terminals=180, seed=3), KEY)
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
        due = [label for label in pending[next_label:] if label.known_at < txn.event_time]
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


def test_a_pipelined_backfill_leaves_the_state_the_offline_builder_reaches(
    store_client: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    """`features backfill` pipelines its batches and applies each label between two streams: a payment after the
    history (one per card) then reads, feature by feature, what the offline builder gives it."""
    config = default(days=12, customers=60, terminals=120, seed=5)
    population, days = simulate(config, KEY)
    history = list(days)
    write_simulation(tmp_path / "sim", config, population, iter(history), overwrite=True)
    transactions = pl.concat([d.transactions for d in history])
    labels = pl.concat([d.labels for d in history])
    store = RedisFeatureStore(store_client, settings.redis.key_prefix)
    stats = backfill(open_source(tmp_path / "sim", {}, key=KEY, label_delay=timedelta(0)), store, batch_size=37)
    assert stats.applied == transactions.height and stats.labels > 10 and stats.later_labels > 0

    last = transactions.get_column("event_time").max()
    probes = (
        transactions.sort("event_time")
        .unique("card_token", keep="last", maintain_order=True)
        .with_columns(
            pl.lit(last + timedelta(microseconds=1)).alias("event_time"), ("probe-" + pl.col("txn_id")).alias("txn_id")
        )
    )
    known = labels.filter(pl.col("known_at") <= last)  # what the backfill applied; later ones are the stream's
    offline = build_features(pl.concat([transactions, probes]), known).tail(probes.height)
    online = store.apply([Transaction.model_construct(**r) for r in probes.drop("is_fraud", "fraud_scenario")
                          .iter_rows(named=True)])  # fmt: skip
    expected = offline.drop("txn_id").to_numpy()
    got = np.array([[math.nan if v is None else v for v in s.features()] for s in online])
    assert np.allclose(got, expected, rtol=1e-9, atol=0, equal_nan=True)
    assert np.nanmax(expected[:, FEATURE_NAMES.index("card_fraud_count_30d")]) > 0  # labels did reach the probes
