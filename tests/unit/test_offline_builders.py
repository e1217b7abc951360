"""The fast offline builder equals the sequential reference (the online store's twin), feature by feature."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from features.definitions import FEATURE_NAMES
from features.offline import build_features
from features.vectorized import build_features_fast
from fraudpipe.simulator.config import default, handbook
from fraudpipe.simulator.generate import simulate

KEY = b"offline-key-offline-key-offline!"


def _history(config: object) -> tuple[pl.DataFrame, pl.DataFrame]:
    _, days = simulate(config, KEY)  # type: ignore[arg-type]
    history = list(days)
    return pl.concat([d.transactions for d in history]), pl.concat([d.labels for d in history])


@pytest.mark.parametrize(
    ("config", "delay"),
    [
        (default(days=25, customers=120, terminals=240, seed=5, drift={"start_day": 8}), timedelta(0)),
        # Full terminal density: many cards use more than 64 terminals, so eviction is exercised.
        (handbook(days=100, customers=50, terminals=10_000, seed=9), timedelta(days=1)),
    ],
    ids=["default-with-drift", "handbook-dense"],
)
def test_fast_builder_equals_the_reference(config: object, delay: timedelta) -> None:
    transactions, labels = _history(config)
    reference = build_features(transactions, labels, label_delay=delay)
    fast = build_features_fast(transactions, labels, label_delay=delay)
    assert fast.get_column("txn_id").to_list() == transactions.get_column("txn_id").to_list()
    expected, got = reference.drop("txn_id").to_numpy(), fast.drop("txn_id").to_numpy()
    for column, name in enumerate(FEATURE_NAMES):
        same = np.isclose(
            got[:, column].astype(float), expected[:, column].astype(float), rtol=1e-9, atol=0, equal_nan=True
        )
        assert same.all(), f"{name}: {(~same).sum()} rows differ"
    assert np.nanmax(expected[:, FEATURE_NAMES.index("terminal_fraud_rate_30d")].astype(float)) > 0


def test_input_order_is_kept_and_duplicates_are_refused() -> None:
    transactions, labels = _history(default(days=3, customers=30, terminals=60, seed=1))
    shuffled = transactions.sample(fraction=1.0, shuffle=True, seed=4)
    assert (
        build_features_fast(shuffled, labels).get_column("txn_id").to_list() == shuffled.get_column("txn_id").to_list()
    )
    with pytest.raises(ValueError, match="unique"):
        build_features_fast(pl.concat([transactions, transactions.head(1)]), labels)
