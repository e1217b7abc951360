"""``fraudpipe demo``: the whole product on this machine, in one command.

1. Kafka and Redis: used if they answer, else started with ``scripts/services.sh`` (and stopped at the end). Its
   Redis asks for a password: without a login of their own (``FRAUD_REDIS__PASSWORD``, or one in the URL) the demo's
   processes log in as its default user, from ``<services dir>/redis/users/default.env``. With ``sasl``, Kafka is
   the script's SASL/SCRAM broker with ACLs (``start kafka --sasl``, state in ``<services dir>/sasl``, on the
   configured port + 100: beside a plain one): topics are made as ``admin``, the worker logs in as ``worker`` with
   exactly :func:`streams.topics.worker_acls` (granted for the run, revoked after), the other processes as ``admin``.
2. A default-preset simulation in ``work_dir`` (kept for the next run): ``history_days`` of history, then
   ``live_days`` replayed live.
3. A champion trained on the history (with its HTML report) unless ``work_dir/models`` has one; the history's
   features warmed into Redis under the demo's own key prefix (``fp:demo:``, cleared first).
4. Fresh topics for this run (prefix ``demo<time>-``), then the processes, each a real CLI command with its log in
   ``work_dir/logs``: a worker (every agent), ``fraudpipe monitor --every``, ``fraudpipe logs compact --every``
   (each log day's files merged into one), ``fraudpipe serve`` (API and dashboard), and ``fraudpipe replay`` of
   the live days at ``rate`` transactions per second, labels included.
5. A live terminal summary read from the API's dashboard endpoints — or, with ``duration_s``, a line every ten
   seconds until it has run that long.
6. On Ctrl-C or the end of ``duration_s``: every process it started is stopped (SIGTERM, then SIGKILL after 10 s),
   this run's topics deleted, services it started stopped, and the summary report written to
   ``work_dir/data/reports/demo-<time>.html`` (the dashboard links the latest one).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import SecretStr

from features.backfill import backfill
from features.store import RedisFeatureStore, redis_client
from fraudpipe.files import open_source
from fraudpipe.logstore import DayLog
from fraudpipe.settings import KafkaSettings, RedisSettings, Settings
from fraudpipe.simulator.config import default
from fraudpipe.simulator.generate import simulate
from fraudpipe.simulator.output import write_simulation
from models.dataset import load_history
from models.monitor import decided_money
from models.registry import Registry
from models.report import render_report, report_data, write_html
from models.train import latest_windows, train_version
from streams.demo_report import Samples, money_facts, render_html, totals
from streams.local_services import free_port, grant, local_services, revoke, stop
from streams.topics import create_topics, delete_topics, topic_specs, worker_acls

__all__ = ["DemoOptions", "run"]

log = logging.getLogger(__name__)
KEY = b"fraudpipe-demo-tokenization-key!"
KEY_PREFIX = "fp:demo:"
COMPACT_EVERY_S = 60
"""Seconds between two passes of the demo's log compactor."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    work_dir: Path
    duration_s: float | None = None
    rate: float = 100.0
    customers: int = 2_000
    history_days: int = 30
    live_days: int = 10
    api_port: int = 8000
    sasl: bool = False


def _prepare(options: DemoOptions, say: Callable[[str], None]) -> tuple[Path, Path]:
    """The history and live folders, simulated once per work dir and option set."""
    folder = options.work_dir / f"sim-{options.customers}c-{options.history_days}+{options.live_days}d"
    history, live = folder / "history", folder / "live"
    if (live / "manifest.json").exists():
        return history, live
    say(f"simulating {options.history_days + options.live_days} days of {options.customers:,} customers")
    config = default(days=options.history_days + options.live_days, customers=options.customers,
                     terminals=2 * options.customers)  # fmt: skip
    population, days = simulate(config, KEY)
    days_list = list(days)
    write_simulation(history, config, population, iter(days_list[: options.history_days]), overwrite=True)
    write_simulation(live, config, population, iter(days_list[options.history_days :]), overwrite=True)
    return history, live


def _champion(settings: Settings, history: Path, say: Callable[[str], None]) -> str:
    registry = Registry(settings.paths.models_dir)
    if (version := registry.aliases().get("champion")) is not None:
        return version
    say("training the champion on the history")
    loaded = load_history(history, {}, key=KEY)
    trained = train_version(loaded, latest_windows(loaded, 14, 3, 4), settings.training, costs=settings.cost,
                            scoring=settings.scoring)  # fmt: skip
    fields = trained.fields
    report = render_report(report_data("fraudpipe demo champion (validation window)", trained.fitted.booster,
                                       trained.valid, fields["metrics"], fields["windows"]))  # fmt: skip
    manifest = registry.register(trained.fitted.booster, trained.fields, report)
    registry.promote(manifest.version, why="fraudpipe demo")
    return manifest.version


def _warm(settings: Settings, history: Path, say: Callable[[str], None]) -> int:
    client = redis_client(settings.redis)
    stale = list(client.scan_iter(match=f"{KEY_PREFIX}*", count=10_000))
    for i in range(0, len(stale), 10_000):
        client.delete(*stale[i : i + 10_000])
    say("warming Redis with the history's features")
    return backfill(open_source(history, {}, key=KEY), RedisFeatureStore(client, KEY_PREFIX)).transactions


class _Processes:
    """The processes the demo started, stopped in reverse order by PID."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env, self.started = logs, env, list[tuple[str, subprocess.Popen[bytes]]]()
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as output:
            process = subprocess.Popen([sys.executable, "-m", "fraudpipe", *args], env=env or self.env, stdout=output,  # noqa: S603
                                       stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.started.append((name, process))
        with (self.logs / "pids").open("a") as pids:  # what to look for if the demo itself is killed
            pids.write(f"{name} {process.pid}\n")
        return process

    def stop(self) -> None:
        for _, process in reversed(self.started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, process in reversed(self.started):
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def dead(self) -> list[str]:
        """Processes that exited on their own (the replayer is allowed to finish)."""
        return [name for name, p in self.started if p.poll() is not None and name != "replay"]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own API on loopback
        return json.loads(response.read())


def _logins(redis_login: RedisSettings, kafka: KafkaSettings) -> dict[str, str]:
    """The ``FRAUD_`` variables of a Redis and a Kafka login (for the children's environment only)."""
    values = {"FRAUD_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
              "FRAUD_KAFKA__SECURITY_PROTOCOL": kafka.security_protocol, "FRAUD_KAFKA__SASL_MECHANISM":
              kafka.sasl_mechanism, "FRAUD_KAFKA__SASL_USERNAME": kafka.sasl_username, "FRAUD_KAFKA__SASL_PASSWORD":
              kafka.sasl_password, "FRAUD_REDIS__USERNAME": redis_login.username,
              "FRAUD_REDIS__PASSWORD": redis_login.password}  # fmt: skip
    return {key: value.get_secret_value() if isinstance(value, SecretStr) else value
            for key, value in values.items() if value is not None}  # fmt: skip


def _env(settings: Settings, options: DemoOptions, run_id: str, ports: dict[str, int]) -> dict[str, str]:
    data = options.work_dir / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")} | _logins(settings.redis, settings.kafka)
    env |= {
        "FRAUD_KAFKA__APP_ID": f"fraudpipe-demo-{run_id}",
        "FRAUD_TOPICS__PREFIX": f"demo{run_id}-",
        "FRAUD_TOPICS__PARTITIONS": "3",
        "FRAUD_REDIS__URL": settings.redis.url,
        "FRAUD_REDIS__KEY_PREFIX": KEY_PREFIX,
        "FRAUD_SINKS__REDIS_STREAM_KEY": f"{KEY_PREFIX}alerts",
        "FRAUD_PATHS__DATA_DIR": str(data),
        "FRAUD_PATHS__MODELS_DIR": str(options.work_dir / "models"),
        "FRAUD_METRICS__PORT": str(ports["worker"]),
        "FRAUD_MONITOR__METRICS_PORT": str(ports["monitor"]),
        "FRAUD_MONITOR__MATURITY_DAYS": "3",
        "FRAUD_API__PORT": str(ports["api"]),
    }
    env["FRAUD_API__DASHBOARD_METRICS_URLS"] = json.dumps([f"http://127.0.0.1:{ports[n]}/metrics"
                                                           for n in ("worker", "monitor")])  # fmt: skip
    return env


def run(settings: Settings, options: DemoOptions, *, say: Callable[[str], None],
        show: Callable[[dict[str, Any], list[dict[str, Any]], str, float, str], None]) -> dict[str, Any]:  # fmt: skip
    """Run the demo (module docstring); ``show`` is called about once a second with the API's summary, its alerts,
    the dashboard URL, the seconds run and a status line. Returns the final numbers and where the report and logs
    are."""
    services = local_services(settings, sasl=options.sasl)
    run_id = time.strftime("%Y%m%d%H%M%S")
    ports = {"worker": free_port(), "monitor": free_port(), "api": free_port(options.api_port)}
    env = _env(services.settings, options, run_id, ports)
    demo = Settings(_env_file=None, **_nested(env))
    worker_env = env | _logins(demo.redis, services.worker_kafka)
    acls = worker_acls(demo.topics, demo.kafka.app_id) if options.sasl else []
    processes = _Processes(options.work_dir / "logs" / run_id, env)
    samples, url = Samples(), f"http://127.0.0.1:{ports['api']}/dashboard"
    topics = [spec.name for spec in topic_specs(demo.topics)]
    began, started_at = time.monotonic(), None
    try:
        history, live = _prepare(options, say)
        version = _champion(demo, history, say)
        warmed = _warm(demo, history, say)
        create_topics(demo.kafka, topic_specs(demo.topics), timeout_s=30)
        if acls:
            say(f"Kafka with SASL/SCRAM and ACLs at {demo.kafka.bootstrap_servers}: granting User:worker what "
                "streams.topics.worker_acls lists; the worker logs in as worker, the others as admin")  # fmt: skip
            grant(demo.kafka, "User:worker", acls)
        say(f"starting the worker, the monitor, the log compactor and the API (logs: {processes.logs})")
        processes.start("worker", "worker", "-l", "info", env=worker_env)
        processes.start("monitor", "monitor", "--every", "10")
        processes.start("compactor", "logs", "compact", "--every", str(COMPACT_EVERY_S))
        processes.start("api", "serve")
        _wait_for_api(f"http://127.0.0.1:{ports['api']}/readyz", processes)
        say(f"dashboard: {url}")
        replay = processes.start("replay", "replay", str(live), "--rate", str(options.rate))
        began, started_at = time.monotonic(), datetime.now(UTC)
        last_line = 0.0
        while options.duration_s is None or time.monotonic() - began < options.duration_s:
            if dead := processes.dead():
                raise RuntimeError(f"{', '.join(dead)} stopped on its own; see {processes.logs}")
            elapsed = time.monotonic() - began
            try:
                summary = _get(f"http://127.0.0.1:{ports['api']}/v1/dashboard/summary")
                alerts = _get(f"http://127.0.0.1:{ports['api']}/v1/dashboard/alerts?limit=50")["alerts"]
            except (urllib.error.URLError, TimeoutError, ValueError):
                time.sleep(1)
                continue
            samples.add(elapsed, summary, alerts)
            if options.duration_s is None:
                replayed = replay.poll() is not None
                show(summary, alerts, url, elapsed,
                     "the live days are replayed: the stream is idle; Ctrl-C to stop" if replayed else "")  # fmt: skip
            elif elapsed - last_line >= 10:
                t = totals(summary)
                say(f"{elapsed:4.0f} s: {t['decisions']:,} decisions ({t['by_outcome']['review']:,} review, "
                    f"{t['by_outcome']['decline']:,} decline), p99 {t['p99_ms'] or 0:.0f} ms, "
                    f"{t['dead_letters']} dead letters")  # fmt: skip
                last_line = elapsed
            time.sleep(1)
    except KeyboardInterrupt:
        say("stopping")
    finally:
        processes.stop()
        delete_topics(demo.kafka, topics)
        if acls:
            revoke(demo.kafka, "User:worker", acls)
        stop(services.started)
    money = _money(demo, live, started_at) if started_at is not None else None
    report = demo.paths.data_dir / "reports" / f"demo-{run_id}.html"
    report.parent.mkdir(parents=True, exist_ok=True)
    facts = {"champion": version, "customers": options.customers, "history days": options.history_days,
             "live days": options.live_days, "rate (tx/s)": options.rate, "warmed transactions": warmed,
             "ran (s)": round(time.monotonic() - began), "logs": str(processes.logs),
             **({} if money is None else money_facts(money))}  # fmt: skip
    write_html(render_html(samples, facts), report)
    final = samples.points[-1][1] if samples.points else totals({})
    return {**final, "alerts_seen": len(samples.alerts), "report": str(report), "logs": str(processes.logs),
            "dashboard": url, "money": money}  # fmt: skip


def _money(settings: Settings, live: Path, since: datetime) -> dict[str, Any] | None:
    """What this run's decisions did against the simulation's truth, under the cost model
    (:func:`models.monitor.decided_money`): the live days' labels have not all arrived, their truth has."""
    decisions = DayLog(settings.paths.data_dir / "decisions", "event_time").read()
    if decisions.is_empty():
        return None
    ours = decisions.filter(pl.col("decided_at") >= since)
    if ours.is_empty():
        return None
    truth = pl.read_parquet(live / "transactions" / "**" / "*.parquet", columns=["txn_id", "is_fraud"])
    return decided_money(ours, truth, settings.cost)


def _nested(env: dict[str, str]) -> dict[str, Any]:
    """``FRAUD_A__B=v`` variables as ``{"a": {"b": v}}`` keyword arguments for :class:`Settings`."""
    nested: dict[str, Any] = {}
    for key, value in env.items():
        if key.startswith("FRAUD_") and "__" in key:
            section, name = key[len("FRAUD_") :].lower().split("__", 1)
            parsed: Any = json.loads(value) if value.startswith("[") else value
            nested.setdefault(section, {})[name] = parsed
    return nested


def _wait_for_api(url: str, processes: _Processes, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if dead := processes.dead():
            raise RuntimeError(f"{', '.join(dead)} stopped on its own; see {processes.logs}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own API on loopback
                if response.status == 200:
                    return
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the API did not become ready in {timeout_s:.0f} s; see {processes.logs}")
        time.sleep(0.5)
