"""Pure formulas: a payment and the snapshots of its entities in, the feature vector out (FEATURES order).

The online store and the offline builder both produce these snapshots; this module is the only place features are
computed from them, which is what makes online == offline a property of the snapshots alone.

Money is counted in integer cents so sums are exact on both sides: ``(count, cents, cents²)`` per bucket. Squares
use amounts capped at ``SQUARE_CAP_CENTS`` (10,000.00) so a window's sum of squares stays below 2^53 (exact as a
double, which is how Redis' Lua adds them) for any realistic card; standard deviations of windows holding larger
payments are therefore understated, by design.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from features.definitions import FEATURE_NAMES

__all__ = [
    "CARD_WINDOWS",
    "PLACE_WINDOWS",
    "RECENT_ITEMS",
    "SQUARE_CAP_CENTS",
    "CardSnapshot",
    "Payment",
    "PlaceSnapshot",
    "cents",
    "compute",
    "haversine_km",
    "square",
]

SQUARE_CAP_CENTS = 1_000_000
RECENT_ITEMS = 64
"""Items (terminals, merchants, countries, devices) a card remembers, most recently seen first."""
_MIN_TRAVEL_S = 60.0
CARD_WINDOWS = ("1h", "24h", "7d", "30d")
PLACE_WINDOWS = ("1d", "7d", "30d")
FRAUD_WINDOWS = ("1d", "7d", "30d")
"""Windows of the label-derived rates of terminals and merchants (each ending LABEL_DELAY_DAYS before the payment's
day): 1d reacts to a newly compromised place as soon as its first labels are known, 30d is steady."""
Counter = tuple[int, int, int]


def cents(amount: float) -> int:
    """``amount`` (major units) in integer cents, rounded half away from zero."""
    return math.floor(abs(amount) * 100 + 0.5) * (1 if amount >= 0 else -1)


def square(amount_cents: int) -> int:
    """The cents² a payment adds to a sum of squares (amount capped at SQUARE_CAP_CENTS)."""
    capped = min(abs(amount_cents), SQUARE_CAP_CENTS)
    return capped * capped


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
    """A card's state as read right after the payment was applied (see :mod:`features.windows` for windows).

    ``windows``: window name (1h, 24h, 7d, 30d) -> (count, cents, cents²) over the kept buckets of the window;
    ``holds_payment``: the payment's day bucket is kept, so the payment is inside ``windows["30d"]``;
    ``frauds_30d``: known frauds among the card's payments of the 30d window; ``previous_time``: latest event
    time among the card's payments applied before this one; ``previous_present``: (time, lat, lon) of the latest
    card-present payment with geo applied before this one; ``distinct_24h``: kind (terminal, merchant, country)
    -> items the card used within the 24h before the payment's time, this one included (at most RECENT_ITEMS);
    ``device_seen`` / ``terminal_seen``: the item was among the card's RECENT_ITEMS most recent before this one.
    """

    windows: Mapping[str, Counter]
    holds_payment: bool = True
    frauds_30d: int = 0
    previous_time: float | None = None
    previous_present: tuple[float, float, float] | None = None
    distinct_24h: Mapping[str, int] = field(default_factory=dict)
    device_seen: bool | None = None
    terminal_seen: bool | None = None


@dataclass(frozen=True, slots=True)
class PlaceSnapshot:
    """A terminal's or merchant's payment counts per window (1d, 7d, 30d; payment included); and, for the
    FRAUD_WINDOWS ending LABEL_DELAY_DAYS before the payment's day, the ``labelled`` payments and the ``frauds``
    known among them."""

    counts: Mapping[str, int]
    frauds: Mapping[str, int] = field(default_factory=dict)
    labelled: Mapping[str, int] = field(default_factory=dict)


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
    count, amount, squares = card.windows["30d"]
    if card.holds_payment:  # this payment is in the window: take it out
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


def _distinct(card: CardSnapshot, kind: str, present: bool) -> float | None:
    return float(card.distinct_24h.get(kind, 0)) if present else None


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
        return [None] * (len(PLACE_WINDOWS) + len(FRAUD_WINDOWS))
    counts = [place.counts.get(w, 0) for w in PLACE_WINDOWS]
    rates = [place.frauds.get(w, 0) / n if (n := place.labelled.get(w, 0)) else 0.0 for w in FRAUD_WINDOWS]
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
    for name in CARD_WINDOWS:
        values += _velocity(card.windows.get(name, (0, 0, 0)))
    values += _relative(payment, card)
    previous = card.previous_time
    values.append(None if previous is None else max(0.0, payment.epoch_s - previous))
    values += [
        _distinct(card, "terminal", payment.terminal_id is not None),
        _distinct(card, "merchant", payment.merchant_id is not None),
        _distinct(card, "country", payment.country is not None),
        _speed(payment, card),
        _flag(card.device_seen if payment.device_id is not None else None),
        _flag(card.terminal_seen if payment.terminal_id is not None else None),
        float(card.frauds_30d),
    ]
    values += _place(payment, terminal)
    values += _place(payment, merchant)
    assert len(values) == len(FEATURE_NAMES)
    return values
