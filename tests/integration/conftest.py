"""Integration fixtures: real Kafka and real Redis (see tests/services.py for how they are found)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from fraudpipe.settings import KafkaSettings, Settings, TopicSettings
from streams.topics import create_topics, delete_topics, topic_specs, topics_under
from tests.services import KAFKA_ENV, REDIS_ENV, _kafka_container, _redis_container, redacted, resolve

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """host:port of a live broker; fails (never skips) if one was named but does not answer."""
    for bootstrap in resolve("Kafka", KAFKA_ENV, _kafka_container):
        try:
            AdminClient({"bootstrap.servers": bootstrap, "log_level": "2"}).list_topics(timeout=15)
        except Exception as error:
            pytest.fail(f"Kafka at {bootstrap} does not answer: {error}", pytrace=False)
        yield bootstrap


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a live Redis, with its login if it asks for one (``scripts/services.sh``'s does); fails (never skips)
    if one was named but does not answer or refuses the login. Messages show the URL without its password."""
    for url in resolve("Redis", REDIS_ENV, _redis_container):
        try:
            with redis_lib.Redis.from_url(url, socket_timeout=5) as probe:
                probe.ping()
        except redis_lib.AuthenticationError as error:
            pytest.fail(f"Redis at {redacted(url)} refused the login: {error} (put it in {REDIS_ENV}: "
                        "redis://:PASSWORD@host:port/db)", pytrace=False)  # fmt: skip
        except Exception as error:
            pytest.fail(f"Redis at {redacted(url)} does not answer: {error}", pytrace=False)
        yield url


@pytest.fixture
def settings(kafka_bootstrap: str, redis_url: str, unique: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings isolated to this test: own topic prefix, consumer group, Redis key prefix and data dir. The topics
    under its prefix are deleted afterwards, however they were made (each costs the broker open files: a test session
    must not leave thousands behind)."""
    made = Settings(
        _env_file=None,
        environment="test",
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, app_id=f"fp-test-{unique}", client_id=f"fp-{unique}"),
        topics=TopicSettings(prefix=f"t{unique}-", partitions=3),
        redis={"url": redis_url, "key_prefix": f"fp:test:{unique}:"},  # type: ignore[arg-type]
        paths={"data_dir": tmp_path / "data", "models_dir": tmp_path / "models"},  # type: ignore[arg-type]
        metrics={"port": 0},  # type: ignore[arg-type]
        sinks={"redis_stream_key": f"fp:test:{unique}:alerts", "jsonl_path": tmp_path / "alerts.jsonl"},  # type: ignore[arg-type]
        logs={"flush_interval_s": 5.0},  # type: ignore[arg-type]  # the tests wait for files: sooner than by default
    )
    yield made
    try:
        names = topics_under(made.kafka, made.topics.prefix, timeout_s=5)
    except KafkaException:  # the broker is down (a fault test): nothing to clean up that it could be asked to
        return
    delete_topics(made.kafka, names, timeout_s=10)


@pytest.fixture
def store_client(settings: Settings) -> Iterator[redis_lib.Redis]:
    """A client with the hot path's budgets; every key under the test's prefix is deleted afterwards."""
    from features.store import redis_client

    connection = redis_client(settings.redis)
    yield connection
    for key in connection.scan_iter(match=f"{settings.redis.key_prefix}*", count=1000):
        connection.delete(key)
    connection.close()


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a subprocess needs to see ``settings`` (for CLI commands and workers started as users do).
    The Redis login goes along: in the URL (how ``make test`` passes it), and as username / password when set."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FRAUD_")}
    if settings.redis.username is not None:
        env["FRAUD_REDIS__USERNAME"] = settings.redis.username
    if settings.redis.password is not None:
        env["FRAUD_REDIS__PASSWORD"] = settings.redis.password.get_secret_value()
    env.update(
        {
            "FRAUD_ENVIRONMENT": settings.environment,
            "FRAUD_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "FRAUD_KAFKA__APP_ID": settings.kafka.app_id,
            "FRAUD_KAFKA__CLIENT_ID": settings.kafka.client_id,
            "FRAUD_TOPICS__PREFIX": settings.topics.prefix,
            "FRAUD_TOPICS__PARTITIONS": str(settings.topics.partitions),
            "FRAUD_REDIS__URL": settings.redis.url,
            "FRAUD_REDIS__KEY_PREFIX": settings.redis.key_prefix,
            "FRAUD_PATHS__DATA_DIR": str(settings.paths.data_dir),
            "FRAUD_PATHS__MODELS_DIR": str(settings.paths.models_dir),
            "FRAUD_METRICS__PORT": str(settings.metrics.port),
            "FRAUD_SINKS__ENABLED": json.dumps(list(settings.sinks.enabled)),
            "FRAUD_SINKS__REDIS_STREAM_KEY": settings.sinks.redis_stream_key,
            "FRAUD_SINKS__JSONL_PATH": str(settings.sinks.jsonl_path),
            "FRAUD_PRIVACY__ERASURE_POLL_S": str(settings.privacy.erasure_poll_s),
            "FRAUD_LOGS__FLUSH_INTERVAL_S": str(settings.logs.flush_interval_s),
        }
    )
    return env


@pytest.fixture
def topics(settings: Settings) -> Settings:
    """``settings`` with every fraudpipe topic created under the test's prefix (deleted with ``settings``)."""
    create_topics(settings.kafka, topic_specs(settings.topics), timeout_s=15)
    return settings


def run_cli(settings: Settings, *args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``fraudpipe ARGS`` as a user would, in ``cwd`` (no .env there), with ``settings`` in the environment."""
    return subprocess.run(
        [sys.executable, "-m", "fraudpipe", *args],
        cwd=cwd,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_worker(settings: Settings, cwd: Path, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    """``fraudpipe worker`` started as users start it, in ``cwd``, logging to ``cwd/worker.log`` (returned)."""
    log = cwd / "worker.log"
    with log.open("wb") as output:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "fraudpipe", "worker", "-l", "info"],
            cwd=cwd, env=settings_env(settings) | env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return process, log


@pytest.fixture
def stop() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes to stop at the end of the test (by PID)."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)
