"""Decoding a store's reply (40 values per transaction, the layout ``features/apply.lua`` returns) into snapshots.

Shared by the Redis store and its in-memory twin, which return the very same values: layout, in order —
applied; card (count, cents, cents²) for 1h, 24h, 7d, 30d; holds_payment; frauds_30d; previous time (µs, ""
if none); previous card-present payment ("µs,lat,lon" or ""); distinct terminals / merchants / countries in 24h
(-1: the payment has none); device seen, terminal seen (-1 / 0 / 1); terminal payments 1d, 7d, 30d, then for each
of FRAUD_WINDOWS (1d, 7d, 30d) ending LABEL_DELAY_DAYS earlier: known frauds, payments (-1 without a terminal); the
same nine for the merchant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from features.formulas import CARD_WINDOWS, FRAUD_WINDOWS, PLACE_WINDOWS, CardSnapshot, Payment, PlaceSnapshot, compute
from fraudpipe.contracts import Transaction

__all__ = ["CARD_WIDTH", "PLACE_WIDTH", "REPLY_WIDTH", "Snapshot", "decode_reply", "payment_of"]

CARD_WIDTH = 22
"""Values before the terminal's block."""
PLACE_WIDTH = len(PLACE_WINDOWS) + 2 * len(FRAUD_WINDOWS)
"""Values of a terminal's (then a merchant's) block: counts, then (frauds, payments) per fraud window."""
REPLY_WIDTH = CARD_WIDTH + 2 * PLACE_WIDTH


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
    rated = numbers[len(PLACE_WINDOWS) :]
    return PlaceSnapshot(
        counts=dict(zip(PLACE_WINDOWS, numbers, strict=False)),
        frauds=dict(zip(FRAUD_WINDOWS, rated[0::2], strict=True)),
        labelled=dict(zip(FRAUD_WINDOWS, rated[1::2], strict=True)),
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
        terminal, merchant = v[CARD_WIDTH : CARD_WIDTH + PLACE_WIDTH], v[CARD_WIDTH + PLACE_WIDTH :]
        snapshots.append(Snapshot(bool(n[0]), payment_of(txn), card, _place(terminal), _place(merchant)))
    return snapshots
