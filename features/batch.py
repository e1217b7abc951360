"""From a store reply straight to the feature matrix of a micro-batch: the hot path's vectorized twin of
``[snapshot.features() for snapshot in decode_reply(reply, txns)]``.

Same rules as :mod:`features.formulas`, written over numpy columns (one pass per feature instead of one Python
call per transaction); a test holds the two equal. Missing values are NaN, as LightGBM reads them. The transactions'
columns are read in C when the extension is built (``features/_replay.c``: ``columns``, the same attribute reads as
the planner), else in Python (:func:`columns`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from features.definitions import FEATURE_NAMES
from features.formulas import CARD_WINDOWS, FRAUD_WINDOWS, PLACE_WINDOWS, SQUARE_CAP_CENTS
from features.plan import micros_of, native
from features.snapshot import CARD_WIDTH, PLACE_WIDTH, StoreReply
from fraudpipe.contracts import Transaction

__all__ = ["columns", "feature_matrix"]

CHANNELS = (None, "card_present", "ecommerce", "moto", "atm")
"""Channel codes of :func:`columns`: the index in this tuple; any other channel is len(CHANNELS)."""
_CARD_PRESENT, _ECOMMERCE, _MOTO = 1, 2, 3
_MIN_TRAVEL_S = 60.0
_EARTH_KM = 6_371.0
Columns = tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.int8], NDArray[np.float64], NDArray[np.float64]]


def columns(txns: Sequence[Transaction], *, compiled: bool = True) -> Columns:
    """What the formulas read of each transaction, as columns: event time (int64 µs since the epoch), amount
    (float64, major units), channel (int8 code, :data:`CHANNELS`), latitude and longitude (float64, NaN: none)."""
    if compiled and native is not None:
        micros, amount, channel, lat, lon = native.columns(txns)
        return (np.frombuffer(micros, np.int64), np.frombuffer(amount, np.float64), np.frombuffer(channel, np.int8),
                np.frombuffer(lat, np.float64), np.frombuffer(lon, np.float64))  # fmt: skip
    code = {name: k for k, name in enumerate(CHANNELS)}
    return (
        np.array([micros_of(t.event_time) for t in txns], dtype=np.int64),
        np.array([t.amount for t in txns], dtype=np.float64),
        np.array([code.get(t.channel, len(CHANNELS)) for t in txns], dtype=np.int8),
        np.array([np.nan if t.lat is None else t.lat for t in txns], dtype=np.float64),
        np.array([np.nan if t.lon is None else t.lon for t in txns], dtype=np.float64),
    )


def feature_matrix(reply: StoreReply, txns: Sequence[Transaction], *, compiled: bool = True) -> NDArray[np.float64]:
    """(len(txns), len(FEATURE_NAMES)) float64 matrix, FEATURE_NAMES order, NaN = missing."""
    n = len(txns)
    if len(reply) != n:
        raise ValueError(f"store reply has {len(reply)} rows for {n} transactions")
    out = np.empty((n, len(FEATURE_NAMES)))
    if n == 0:
        return out
    v = reply.values
    micros, amount, channel, lat, lon = columns(txns, compiled=compiled)
    epoch_s = micros / 1_000_000
    column = 0

    def put(values: NDArray[np.float64]) -> None:
        nonlocal column
        out[:, column] = values
        column += 1

    hours = (micros // 3_600_000_000) % 24
    weekday = (micros // 86_400_000_000 + 3) % 7  # 1970-01-01 was a Thursday: 0 = Monday
    put(amount)
    put(hours.astype(np.float64))
    put((weekday >= 5).astype(np.float64))
    put((hours <= 6).astype(np.float64))
    put(np.where(channel == 0, np.nan, ((channel == _ECOMMERCE) | (channel == _MOTO)).astype(np.float64)))
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
    put(_speed(channel, lat, lon, reply.previous, epoch_s))
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


def _speed(channel: NDArray[np.int8], lat: NDArray[np.float64], lon: NDArray[np.float64],
           previous: NDArray[np.float64], epoch_s: NDArray[np.float64]) -> NDArray[np.float64]:  # fmt: skip
    """km/h from the previous card-present payment (µs, lat, lon in ``previous[:, 1:]``), for card-present payments
    with geo (NaN otherwise): :func:`features.formulas.haversine_km` over columns."""
    known = (channel == _CARD_PRESENT) & ~np.isnan(lat) & ~np.isnan(lon) & ~np.isnan(previous[:, 1])
    p1, p2 = np.radians(previous[:, 2]), np.radians(lat)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon - previous[:, 3]) / 2) ** 2
    km = 2 * _EARTH_KM * np.arcsin(np.sqrt(np.minimum(1.0, np.nan_to_num(a))))
    hours = np.maximum(np.abs(epoch_s - previous[:, 1] / 1_000_000), _MIN_TRAVEL_S) / 3_600
    return np.where(known, km / hours, np.nan)
