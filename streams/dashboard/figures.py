"""The dashboard's numbers, computed from plain values: Prometheus text in, snapshots, rates and quantiles out.

Pure: no network, no clock (the caller passes the time of each sample), no files.

- :func:`parse` reads one endpoint's exposition text (the format ``prometheus_client`` serves) into a
  :class:`Snapshot` of the ``fraudpipe_`` series the dashboard shows; :func:`combine` adds snapshots of several
  processes (counters and histograms add up; drift gauges, which only ``fraudpipe monitor`` exports, are taken as
  they come).
- :func:`update` turns successive snapshots into chart points (:class:`Point`): decisions per second and end-to-end
  latency quantiles over the interval between two samples, per source, so a restarted worker (its counters back at
  zero) or a source that stops answering makes no spike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Point", "Series", "Snapshot", "combine", "parse", "quantile", "update"]

K = TypeVar("K")
Buckets = Mapping[float, float]
"""A histogram: upper bound ``le`` in seconds (``math.inf`` last) -> cumulative count of observations."""


@dataclass(frozen=True)
class Snapshot:
    """The dashboard's series of one or more processes at one instant (counts are counter values: since the
    process started)."""

    decisions: Mapping[str, float] = field(default_factory=dict)
    """Outcome (approve / review / decline) -> decisions taken."""
    degraded: float = 0.0
    """Decisions taken without features (fallback policy)."""
    dead_letters: Mapping[tuple[str, str], float] = field(default_factory=dict)
    """(source topic, reason code) -> records dead-lettered."""
    sink_dead_letters: Mapping[str, float] = field(default_factory=dict)
    """Sink -> alerts it gave up on."""
    latency: Buckets = field(default_factory=dict)
    """End to end (Kafka timestamp of the event to its decision published), seconds."""
    latency_count: float = 0.0
    latency_sum_s: float = 0.0
    drift_psi: Mapping[tuple[str, str], float] = field(default_factory=dict)
    """(model version, column) -> PSI over the monitor's drift window."""
    drift_breaches: Mapping[str, float] = field(default_factory=dict)
    """Model version -> columns past the breach bound."""
    models: tuple[tuple[str, str], ...] = ()
    """(version, model SHA-256) each worker says it serves, sorted, without repeats."""
    quality: Mapping[tuple[str, str], float] = field(default_factory=dict)
    """(model version, metric) -> the monitor's quality and money of the latest matured day."""
    fpr_ratios: Mapping[tuple[str, str], float] = field(default_factory=dict)
    """(segment column, segment) -> its matured decisions' false-positive-rate ratio to the column's reference."""
    fairness_breaches: Mapping[str, float] = field(default_factory=dict)
    """Segment column -> its segments whose FPR ratio is outside the disparity bound (empty: not watched)."""


def _add(into: dict[K, float], key: K, value: float) -> None:
    into[key] = into.get(key, 0.0) + value


def parse(text: str) -> Snapshot:
    """The dashboard's series in ``text`` (Prometheus exposition format); series it does not know, and NaN or
    infinite values, are ignored.

    Raises:
        ValueError: ``text`` is not exposition text.
    """
    decisions: dict[str, float] = {}
    dead: dict[tuple[str, str], float] = {}
    sink_dead: dict[str, float] = {}
    buckets: dict[float, float] = {}
    psi: dict[tuple[str, str], float] = {}
    breaches: dict[str, float] = {}
    models: set[tuple[str, str]] = set()
    quality: dict[tuple[str, str], float] = {}
    ratios: dict[tuple[str, str], float] = {}
    fairness: dict[str, float] = {}
    degraded = count = total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if not math.isfinite(value):
                continue
            if name == "fraudpipe_decisions_total":
                _add(decisions, labels.get("outcome", "?"), value)
            elif name == "fraudpipe_degraded_decisions_total":
                degraded += value
            elif name == "fraudpipe_dead_letters_total":
                _add(dead, (labels.get("topic", "?"), labels.get("reason", "?")), value)
            elif name == "fraudpipe_sink_dead_letters_total":
                _add(sink_dead, labels.get("sink", "?"), value)
            elif name == "fraudpipe_end_to_end_seconds_bucket":
                _add(buckets, float(labels.get("le", "+Inf")), value)
            elif name == "fraudpipe_end_to_end_seconds_count":
                count += value
            elif name == "fraudpipe_end_to_end_seconds_sum":
                total += value
            elif name == "fraudpipe_drift_psi":
                psi[(labels.get("model_version", "?"), labels.get("column", "?"))] = value
            elif name == "fraudpipe_drift_breaches":
                breaches[labels.get("model_version", "?")] = value
            elif name == "fraudpipe_live_quality":
                quality[(labels.get("model_version", "?"), labels.get("metric", "?"))] = value
            elif name == "fraudpipe_segment_fpr_ratio":
                ratios[(labels.get("column", "?"), labels.get("segment", "?"))] = value
            elif name == "fraudpipe_fairness_breaches":
                fairness[labels.get("column", "?")] = value
            elif name == "fraudpipe_model_info" and "version" in labels:
                models.add((labels["version"], labels.get("sha256", "")))
    return Snapshot(
        decisions=decisions,
        degraded=degraded,
        dead_letters=dead,
        sink_dead_letters=sink_dead,
        latency=dict(sorted(buckets.items())),
        latency_count=count,
        latency_sum_s=total,
        drift_psi=psi,
        drift_breaches=breaches,
        models=tuple(sorted(models)),
        quality=quality,
        fpr_ratios=ratios,
        fairness_breaches=fairness,
    )


def _summed(maps: Iterable[Mapping[K, float]]) -> dict[K, float]:
    out: dict[K, float] = {}
    for one in maps:
        for key, value in one.items():
            _add(out, key, value)
    return out


def combine(snapshots: Iterable[Snapshot]) -> Snapshot:
    """One snapshot of several processes: counts and histograms summed, drift, quality and fairness gauges and
    models merged."""
    parts = list(snapshots)
    psi: dict[tuple[str, str], float] = {}
    breaches: dict[str, float] = {}
    quality: dict[tuple[str, str], float] = {}
    ratios: dict[tuple[str, str], float] = {}
    fairness: dict[str, float] = {}
    for part in parts:
        psi.update(part.drift_psi)
        breaches.update(part.drift_breaches)
        quality.update(part.quality)
        ratios.update(part.fpr_ratios)
        fairness.update(part.fairness_breaches)
    return Snapshot(
        decisions=_summed(p.decisions for p in parts),
        degraded=sum(p.degraded for p in parts),
        dead_letters=_summed(p.dead_letters for p in parts),
        sink_dead_letters=_summed(p.sink_dead_letters for p in parts),
        latency=dict(sorted(_summed(p.latency for p in parts).items())),
        latency_count=sum(p.latency_count for p in parts),
        latency_sum_s=sum(p.latency_sum_s for p in parts),
        drift_psi=psi,
        drift_breaches=breaches,
        models=tuple(sorted({m for p in parts for m in p.models})),
        quality=quality,
        fpr_ratios=ratios,
        fairness_breaches=fairness,
    )


def quantile(q: float, buckets: Buckets) -> float | None:
    """The ``q`` quantile (0..1) of a cumulative histogram, interpolated linearly inside its bucket as Prometheus's
    ``histogram_quantile`` does; in the ``+Inf`` bucket, the largest finite bound. ``None`` without observations."""
    bounds = sorted(buckets.items())
    total = bounds[-1][1] if bounds else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le, cumulative in bounds:
        if cumulative >= rank:
            if math.isinf(le):
                return lower
            inside = cumulative - below
            return le if inside <= 0 else lower + (le - lower) * (rank - below) / inside
        lower, below = le, cumulative
    return lower


@dataclass(frozen=True)
class Point:
    """One chart point: the interval ending at ``at`` (Unix seconds)."""

    at: float
    decisions_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    """End-to-end latency quantiles of the decisions in the interval; ``None`` when there were none."""


@dataclass(frozen=True)
class Series:
    """Chart points, oldest first, and the last sample of each source (the baseline of the next interval)."""

    points: tuple[Point, ...] = ()
    last_at: float | None = None
    last: Mapping[str, Snapshot] = field(default_factory=dict)


def _increase(now: float, before: float) -> float:
    """A counter's increase; a counter lower than before was reset (process restarted): all of it is new."""
    return now - before if now >= before else now


def update(series: Series, at: float, samples: Mapping[str, Snapshot], *, min_step_s: float = 1.0,
           keep: int = 300) -> Series:  # fmt: skip
    """``series`` with the interval up to ``at`` (Unix seconds) added from ``samples`` (source name -> snapshot of
    the sources that answered). Samples closer than ``min_step_s`` to the previous one are ignored (several pages
    polling); a source counts from its second sample on; at most ``keep`` points are kept."""
    if series.last_at is not None and at - series.last_at < min_step_s:
        return series
    if series.last_at is None or at <= series.last_at:
        return Series(series.points, at, dict(samples))
    seconds = at - series.last_at
    decided = 0.0
    latency: dict[float, float] = {}
    for name, now in samples.items():
        before = series.last.get(name)
        if before is None:
            continue
        decided += sum(_increase(v, before.decisions.get(k, 0.0)) for k, v in now.decisions.items())
        for le, cumulative in now.latency.items():
            latency[le] = latency.get(le, 0.0) + _increase(cumulative, before.latency.get(le, 0.0))
    p50, p99 = quantile(0.5, latency), quantile(0.99, latency)
    point = Point(
        at=at,
        decisions_per_s=decided / seconds,
        p50_ms=None if p50 is None else p50 * 1000,
        p99_ms=None if p99 is None else p99 * 1000,
    )
    return Series((*series.points, point)[-keep:], at, dict(samples))
