"""Drift against a model's reference distributions (:mod:`models.reference`): PSI and KL divergence, pure.

Live values are binned on the reference's edges (missing values in a bin of their own), then compared bin by bin
with the reference shares. Shares are floored at ``EPSILON`` so an empty bin gives a large, finite divergence.

- PSI = Σ (live - ref) · ln(live / ref): below 0.1 stable, 0.1 to 0.25 moderate shift, above 0.25 a breach (the
  conventional bounds, configurable by the caller).
- KL(live ‖ ref) = Σ live · ln(live / ref).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from features.definitions import FEATURE_NAMES

__all__ = ["EPSILON", "Drift", "compare", "drift_report", "kl", "psi"]

EPSILON = 1e-4


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
    """One column's drift: PSI, KL and its level (``stable`` / ``moderate`` / ``breach``)."""

    name: str
    psi: float
    kl: float
    level: str


def compare(name: str, reference: dict[str, Any], values: NDArray[np.float64], *, moderate: float = 0.1,
            breach: float = 0.25) -> Drift:  # fmt: skip
    """The drift of one column."""
    value = psi(reference, values)
    level = "breach" if value >= breach else "moderate" if value >= moderate else "stable"
    return Drift(name, value, kl(reference, values), level)


def drift_report(reference: dict[str, Any], matrix: NDArray[np.float64], scores: NDArray[np.float64], *,
                 moderate: float = 0.1, breach: float = 0.25) -> list[Drift]:  # fmt: skip
    """The score's drift, then each feature's (FEATURE_NAMES order), against a manifest's ``reference``."""
    out = [compare("score", reference["score"], scores, moderate=moderate, breach=breach)]
    for i, name in enumerate(FEATURE_NAMES):
        out.append(compare(name, reference["features"][name], matrix[:, i], moderate=moderate, breach=breach))
    return out
