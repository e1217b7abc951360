"""Real Kafka and Redis for tests, resolved in this order:

1. an environment variable naming a service that is already running (``FRAUDPIPE_TEST_KAFKA=host:port``,
   ``FRAUDPIPE_TEST_REDIS=redis://host:port/db``, or ``redis://[user]:password@host:port/db`` for a Redis that asks
   for a login) — what ``make test`` and CI use, with ``scripts/services.sh`` (whose Redis asks for one);
2. a testcontainers container, only where a Docker engine answers (same versions as ``scripts/versions.env``);
3. otherwise: with ``CI=true`` the test fails loudly, elsewhere it is skipped with the reason.

A service named by its variable but not answering is always a failure: silence there would hide a broken setup.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
KAFKA_ENV = "FRAUDPIPE_TEST_KAFKA"
REDIS_ENV = "FRAUDPIPE_TEST_REDIS"


def pinned_versions() -> dict[str, str]:
    """``scripts/versions.env`` as a dict."""
    pairs = (line.split("=", 1) for line in (ROOT / "scripts/versions.env").read_text().splitlines())
    return {key.strip(): value.strip() for key, value in (p for p in pairs if len(p) == 2) if not key.startswith("#")}


def redacted(url: str) -> str:
    """``url`` without the password of its login (``redis://:***@host:port/0``): what a message may show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def without_login(url: str) -> str:
    """``url`` without its login: for a client that logs in as another user (a login in the URL would win)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def need(what: str) -> None:
    """A test's real part is missing: a failure with ``CI=true``, a skip with the reason elsewhere."""
    if in_ci():
        pytest.fail(f"CI=true and {what}", pytrace=False)
    pytest.skip(what)


def need_sasl_broker_tools() -> None:
    """Java, and Maven unless the broker's jars are already fetched: what ``services.sh start kafka --sasl`` needs."""
    jars = ROOT / ".services" / f"kafka-lib-{pinned_versions()['KAFKA_VERSION']}" / ".complete"
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None and (tool == "java" or not jars.exists())]
    if missing:
        need(f"the SASL broker needs {' and '.join(missing)} (scripts/services.sh start kafka --sasl)")


def docker_engine_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


def unavailable(what: str) -> None:
    message = (
        f"{what}: no {KAFKA_ENV if 'Kafka' in what else REDIS_ENV} and no Docker engine. "
        "Run `make test` (it starts local services), or `scripts/services.sh start` and export the variable."
    )
    if in_ci():
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _kafka_container(stack: contextlib.ExitStack) -> str:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    port = _free_port()
    env = {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
    }
    container = DockerContainer(f"apache/kafka:{pinned_versions()['KAFKA_VERSION']}").with_bind_ports(9092, port)
    for key, value in env.items():
        container.with_env(key, value)
    stack.enter_context(container)
    wait_for_logs(container, "Kafka Server started", timeout=120)
    return f"127.0.0.1:{port}"


def _redis_container(stack: contextlib.ExitStack) -> str:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    container = DockerContainer(f"redis:{pinned_versions()['REDIS_IMAGE_VERSION']}").with_exposed_ports(6379)
    stack.enter_context(container)
    wait_for_logs(container, "Ready to accept connections", timeout=60)
    return f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"


def resolve(what: str, env_var: str, container: Callable[[contextlib.ExitStack], str]) -> Iterator[str]:
    """Yield the address of a running ``what``; start and stop a container only if needed."""
    if value := os.environ.get(env_var):
        yield value
        return
    if not docker_engine_answers():
        unavailable(what)
    with contextlib.ExitStack() as stack:
        yield container(stack)
