"""Feature definitions and the pure formulas, at window edges."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

import pytest

from features.definitions import FEATURE_NAMES, FEATURES, feature_index
from features.formulas import Buckets, CardSnapshot, Payment, PlaceSnapshot, cents, compute, square
from features.windows import KEPT, bucket_of, window

T = datetime(2024, 3, 2, 3, 0, tzinfo=UTC).timestamp()  # a Saturday, 03:00 UTC, on every bucket boundary
COL = feature_index()


def _buckets(resolution: str, payments: list[tuple[float, float]]) -> Buckets:
    values: dict[int, tuple[int, int, int]] = {}
    for epoch_s, amount in payments:
        index = bucket_of(epoch_s, resolution)  # type: ignore[arg-type]
        c, s, q = values.get(index, (0, 0, 0))
        values[index] = (c + 1, s + cents(amount), q + square(cents(amount)))
    return Buckets(values, max(values) if values else None)


def _card(payments: list[tuple[float, float]], **extra: object) -> CardSnapshot:
    return CardSnapshot(buckets={r: _buckets(r, payments) for r in ("m5", "h", "d")}, **extra)  # type: ignore[arg-type]


def _features(payment: Payment, card: CardSnapshot, terminal: PlaceSnapshot | None = None) -> dict[str, float | None]:
    return dict(zip(FEATURE_NAMES, compute(payment, card, terminal, None), strict=True))


def test_names_are_unique_ordered_and_well_formed() -> None:
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES) == len(FEATURES)
    for feature in FEATURES:
        if feature.entity != "transaction":
            assert feature.name.startswith(feature.entity + "_"), feature.name
        if feature.window is not None:
            assert feature.name.endswith("_" + feature.window), feature.name
        assert re.fullmatch(r"[a-z0-9_]+", feature.name)


def test_window_edges() -> None:
    resolution, first, last = window(T, "1h")
    assert (resolution, last - first + 1) == ("m5", 12)
    assert first == bucket_of(T - 3_300, "m5")  # 55 minutes earlier: inside
    assert first - 1 == bucket_of(T - 3_301, "m5")  # one second more: outside
    _, first_day, last_day = window(T - 1, "7d")
    assert (last_day - first_day + 1, last_day) == (7, bucket_of(T - 1, "d"))


def test_dropped_buckets_are_excluded() -> None:
    newest = bucket_of(T, "d") + 25  # the store has seen events 25 days later: only 5 of these 30 days are kept
    _, first, last = window(T, "30d", newest)
    assert first == newest - KEPT["d"] + 1 and last == bucket_of(T, "d")


def test_velocity_counts_sums_means_and_population_std() -> None:
    card = _card([(T - 600, 10.0), (T - 300, 20.0), (T, 30.0)])
    f = _features(Payment(T, 30.0), card)
    assert (f["card_count_1h"], f["card_sum_1h"], f["card_mean_1h"]) == (3.0, 60.0, 20.0)
    assert f["card_std_1h"] == pytest.approx(math.sqrt(200 / 3), rel=1e-12)
    assert f["card_count_30d"] == 3.0


def test_one_payment_has_no_std_and_an_empty_window_counts_zero() -> None:
    f = _features(Payment(T, 5.0), _card([(T, 5.0)]))
    assert (f["card_count_24h"], f["card_std_24h"]) == (1.0, None)
    empty = dict(zip(FEATURE_NAMES, compute(Payment(T, 5.0), _card([]), None, None), strict=True))
    assert (empty["card_count_1h"], empty["card_sum_1h"], empty["card_mean_1h"], empty["card_std_1h"]) == (
        0.0,
        0.0,
        None,
        None,
    )


def test_amount_relative_to_the_history_before_this_payment() -> None:
    card = _card([(T - 5 * 86_400, 10.0), (T - 86_400, 30.0), (T, 40.0)])
    f = _features(Payment(T, 40.0), card)
    assert f["card_amount_ratio_30d"] == pytest.approx(2.0)
    assert f["card_amount_zscore_30d"] == pytest.approx(2.0)  # (40 - 20) / 10
    first = _features(Payment(T, 40.0), _card([(T, 40.0)]))
    assert (first["card_amount_ratio_30d"], first["card_amount_zscore_30d"]) == (None, None)


def test_calendar_features() -> None:
    f = _features(Payment(T, 1.0, channel="ecommerce"), _card([(T, 1.0)]))
    assert (f["hour_of_day"], f["is_weekend"], f["is_night"], f["is_ecommerce"]) == (3.0, 1.0, 1.0, 1.0)
    assert _features(Payment(T, 1.0), _card([(T, 1.0)]))["is_ecommerce"] is None


def test_seconds_since_last_and_geo_speed() -> None:
    card = _card([(T, 1.0)], previous_time=T - 1_800, previous_present=(T - 1_800, 48.0, 8.0))
    here = Payment(T, 1.0, channel="card_present", lat=48.0, lon=8.0 + 100 / (111.195 * math.cos(math.radians(48))))
    f = _features(here, card)
    assert f["card_seconds_since_last"] == 1_800.0
    assert f["card_geo_speed_kmh"] == pytest.approx(200.0, rel=2e-3)  # ~100 km in half an hour
    assert _features(Payment(T, 1.0, channel="ecommerce", lat=48.0, lon=8.0), card)["card_geo_speed_kmh"] is None
    assert _features(Payment(T, 1.0), _card([(T, 1.0)]))["card_seconds_since_last"] is None


def test_distinct_items_in_24h_and_novelty() -> None:
    recent = {"terminal": {"a": T - 86_400, "b": T - 86_399, "c": T}}
    card = _card([(T, 1.0)], recent=recent, terminal_seen=False, device_seen=True)
    f = _features(Payment(T, 1.0, terminal_id="c", device_id="d1"), card)
    assert f["card_distinct_terminals_24h"] == 2.0  # exactly 24h ago is out
    assert (f["card_new_terminal"], f["card_new_device"]) == (1.0, 0.0)
    assert f["card_distinct_merchants_24h"] is None  # no merchant on this payment


def test_place_counts_and_fraud_rates() -> None:
    counts = _buckets("d", [(T - 86_400 * i, 1.0) for i in range(4)])
    frauds = _buckets("d", [(T - 86_400, 1.0), (T - 3 * 86_400, 1.0)])
    f = _features(Payment(T, 1.0, terminal_id="t"), _card([(T, 1.0)]), PlaceSnapshot(counts, frauds))
    assert (f["terminal_count_1d"], f["terminal_count_7d"], f["terminal_fraud_rate_7d"]) == (1.0, 4.0, 0.5)
    assert _features(Payment(T, 1.0), _card([(T, 1.0)]))["terminal_count_30d"] is None


@pytest.mark.parametrize(("amount", "expected"), [(19.99, 1999), (0.125, 13), (1e6, 100_000_000), (-2.5, -250)])
def test_cents_are_exact(amount: float, expected: int) -> None:
    assert cents(amount) == expected
    assert square(cents(2e6)) == 10_000_000**2  # squares are capped at 100,000.00
