"""From a store reply straight to the feature matrix of a micro-batch: the hot path's vectorized twin of
``[snapshot.features() for snapshot in decode_reply(reply, txns)]``.

Same rules as :mod:`features.formulas`, written over numpy columns (one pass per feature instead of one Python
call per transaction); a test holds the two equal. Missing values are NaN, as LightGBM reads them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from features.definitions import FEATURE_NAMES
from features.formulas import CARD_WINDOWS, FRAUD_WINDOWS, PLACE_WINDOWS, SQUARE_CAP_CENTS
from features.snapshot import CARD_WIDTH, PLACE_WIDTH, StoreReply
from fraudpipe.contracts import Transaction

__all__ = ["feature_matrix"]


def feature_matrix(reply: StoreReply, txns: Sequence[Transaction]) -> NDArray[np.float64]:
    """(len(txns), len(FEATURE_NAMES)) float64 matrix, FEATURE_NAMES order, NaN = missing."""
    n = len(txns)
    if len(reply) != n:
        raise ValueError(f"store reply has {len(reply)} rows for {n} transactions")
    out = np.full((n, len(FEATURE_NAMES)), np.nan)
    if n == 0:
        return out
    v = reply.values
    micros = np.array([round(t.event_time.timestamp() * 1_000_000) for t in txns], dtype=np.int64)
    epoch_s = micros / 1_000_000
    amount = np.array([t.amount for t in txns], dtype=np.float64)
    column = 0

    def put(values: NDArray[np.float64]) -> None:
        nonlocal column
        out[:, column] = values
        column += 1

    hours = (micros // 3_600_000_000) % 24
    weekday = (micros // 86_400_000_000 + 3) % 7  # 1970-01-01 was a Thursday: 0 = Monday
    channels = [t.channel for t in txns]
    put(amount)
    put(hours.astype(np.float64))
    put((weekday >= 5).astype(np.float64))
    put((hours <= 6).astype(np.float64))
    put(np.array([np.nan if c is None else float(c in {"ecommerce", "moto"}) for c in channels]))
    for i, _ in enumerate(CARD_WINDOWS):
        count, summed, squares = v[:, 1 + 3 * i], v[:, 2 + 3 * i], v[:, 3 + 3 * i]
        safe = np.maximum(count, 1)
        variance = _variance_numerator(count, summed, squares)
        put(count.astype(np.float64))
        put(summed / 100)
        put(np.where(count > 0, summed / safe / 100, np.nan))
        put(np.where(count >= 2, np.sqrt(variance) / safe / 100, np.nan))
    count, summed, squares = v[:, 10].copy(), v[:, 11].copy(), v[:, 12].copy()
    own = np.floor(np.abs(amount) * 100 + 0.5).astype(np.int64) * np.where(amount >= 0, 1, -1)
    holds = v[:, 13] == 1
    capped = np.minimum(np.abs(own), SQUARE_CAP_CENTS)
    count, summed, squares = count - holds, summed - own * holds, squares - capped * capped * holds
    mean = summed / np.maximum(count, 1)
    std = np.sqrt(_variance_numerator(count, summed, squares)) / np.maximum(count, 1)
    put(np.where((count >= 1) & (mean > 0), amount * 100 / np.where(mean > 0, mean, 1), np.nan))
    put(np.where((count >= 2) & (std > 0), (amount * 100 - mean) / np.where(std > 0, std, 1), np.nan))
    previous = reply.previous[:, 0] / 1_000_000
    put(np.where(np.isnan(previous), np.nan, np.maximum(0.0, epoch_s - np.nan_to_num(previous))))
    for slot in (15, 16, 17):
        put(np.where(v[:, slot] >= 0, v[:, slot].astype(np.float64), np.nan))
    put(_speed(txns, reply.previous, epoch_s))
    for slot in (18, 19):
        put(np.where(v[:, slot] >= 0, 1.0 - v[:, slot], np.nan))
    put(v[:, 14].astype(np.float64))
    for base in (CARD_WIDTH, CARD_WIDTH + PLACE_WIDTH):
        present = v[:, base] >= 0
        for j in range(len(PLACE_WINDOWS)):
            put(np.where(present, v[:, base + j].astype(np.float64), np.nan))
        for j in range(len(FRAUD_WINDOWS)):
            frauds, labelled = v[:, base + len(PLACE_WINDOWS) + 2 * j], v[:, base + len(PLACE_WINDOWS) + 2 * j + 1]
            put(np.where(present, np.where(labelled > 0, frauds / np.maximum(labelled, 1), 0.0), np.nan))
    return out


def _variance_numerator(count: NDArray[np.int64], summed: NDArray[np.int64],
                        squares: NDArray[np.int64]) -> NDArray[np.float64]:  # fmt: skip
    """max(count * squares - summed², 0), exactly (Python integers where int64 could overflow), as float64."""
    if np.all(count.astype(np.float64) * squares.astype(np.float64) < 2.0**62):
        return np.maximum(count * squares - summed * summed, 0).astype(np.float64)
    exact = [max(int(c) * int(q) - int(s) * int(s), 0) for c, s, q in zip(count, summed, squares, strict=True)]
    return np.array(exact, dtype=np.float64)


def _speed(
    txns: Sequence[Transaction], previous: NDArray[np.float64], epoch_s: NDArray[np.float64]
) -> NDArray[np.float64]:
    """km/h from the previous card-present payment, for card-present payments with geo (NaN otherwise)."""
    from features.formulas import haversine_km

    speeds = np.full(len(txns), np.nan)
    for i, txn in enumerate(txns):
        if txn.channel != "card_present" or txn.lat is None or txn.lon is None or np.isnan(previous[i, 1]):
            continue
        hours = max(abs(epoch_s[i] - previous[i, 1] / 1_000_000), 60.0) / 3_600
        speeds[i] = haversine_km(float(previous[i, 2]), float(previous[i, 3]), txn.lat, txn.lon) / hours
    return speeds
