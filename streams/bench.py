"""``fraudpipe bench``: the worker measured end to end on local Kafka and Redis, with its baselines, in one run.

Preparation (in ``work_dir``): a default-preset simulation; its first ``history_days`` days train a champion and
warm Redis (``features backfill``); the days after them are cut into fresh slices of events, each replayed once,
in event-time order, against the warm Redis state.

Each run goes through real ``python -m fraudpipe worker`` processes on fresh topics whose timestamps the broker sets
when it appends (:mod:`streams.bench_runs` says how each figure is taken), after a warm-up of ``warmup_events``
(the start of the day before its slice) that no figure counts. The workers run the scoring agents only
(``FRAUD_WORKER__AGENTS=["score"]``): the bench measures the decision path; alert delivery and labels are other
agents, which scale apart. In order:

- **passthrough** — the worker in ``passthrough`` mode (consume → produce, the same client stack) at full speed,
  on the first maximum-rate slice (it touches no Redis): reported, not a target;
- **max** — ``events`` at full speed from a topic filled before the workers start, ``repeat`` times, medians:
  decisions/s, latency (the workers' clock), worker CPU per 1k events, peak RSS; ``replay_eps`` is the rate at which
  the replayer filled the topic;
- **Redis memory**, right after the max runs, per active card: the card's own keys (its feature state; ``MEMORY
  USAGE``, sampled), and all of Redis' growth since before the warm-up (``INFO memory``: markers, places, labels and
  the decision memory included), with the share of each key family;
- **1k/s** and **half** — paced at 1,000/s and at half the measured maximum (the replayer's ``linger.ms`` 5:
  :data:`streams.bench_runs.PACED_LINGER_MS`), ``repeat`` times, medians: latency between the broker's append times
  of input and decision; at 1,000/s also the decision-log files the worker wrote per minute;
- **naive** — the worker in ``naive`` mode (one Redis call and one model call per event) at full speed: the floor;
- **sweep** — one full-speed run of ``sweep_events`` (at most 1,000 batches) per batch size
  (``FRAUD_SCORING__BATCH_SIZE``; not repeated): decisions/s and p99 (workers' clock), drawn as a latency /
  throughput curve in the HTML report;
- **in process** — a fresh slice at the configured batch size through :meth:`streams.pipeline.Pipeline.score` and
  the encoding of its outputs (:func:`_encode_outputs`) in this process, without Kafka: ``inprocess_eps`` =
  decisions ÷ seconds spent scoring and encoding (the first batch, a warm-up, left out); decoding and validating
  are timed apart (``stages_us_per_event``). End-to-end ÷ this is what the streaming shell costs. Its own slice:
  the workers' events would be answered from the decision memory.

Absolute numbers are this machine's; the ratios are measured in the same run. A run that does not get every
decision back raises :class:`streams.bench_decisions.IncompleteRunError` rather than report partial figures.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import redis

from features.backfill import backfill
from features.store import RedisFeatureStore, redis_client
from fraudpipe.clock import SystemClock
from fraudpipe.contracts import Transaction
from fraudpipe.files import open_source
from fraudpipe.settings import Settings
from fraudpipe.simulator.config import default
from fraudpipe.simulator.generate import Day, simulate
from fraudpipe.simulator.output import write_simulation
from models.dataset import load_history
from models.registry import Registry
from models.train import latest_windows, train_version
from streams.bench_runs import Run, RunSpec, as_dict, measure
from streams.intake import RawRecord, intake
from streams.pipeline import Batch, from_settings

__all__ = ["KEY", "SWEEP", "BenchOptions", "inprocess", "prepare", "redis_memory", "run", "train_and_warm"]

KEY = b"fraudpipe-bench-tokenization-key"
SWEEP = (1, 10, 50, 200, 500, 2000)
"""Batch sizes of the sweep, by default."""


# --- the pipeline's outputs: the one place that knows the shape of a Batch ----------------------------------------


def _encode_outputs(batch: Batch) -> tuple[int, list[tuple[bytes, bytes]]]:
    """The number of decisions in ``batch``, and the (key, value) messages a worker publishes for it: each decision,
    then each alert, keyed by card token, as contract JSON. The pipeline encodes them itself, column-wise, inside
    :meth:`~streams.pipeline.Pipeline.score`: this only gathers them."""
    return len(batch.decision_messages), [*batch.decision_messages, *batch.alert_messages]


def _batch_seconds(batch: Batch) -> tuple[float, float]:
    """Seconds ``batch`` spent reading the feature store, and in the model."""
    return batch.store_s, batch.model_s


# --- options -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """What to measure: ``events`` per maximum-rate run, ``paced_events`` per paced run, ``naive_events`` for the
    floor, ``inprocess_events`` in process, ``sweep_events`` per batch size of ``sweep`` (empty: no sweep; at most
    1,000 batches each, so that size 1 takes a minute, not ten); before each run through workers a warm-up of
    ``warmup_events`` (at least two batches, at most a hundred; 0: none), left out of the figures;
    ``history_days`` of warm state; ``customers`` of the simulation (one card each)."""

    events: int = 200_000
    workers: int = 1
    repeat: int = 1
    paced_events: int = 30_000
    naive_events: int = 10_000
    inprocess_events: int = 10_000
    sweep: tuple[int, ...] = SWEEP
    sweep_events: int = 20_000
    warmup_events: int = 1_000
    history_days: int = 30
    customers: int = 5_000

    def slices(self, batch_size: int) -> dict[str, int]:
        """Events of each slice, in the order they are replayed: each run's warm-up (``<run>.warmup``) before it."""
        kinds = (("max", self.events), ("1k", self.paced_events), ("half", self.paced_events))
        runs = {f"{kind}-{i}": size for kind, size in kinds for i in range(self.repeat)}
        runs["naive"] = self.naive_events
        runs |= {f"sweep-{size}": min(self.sweep_events, 1_000 * size) for size in self.sweep}
        out: dict[str, int] = {}
        for name, size in runs.items():
            if self.warmup_events:
                batch = int(name.removeprefix("sweep-")) if name.startswith("sweep-") else batch_size
                out[f"{name}.warmup"] = max(min(self.warmup_events, 100 * batch), 2 * batch)
            out[name] = size
        return out | {"inprocess": self.inprocess_events}


def _say(progress: Callable[[str], None] | None, text: str) -> None:
    if progress is not None:
        progress(text)


# --- preparation ---------------------------------------------------------------------------------------------------


def _slices(days: list[Day], sizes: dict[str, int]) -> dict[str, list[Day]]:
    """Consecutive whole days holding at least each size's events, in the order given."""
    out: dict[str, list[Day]] = {}
    position = 0
    for name, size in sizes.items():
        taken: list[Day] = []
        while sum(d.transactions.height for d in taken) < size:
            if position >= len(days):
                raise ValueError(f"the simulation ran out of days for the {name} slice")
            taken.append(days[position])
            position += 1
        out[name] = taken
    return out


def _first(days: list[Day], size: int) -> list[Day]:
    """The first ``size`` transactions of ``days`` (whole days, then the start of one), with their labels."""
    out: list[Day] = []
    for day in days:
        kept = day.transactions.head(size - sum(d.transactions.height for d in out))
        if kept.height:
            labels = day.labels.filter(pl.col("txn_id").is_in(kept["txn_id"].implode()))
            out.append(dataclasses.replace(day, transactions=kept, labels=labels))
    return out


def prepare(work_dir: Path, options: BenchOptions, batch_size: int,
            progress: Callable[[str], None] | None) -> dict[str, Path]:  # fmt: skip
    """Simulate, and write the history and one folder per slice under ``work_dir`` (a warm-up: the start of a
    day); returns their paths."""
    sizes = options.slices(batch_size)
    per_day = options.customers * 1.9  # the default preset's payments per customer and day, about
    extra = int(sum(sizes.values()) / per_day) + len(sizes) + 2
    config = default(days=options.history_days + extra, customers=options.customers, terminals=2 * options.customers)
    _say(progress, f"simulating {config.days} days of {options.customers:,} customers")
    population, simulated = simulate(config, KEY)
    days = list(simulated)
    history, rest = days[: options.history_days], days[options.history_days :]
    paths = {"history": work_dir / "history"}
    write_simulation(paths["history"], config, population, iter(history), overwrite=True)
    for name, taken in _slices(rest, sizes).items():
        paths[name] = work_dir / name
        taken = _first(taken, sizes[name]) if name.endswith(".warmup") else taken
        cut = [dataclasses.replace(d, labels=d.labels.filter(pl.col("known_at") < taken[-1].date + timedelta(days=1)))
               for d in taken]  # fmt: skip
        write_simulation(paths[name], config, population, iter(cut), overwrite=True)
    return paths


def _used_memory(client: redis.Redis) -> int:
    """Redis' ``used_memory`` in bytes, once the frees it does in the background are done."""
    for _ in range(100):
        info = client.info("memory")
        if int(info.get("lazyfree_pending_objects", 0)) == 0:
            break
        time.sleep(0.1)
    return int(info["used_memory"])


def train_and_warm(settings: Settings, paths: dict[str, Path], progress: Callable[[str], None] | None
                   ) -> tuple[int, int]:  # fmt: skip
    """Register a champion trained on the history and warm Redis with it; (Redis' used memory in bytes before the
    warm-up, transactions warmed)."""
    registry = Registry(settings.paths.models_dir)
    if registry.aliases().get("champion") is None:
        _say(progress, "training the champion on the history")
        history = load_history(paths["history"], {}, key=KEY)
        trained = train_version(history, latest_windows(history, 14, 3, 4), settings.training)
        registry.promote(registry.register(trained.fitted.booster, trained.fields).version, why="fraudpipe bench")
    with redis_client(settings.redis) as client:
        before = _used_memory(client)
        _say(progress, "warming Redis with the history")
        stats = backfill(
            open_source(paths["history"], {}, key=KEY), RedisFeatureStore(client, settings.redis.key_prefix)
        )
    return before, stats.transactions


def redis_memory(settings: Settings, before: int, sample: int = 2_000) -> dict[str, Any]:
    """Bytes per active card: the card's own keys (its state: the key families named ``card…``, ``card:`` and
    ``cardlog:`` today; ``MEMORY USAGE``, mean of up to ``sample`` keys of each x their count), all of Redis' growth
    since ``before`` (``used_memory``: markers, places, labels and decision memory included), and each key family's
    estimated share (``<prefix><family>:…``, the same way). Active cards: the keys of the largest ``card…`` family."""
    prefix = settings.redis.key_prefix
    counts: Counter[str] = Counter()
    sampled: dict[str, list[bytes]] = {}
    with redis_client(settings.redis.model_copy(update={"socket_timeout_ms": 30_000})) as client:
        for key in client.scan_iter(match=f"{prefix}*", count=10_000):
            family = key[len(prefix) :].split(b":", 1)[0].decode(errors="replace")
            counts[family] += 1
            if len(kept := sampled.setdefault(family, [])) < sample:
                kept.append(key)
        total: dict[str, float] = {}
        for family, keys in sampled.items():
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.memory_usage(key, samples=0)
            total[family] = sum(size or 0 for size in pipe.execute()) / len(keys) * counts[family]
        after = _used_memory(client)
    own = [family for family in counts if family.startswith("card")]
    cards = max([counts[family] for family in own], default=0)
    per_card = max(cards, 1)
    return {
        "cards": cards,
        "redis_bytes_per_card": round(sum(total[family] for family in own) / per_card),
        "redis_total_bytes_per_card": round((after - before) / per_card),
        "redis_bytes_per_card_by_family": {family: round(total[family] / per_card) for family in sorted(counts)},
    }


# --- in process ----------------------------------------------------------------------------------------------------


def inprocess(settings: Settings, folder: Path) -> tuple[float, dict[str, float]]:
    """Decisions/s of the pipeline in this process and µs per event of its stages (module docstring): the slice in
    ``folder``, encoded as the replayer sends it, in batches of ``scoring.batch_size``."""
    raw = [value for chunk in open_source(folder, {}, key=KEY).chunks() for value in chunk.values]
    clock, size = SystemClock(), settings.scoring.batch_size
    pipeline, client = from_settings(settings, clock)
    pipeline.models.start()
    spent = dict.fromkeys(("decode_validate", "score", "store", "model", "encode"), 0.0)
    decided = events = 0

    def validated(start: int) -> tuple[list[Transaction], float]:
        """The batch from ``start`` through intake, and the seconds it took."""
        t0 = time.perf_counter()
        records = [RawRecord(topic="bench", partition=0, offset=start + i, key=None, value=value)
                   for i, value in enumerate(raw[start : start + size])]  # fmt: skip
        result = intake(records, Transaction, latest_event_time=clock.now() + timedelta(days=3650),
                        failed_at=clock.now())  # fmt: skip
        return [txn for _, txn in result.valid], time.perf_counter() - t0

    try:
        txns, decode_s = validated(0)
        for start in range(0, len(raw), size):  # each batch validated before the one before is scored, as the worker
            following, following_s = validated(start + size) if start + size < len(raw) else (None, 0.0)
            t1 = time.perf_counter()
            batch = pipeline.score(txns, [clock.monotonic()] * len(txns), then=following)
            t2 = time.perf_counter()
            count, _ = _encode_outputs(batch)
            t3 = time.perf_counter()
            if start > 0 or len(raw) <= size:  # not the warm-up batch
                store_s, model_s = _batch_seconds(batch)
                for name, seconds in zip(spent, (decode_s, t2 - t1, store_s, model_s, t3 - t2), strict=True):
                    spent[name] += seconds
                decided, events = decided + count, events + len(txns)
            txns, decode_s = following or [], following_s
    finally:
        client.close()
    eps = decided / (spent["score"] + spent["encode"]) if decided else 0.0
    return eps, {name: round(seconds / max(events, 1) * 1e6, 1) for name, seconds in spent.items()}


# --- the whole bench -----------------------------------------------------------------------------------------------


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None or value != value else round(value, digits)


def _median(runs: list[Run], figure: Callable[[Run], float | None]) -> float | None:
    values = [v for v in map(figure, runs) if v is not None]
    return statistics.median(values) if values else None


def run(settings: Settings, options: BenchOptions, work_dir: Path,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """The whole benchmark (module docstring) on Kafka and Redis that answer; the JSON report."""
    logs = work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    size = settings.scoring.batch_size
    paths = prepare(work_dir, options, size, progress)
    before, warmed = train_and_warm(settings, paths, progress)

    def go(name: str, what: str, mode: str = "score", rate: float | None = None, batch: int = size,
           folder: Path | None = None) -> Run:  # fmt: skip
        _say(progress, what)
        folder = folder or paths[name]
        spec = RunSpec(name, folder, mode, rate, batch, options.workers, paths.get(f"{folder.name}.warmup"))
        return measure(settings, spec, logs, KEY)

    ceiling = go("passthrough", "passthrough baseline", "passthrough", folder=paths["max-0"])
    maxima = [go(f"max-{i}", f"maximum rate, run {i + 1} of {options.repeat}") for i in range(options.repeat)]
    _say(progress, "Redis memory")
    memory = redis_memory(settings, before)
    throughput = statistics.median(r.eps for r in maxima)
    best = sorted(maxima, key=lambda r: r.eps)[len(maxima) // 2]
    at_1k = [go(f"1k-{i}", f"paced at 1,000/s, run {i + 1}", rate=1_000.0) for i in range(options.repeat)]
    half_rate = max(throughput / 2, 1.0)
    at_half = [go(f"half-{i}", f"paced at half the maximum ({half_rate:,.0f}/s), run {i + 1}", rate=half_rate)
               for i in range(options.repeat)]  # fmt: skip
    floor = go("naive", "naive baseline", "naive")
    sweep = [go(f"sweep-{b}", f"sweep: batch size {b}", batch=b) for b in options.sweep]
    _say(progress, "in process")
    inprocess_eps, stages = inprocess(settings, paths["inprocess"])
    return {
        "throughput_eps": round(throughput),
        **{f"{q}_ms": _round(best.latency_ms.get(q)) for q in ("p50", "p95", "p99", "max")},
        "passthrough_eps": round(ceiling.eps),
        "naive_eps": round(floor.eps),
        "inprocess_eps": round(inprocess_eps),
        "replay_eps": round(statistics.median(r.replay_eps for r in maxima)),
        "ratio_to_passthrough": _round(throughput / ceiling.eps, 3) if ceiling.eps else None,
        "ratio_to_naive": _round(throughput / floor.eps, 2) if floor.eps else None,
        "ratio_to_inprocess": _round(throughput / inprocess_eps, 3) if inprocess_eps else None,
        "p50_ms_at_1k": _round(_median(at_1k, lambda r: r.latency_ms.get("p50"))),
        "p99_ms_at_1k": _round(_median(at_1k, lambda r: r.latency_ms.get("p99"))),
        "decision_files_per_min_at_1k": _round(_median(at_1k, lambda r: r.decision_files_per_min)),
        "half_rate_eps": round(half_rate),
        "p50_ms_at_half": _round(_median(at_half, lambda r: r.latency_ms.get("p50"))),
        "p99_ms_at_half": _round(_median(at_half, lambda r: r.latency_ms.get("p99"))),
        "cpu_s_per_1k": _round(best.cpu_s_per_1k, 3),
        "rss_mb": _round(max(r.rss_mb for r in [*maxima, *at_1k, *at_half])),
        **memory,
        "warm_transactions": warmed,
        "stages_us_per_event": stages,
        "sweep": [
            {"batch_size": r.batch_size, "throughput_eps": round(r.eps), "p99_ms": _round(r.latency_ms.get("p99"))}
            for r in sweep
        ],
        "workers": options.workers,
        "batch_size": size,
        "repeat": options.repeat,
        "runs": [as_dict(r) for r in [ceiling, *maxima, *at_1k, *at_half, floor, *sweep]],
    }
