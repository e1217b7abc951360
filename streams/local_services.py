"""The local Kafka and Redis of ``scripts/services.sh``, for the one-command demo and the benchmark: used if they
answer, else started (and stopped at the end by whoever started them). The script's Redis asks for a password: a
caller without a login of its own (``FRAUD_REDIS__PASSWORD``, or one in the URL) logs in as its default user, from
``<services dir>/redis/users/default.env``. With ``sasl``, Kafka is the script's SASL/SCRAM broker with ACLs
(``start kafka --sasl``, state in ``<services dir>/sasl``, on the configured port + 100: beside a plain one).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

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

from fraudpipe.settings import KafkaSettings, RedisSettings, Settings
from streams.topics import AclSpec, grant_acls

__all__ = [
    "SASL_PORT_OFFSET",
    "LocalServices",
    "free_port",
    "grant",
    "local_services",
    "revoke",
    "services_dir",
    "stop",
    "with_redis_login",
]

log = logging.getLogger(__name__)

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
        stop(started)
        raise


def _local_services(settings: Settings, sasl: bool, started: Started) -> LocalServices:
    state = services_dir()
    host, _, port = settings.kafka.bootstrap_servers.split(",")[0].rpartition(":")
    env = {"FRAUD_REDIS__URL": settings.redis.url, "FRAUD_KAFKA__BOOTSTRAP_SERVERS": f"{host}:{port}"}
    answers = _redis_answers(with_redis_login(settings, state).redis)
    if answers is False:
        _start(state, env, "redis", started)
    settings = with_redis_login(settings, state)  # the login the script (just) wrote
    where = settings.redis.url.rpartition("@")[2]
    if (answers := _redis_answers(settings.redis)) is None:
        raise RuntimeError(f"Redis refused the login ({where}): set FRAUD_REDIS__PASSWORD (the script keeps its "
                           f"password in {state / 'redis' / 'users' / 'default.env'})")  # fmt: skip
    if not answers:
        raise RuntimeError(f"Redis does not answer ({where})")
    if not sasl:
        if not _kafka_answers(settings.kafka):
            _start(state, env, "kafka", started)
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


def _start(state: Path, env: dict[str, str], service: str, started: Started) -> None:
    """Start ``service`` with the script; note it as ours to stop only when the script was not already running it
    (from this state folder, perhaps on another port than the settings name: then it is someone else's)."""
    if _script(state, env, "status", service, quiet=True) != 0:
        started.append((state, service, env))
    _script(state, env, "start", service)


def stop(started: Started | tuple[tuple[Path, str, dict[str, str]], ...]) -> None:
    for state, service, env in reversed(started):
        _script(state, env, "stop", service)


def _filters(principal: str, specs: list[AclSpec]) -> list[AclBindingFilter]:
    """One filter per spec, matching exactly the binding :func:`streams.topics.grant_acls` makes of it."""
    kinds = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP}
    return [AclBindingFilter(kinds[spec.resource], spec.name, ResourcePatternType.LITERAL, principal, "*",
                             getattr(AclOperation, spec.operation.upper()), AclPermissionType.ALLOW)
            for spec in specs]  # fmt: skip


def grant(admin: KafkaSettings, principal: str, specs: list[AclSpec], timeout_s: float = 30) -> None:
    """Grant ``specs``, then wait until the broker applies them (a moment after its controller commits them)."""
    grant_acls(admin, principal, specs, timeout_s=timeout_s)
    client = AdminClient({**admin.client_config(), "log_level": "2"})
    deadline = time.monotonic() + timeout_s
    while not all(client.describe_acls(f).result(timeout=10) for f in _filters(principal, specs)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the broker did not apply {principal}'s ACLs in {timeout_s:.0f} s")
        time.sleep(0.3)


def revoke(admin: KafkaSettings, principal: str, specs: list[AclSpec]) -> None:
    """Delete exactly ``specs`` of ``principal`` (the run's topics are gone; their ACLs would stay)."""
    client = AdminClient({**admin.client_config(), "log_level": "2"})
    for binding, future in client.delete_acls(_filters(principal, specs), request_timeout=30).items():
        try:
            future.result(30)
        except Exception as error:  # worth a line in the log, not a failed demo
            log.info("demo ACL %s not revoked: %s", binding, error)


def free_port(preferred: int = 0) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
