"""Decoding a store's reply (36 values per transaction, the layout ``features/apply.lua`` returns) into snapshots.

Shared by the Redis store and its in-memory twin, which return the very same values: layout, in order —
applied; card (count, cents, cents²) for 1h, 24h, 7d, 30d; holds_payment; frauds_30d; previous time (µs, ""
if none); previous card-present payment ("µs,lat,lon" or ""); distinct terminals / merchants / countries in 24h
(-1: the payment has none); device seen, terminal seen (-1 / 0 / 1); terminal payments 1d, 7d, 30d, then for the
7d and 30d windows ending LABEL_DELAY_DAYS earlier: known frauds, payments (-1 without a terminal); the same seven
for the merchant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from features.formulas import CARD_WINDOWS, PLACE_WINDOWS, CardSnapshot, Payment, PlaceSnapshot, compute
from fraudpipe.contracts import Transaction

__all__ = ["REPLY_WIDTH", "Snapshot", "decode_reply", "payment_of"]

REPLY_WIDTH = 36


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One transaction's snapshot: whether this call applied it (False: a redelivery, or too late), and state."""

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


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _place(values: Sequence[Any]) -> PlaceSnapshot | None:
    numbers = [int(v) for v in values]
    if numbers[0] < 0:
        return None
    return PlaceSnapshot(
        counts=dict(zip(PLACE_WINDOWS, numbers[:3], strict=True)),
        frauds={"7d": numbers[3], "30d": numbers[5]},
        labelled={"7d": numbers[4], "30d": numbers[6]},
    )


def _flag(value: int) -> bool | None:
    return None if value < 0 else bool(value)


def decode_reply(reply: Sequence[Any], txns: Sequence[Transaction]) -> list[Snapshot]:
    """Snapshots of ``txns`` from a flat reply of ``REPLY_WIDTH`` values per transaction."""
    if len(reply) != REPLY_WIDTH * len(txns):
        raise ValueError(f"store reply has {len(reply)} values for {len(txns)} transactions")
    snapshots = []
    for index, txn in enumerate(txns):
        v = reply[index * REPLY_WIDTH : (index + 1) * REPLY_WIDTH]
        n = [int(x) if not isinstance(x, (bytes, str)) else 0 for x in v]
        windows = {name: (n[1 + 3 * i], n[2 + 3 * i], n[3 + 3 * i]) for i, name in enumerate(CARD_WINDOWS)}
        previous_time, previous_present = _text(v[15]), _text(v[16])
        present = None
        if previous_present:
            micros, lat, lon = previous_present.split(",")
            present = (int(micros) / 1_000_000, float(lat), float(lon))
        distinct = {k: n[17 + i] for i, k in enumerate(("terminal", "merchant", "country")) if n[17 + i] >= 0}
        card = CardSnapshot(
            windows=windows,
            holds_payment=bool(n[13]),
            frauds_30d=n[14],
            previous_time=int(previous_time) / 1_000_000 if previous_time else None,
            previous_present=present,
            distinct_24h=distinct,
            device_seen=_flag(n[20]),
            terminal_seen=_flag(n[21]),
        )
        snapshots.append(Snapshot(bool(n[0]), payment_of(txn), card, _place(v[22:29]), _place(v[29:36])))
    return snapshots
