"""Pure formulas: a payment and the snapshots of its entities in, the feature vector out (FEATURES order).

The online store and the offline builder both produce these snapshots; this module is the only place features are
computed from them, which is what makes online == offline a property of the snapshots alone.

Money is counted in integer cents so sums are exact on both sides: ``(count, cents, cents²)`` per bucket. Squares
use amounts capped at ``SQUARE_CAP_CENTS`` (100,000.00) so a window's sum of squares stays far from 2^63 (Redis
integers); standard deviations of windows holding larger payments are therefore understated, by design.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from features.definitions import FEATURE_NAMES
from features.windows import KEPT, Resolution, bucket_of, window

__all__ = [
    "RECENT_ITEMS",
    "SQUARE_CAP_CENTS",
    "Buckets",
    "CardSnapshot",
    "Payment",
    "PlaceSnapshot",
    "cents",
    "compute",
    "haversine_km",
    "square",
]

SQUARE_CAP_CENTS = 10_000_000
RECENT_ITEMS = 64
"""Items (terminals, merchants, countries, devices) a card remembers, most recently seen first."""
_MIN_TRAVEL_S = 60.0
Counter = tuple[int, int, int]


def cents(amount: float) -> int:
    """``amount`` (major units) in integer cents, rounded half away from zero."""
    return math.floor(abs(amount) * 100 + 0.5) * (1 if amount >= 0 else -1)


def square(amount_cents: int) -> int:
    """The cents² a payment adds to a sum of squares (amount capped at SQUARE_CAP_CENTS)."""
    capped = min(abs(amount_cents), SQUARE_CAP_CENTS)
    return capped * capped


@dataclass(frozen=True, slots=True)
class Buckets:
    """Counters of one entity at one resolution: bucket index -> (count, cents, cents²); ``newest`` is the highest
    bucket index applied so far (``None`` before the first)."""

    values: Mapping[int, Counter] = field(default_factory=dict)
    newest: int | None = None

    def total(self, epoch_s: float, name: str) -> Counter:
        """Sum of the counters in window ``name`` at ``epoch_s`` (buckets the store dropped excluded)."""
        _, first, last = window(epoch_s, name, self.newest)
        count = amount = squares = 0
        for index in range(first, last + 1):
            if (value := self.values.get(index)) is not None:
                count, amount, squares = count + value[0], amount + value[1], squares + value[2]
        return count, amount, squares

    def holds(self, epoch_s: float, resolution: Resolution) -> bool:
        """Whether the bucket of ``epoch_s`` is still kept (an event there was applied, not dropped as too late)."""
        return self.newest is not None and bucket_of(epoch_s, resolution) > self.newest - KEPT[resolution]


@dataclass(frozen=True, slots=True)
class Payment:
    """What the formulas need of a transaction. ``epoch_s``: event time, seconds since the epoch (UTC)."""

    epoch_s: float
    amount: float
    channel: str | None = None
    terminal_id: str | None = None
    merchant_id: str | None = None
    country: str | None = None
    device_id: str | None = None
    lat: float | None = None
    lon: float | None = None


@dataclass(frozen=True, slots=True)
class CardSnapshot:
    """A card's state once the payment has been applied.

    ``buckets`` per resolution (m5, h, d); ``frauds``: known frauds per day of the fraudulent payment (count in
    the first slot); ``previous_time``: latest event time among the card's *other* applied payments;
    ``previous_present``: (time, lat, lon) of the latest other card-present payment with geo; ``recent``: kind
    (terminal, merchant, country, device) -> item -> last time seen, at most RECENT_ITEMS per kind;
    ``device_seen`` / ``terminal_seen``: whether the item was among ``recent`` *before* this payment.
    """

    buckets: Mapping[Resolution, Buckets]
    frauds: Buckets = field(default_factory=Buckets)
    previous_time: float | None = None
    previous_present: tuple[float, float, float] | None = None
    recent: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    device_seen: bool | None = None
    terminal_seen: bool | None = None


@dataclass(frozen=True, slots=True)
class PlaceSnapshot:
    """A terminal's or merchant's daily payment counts (payment applied) and known frauds per day of payment."""

    counts: Buckets
    frauds: Buckets = field(default_factory=Buckets)


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance between two points given in degrees."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6_371.0 * math.asin(math.sqrt(min(1.0, a)))


def _velocity(counter: Counter) -> list[float | None]:
    count, amount, squares = counter
    if count == 0:
        return [0.0, 0.0, None, None]
    variance_numerator = count * squares - amount * amount  # exact integers: same bits online and offline
    std = math.sqrt(max(variance_numerator, 0)) / count / 100 if count >= 2 else None
    return [float(count), amount / 100, amount / count / 100, std]


def _relative(payment: Payment, card: CardSnapshot) -> list[float | None]:
    count, amount, squares = card.buckets["d"].total(payment.epoch_s, "30d")
    if card.buckets["d"].holds(payment.epoch_s, "d"):  # this payment is in the window: take it out
        own = cents(payment.amount)
        count, amount, squares = count - 1, amount - own, squares - square(own)
    if count < 1:
        return [None, None]
    mean = amount / count
    ratio = (payment.amount * 100) / mean if mean > 0 else None
    if count < 2:
        return [ratio, None]
    std = math.sqrt(max(count * squares - amount * amount, 0)) / count
    return [ratio, (payment.amount * 100 - mean) / std if std > 0 else None]


def _distinct(card: CardSnapshot, kind: str, present: bool, epoch_s: float) -> float | None:
    if not present:
        return None
    return float(sum(1 for seen in card.recent.get(kind, {}).values() if seen > epoch_s - 86_400))


def _speed(payment: Payment, card: CardSnapshot) -> float | None:
    if payment.channel != "card_present" or payment.lat is None or payment.lon is None:
        return None
    if card.previous_present is None:
        return None
    then, lat, lon = card.previous_present
    hours = max(abs(payment.epoch_s - then), _MIN_TRAVEL_S) / 3_600
    return haversine_km(lat, lon, payment.lat, payment.lon) / hours


def _place(payment: Payment, place: PlaceSnapshot | None) -> list[float | None]:
    if place is None:
        return [None] * 5
    counts = [place.counts.total(payment.epoch_s, w)[0] for w in ("1d", "7d", "30d")]
    frauds = [place.frauds.total(payment.epoch_s, w)[0] for w in ("7d", "30d")]
    rates = [f / c if c else 0.0 for f, c in zip(frauds, counts[1:], strict=True)]
    return [*map(float, counts), *rates]


def _flag(seen: bool | None) -> float | None:
    return None if seen is None else float(not seen)


def compute(
    payment: Payment, card: CardSnapshot, terminal: PlaceSnapshot | None, merchant: PlaceSnapshot | None
) -> list[float | None]:
    """The feature vector of ``payment`` (FEATURE_NAMES order; ``None`` = missing).

    ``terminal`` / ``merchant`` are ``None`` when the payment has no terminal / merchant.
    """
    moment = datetime.fromtimestamp(payment.epoch_s, tz=UTC)
    channel = payment.channel
    values: list[float | None] = [
        payment.amount,
        float(moment.hour),
        float(moment.weekday() >= 5),
        float(moment.hour <= 6),
        None if channel is None else float(channel in {"ecommerce", "moto"}),
    ]
    for name in ("1h", "24h", "7d", "30d"):
        resolution: Resolution = "m5" if name == "1h" else "h" if name == "24h" else "d"
        values += _velocity(card.buckets[resolution].total(payment.epoch_s, name))
    values += _relative(payment, card)
    previous = card.previous_time
    values.append(None if previous is None else max(0.0, payment.epoch_s - previous))
    values += [
        _distinct(card, "terminal", payment.terminal_id is not None, payment.epoch_s),
        _distinct(card, "merchant", payment.merchant_id is not None, payment.epoch_s),
        _distinct(card, "country", payment.country is not None, payment.epoch_s),
        _speed(payment, card),
        _flag(card.device_seen if payment.device_id is not None else None),
        _flag(card.terminal_seen if payment.terminal_id is not None else None),
        float(card.frauds.total(payment.epoch_s, "30d")[0]),
    ]
    values += _place(payment, terminal)
    values += _place(payment, merchant)
    assert len(values) == len(FEATURE_NAMES)
    return values
