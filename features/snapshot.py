"""A store's answer for a batch (:class:`StoreReply`), and decoding it into per-transaction snapshots.

Shared by the Redis store and its in-memory twin, which return the very same values. ``StoreReply.values`` has
REPLY_WIDTH integers per transaction, in order: applied; card (count, cents, cents²) for 1h, 24h, 7d, 30d;
holds_payment; frauds_30d; distinct terminals / merchants / countries in 24h (-1: the payment has none); device
seen, terminal seen (-1 / 0 / 1); terminal payments 1d, 7d, 30d, then for each of FRAUD_WINDOWS (1d, 7d, 30d) ending
LABEL_DELAY_DAYS earlier: known frauds, payments (-1 without a terminal); the same nine for the merchant.
``StoreReply.previous`` has, per transaction, the previous payment's time (µs) and the previous card-present
payment's time (µs), latitude and longitude (NaN: none). ``StoreReply.blocked`` names the batch's blocked cards
(token -> the ids of the transactions whose confirmed fraud blocks it), as they were before the batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from features.formulas import CARD_WINDOWS, FRAUD_WINDOWS, PLACE_WINDOWS, CardSnapshot, Payment, PlaceSnapshot, compute
from fraudpipe.contracts import Transaction

__all__ = ["CARD_WIDTH", "PLACE_WIDTH", "REPLY_WIDTH", "Snapshot", "StoreReply", "decode_reply", "payment_of"]

CARD_WIDTH = 20
"""Values before the terminal's block."""
PLACE_WIDTH = len(PLACE_WINDOWS) + 2 * len(FRAUD_WINDOWS)
"""Values of a terminal's (then a merchant's) block: counts, then (frauds, payments) per fraud window."""
REPLY_WIDTH = CARD_WIDTH + 2 * PLACE_WIDTH


@dataclass(frozen=True, slots=True)
class StoreReply:
    """A batch's state after applying it: ``values`` (n, REPLY_WIDTH) int64, ``previous`` (n, 4) float64, and its
    ``blocked`` cards (module docstring)."""

    values: NDArray[np.int64]
    previous: NDArray[np.float64]
    blocked: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.values)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, StoreReply)
            and np.array_equal(self.values, other.values)
            and np.array_equal(self.previous, other.previous, equal_nan=True)
            and self.blocked == other.blocked
        )

    def blocked_rows(self, txns: Sequence[Transaction]) -> NDArray[np.bool_]:
        """Per transaction of the batch (``txns``, in order): whether its card was blocked."""
        blocked = self.blocked
        if not blocked:
            return np.zeros(len(txns), dtype=bool)
        return np.fromiter((txn.card_token in blocked for txn in txns), dtype=bool, count=len(txns))

    @property
    def applied(self) -> list[bool]:
        """Per transaction: whether this call applied it (False: a redelivery)."""
        return [bool(v) for v in self.values[:, 0]]

    @classmethod
    def from_rows(cls, values: Sequence[Sequence[int]], previous: Sequence[Sequence[float]],
                  blocked: Mapping[str, tuple[str, ...]] | None = None) -> StoreReply:  # fmt: skip
        return cls(
            np.array(values, dtype=np.int64).reshape(len(values), REPLY_WIDTH),
            np.array(previous, dtype=np.float64).reshape(len(previous), 4),
            blocked or {},
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One transaction's snapshot: whether this call applied it (False: a redelivery), and state."""

    applied: bool
    payment: Payment
    card: CardSnapshot
    terminal: PlaceSnapshot | None
    merchant: PlaceSnapshot | None

    def features(self) -> list[float | None]:
        """The feature vector (FEATURE_NAMES order)."""
        return compute(self.payment, self.card, self.terminal, self.merchant)


def payment_of(txn: Transaction) -> Payment:
    """The plain values the formulas read from a transaction."""
    return Payment(
        epoch_s=round(txn.event_time.timestamp() * 1_000_000) / 1_000_000,
        amount=txn.amount,
        channel=txn.channel,
        terminal_id=txn.terminal_id,
        merchant_id=txn.merchant_id,
        country=txn.country,
        device_id=txn.device_id,
        lat=txn.lat,
        lon=txn.lon,
    )


def _place(values: Sequence[Any]) -> PlaceSnapshot | None:
    numbers = [int(v) for v in values]
    if numbers[0] < 0:
        return None
    rated = numbers[len(PLACE_WINDOWS) :]
    return PlaceSnapshot(
        counts=dict(zip(PLACE_WINDOWS, numbers, strict=False)),
        frauds=dict(zip(FRAUD_WINDOWS, rated[0::2], strict=True)),
        labelled=dict(zip(FRAUD_WINDOWS, rated[1::2], strict=True)),
    )


def _flag(value: int) -> bool | None:
    return None if value < 0 else bool(value)


def decode_reply(reply: StoreReply, txns: Sequence[Transaction]) -> list[Snapshot]:
    """Snapshots of ``txns`` from their store reply."""
    if len(reply) != len(txns):
        raise ValueError(f"store reply has {len(reply)} rows for {len(txns)} transactions")
    snapshots = []
    for n, previous, txn in zip(reply.values.tolist(), reply.previous.tolist(), txns, strict=True):
        windows = {name: (n[1 + 3 * i], n[2 + 3 * i], n[3 + 3 * i]) for i, name in enumerate(CARD_WINDOWS)}
        present = None
        if not math.isnan(previous[1]):
            present = (previous[1] / 1_000_000, previous[2], previous[3])
        distinct = {k: n[15 + i] for i, k in enumerate(("terminal", "merchant", "country")) if n[15 + i] >= 0}
        card = CardSnapshot(
            windows=windows,
            holds_payment=bool(n[13]),
            frauds_30d=n[14],
            previous_time=None if math.isnan(previous[0]) else previous[0] / 1_000_000,
            previous_present=present,
            distinct_24h=distinct,
            device_seen=_flag(n[18]),
            terminal_seen=_flag(n[19]),
        )
        terminal, merchant = n[CARD_WIDTH : CARD_WIDTH + PLACE_WIDTH], n[CARD_WIDTH + PLACE_WIDTH :]
        snapshots.append(Snapshot(bool(n[0]), payment_of(txn), card, _place(terminal), _place(merchant)))
    return snapshots
