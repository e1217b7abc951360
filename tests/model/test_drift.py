"""Drift measures by hand and on generated data: PSI and KL against reference distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from features.definitions import FEATURE_NAMES
from models.drift import compare, drift_report, kl, psi
from models.reference import distribution, reference


def test_psi_and_kl_by_hand() -> None:
    # Reference: two bins split at 0.5, 40 % / 60 %, nothing missing. Live: 70 % below, 30 % above. The missing
    # bin is empty on both sides (floored at EPSILON alike): it adds nothing.
    ref = {"edges": [0.5], "shares": [0.4, 0.6], "missing": 0.0}
    live = np.array([0.1] * 7 + [0.9] * 3)
    expected_psi = (0.7 - 0.4) * math.log(0.7 / 0.4) + (0.3 - 0.6) * math.log(0.3 / 0.6)
    assert psi(ref, live) == pytest.approx(expected_psi)
    assert kl(ref, live) == pytest.approx(0.7 * math.log(0.7 / 0.4) + 0.3 * math.log(0.3 / 0.6))


def test_missing_values_are_a_bin_of_their_own() -> None:
    ref = {"edges": [0.5], "shares": [0.5, 0.5], "missing": 0.0}
    assert psi(ref, np.array([0.1, 0.9] * 50)) == pytest.approx(0.0, abs=1e-9)
    assert psi(ref, np.array([0.1, 0.9, np.nan, np.nan] * 25)) > 0.25  # half missing now: a breach


def test_same_distribution_is_stable_and_a_shift_is_a_breach() -> None:
    rng = np.random.default_rng(0)
    ref = distribution(rng.normal(size=50_000))
    assert compare("x", ref, rng.normal(size=20_000)).level == "stable"
    assert compare("x", ref, rng.normal(0.4, 1.0, size=20_000)).level == "moderate"  # PSI ≈ 0.15
    assert compare("x", ref, rng.normal(1.5, 1.0, size=20_000)).level == "breach"


def test_report_covers_the_score_and_every_feature() -> None:
    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(5_000, len(FEATURE_NAMES)))
    scores = rng.random(5_000)
    ref = reference(matrix, scores)
    shifted = matrix.copy()
    shifted[:, 0] += 3
    report = drift_report(ref, shifted, scores)
    assert [d.name for d in report] == ["score", *FEATURE_NAMES]
    assert [d.name for d in report if d.level == "breach"] == [FEATURE_NAMES[0]]


def test_calendar_features_and_small_windows_are_reported_never_judged() -> None:
    rng = np.random.default_rng(2)
    ref = distribution(rng.integers(0, 2, size=50_000).astype(float))  # a week's share of weekend payments
    saturday = np.ones(20_000)  # a trailing day that is a Saturday: all weekend
    assert compare("amount", ref, saturday).level == "breach"  # as a payment feature: a breach
    judged = compare("is_weekend", ref, saturday)
    assert judged.level == "calendar" and judged.psi > 0.25  # reported, not an alarm
    few = compare("amount", ref, saturday[:50], min_values=2_000)
    assert few.level == "too_few" and few.psi > 0.25
    assert compare("amount", ref, saturday[:2_000], min_values=2_000).level == "breach"


def test_values_outside_the_reference_range_are_seen_even_for_a_constant_feature() -> None:
    constant = distribution(np.zeros(10_000))  # e.g. a flag never set in the reference window
    assert compare("flag", constant, np.zeros(5_000)).level == "stable"
    assert compare("flag", constant, np.ones(5_000)).level == "breach"  # above anything the reference saw
    assert compare("flag", constant, -np.ones(5_000)).level == "breach"  # below it
    rng = np.random.default_rng(3)
    ref = distribution(rng.normal(size=50_000))
    assert compare("x", ref, rng.normal(size=20_000)).level == "stable"  # a few values past the extremes: no alarm
