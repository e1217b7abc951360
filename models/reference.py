"""Reference distributions stored in a model's manifest, for drift monitoring (PSI, KL) against live traffic.

For the score and each feature: decile edges of the reference values and the share of values in each of the
``len(edges) + 1`` bins (``value < edges[0]``, ..., ``value >= edges[-1]``), plus the share of missing values. The
edges also hold the reference's minimum and (just above) its maximum, so values outside everything the reference saw
fall in bins of their own, empty in the reference: without them a feature that was constant in the reference (one
edge) could never be seen to move.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from features.definitions import FEATURE_NAMES

__all__ = ["distribution", "reference"]


def distribution(values: NDArray[np.float64], bins: int = 10) -> dict[str, Any]:
    """Quantile edges, bin shares and missing share of ``values`` (NaN = missing)."""
    present = values[~np.isnan(values)]
    missing = 1.0 - len(present) / len(values) if len(values) else 0.0
    if len(present) == 0:
        return {"edges": [], "shares": [], "missing": missing}
    inner = np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1])
    top = np.nextafter(present.max(), np.inf)
    edges = np.unique(np.concatenate([[present.min()], inner, [top]]))
    counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1)
    return {"edges": edges.tolist(), "shares": (counts / len(present)).tolist(), "missing": missing}


def reference(matrix: NDArray[np.float64], scores: NDArray[np.float64], bins: int = 10) -> dict[str, Any]:
    """The manifest's ``reference``: rows, the score's distribution and each feature's."""
    return {
        "rows": len(scores),
        "score": distribution(np.asarray(scores, dtype=np.float64), bins),
        "features": {name: distribution(matrix[:, i], bins) for i, name in enumerate(FEATURE_NAMES)},
    }
