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


@pytest.mark.parametrize("builder", [build_features, build_features_fast], ids=["reference", "fast"])
def test_a_label_is_seen_only_by_payments_after_it_is_known(builder: object) -> None:
    """A label known at a payment's very time is not seen by it (strict ``known_at < event_time``): with no delay a
    fraud never sees its own label; a payment a microsecond later does."""
    from tests import factories

    first = factories.transaction(txn_id="t1", event_time="2024-03-01T12:00:00Z")
    frame = pl.DataFrame([t.model_dump() for t in (
        first,
        factories.transaction(txn_id="t2", event_time="2024-03-01T13:00:00Z"),
        factories.transaction(txn_id="t3", event_time="2024-03-01T13:00:00.000001Z"),
    )]).drop("schema_version")  # fmt: skip
    known = frame.get_column("event_time")[1]
    label = factories.label(txn_id="t1", card_token=first.card_token, event_time=first.event_time, known_at=known,
                            terminal_id=first.terminal_id, merchant_id=first.merchant_id)  # fmt: skip
    labels = pl.DataFrame([label.model_dump()]).drop("schema_version")
    seen = builder(frame, labels).get_column("card_fraud_count_30d").to_list()  # type: ignore[operator]
    assert seen == [0, 0, 1]
    own = labels.with_columns(known_at=pl.col("event_time"))  # zero delay: known the instant it happened
    assert builder(frame, own).get_column("card_fraud_count_30d").to_list() == [0, 1, 1]  # type: ignore[operator]
