"""Time buckets: the one definition of "a window" that the online store and the offline builder share.

An entity keeps counters per bucket at three resolutions, each for a fixed number of buckets (bounded memory):

| resolution | bucket  | kept | serves windows |
|------------|---------|------|----------------|
| ``m5``     | 300 s   | 12   | 1h             |
| ``h``      | 3,600 s | 24   | 24h            |
| ``d``      | 1 day   | 30   | 1d, 7d, 30d    |

Bucket ``k`` of resolution ``r`` holds events with ``floor(epoch_seconds / size(r)) == k``. A window of ``n``
buckets at time ``t`` covers buckets ``k(t) - n + 1 .. k(t)``: the current, partial bucket and the ``n - 1`` before
it. A store keeps bucket ``j`` only while ``j > newest - kept`` (``newest`` = highest bucket index it has applied);
a bucket that falls out is gone for good, and an event arriving for it later is not applied. Both sides implement
exactly that rule, so late and out-of-order events give the same features online and offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["KEPT", "LABEL_DELAY_DAYS", "PLACE_KEPT_DAYS", "RESOLUTIONS", "WINDOWS", "Window", "bucket_of", "window"]

Resolution = Literal["m5", "h", "d"]
RESOLUTIONS: dict[Resolution, int] = {"m5": 300, "h": 3_600, "d": 86_400}
"""Bucket size in seconds."""
KEPT: dict[Resolution, int] = {"m5": 12, "h": 24, "d": 30}
"""Buckets kept per resolution (the longest window it serves)."""


@dataclass(frozen=True, slots=True)
class Window:
    """A window: ``buckets`` consecutive buckets of ``resolution`` ending with the current one."""

    resolution: Resolution
    buckets: int


LABEL_DELAY_DAYS = 7
"""Label-derived rates of terminals and merchants look at payments old enough to be labelled: the window ends this
many days before the payment's day (the handbook's delay). Places keep their days that much longer."""
PLACE_KEPT_DAYS = KEPT["d"] + LABEL_DELAY_DAYS

WINDOWS: dict[str, Window] = {
    "1h": Window("m5", 12),
    "24h": Window("h", 24),
    "1d": Window("d", 1),
    "7d": Window("d", 7),
    "30d": Window("d", 30),
}


def bucket_of(epoch_s: float, resolution: Resolution) -> int:
    """Index of the bucket of ``resolution`` holding the instant ``epoch_s`` (seconds since the epoch, UTC)."""
    return int(epoch_s // RESOLUTIONS[resolution])


def window(epoch_s: float, name: str) -> tuple[Resolution, int, int]:
    """(resolution, first bucket, last bucket) of window ``name`` at ``epoch_s``, both ends included. A store reads
    from ``max(first, newest - kept + 1)``: buckets it has dropped are gone."""
    spec = WINDOWS[name]
    last = bucket_of(epoch_s, spec.resolution)
    return spec.resolution, last - spec.buckets + 1, last
