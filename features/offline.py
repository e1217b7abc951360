"""The offline feature builder: point-in-time features for every transaction of a history.

History is replayed in the order the stream would deliver it — transactions by event time, each label before the
first transaction after its ``known_at`` (plus ``label_delay``, for evaluation protocols that pretend labels arrive
later) — through the in-memory twin of the online store, in micro-batches, and the same formulas turn snapshots
into features. Online and offline therefore share every rule by construction, and the parity tests hold the twin
equal to Redis. A feature never sees the future: a transaction's snapshot holds only what was applied before it
(and itself), and label-derived features only labels known before its event time.

Input rows must already satisfy the contract (simulator output, or files read through :mod:`fraudpipe.files`):
they are not validated again here.

Speed: this is the sequential reference (~270 µs per transaction here). For real histories use
:func:`features.vectorized.build_features_fast` (the handbook's 1.79M transactions in ~40 s), which a test holds
equal to this one feature by feature.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import numpy as np
import polars as pl

from features.definitions import FEATURE_NAMES
from features.memory import InMemoryFeatureStore
from fraudpipe.contracts import Label, Transaction

__all__ = ["build_features"]

_TRANSACTION_FIELDS = tuple(name for name in Transaction.model_fields if name != "schema_version")
_LABEL_FIELDS = ("txn_id", "card_token", "event_time", "known_at", "is_fraud", "source", "label_version",
                 "terminal_id", "merchant_id")  # fmt: skip


def _rows(frame: pl.DataFrame, fields: tuple[str, ...]) -> Iterator[dict[str, object]]:
    present = [name for name in fields if name in frame.columns]
    return frame.select(present).iter_rows(named=True)


def build_features(
    transactions: pl.DataFrame,
    labels: pl.DataFrame | None = None,
    *,
    label_delay: timedelta = timedelta(0),
    batch_size: int = 1_000,
    on_batch: Callable[[int], None] | None = None,
) -> pl.DataFrame:
    """``txn_id`` and every feature (FEATURE_NAMES order, Float64, null = missing) for each row of ``transactions``,
    in the input's order.

    ``transactions`` holds the contract's fields (``event_time`` timezone-aware); ``labels`` the Label fields.
    ``on_batch`` is called with the number of transactions done after each micro-batch.
    """
    order = transactions.with_row_index("_row").sort("event_time", "_row", maintain_order=True)
    txns = [Transaction.model_construct(**row) for row in _rows(order, _TRANSACTION_FIELDS)]  # type: ignore[arg-type]
    pending: list[Label] = []
    known_us = np.array([], dtype=np.int64)
    if labels is not None and labels.height:
        ordered = labels.with_columns(pl.col("known_at") + label_delay).sort("known_at", maintain_order=True)
        pending = [Label.model_construct(**row) for row in _rows(ordered, _LABEL_FIELDS)]  # type: ignore[arg-type]
        known_us = ordered.get_column("known_at").dt.epoch("us").to_numpy()
    event_us = order.get_column("event_time").dt.epoch("us").to_numpy()
    due = np.searchsorted(known_us, event_us, side="left")  # strictly before: never a label as old as the payment

    store = InMemoryFeatureStore()
    matrix = np.full((len(txns), len(FEATURE_NAMES)), np.nan)
    next_label = 0
    start = 0
    while start < len(txns):
        # A batch ends where a label becomes due, so each label is applied exactly when the stream would apply it.
        stop = min(start + batch_size, len(txns))
        if next_label < len(pending):
            stop = min(stop, max(start + 1, int(np.searchsorted(due, due[start], side="right"))))
        if next_label < due[start]:
            store.apply_labels(pending[next_label : int(due[start])])
            next_label = int(due[start])
        for offset, snapshot in enumerate(store.apply(txns[start:stop])):
            matrix[start + offset] = [np.nan if value is None else value for value in snapshot.features()]
        start = stop
        if on_batch is not None:
            on_batch(start)
    features = pl.DataFrame(matrix, schema=list(FEATURE_NAMES), orient="row").fill_nan(None)
    result = pl.concat([order.select("_row", "txn_id"), features], how="horizontal")
    return result.sort("_row").drop("_row")
