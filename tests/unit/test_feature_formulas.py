"""Feature definitions and the pure formulas, at window edges."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

import pytest

from features.definitions import FEATURE_NAMES, FEATURES, feature_index
from features.formulas import CardSnapshot, Payment, PlaceSnapshot, cents, compute, square
from features.windows import bucket_of, window

T = datetime(2024, 3, 2, 3, 0, tzinfo=UTC).timestamp()  # a Saturday, 03:00 UTC, on every bucket boundary
COL = feature_index()


def _totals(payments: list[tuple[float, float]], at: float, name: str) -> tuple[int, int, int]:
    """Window ``name`` at ``at`` summed by hand from (time, amount) pairs, every bucket kept."""
    resolution, first, last = window(at, name)
    inside = [cents(a) for when, a in payments if first <= bucket_of(when, resolution) <= last]
    return len(inside), sum(inside), sum(square(c) for c in inside)


def _card(payments: list[tuple[float, float]], at: float = T, **extra: object) -> CardSnapshot:
    windows = {name: _totals(payments, at, name) for name in ("1h", "24h", "7d", "30d")}
    return CardSnapshot(windows=windows, holds_payment=bool(payments), **extra)  # type: ignore[arg-type]


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


def test_a_payment_outside_its_own_window_is_not_taken_out_twice() -> None:
    late = CardSnapshot(windows={"30d": (2, 3_000, 500_000)}, holds_payment=False)
    f = dict(zip(FEATURE_NAMES, compute(Payment(T, 40.0), late, None, None), strict=True))
    assert f["card_amount_ratio_30d"] == pytest.approx(40 / 15)


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
    card = _card([(T, 1.0)], distinct_24h={"terminal": 2}, terminal_seen=False, device_seen=True)
    f = _features(Payment(T, 1.0, terminal_id="c", device_id="d1"), card)
    assert f["card_distinct_terminals_24h"] == 2.0
    assert (f["card_new_terminal"], f["card_new_device"]) == (1.0, 0.0)
    assert f["card_distinct_merchants_24h"] is None  # no merchant on this payment


def test_place_counts_and_fraud_rates() -> None:
    place = PlaceSnapshot(counts={"1d": 1, "7d": 4, "30d": 4}, frauds={"7d": 2, "30d": 2}, labelled={"7d": 4, "30d": 8})
    f = _features(Payment(T, 1.0, terminal_id="t"), _card([(T, 1.0)]), place)
    assert (f["terminal_count_1d"], f["terminal_count_7d"], f["terminal_fraud_rate_7d"]) == (1.0, 4.0, 0.5)
    assert f["terminal_fraud_rate_30d"] == 0.25  # frauds over the payments old enough to be labelled
    assert _features(Payment(T, 1.0), _card([(T, 1.0)]))["terminal_count_30d"] is None


@pytest.mark.parametrize(("amount", "expected"), [(19.99, 1999), (0.125, 13), (1e6, 100_000_000), (-2.5, -250)])
def test_cents_are_exact(amount: float, expected: int) -> None:
    assert cents(amount) == expected
    assert square(cents(2e6)) == 1_000_000**2  # squares are capped at 10,000.00
