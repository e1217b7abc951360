"""One measured replay through ``fraudpipe worker`` processes, for :mod:`streams.bench`.

A run gets fresh topics (its own prefix; every one created with ``message.timestamp.type=LogAppendTime``, so the
broker stamps each message as it appends it: an input's and its decision's timestamps come from one clock and
leave the replayer's batching out), its own consumer group and data dir, and ``workers`` worker processes running
the scoring agents only (``FRAUD_WORKER__AGENTS=["score"]``) in ``mode`` at ``batch_size``. A run that completes
deletes its topics (a failed one keeps them, for a look): each costs the broker a few open files per partition, and
a long bench session would otherwise run it out of them.

- **Full speed** (``rate`` None): the input topic is filled first (``replay_eps``: the replayer's own rate), then
  the workers start, so the replayer neither competes for the cores nor caps the figure. Decisions/s = the
  decisions after the first instant ÷ the time from the first to the last decision's broker timestamp: the
  workers' start-up and group join are left out, and the first batch's decisions (one publish, one timestamp)
  open the window rather than count in it. Latency is each decision's own ``latency_ms`` (the worker's clock at
  both ends: from its taking the batch to the decision), since in a backlog the broker time between an input and
  its decision measures the queue.
- **Paced** (``rate`` events/s): the workers start and their group is assigned every input partition, then the
  replayer produces at ``rate`` with ``linger.ms`` :data:`PACED_LINGER_MS`. Latency = decision's broker timestamp -
  input's (ms).

**Warm-up.** A worker's first batches are slow (connections, first calls): a run with a ``warmup`` source replays
it first — full speed: onto the input topic ahead of the run's events; paced: once the group is assigned, at full
speed, its decisions awaited before the paced replay starts — and leaves its transactions out of every figure.

A run either gets a decision for every input or raises :class:`streams.bench_decisions.IncompleteRunError` naming
what is missing (a worker that exits, decisions that stop coming for ``stall_s``, inputs left undecided), the
worker's last logged error and the dead letters: never partial figures.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient

from fraudpipe.files import open_source
from fraudpipe.settings import KafkaSettings, Settings, TopicSettings
from streams.bench_decisions import (
    STAMP_AT_APPEND,
    IncompleteRunError,
    Seen,
    appended,
    check_complete,
    decisions_of,
    inputs_of,
)
from streams.replay import ReplayOptions, ReplayStats, replay
from streams.topics import create_topics, delete_topics, topic_specs, topics_under

__all__ = ["Run", "RunSpec", "as_dict", "measure"]

log = logging.getLogger(__name__)

_ERROR = re.compile(r"^\w*(Error|Exception)\b.*|.*Crashed reason=")
"""A worker log's line that says what went wrong: an exception's last line, or a Faust agent's crash."""


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One run: replay the source ``folder`` through ``workers`` workers in ``mode`` at ``batch_size``, at ``rate``
    events/s (None: full speed from a filled topic), after the ``warmup`` source if any (module docstring)."""

    name: str
    folder: Path
    mode: str = "score"
    rate: float | None = None
    batch_size: int = 500
    workers: int = 1
    warmup: Path | None = None


@dataclass(slots=True)
class Run:
    """What one run measured: rates in events/s, latencies in ms (``latency_clock``: ``broker`` or ``worker``, see
    the module docstring), worker CPU seconds per 1,000 events decided after the window opened (paced: the replay's
    start; full speed: the first look at the scores topic that finds the warm-up decided; None if everything was
    decided before that look), peak RSS in MB, ``seconds`` of wall time from the workers' start (full speed) or the
    first event produced after the warm-up (paced) to the last decision (before the workers stop), and the
    decision-log files the workers wrote in that time (``<data dir>/decisions/**/part-*.parquet``), in all and per
    worker and minute: a rate, so the flush each worker makes once in its life, on stop, is left out. ``events``
    and every figure leave the warm-up's ``warmup_events`` out (their decisions are checked all the same)."""

    name: str
    mode: str
    batch_size: int
    rate: float | None
    events: int = 0
    warmup_events: int = 0
    decisions: int = 0
    eps: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    latency_clock: str = "broker"
    cpu_s_per_1k: float | None = None
    rss_mb: float = 0.0
    seconds: float = 0.0
    replay_eps: float = 0.0
    decision_files: int = 0
    decision_files_per_min: float = 0.0


# --- workers -------------------------------------------------------------------------------------------------------


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


def _worker_env(settings: Settings, topics: TopicSettings, spec: RunSpec, data_dir: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FRAUD_")}
    if settings.redis.username is not None:  # the Redis login (scripts/services.sh's Redis asks for one)
        env["FRAUD_REDIS__USERNAME"] = settings.redis.username
    if settings.redis.password is not None:
        env["FRAUD_REDIS__PASSWORD"] = settings.redis.password.get_secret_value()
    return env | {
        "FRAUD_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "FRAUD_KAFKA__APP_ID": _group(settings, topics),
        "FRAUD_TOPICS__PREFIX": topics.prefix,
        "FRAUD_TOPICS__PARTITIONS": str(topics.partitions),
        "FRAUD_REDIS__URL": settings.redis.url,
        "FRAUD_REDIS__KEY_PREFIX": settings.redis.key_prefix,
        "FRAUD_PATHS__DATA_DIR": str(data_dir),
        "FRAUD_PATHS__MODELS_DIR": str(settings.paths.models_dir),
        "FRAUD_METRICS__PORT": "0",
        "FRAUD_WORKER__AGENTS": '["score"]',
        "FRAUD_SCORING__MODE": spec.mode,
        "FRAUD_SCORING__BATCH_SIZE": str(spec.batch_size),
        "FRAUD_SCORING__BATCH_WITHIN_MS": str(settings.scoring.batch_within_ms),
    }


def _group(settings: Settings, topics: TopicSettings) -> str:
    return f"{settings.kafka.app_id}-{topics.prefix.rstrip('-')}"


def _start_workers(settings: Settings, topics: TopicSettings, spec: RunSpec, data_dir: Path,
                   logs: Path) -> list[subprocess.Popen[bytes]]:  # fmt: skip
    """``spec.workers`` worker processes, once each logged ``Ready``."""
    workers, paths = [], [logs / f"{topics.prefix}{spec.name}-worker-{i}.log" for i in range(spec.workers)]
    for path in paths:
        with path.open("wb") as output:
            workers.append(subprocess.Popen([sys.executable, "-m", "fraudpipe", "worker", "-l", "info"],
                                            env=_worker_env(settings, topics, spec, data_dir), stdout=output,
                                            stderr=subprocess.STDOUT))  # fmt: skip
    deadline = time.monotonic() + 120
    for worker, path in zip(workers, paths, strict=True):
        while "Ready" not in path.read_text(errors="replace"):
            if worker.poll() is not None or time.monotonic() > deadline:
                _stop(workers)
                raise RuntimeError(f"worker did not start; its log: {path}\n{path.read_text()[-2000:]}")
            time.sleep(0.2)
    return workers


def _wait_assigned(kafka: KafkaSettings, group: str, topic: str, partitions: int, timeout_s: float = 30.0) -> bool:
    """Wait until the workers' consumer group(s) (ids starting with ``group``) are stable with all ``partitions`` of
    ``topic`` assigned, so a paced run's first events do not wait for a rebalance; whether that was seen."""
    admin = AdminClient({**kafka.client_config(), "log_level": 2})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listed = admin.list_consumer_groups(request_timeout=10).result()
        ids = [g.group_id for g in listed.valid if g.group_id.startswith(group)]
        assigned = 0
        for future in admin.describe_consumer_groups(ids, request_timeout=10).values() if ids else []:
            description = future.result()
            if description.state == ConsumerGroupState.STABLE:
                assigned += sum(tp.topic == topic for m in description.members
                                for tp in m.assignment.topic_partitions)  # fmt: skip
        if assigned >= partitions:
            return True
        time.sleep(0.2)
    return False


def _where(logs: Path, kafka: KafkaSettings, topics: TopicSettings) -> str:
    """Where a run's worker logs are, with the last error they tell of and the count of dead letters, if any."""
    errors = [line.strip() for path in sorted(logs.glob(f"{topics.prefix}*.log"))
              for line in path.read_text(errors="replace").splitlines() if _ERROR.match(line)]  # fmt: skip
    dead = appended(kafka, topics.full(TopicSettings.dlq_of(topics.transactions)))
    return (f"the worker logs {logs}/{topics.prefix}*" + (f" (last error: {errors[-1][-300:]})" if errors else "")
            + (f"; {dead:,} transactions were dead-lettered" if dead else ""))  # fmt: skip


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# --- one run -------------------------------------------------------------------------------------------------------


def _replay(settings: Settings, topics: TopicSettings, folder: Path, rate: float | None, key: bytes) -> ReplayStats:
    options = ReplayOptions(rate=rate, drain_labels=False, linger_ms=PACED_LINGER_MS if rate is not None else None)
    stats = replay(open_source(folder, {}, key=key), settings.kafka, topics, options)
    if stats.failed:
        raise RuntimeError(f"replay failed: {stats.first_error}")
    return stats


PACED_LINGER_MS = 5.0
"""The paced replayer's ``linger.ms``: librdkafka's default, what a payment gateway producing to Kafka sends with.
Latency runs from the broker's append time, so the replayer's batching adds none; but at 1 ms (a request per
payment or two) the broker spent ~30 % of a core on the replayer's requests alone and ~50 % with the worker fetching
behind it — on this 2-core box, CPU taken from the worker it measures. Paced runs of this module, December 2026:
p99 at 5,000/s 342 to 827 ms with 1 ms against 63 to 266 ms with 5 ms (nine runs); at 3,000/s 129 and 130 against
47 ms."""


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values, dtype=np.float64)
    return {**{f"p{q}": float(np.percentile(array, q)) for q in (50, 95, 99)}, "max": float(array.max())}


def _files(data_dir: Path) -> int:
    return sum(1 for _ in (data_dir / "decisions").glob("**/part-*.parquet"))


@dataclass(slots=True)
class _Window:
    """Where a run's measured part opens: the workers' CPU seconds then, and the decisions on the scores topic."""

    processes: list[subprocess.Popen[bytes]]
    after: int
    """Decisions that come before it (the warm-up's): it opens at the first look that finds them out."""
    cpu_s: float | None = None
    decided: int = 0

    def open(self, appended: int, *, now: bool = False) -> None:
        if self.cpu_s is None and (now or appended >= max(self.after, 1)):
            self.cpu_s, self.decided = sum(_proc(p.pid)[0] for p in self.processes), appended


def _warm_up(settings: Settings, topics: TopicSettings, spec: RunSpec, key: bytes,
             processes: list[subprocess.Popen[bytes]], stall_s: float) -> tuple[int, set[str]]:  # fmt: skip
    """Replay ``spec.warmup`` at full speed (and, with workers running, wait for its decisions); (transactions,
    their ids)."""
    if spec.warmup is None:
        return 0, set()
    warm = _replay(settings, topics, spec.warmup, None, key).transactions
    if processes:
        decisions_of(settings.kafka, topics, warm, processes=processes, stall_s=stall_s)
    return warm, set(inputs_of(settings.kafka, topics))


def measure(settings: Settings, spec: RunSpec, logs: Path, key: bytes, *, stall_s: float = 60.0) -> Run:
    """Run ``spec`` (module docstring); ``key`` tokenizes the source. Raises :class:`IncompleteRunError`."""
    topics = TopicSettings(prefix=f"bench-{uuid.uuid4().hex[:8]}-", partitions=max(settings.topics.partitions,
                                                                                    spec.workers))  # fmt: skip
    create_topics(settings.kafka, topic_specs(topics, config=STAMP_AT_APPEND), timeout_s=30)
    paced, data_dir = spec.rate is not None, settings.paths.data_dir / topics.prefix[:-1]
    processes: list[subprocess.Popen[bytes]] = []
    files_before = 0
    try:
        if not paced:  # the warm-up, then the run, on the topic before the workers start
            warm, warmed = _warm_up(settings, topics, spec, key, processes, stall_s)
            stats = _replay(settings, topics, spec.folder, None, key)
        began = time.monotonic()
        processes += _start_workers(settings, topics, spec, data_dir, logs)
        if paced:
            group = _group(settings, topics)
            if not _wait_assigned(settings.kafka, group, topics.full(topics.transactions), topics.partitions):
                log.warning("run %s: no consumer group %s* was seen assigned; replaying anyway", spec.name, group)
            warm, warmed = _warm_up(settings, topics, spec, key, processes, stall_s)
            began, files_before = time.monotonic(), _files(data_dir)
        window = _Window(processes, warm)
        if paced:
            window.open(warm, now=True)
            stats = _replay(settings, topics, spec.folder, spec.rate, key)
        expected = warm + stats.transactions
        decided = decisions_of(settings.kafka, topics, expected, processes=processes, stall_s=stall_s,
                               watch=window.open)  # fmt: skip
        usage = [_proc(p.pid) for p in processes]
        seconds, files = time.monotonic() - began, _files(data_dir)
        _stop(processes)
        inputs = inputs_of(settings.kafka, topics)
        check_complete(inputs, decided, expected)
        delete_topics(settings.kafka, topics_under(settings.kafka, topics.prefix))  # kept when a run fails
    except IncompleteRunError as error:
        raise IncompleteRunError(f"run {spec.name}: {error}; see {_where(logs, settings.kafka, topics)}") from None
    finally:
        _stop(processes)
    measured = {ident: stamp for ident, stamp in inputs.items() if ident not in warmed}
    run = Run(spec.name, spec.mode, spec.batch_size, spec.rate, stats.transactions, warm, len(measured))
    run.replay_eps = stats.transactions / stats.elapsed_s if stats.elapsed_s > 0 else 0.0
    _rates(run, measured, decided)
    cpu_events = expected - window.decided if window.cpu_s is not None else 0
    if cpu_events > 0 and window.cpu_s is not None:
        run.cpu_s_per_1k = (sum(u[0] for u in usage) - window.cpu_s) / (cpu_events / 1000)
    run.rss_mb, run.seconds = max(u[1] for u in usage), seconds
    run.decision_files = files - files_before
    run.decision_files_per_min = run.decision_files / spec.workers / (seconds / 60)
    return run


def _rates(run: Run, measured: dict[str, int], decided: Seen) -> None:
    """``run``'s decisions/s and latency percentiles (module docstring), from the measured transactions' broker
    timestamps and their decisions."""
    stamps = np.array([decided[ident][0] for ident in measured], dtype=np.int64)
    first, last = int(stamps.min()), int(stamps.max())
    if run.rate is not None:
        span_s = (last - min(measured.values())) / 1000
        run.eps = len(stamps) / span_s if span_s > 0 else 0.0
        run.latency_ms = _percentiles([decided[ident][0] - stamp for ident, stamp in measured.items()])
    else:
        run.eps = float((stamps > first).sum() / ((last - first) / 1000)) if last > first else 0.0
        run.latency_clock = "worker"
        run.latency_ms = _percentiles([w for ident in measured if (w := decided[ident][1]) is not None])


def as_dict(run: Run) -> dict[str, Any]:
    """``run`` as JSON-ready values, rounded (rates and seconds to 3 decimals, latencies to 0.1 ms)."""
    out = {k: round(v, 3) if isinstance(v, float) else v for k, v in dataclasses.asdict(run).items()}
    out["latency_ms"] = {k: round(v, 1) for k, v in run.latency_ms.items()}
    return out
