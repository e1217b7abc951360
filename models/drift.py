"""Drift against a model's reference distributions (:mod:`models.reference`): PSI and KL divergence, pure.

Live values are binned on the reference's edges (missing values in a bin of their own), then compared bin by bin
with the reference shares. Shares are floored at ``EPSILON`` so an empty bin gives a large, finite divergence.

- PSI = Σ (live - ref) · ln(live / ref): below 0.1 stable, 0.1 to 0.25 moderate shift, above 0.25 a breach (the
  conventional bounds, configurable by the caller).
- KL(live ‖ ref) = Σ live · ln(live / ref).

Like is compared with like, so an alarm means the data moved, not the clock: the calendar features
(:data:`CALENDAR`: hour of day, weekend, night) follow the time of the window, not the payments — a trailing day
against a whole training period always "drifts" on them (a Saturday is all weekend) — so their PSI is reported but
never judged (level ``calendar``); and a window of fewer than ``min_values`` values is too small to judge at all
(level ``too_few``). Only ``moderate`` and ``breach`` are alarms: the monitor, its gauges, the dashboard, Grafana
and the demo's summary all count breaches from these levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from features.definitions import FEATURE_NAMES

__all__ = ["CALENDAR", "EPSILON", "JUDGED", "Drift", "compare", "drift_report", "kl", "psi"]

EPSILON = 1e-4
CALENDAR = frozenset({"hour_of_day", "is_weekend", "is_night"})
"""Features that follow the clock of the window, never judged for drift (module docstring)."""
JUDGED = frozenset({"stable", "moderate", "breach"})
"""The levels of a judged column (the others: ``calendar``, ``too_few``)."""


def _shares(reference: dict[str, Any], values: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(reference shares, live shares) over the reference's bins plus a missing bin."""
    edges = np.asarray(reference["edges"], dtype=np.float64)
    missing = float(reference["missing"])
    ref = np.append(np.asarray(reference["shares"], dtype=np.float64) * (1.0 - missing), missing)
    if len(ref) == 1:  # the reference had no value at all: only the missing bin
        ref = np.array([0.0, 1.0])
        edges = np.array([], dtype=np.float64)
    present = ~np.isnan(values)
    counts = np.bincount(np.searchsorted(edges, values[present], side="right"), minlength=len(edges) + 1)
    live = np.append(counts, int((~present).sum())).astype(np.float64)
    live = live / max(live.sum(), 1.0)
    return np.maximum(ref, EPSILON), np.maximum(live, EPSILON)


def psi(reference: dict[str, Any], values: NDArray[np.float64]) -> float:
    """Population stability index of ``values`` against ``reference`` (a :func:`models.reference.distribution`)."""
    ref, live = _shares(reference, np.asarray(values, dtype=np.float64))
    return float(np.sum((live - ref) * np.log(live / ref)))


def kl(reference: dict[str, Any], values: NDArray[np.float64]) -> float:
    """KL divergence of the live distribution from the reference."""
    ref, live = _shares(reference, np.asarray(values, dtype=np.float64))
    return float(np.sum(live * np.log(live / ref)))


@dataclass(frozen=True, slots=True)
class Drift:
    """One column's drift: PSI, KL and its level (``stable`` / ``moderate`` / ``breach``, or unjudged: ``calendar``,
    ``too_few``)."""

    name: str
    psi: float
    kl: float
    level: str


def compare(name: str, reference: dict[str, Any], values: NDArray[np.float64], *, moderate: float = 0.1,
            breach: float = 0.25, min_values: int = 1) -> Drift:  # fmt: skip
    """The drift of one column (judged unless it is a calendar feature or has fewer than ``min_values`` values)."""
    value = psi(reference, values)
    if name in CALENDAR:
        level = "calendar"
    elif len(values) < min_values:
        level = "too_few"
    else:
        level = "breach" if value >= breach else "moderate" if value >= moderate else "stable"
    return Drift(name, value, kl(reference, values), level)


def drift_report(reference: dict[str, Any], matrix: NDArray[np.float64], scores: NDArray[np.float64], *,
                 moderate: float = 0.1, breach: float = 0.25, min_values: int = 1) -> list[Drift]:  # fmt: skip
    """The score's drift, then each feature's (FEATURE_NAMES order), against a manifest's ``reference``."""
    columns = [("score", reference["score"], scores)]
    columns += [(name, reference["features"][name], matrix[:, i]) for i, name in enumerate(FEATURE_NAMES)]
    return [compare(name, ref, values, moderate=moderate, breach=breach, min_values=min_values)
            for name, ref, values in columns]  # fmt: skip
