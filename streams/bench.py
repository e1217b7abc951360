"""``fraudpipe bench``: the worker measured end to end on local Kafka and Redis, with its baselines, in one run.

Preparation (in ``work_dir``): a default-preset simulation; its first ``history_days`` days train a champion and
warm Redis (``features backfill``); the days after them are cut into fresh slices of events, each replayed once.

Runs, each against fresh topics (own prefix) and the warm Redis state, with ``workers`` worker processes:

- **passthrough** — the worker in ``passthrough`` mode (consume → produce, the same client stack): the ceiling;
- **max** — ``events`` replayed as fast as the replayer goes: decisions/s (all of them, over the time from the first
  event produced to the last decision published: a batch's decisions share one publish time, so a window trimmed
  to the middle decisions can be a single instant), latency from produce time to decision published (Kafka
  timestamps of the input and of the decision), worker CPU seconds per 1k events and peak RSS (``/proc``);
  ``repeat`` times, medians reported;
- **1k/s** and **half** — paced at 1,000/s and at half the measured maximum: latency percentiles;
- **naive** — the worker in ``naive`` mode (one Redis call and one model call per event): the floor;
- **stages** — in process, per event at the configured batch size: decode + validate, features (one store call
  and the feature matrix), model (scores, outcomes, reason codes for alerts), decide + encode + produce (the
  Decision and Alert events, JSON, awaited deliveries).

Redis memory: bytes per card key (``MEMORY USAGE``, sampled) and all of Redis' memory growth during the warm-up per
active card (markers and places included). Absolute numbers are this machine's; the ratios are measured in the
same run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from confluent_kafka import Consumer

from features.backfill import backfill
from features.batch import feature_matrix
from features.store import RedisFeatureStore, redis_client
from fraudpipe.clock import SystemClock
from fraudpipe.codec import encode
from fraudpipe.contracts import Transaction
from fraudpipe.files import open_source
from fraudpipe.settings import Settings, TopicSettings
from fraudpipe.simulator.config import default
from fraudpipe.simulator.generate import Day, simulate
from fraudpipe.simulator.output import write_simulation
from models.dataset import load_history
from models.registry import Registry
from models.train import latest_windows, train_version
from streams.intake import RawRecord, intake
from streams.replay import ReplayOptions, replay
from streams.topics import create_topics, topic_specs

__all__ = ["TARGETS", "BenchOptions", "ensure_services", "markdown", "run"]

KEY = b"fraudpipe-bench-tokenization-key"


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """What to measure: ``events`` for the maximum-rate runs, ``paced_events`` for each paced run, ``naive_events``
    for the floor; ``history_days`` of warm state; ``customers`` of the simulation."""

    events: int = 200_000
    workers: int = 1
    repeat: int = 1
    paced_events: int = 30_000
    naive_events: int = 10_000
    stage_events: int = 10_000
    history_days: int = 30
    customers: int = 5_000


@dataclass(slots=True)
class Run:
    """One replay through the worker(s): what was measured."""

    name: str
    events: int
    decisions: int = 0
    eps: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    cpu_s_per_1k: float = 0.0
    rss_mb: float = 0.0
    seconds: float = 0.0


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


def prepare(work_dir: Path, options: BenchOptions, progress: Callable[[str], None] | None) -> dict[str, Path]:
    """Simulate, and write the history and one folder per slice under ``work_dir``; returns their paths."""
    sizes = {"max": options.events, "1k": options.paced_events, "half": options.paced_events,
             "naive": options.naive_events, "stages": options.stage_events}  # fmt: skip
    per_day = options.customers * 1.9  # the default preset's payments per customer and day, about
    extra = int(sum(sizes.values()) * options.repeat / per_day) + len(sizes) + 2
    config = default(days=options.history_days + extra, customers=options.customers, terminals=2 * options.customers)
    _say(progress, f"simulating {config.days} days of {options.customers:,} customers")
    population, run = simulate(config, KEY)
    days = list(run)
    history, rest = days[: options.history_days], days[options.history_days :]
    paths = {"history": work_dir / "history"}
    write_simulation(paths["history"], config, population, iter(history), overwrite=True)
    repeated = {f"max-{i}" if i else "max": options.events for i in range(options.repeat)}
    for name, taken in _slices(rest, {**repeated, **{k: v for k, v in sizes.items() if k != "max"}}).items():
        paths[name] = work_dir / name
        cut = [dataclasses.replace(d, labels=d.labels.filter(pl.col("known_at") < taken[-1].date + timedelta(days=1)))
               for d in taken]  # fmt: skip
        write_simulation(paths[name], config, population, iter(cut), overwrite=True)
    return paths


def train_and_warm(
    settings: Settings, paths: dict[str, Path], progress: Callable[[str], None] | None
) -> dict[str, Any]:
    """Register a champion trained on the history and warm Redis with it; Redis memory figures."""
    registry = Registry(settings.paths.models_dir)
    if registry.aliases().get("champion") is None:
        _say(progress, "training the champion on the history")
        history = load_history(paths["history"], {}, key=KEY)
        trained = train_version(history, latest_windows(history, 14, 3, 4), settings.training)
        registry.promote(registry.register(trained.fitted.booster, trained.fields).version, why="fraudpipe bench")
    client = redis_client(settings.redis)
    store = RedisFeatureStore(client, settings.redis.key_prefix)
    before = int(client.info("memory")["used_memory"])
    _say(progress, "warming Redis with the history")
    stats = backfill(open_source(paths["history"], {}, key=KEY), store)
    after = int(client.info("memory")["used_memory"])
    cards = list(client.scan_iter(match=f"{settings.redis.key_prefix}card:*", count=10_000))
    sample = cards[:: max(1, len(cards) // 2_000)]
    card_bytes = sum(client.memory_usage(k) or 0 for k in sample) / max(len(sample), 1)
    return {
        "warm_transactions": stats.transactions,
        "cards": len(cards),
        "redis_bytes_per_card": round(card_bytes),
        "redis_total_bytes_per_card": round((after - before) / max(len(cards), 1)),
    }


# --- runs ----------------------------------------------------------------------------------------------------------


def _proc(pid: int) -> tuple[float, float]:
    """(CPU seconds so far, peak RSS in MB) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    peak = 0.0
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return cpu, peak


def _worker_env(settings: Settings, topics: TopicSettings, mode: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FRAUD_")}
    if settings.redis.username is not None:  # the Redis login (scripts/services.sh's Redis asks for one)
        env["FRAUD_REDIS__USERNAME"] = settings.redis.username
    if settings.redis.password is not None:
        env["FRAUD_REDIS__PASSWORD"] = settings.redis.password.get_secret_value()
    env |= {
        "FRAUD_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "FRAUD_KAFKA__APP_ID": f"{settings.kafka.app_id}-{topics.prefix}",
        "FRAUD_TOPICS__PREFIX": topics.prefix,
        "FRAUD_TOPICS__PARTITIONS": str(topics.partitions),
        "FRAUD_REDIS__URL": settings.redis.url,
        "FRAUD_REDIS__KEY_PREFIX": settings.redis.key_prefix,
        "FRAUD_PATHS__DATA_DIR": str(settings.paths.data_dir / topics.prefix.rstrip("-")),
        "FRAUD_PATHS__MODELS_DIR": str(settings.paths.models_dir),
        "FRAUD_METRICS__PORT": "0",
        "FRAUD_SCORING__MODE": mode,
        "FRAUD_SCORING__BATCH_SIZE": str(settings.scoring.batch_size),
        "FRAUD_SCORING__BATCH_WITHIN_MS": str(settings.scoring.batch_within_ms),
    }
    return env


def _start_workers(settings: Settings, topics: TopicSettings, mode: str, count: int,
                   logs: Path) -> list[subprocess.Popen[bytes]]:  # fmt: skip
    workers = []
    for i in range(count):
        log = logs / f"{topics.prefix}worker-{i}.log"
        with log.open("wb") as output:
            workers.append(subprocess.Popen([sys.executable, "-m", "fraudpipe", "worker", "-l", "info"],
                                            env=_worker_env(settings, topics, mode), stdout=output,
                                            stderr=subprocess.STDOUT))  # fmt: skip
    deadline = time.monotonic() + 120
    for i, worker in enumerate(workers):  # ready: partitions assigned and the agent started
        log = logs / f"{topics.prefix}worker-{i}.log"
        while "Ready" not in log.read_text(errors="replace"):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start; its log: {log}\n{log.read_text()[-2000:]}")
            time.sleep(0.5)
    time.sleep(3 if count > 1 else 1)  # let a group of several settle its assignment
    return workers


def _timestamps(bootstrap: str, topic: str, expected: int, id_of: Callable[[bytes], str],
                timeout_s: float) -> dict[str, int]:  # fmt: skip
    """txn id -> the earliest Kafka timestamp (ms) of its message on ``topic``, once ``expected`` ids are seen."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([topic])
    seen: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            for message in consumer.consume(10_000, timeout=1.0):
                value = message.value()
                if message.error() is None and value is not None:
                    ident = id_of(value)
                    stamp = message.timestamp()[1]
                    if ident not in seen or stamp < seen[ident]:
                        seen[ident] = stamp
    finally:
        consumer.close()
    return seen


def _txn_id(value: bytes) -> str:
    return str(json.loads(value)["txn_id"])


def _measure(name: str, settings: Settings, folder: Path, mode: str, rate: float | None, workers: int,
             logs: Path) -> Run:  # fmt: skip
    """Replay ``folder`` through fresh topics and ``workers`` workers in ``mode``; what it measured."""
    topics = TopicSettings(prefix=f"bench-{uuid.uuid4().hex[:8]}-", partitions=max(settings.topics.partitions, workers))
    create_topics(settings.kafka, topic_specs(topics), timeout_s=30)
    processes = _start_workers(settings, topics, mode, workers, logs)
    try:
        cpu_before = sum(_proc(p.pid)[0] for p in processes)
        started = time.monotonic()
        stats = replay(open_source(folder, {}, key=KEY), settings.kafka, topics,
                       ReplayOptions(rate=rate, drain_labels=False))  # fmt: skip
        if stats.failed:
            raise RuntimeError(f"replay failed: {stats.first_error}")
        bootstrap = settings.kafka.bootstrap_servers
        decided = _timestamps(bootstrap, topics.full(topics.scores), stats.transactions, _txn_id, timeout_s=900)
        seconds = time.monotonic() - started
        usage = [_proc(p.pid) for p in processes]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
    produced = _timestamps(bootstrap, topics.full(topics.transactions), stats.transactions, _txn_id, timeout_s=120)
    run = Run(name, stats.transactions, len(decided), seconds=seconds)
    both = [ident for ident in decided if ident in produced]
    latency = np.array([decided[i] - produced[i] for i in both], dtype=np.float64)
    if len(latency):
        run.latency_ms = {f"p{q}": float(np.percentile(latency, q)) for q in (50, 95, 99)}
        run.latency_ms["max"] = float(latency.max())
    if decided and produced:  # publish times are per batch: a trimmed window of them can be one instant
        span_ms = max(decided.values()) - min(produced.values())
        run.eps = len(decided) / max(span_ms / 1000, 1e-3)
    run.cpu_s_per_1k = (sum(u[0] for u in usage) - cpu_before) / max(run.events / 1000, 1e-9)
    run.rss_mb = max(u[1] for u in usage)
    return run


# --- stages --------------------------------------------------------------------------------------------------------


def stages(settings: Settings, folder: Path) -> dict[str, float]:
    """Median µs per event of each hot-path stage at the configured batch size, in process (module docstring)."""
    from features.definitions import FEATURE_NAMES
    from fraudpipe.contracts import ModelRef, Thresholds
    from streams.pipeline import Batch, from_settings
    from streams.publisher import KafkaPublisher

    frame = pl.read_parquet(folder / "transactions" / "**" / "*.parquet").sort("event_time")
    fields = [name for name in Transaction.model_fields if name in frame.columns]
    raw = [encode(Transaction(**row)) for row in frame.select(fields).iter_rows(named=True)]
    pipeline, _ = from_settings(settings, SystemClock())
    scorer = pipeline.models.start()
    topics = TopicSettings(prefix=f"bench-{uuid.uuid4().hex[:8]}-", partitions=settings.topics.partitions)
    create_topics(settings.kafka, topic_specs(topics), timeout_s=30)
    publisher = KafkaPublisher(settings.kafka)
    scores_topic = topics.full(topics.scores)
    size = settings.scoring.batch_size
    alerts_topic = topics.full(topics.alerts)
    timings: dict[str, list[float]] = {"decode_validate": [], "features": [], "model": [], "decide_encode_produce": []}

    async def go() -> None:
        clock = SystemClock()
        for start in range(0, len(raw) - size + 1, size):
            chunk = raw[start : start + size]
            t0 = time.perf_counter()
            records = [RawRecord(topic="bench", partition=0, offset=i, key=None, value=value)
                       for i, value in enumerate(chunk)]  # fmt: skip
            result = intake(records, Transaction, latest_event_time=clock.now() + timedelta(days=3650),
                            failed_at=clock.now())  # fmt: skip
            txns = [txn for _, txn in result.valid]
            t1 = time.perf_counter()
            x = feature_matrix(pipeline.store.raw(txns), txns)
            t2 = time.perf_counter()
            scores = scorer.score(x)
            policy = pipeline._policy(scorer)
            outcomes = policy.decide(scores, x)
            alerting = [i for i, o in enumerate(outcomes) if o != "approve"]
            reasons = dict(zip(alerting, scorer.explain(x[alerting], settings.scoring.reason_codes), strict=True))
            t3 = time.perf_counter()
            batch = Batch()
            thresholds = Thresholds(review=policy.review, decline=policy.decline)
            ref = ModelRef(version=scorer.version, sha256=scorer.model.sha256)
            for i, txn in enumerate(txns):
                features = {n: (None if v != v else v) for n, v in zip(FEATURE_NAMES, x[i].tolist(), strict=True)}
                pipeline._emit(batch, txn, features, ref, float(scores[i]), outcomes[i], thresholds,
                               reasons.get(i, []), 0.0, False)  # fmt: skip
            messages = [(scores_topic, d.card_token.encode(), encode(d)) for d in batch.decisions]
            messages += [(alerts_topic, a.card_token.encode(), encode(a)) for a in batch.alerts]
            await publisher.publish(messages)
            t4 = time.perf_counter()
            for name, seconds in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                timings[name].append(seconds / len(chunk) * 1e6)

    asyncio.run(go())
    return {name: round(statistics.median(values), 1) for name, values in timings.items() if values}


# --- the whole bench -----------------------------------------------------------------------------------------------


def _answering(settings: Settings) -> bool:
    try:
        with redis_client(settings.redis) as client:
            client.ping()
        consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "bench-probe"})
        try:
            consumer.list_topics(timeout=5)
        finally:
            consumer.close()
    except Exception:  # any failure means: not answering
        return False
    return True


def _services(action: str) -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "services.sh"
    bash = shutil.which("bash")
    if not script.exists() or bash is None:
        raise RuntimeError("Kafka or Redis does not answer, and scripts/services.sh is not here to start them")
    subprocess.run([bash, str(script), action], check=True)  # noqa: S603 - our own script


def ensure_services(settings: Settings) -> bool:
    """Start local Kafka and Redis with the project's script when they do not answer; whether it started them."""
    if _answering(settings):
        return False
    _services("start")
    return True


def stop_services() -> None:
    """Stop the local Kafka and Redis the project's script started (by their PID files)."""
    _services("stop")


def run(settings: Settings, options: BenchOptions, work_dir: Path,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """The whole benchmark (module docstring); the JSON report."""
    ensure_services(settings)
    work_dir.mkdir(parents=True, exist_ok=True)
    logs = work_dir / "logs"
    logs.mkdir(exist_ok=True)
    paths = prepare(work_dir, options, progress)
    memory = train_and_warm(settings, paths, progress)
    _say(progress, "passthrough baseline")
    ceiling = _measure("passthrough", settings, paths["max"], "passthrough", None, options.workers, logs)
    maxima = []
    for i in range(options.repeat):
        _say(progress, f"maximum rate, run {i + 1} of {options.repeat}")
        maxima.append(_measure("max", settings, paths[f"max-{i}" if i else "max"], "score", None, options.workers,
                               logs))  # fmt: skip
    best = sorted(maxima, key=lambda r: r.eps)[len(maxima) // 2]
    _say(progress, "paced at 1,000/s")
    at_1k = _measure("1k", settings, paths["1k"], "score", 1_000.0, options.workers, logs)
    half_rate = max(best.eps / 2, 1.0)
    _say(progress, f"paced at half the maximum ({half_rate:,.0f}/s)")
    at_half = _measure("half", settings, paths["half"], "score", half_rate, options.workers, logs)
    _say(progress, "naive baseline")
    floor = _measure("naive", settings, paths["naive"], "naive", None, options.workers, logs)
    _say(progress, "stages")
    per_stage = stages(settings, paths["stages"])
    throughput = statistics.median(r.eps for r in maxima)
    return {
        "throughput_eps": round(throughput),
        "p50_ms": round(best.latency_ms.get("p50", float("nan")), 1),
        "p95_ms": round(best.latency_ms.get("p95", float("nan")), 1),
        "p99_ms": round(best.latency_ms.get("p99", float("nan")), 1),
        "max_ms": round(best.latency_ms.get("max", float("nan")), 1),
        "passthrough_eps": round(ceiling.eps),
        "naive_eps": round(floor.eps),
        "ratio_to_passthrough": round(throughput / ceiling.eps, 3) if ceiling.eps else None,
        "ratio_to_naive": round(throughput / floor.eps, 2) if floor.eps else None,
        "p50_ms_at_1k": round(at_1k.latency_ms.get("p50", float("nan")), 1),
        "p99_ms_at_1k": round(at_1k.latency_ms.get("p99", float("nan")), 1),
        "half_rate_eps": round(half_rate),
        "p50_ms_at_half": round(at_half.latency_ms.get("p50", float("nan")), 1),
        "p99_ms_at_half": round(at_half.latency_ms.get("p99", float("nan")), 1),
        "cpu_s_per_1k": round(best.cpu_s_per_1k, 3),
        "rss_mb": round(max(r.rss_mb for r in [*maxima, at_1k, at_half]), 1),
        **memory,
        "stages_us_per_event": per_stage,
        "workers": options.workers,
        "batch_size": settings.scoring.batch_size,
        "runs": [dataclasses.asdict(r) for r in [ceiling, *maxima, at_1k, at_half, floor]],
    }


TARGETS = (
    ("throughput_eps", ">=", 15_000, "decisions/s sustained"),
    ("ratio_to_passthrough", ">=", 0.5, "of the raw passthrough"),
    ("ratio_to_naive", ">=", 5.0, "x the naive variant"),
    ("p99_ms_at_1k", "<=", 25.0, "ms p99 at 1,000/s"),
    ("p99_ms_at_half", "<=", 50.0, "ms p99 at half the maximum"),
    ("rss_mb", "<=", 500.0, "MB worker RSS"),
    ("redis_bytes_per_card", "<=", 2_048, "bytes of Redis per card"),
)


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table, each target with its verdict."""
    lines = ["| measure | value | target | met |", "|---|---|---|---|"]
    for key, op, bound, what in TARGETS:
        value = report.get(key)
        met = value is not None and (value >= bound if op == ">=" else value <= bound)
        lines.append(f"| {key} | {value} | {op} {bound} ({what}) | {'yes' if met else 'no'} |")
    for key in ("p50_ms", "p99_ms", "max_ms", "passthrough_eps", "naive_eps", "p50_ms_at_1k", "half_rate_eps",
                "cpu_s_per_1k", "redis_total_bytes_per_card"):  # fmt: skip
        lines.append(f"| {key} | {report.get(key)} | | |")
    for stage, micros in report.get("stages_us_per_event", {}).items():
        lines.append(f"| stage {stage} (µs/event) | {micros} | | |")
    return "\n".join(lines)
