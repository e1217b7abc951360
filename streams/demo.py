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
   ``work_dir/logs``: a worker (every agent), ``fraudpipe monitor --every``, ``fraudpipe serve`` (API and
   dashboard), and ``fraudpipe replay`` of the live days at ``rate`` transactions per second, labels included.
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
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from pydantic import SecretStr
from redis.backoff import NoBackoff
from redis.retry import Retry

from features.backfill import backfill
from features.store import RedisFeatureStore, redis_client
from fraudpipe.files import open_source
from fraudpipe.settings import KafkaSettings, RedisSettings, Settings
from fraudpipe.simulator.config import default
from fraudpipe.simulator.generate import simulate
from fraudpipe.simulator.output import write_simulation
from models.dataset import load_history
from models.registry import Registry
from models.report import render_report, report_data, write_html
from models.train import latest_windows, train_version
from streams.demo_report import Samples, render_html, totals
from streams.topics import AclSpec, create_topics, grant_acls, topic_specs, worker_acls

__all__ = ["DemoOptions", "LocalServices", "local_services", "run", "services_dir", "with_redis_login"]

log = logging.getLogger(__name__)
KEY = b"fraudpipe-demo-tokenization-key!"
KEY_PREFIX = "fp:demo:"


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


# --- local services (scripts/services.sh) ------------------------------------------------------------------------

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "services.sh"
SASL_PORT_OFFSET = 100
"""The SASL broker listens on the configured Kafka port + 100 (9192 by default), beside a plain one."""


def services_dir() -> Path:
    """Where ``scripts/services.sh`` keeps its state: ``FRAUDPIPE_SERVICES_DIR``, else ``.services`` in the checkout."""
    return Path(os.environ.get("FRAUDPIPE_SERVICES_DIR") or SCRIPT.parents[1] / ".services")


def _login_file(path: Path) -> dict[str, str]:
    """The ``KEY=VALUE`` lines of one of the script's login files (mode 600); empty if there is none."""
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def with_redis_login(settings: Settings, state: Path) -> Settings:
    """``settings`` logging in to Redis as the script's default user (``state/redis/users/default.env``), unless they
    carry a login of their own (``redis.password``, or a password in ``redis.url``) or the script wrote none."""
    if settings.redis.password is not None or "@" in settings.redis.url.partition("://")[2].partition("/")[0]:
        return settings
    login = _login_file(state / "redis" / "users" / "default.env")
    if not login.get("FRAUD_REDIS__PASSWORD"):
        return settings
    redis_login = {"username": login.get("FRAUD_REDIS__USERNAME") or None,
                   "password": SecretStr(login["FRAUD_REDIS__PASSWORD"])}  # fmt: skip
    return settings.model_copy(update={"redis": settings.redis.model_copy(update=redis_login)})


def _kafka_login(kafka: KafkaSettings, bootstrap: str, path: Path) -> KafkaSettings:
    """``kafka`` at ``bootstrap`` with the SASL login of the script's ``path`` (``kafka/sasl/<user>.env``)."""
    login = _login_file(path)
    if not login.get("FRAUD_KAFKA__SASL_PASSWORD"):
        raise RuntimeError(f"no SASL login in {path}: that broker's storage was formatted without this user")
    names = ("security_protocol", "sasl_mechanism", "sasl_username", "sasl_password")
    fields = {name: login[f"FRAUD_KAFKA__{name.upper()}"] for name in names}
    return KafkaSettings.model_validate(kafka.model_dump() | fields | {"bootstrap_servers": bootstrap})


def _redis_answers(settings: RedisSettings) -> bool | None:
    """True: Redis answers ``settings``' login; False: nothing listens; None: it refuses the login."""
    password = settings.password.get_secret_value() if settings.password else None
    probe = redis.Redis.from_url(settings.url, username=settings.username, password=password,
                                 socket_connect_timeout=1, socket_timeout=2, retry=Retry(NoBackoff(), 0))  # fmt: skip
    try:
        return bool(probe.ping())
    except redis.AuthenticationError:
        return None
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        probe.close()


def _kafka_answers(kafka: KafkaSettings) -> bool:
    try:
        AdminClient({**kafka.client_config(), "log_level": "0"}).list_topics(timeout=5)
    except KafkaException:
        return False
    return True


@dataclass(frozen=True, slots=True)
class LocalServices:
    """What :func:`local_services` found or started. ``settings``: logged in as the demo's own clients (Redis'
    default user, Kafka's ``admin`` with SASL); ``worker_kafka``: the worker's Kafka login; ``started``: the
    script's (state folder, service, environment) to stop at the end."""

    settings: Settings
    worker_kafka: KafkaSettings
    started: tuple[tuple[Path, str, dict[str, str]], ...]


def _script(state: Path, env: dict[str, str], *args: str, quiet: bool = False) -> int:
    bash = shutil.which("bash")
    if not SCRIPT.exists() or bash is None:
        raise RuntimeError("Kafka or Redis does not answer, and scripts/services.sh is not here to start them")
    output = subprocess.DEVNULL if quiet else None  # the script prints no password
    done = subprocess.run([bash, str(SCRIPT), *args], env=os.environ | env | {"FRAUDPIPE_SERVICES_DIR": str(state)},  # noqa: S603
                          stdout=output, stderr=output, check=False)  # fmt: skip
    if done.returncode not in (0, 3) or (args[0] != "status" and done.returncode):
        raise RuntimeError(f"scripts/services.sh {' '.join(args)} failed (exit {done.returncode})")
    return done.returncode


Started = list[tuple[Path, str, dict[str, str]]]


def local_services(settings: Settings, *, sasl: bool = False) -> LocalServices:
    """Kafka and Redis for the demo: used if they answer, else started with ``scripts/services.sh`` (module
    docstring, step 1). Raises RuntimeError when one cannot be had (the message names no password), after stopping
    what it started."""
    started: Started = []
    try:
        return _local_services(settings, sasl, started)
    except BaseException:
        _stop(started)
        raise


def _local_services(settings: Settings, sasl: bool, started: Started) -> LocalServices:
    state = services_dir()
    host, _, port = settings.kafka.bootstrap_servers.split(",")[0].rpartition(":")
    env = {"FRAUD_REDIS__URL": settings.redis.url, "FRAUD_KAFKA__BOOTSTRAP_SERVERS": f"{host}:{port}"}
    answers = _redis_answers(with_redis_login(settings, state).redis)
    if answers is False:
        _script(state, env, "start", "redis")
        started.append((state, "redis", env))
    settings = with_redis_login(settings, state)  # the login the script (just) wrote
    where = settings.redis.url.rpartition("@")[2]
    if (answers := _redis_answers(settings.redis)) is None:
        raise RuntimeError(f"Redis refused the login ({where}): set FRAUD_REDIS__PASSWORD (the script keeps its "
                           f"password in {state / 'redis' / 'users' / 'default.env'})")  # fmt: skip
    if not answers:
        raise RuntimeError(f"Redis does not answer ({where})")
    if not sasl:
        if not _kafka_answers(settings.kafka):
            _script(state, env, "start", "kafka")
            started.append((state, "kafka", env))
        return LocalServices(settings, settings.kafka, tuple(started))
    sasl_state = state / "sasl"
    bootstrap = f"{host}:{int(port) + SASL_PORT_OFFSET}"
    sasl_env = env | {"FRAUD_KAFKA__BOOTSTRAP_SERVERS": bootstrap}
    if _script(sasl_state, sasl_env, "status", "kafka", quiet=True) != 0:
        started.append((sasl_state, "kafka", sasl_env))
    _script(sasl_state, sasl_env, "start", "kafka", "--sasl")  # says where the users' logins are
    users = sasl_state / "kafka" / "sasl"
    admin = _kafka_login(settings.kafka, bootstrap, users / "admin.env")
    worker = _kafka_login(settings.kafka, bootstrap, users / "worker.env")
    return LocalServices(settings.model_copy(update={"kafka": admin}), worker, tuple(started))


def _stop(started: Started | tuple[tuple[Path, str, dict[str, str]], ...]) -> None:
    for state, service, env in reversed(started):
        _script(state, env, "stop", service)


def _filters(principal: str, specs: list[AclSpec]) -> list[AclBindingFilter]:
    """One filter per spec, matching exactly the binding :func:`streams.topics.grant_acls` makes of it."""
    kinds = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP}
    return [AclBindingFilter(kinds[spec.resource], spec.name, ResourcePatternType.LITERAL, principal, "*",
                             getattr(AclOperation, spec.operation.upper()), AclPermissionType.ALLOW)
            for spec in specs]  # fmt: skip


def _grant(admin: KafkaSettings, principal: str, specs: list[AclSpec], timeout_s: float = 30) -> None:
    """Grant ``specs``, then wait until the broker applies them (a moment after its controller commits them)."""
    grant_acls(admin, principal, specs, timeout_s=timeout_s)
    client = AdminClient({**admin.client_config(), "log_level": "2"})
    deadline = time.monotonic() + timeout_s
    while not all(client.describe_acls(f).result(timeout=10) for f in _filters(principal, specs)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the broker did not apply {principal}'s ACLs in {timeout_s:.0f} s")
        time.sleep(0.3)


def _revoke(admin: KafkaSettings, principal: str, specs: list[AclSpec]) -> None:
    """Delete exactly ``specs`` of ``principal`` (the run's topics are gone; their ACLs would stay)."""
    client = AdminClient({**admin.client_config(), "log_level": "2"})
    for binding, future in client.delete_acls(_filters(principal, specs), request_timeout=30).items():
        try:
            future.result(30)
        except Exception as error:  # worth a line in the log, not a failed demo
            log.info("demo ACL %s not revoked: %s", binding, error)


def _free_port(preferred: int = 0) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    trained = train_version(loaded, latest_windows(loaded, 14, 3, 4), settings.training)
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
    ports = {"worker": _free_port(), "monitor": _free_port(), "api": _free_port(options.api_port)}
    env = _env(services.settings, options, run_id, ports)
    demo = Settings(_env_file=None, **_nested(env))
    worker_env = env | _logins(demo.redis, services.worker_kafka)
    acls = worker_acls(demo.topics, demo.kafka.app_id) if options.sasl else []
    processes = _Processes(options.work_dir / "logs" / run_id, env)
    samples, url = Samples(), f"http://127.0.0.1:{ports['api']}/dashboard"
    topics = [spec.name for spec in topic_specs(demo.topics)]
    began = time.monotonic()
    try:
        history, live = _prepare(options, say)
        version = _champion(demo, history, say)
        warmed = _warm(demo, history, say)
        create_topics(demo.kafka, topic_specs(demo.topics), timeout_s=30)
        if acls:
            say(f"Kafka with SASL/SCRAM and ACLs at {demo.kafka.bootstrap_servers}: granting User:worker what "
                "streams.topics.worker_acls lists; the worker logs in as worker, the others as admin")  # fmt: skip
            _grant(demo.kafka, "User:worker", acls)
        say(f"starting the worker, the monitor and the API (logs: {processes.logs})")
        processes.start("worker", "worker", "-l", "info", env=worker_env)
        processes.start("monitor", "monitor", "--every", "10")
        processes.start("api", "serve")
        _wait_for_api(f"http://127.0.0.1:{ports['api']}/readyz", processes)
        say(f"dashboard: {url}")
        replay = processes.start("replay", "replay", str(live), "--rate", str(options.rate))
        began = time.monotonic()
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
        _delete_topics(demo, topics)
        if acls:
            _revoke(demo.kafka, "User:worker", acls)
        _stop(services.started)
    report = demo.paths.data_dir / "reports" / f"demo-{run_id}.html"
    report.parent.mkdir(parents=True, exist_ok=True)
    facts = {"champion": version, "customers": options.customers, "history days": options.history_days,
             "live days": options.live_days, "rate (tx/s)": options.rate, "warmed transactions": warmed,
             "ran (s)": round(time.monotonic() - began), "logs": str(processes.logs)}  # fmt: skip
    write_html(render_html(samples, facts), report)
    final = samples.points[-1][1] if samples.points else totals({})
    return {**final, "alerts_seen": len(samples.alerts), "report": str(report), "logs": str(processes.logs),
            "dashboard": url}  # fmt: skip


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


def _delete_topics(settings: Settings, names: list[str]) -> None:
    admin = AdminClient(dict(settings.kafka.client_config()))
    for name, future in admin.delete_topics(names, operation_timeout=30).items():
        try:
            future.result(30)
        except Exception as error:  # a topic already gone is fine; anything else is worth a line in the log
            log.info("demo topic %s not deleted: %s", name, error)
