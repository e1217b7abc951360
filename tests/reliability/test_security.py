"""Kafka with SASL/SCRAM-SHA-512 and ACLs (``scripts/services.sh start kafka --sasl``), and where things listen.

A broker of its own is started for this module, in a temporary state folder on free ports, so the suite's shared
broker is never touched; it must start: with ``CI=true`` a missing Java is a failure, not a skip. The ACLs are
granted as ``admin`` with :func:`streams.topics.grant_acls`, exactly :func:`streams.topics.worker_acls`.

- the worker's principal, with only those ACLs (and a Redis ACL user confined to its prefix), scores end to end:
  a real ``fraudpipe worker`` reads ``transactions.v1``, writes ``scores.v1`` and ``alerts.v1``, its alert agent
  feeds the Redis stream;
- the same credentials cannot write ``labels.v1``, read ``scores.v1``, use another consumer group, create a topic
  or grant themselves ACLs; an anonymous client cannot get through the SASL listener (nor the controller's); a
  wrong password is an authentication failure (for librdkafka and for aiokafka, Faust's client);
- ``fraudpipe topics grant`` as an operator runs it: with admin's login it grants exactly worker_acls; with the
  worker's the broker refuses, and the command says so on one line;
- nothing listens on Faust's web port unless ``web.enabled``, and then only on loopback; the API and the metrics
  endpoint bind where configured (loopback by default).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis as redis_lib
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from fraudpipe.codec import decode, encode
from fraudpipe.contracts import Decision
from fraudpipe.settings import KafkaSettings, Settings, TopicSettings
from streams.topics import AclSpec, create_topics, grant_acls, topic_specs, worker_acls
from tests import factories
from tests.integration.conftest import redis_url, settings_env  # noqa: F401 (the fixture)
from tests.reliability.test_redis_acl import redis_user, worker_rules
from tests.services import need_sasl_broker_tools

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "services.sh"


@dataclass(frozen=True)
class SaslBroker:
    bootstrap: str
    controller: str
    passwords: dict[str, str]
    log: Path

    def kafka(self, user: str, password: str | None = None, **fields: str) -> KafkaSettings:
        """Settings of a client logging in as ``user`` (with its own password unless ``password``)."""
        values = {"bootstrap_servers": self.bootstrap, "security_protocol": "SASL_PLAINTEXT",
                  "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": user,
                  "sasl_password": password or self.passwords[user]} | fields  # fmt: skip
        return KafkaSettings.model_validate(values)


def _free_pair() -> int:
    """A free port whose successor is free too (the KRaft controller listens on port + 1)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        if port < 65_000:
            return port
    raise RuntimeError("no two consecutive free ports")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslBroker]:
    """A SASL/SCRAM broker with ACLs enforced, users admin / worker / labeler; stopped (by its PID file) after."""
    need_sasl_broker_tools()
    port = _free_pair()
    passwords = {user: secrets.token_urlsafe(18) for user in ("admin", "worker", "labeler")}
    state = tmp_path_factory.mktemp("sasl-services")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("FRAUD_", "FRAUDPIPE_KAFKA_SASL"))}
    env |= {
        "FRAUDPIPE_SERVICES_DIR": str(state),
        "FRAUD_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        "FRAUDPIPE_KAFKA_SASL_USERS": "worker labeler",
        **{f"FRAUDPIPE_KAFKA_SASL_PASSWORD_{user.upper()}": password for user, password in passwords.items()},
    }
    started = subprocess.run([str(SCRIPT), "start", "kafka", "--sasl"], env=env, capture_output=True, text=True,
                             timeout=300, check=False)  # fmt: skip
    try:
        assert started.returncode == 0, f"scripts/services.sh start kafka --sasl failed:\n{started.stderr[-3000:]}"
        assert "SASL_PLAINTEXT SCRAM-SHA-512 with ACLs" in started.stdout, started.stdout
        yield SaslBroker(f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}", passwords, state / "kafka" / "server.log")
    finally:
        subprocess.run([str(SCRIPT), "stop", "kafka"], env=env, capture_output=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with a champion, shared by this module's workers (they only read it)."""
    folder = tmp_path_factory.mktemp("sasl-models")
    factories.register_champion(folder)
    return folder


@dataclass(frozen=True)
class Secured:
    """One test's world on the SASL broker: topics made as admin, the worker's ACLs granted, its settings."""

    admin: Settings
    worker: Settings


@pytest.fixture
def secured(sasl_broker: SaslBroker, redis_url: str, unique: str, tmp_path: Path, models_dir: Path) -> Secured:  # noqa: F811
    def settings(kafka: KafkaSettings) -> Settings:
        return Settings(
            _env_file=None,
            environment="test",
            kafka=kafka,
            topics=TopicSettings(prefix=f"t{unique}-", partitions=2),
            redis={"url": redis_url, "key_prefix": f"fp:test:{unique}:"},  # type: ignore[arg-type]
            paths={"data_dir": tmp_path / "data", "models_dir": models_dir},  # type: ignore[arg-type]
            metrics={"port": 0},  # type: ignore[arg-type]
            sinks={"redis_stream_key": f"fp:test:{unique}:alerts", "jsonl_path": tmp_path / "alerts.jsonl"},  # type: ignore[arg-type]
        )

    ids = {"app_id": f"fp-test-{unique}", "client_id": f"fp-{unique}"}
    admin = settings(sasl_broker.kafka("admin", **ids))
    worker = settings(sasl_broker.kafka("worker", **ids))
    create_topics(admin.kafka, topic_specs(admin.topics), timeout_s=30)
    grant(admin.kafka, "User:worker", worker_acls(worker.topics, worker.kafka.app_id))
    return Secured(admin, worker)


def grant(admin: KafkaSettings, principal: str, specs: list[AclSpec]) -> None:
    """``grant_acls``, then wait until the broker describes them: it applies new ACLs from the metadata log a
    moment after the controller has committed them."""
    grant_acls(admin, principal, specs, timeout_s=30)
    wanted = {(spec.name, spec.operation.upper()) for spec in specs}
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, principal, None,
                                  AclOperation.ANY, AclPermissionType.ANY)  # fmt: skip
    client = AdminClient({**admin.client_config(), "log_level": "2"})

    def described() -> set[tuple[str, str]]:
        return {(b.name, b.operation.name) for b in client.describe_acls(everything).result(timeout=10)}

    wait_until(lambda: wanted <= described(), 30, f"ACLs of {principal}")


def kafka_env(kafka: KafkaSettings) -> dict[str, str]:
    """The SASL part of a subprocess's environment (``settings_env`` carries the rest)."""
    assert kafka.sasl_mechanism and kafka.sasl_username and kafka.sasl_password
    return {"FRAUD_KAFKA__SECURITY_PROTOCOL": kafka.security_protocol,
            "FRAUD_KAFKA__SASL_MECHANISM": kafka.sasl_mechanism, "FRAUD_KAFKA__SASL_USERNAME": kafka.sasl_username,
            "FRAUD_KAFKA__SASL_PASSWORD": kafka.sasl_password.get_secret_value()}  # fmt: skip


def start(command: str, settings: Settings, cwd: Path, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    """``fraudpipe COMMAND`` as users start it, with ``settings`` (and its SASL login) plus ``env``."""
    log = cwd / f"{command}-{time.monotonic_ns()}.log"
    arguments = ["worker", "-l", "info"] if command == "worker" else [command]
    with log.open("wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "fraudpipe", *arguments], cwd=cwd,
                                   env=settings_env(settings) | kafka_env(settings.kafka) | env,
                                   stdout=output, stderr=subprocess.STDOUT)  # fmt: skip
    return process, log


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-4000:] if log else ""
            pytest.fail(f"{what}: not after {timeout_s} s\n{tail}")
        time.sleep(0.3)


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` listens on, from /proc (IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, size in (("tcp", 4), ("tcp6", 16)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            host = b"".join(raw[i : i + 4][::-1] for i in range(0, size, 4))  # /proc prints 32-bit words reversed
            found.add((str(ipaddress.ip_address(host)), int(port, 16)))
    return found


def _consume(kafka: KafkaSettings, topic: str, expected: int, timeout_s: float) -> list[bytes]:
    consumer = Consumer({**kafka.client_config(), "group.id": f"probe-{time.monotonic_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(values) < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=500, timeout=0.5):
                assert message.error() is None, message.error()
                values.append(message.value())
    finally:
        consumer.close()
    return values


def _committed(kafka: KafkaSettings, group: str, topic: str) -> bool:
    """Whether ``group`` has committed the end offset of every partition of ``topic`` that holds messages."""
    probe = Consumer({**kafka.client_config(), "group.id": group})
    try:
        partitions = [TopicPartition(topic, p) for p in probe.list_topics(topic, timeout=10).topics[topic].partitions]
        ends = [probe.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions]
        committed = [tp.offset for tp in probe.committed(partitions, timeout=10)]
        return all(offset == end for offset, end in zip(committed, ends, strict=True) if end > 0)  # empty: none
    finally:
        probe.close()


def _with_login(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))


# --- the worker's principal does its job ----------------------------------------------------------------------


def test_worker_with_least_privilege_scores_end_to_end(
    secured: Secured,
    redis_url: str,  # noqa: F811
    unique: str,
    tmp_path: Path,
    stop: list[subprocess.Popen[bytes]],
) -> None:
    worker, admin = secured.worker, secured.admin
    redis_admin = redis_lib.Redis.from_url(redis_url, socket_timeout=5)
    user, password = f"fp-worker-{unique}", secrets.token_urlsafe(18)
    metrics_port = _free_port()
    # Every review or decline becomes an alert, so the alert agent and its Redis sink run too.
    env = {"FRAUD_SCORING__THRESHOLDS_FROM": "settings", "FRAUD_SCORING__REVIEW_THRESHOLD": "0",
           "FRAUD_METRICS__PORT": str(metrics_port), "FRAUD_SINKS__ENABLED": '["redis_stream"]',
           # In the URL, so every client of the worker logs in as the user (the sinks' client reads only the URL).
           "FRAUD_REDIS__URL": _with_login(redis_url, user, password)}  # fmt: skip
    txns = [factories.transaction(txn_id=f"sasl-{unique}-{i}", card_token=f"tok_{unique}{i % 4}") for i in range(20)]
    try:
        with redis_user(redis_admin, user, worker_rules(password, worker.redis.key_prefix,
                                                        worker.sinks.redis_stream_key)):  # fmt: skip
            process, log = start("worker", worker, tmp_path, **env)
            stop.append(process)
            producer = Producer(admin.kafka.client_config())
            topic = admin.topics.full(admin.topics.transactions)
            for txn in txns:
                producer.produce(topic, key=txn.card_token.encode(), value=encode(txn))
            assert producer.flush(30) == 0

            scores = admin.topics.full(admin.topics.scores)
            values = _consume(admin.kafka, scores, len(txns), timeout_s=120)
            text = log.read_text(errors="replace")
            assert len(values) == len(txns), text[-4000:]
            decisions = [decode(value, Decision) for value in values]
            assert sorted(d.txn_id for d in decisions) == sorted(t.txn_id for t in txns)
            assert all(d.model is not None and not d.degraded for d in decisions), text[-4000:]  # Redis answered
            assert all(d.decision in {"review", "decline"} for d in decisions)
            stream = worker.sinks.redis_stream_key
            wait_until(lambda: redis_admin.xlen(stream) == len(txns), 60, "alerts in the Redis stream", log)
            wait_until(lambda: _committed(admin.kafka, worker.kafka.scoring_group, topic), 60, "offsets committed", log)

            # Faust's web server is off by default: the worker listens on its metrics port only, on loopback.
            assert listening(process.pid) == {("127.0.0.1", metrics_port)}
            text = log.read_text(errors="replace")
            for refusal in ("AuthorizationFailed", "AUTHORIZATION_FAILED", "NOPERM", "can't access"):
                assert refusal not in text, text[-4000:]
            process.kill()  # before its Redis user goes
            process.wait(10)
    finally:
        for key in redis_admin.scan_iter(match=f"{worker.redis.key_prefix}*", count=1000):
            redis_admin.delete(key)


# --- and nothing more -----------------------------------------------------------------------------------------


def _delivery_errors(kafka: KafkaSettings, topic: str) -> list[KafkaError]:
    errors: list[KafkaError] = []
    producer = Producer({**kafka.client_config(), "message.timeout.ms": 10_000, "log_level": 2})
    producer.produce(topic, b"x", on_delivery=lambda error, _: errors.append(error))
    producer.flush(20)
    return errors


def test_worker_credentials_cannot_do_more_than_the_worker(secured: Secured, sasl_broker: SaslBroker) -> None:
    worker, topics = secured.worker.kafka, secured.worker.topics
    denied = KafkaError.TOPIC_AUTHORIZATION_FAILED
    labels = topics.full(topics.labels)
    grant(secured.admin.kafka, "User:labeler", [AclSpec("topic", labels, "write")])

    [error] = _delivery_errors(worker, labels)
    assert error is not None and error.code() == denied, error
    [error] = _delivery_errors(sasl_broker.kafka("labeler"), labels)
    assert error is None, error  # the labeler's ACL: labels.v1 takes writes, only not from the worker
    [error] = _delivery_errors(worker, topics.full(topics.scores))
    assert error is None, error  # and the worker writes what it has to

    def first_error(topic: str, group: str) -> KafkaError | None:
        consumer = Consumer({**worker.client_config(), "group.id": group, "auto.offset.reset": "earliest",
                             "log_level": 2})  # fmt: skip
        consumer.subscribe([topic])
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is not None and message.error() is not None:
                    return message.error()  # type: ignore[no-any-return]
            return None
        finally:
            consumer.close()

    scores_error = first_error(topics.full(topics.scores), worker.app_id)
    assert scores_error is not None and scores_error.code() == denied, scores_error
    group_error = first_error(topics.full(topics.transactions), f"{worker.app_id}-other")
    assert group_error is not None and group_error.code() == KafkaError.GROUP_AUTHORIZATION_FAILED, group_error

    admin = AdminClient({**worker.client_config(), "log_level": "2"})
    [future] = admin.create_topics([NewTopic(topics.full("made-by-worker.v1"), 1, 1)], request_timeout=15).values()
    with pytest.raises(KafkaException) as created:
        future.result()
    assert created.value.args[0].code() in {denied, KafkaError.CLUSTER_AUTHORIZATION_FAILED}
    with pytest.raises(KafkaException) as granted:
        grant_acls(worker, "User:worker", [AclSpec("topic", topics.full(topics.labels), "write")], timeout_s=15)
    assert granted.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED


def test_topics_grant_cli_as_admin_grants_and_as_the_worker_is_refused(
    sasl_broker: SaslBroker, unique: str, tmp_path: Path
) -> None:
    """`fraudpipe topics grant` as users run it, with FRAUD_KAFKA__* logins: as admin it grants exactly
    streams.topics.worker_acls (to a principal made up for this test, so every ACL it has is this command's); as the
    worker the broker refuses, and the command says so on one line and exits 1."""
    principal, topics, app_id = f"User:fresh-{unique}", TopicSettings(prefix=f"t{unique}-"), f"fp-test-{unique}"
    command = [sys.executable, "-m", "fraudpipe", "topics", "grant", "--principal", principal, "--agents", "score"]

    def grant_as(user: str) -> subprocess.CompletedProcess[str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("FRAUD_")}
        env |= kafka_env(sasl_broker.kafka(user)) | {
            "FRAUD_KAFKA__BOOTSTRAP_SERVERS": sasl_broker.bootstrap,
            "FRAUD_KAFKA__APP_ID": app_id,
            "FRAUD_TOPICS__PREFIX": topics.prefix,
        }
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                              check=False)  # fmt: skip

    granted = grant_as("admin")
    assert granted.returncode == 0, granted.stderr
    assert f"granted to {principal}" in granted.stdout
    expected = {(spec.resource.upper(), spec.name, spec.operation.upper())
                for spec in worker_acls(topics, app_id, ["score"])}  # fmt: skip
    client = AdminClient({**sasl_broker.kafka("admin").client_config(), "log_level": "2"})
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, principal, None,
                                  AclOperation.ANY, AclPermissionType.ANY)  # fmt: skip

    def described() -> set[tuple[str, str, str]]:
        bindings = client.describe_acls(everything).result(timeout=10)
        assert all((b.permission_type, b.host, b.resource_pattern_type) == (AclPermissionType.ALLOW, "*",
                   ResourcePatternType.LITERAL) for b in bindings), bindings  # fmt: skip
        return {(b.restype.name, b.name, b.operation.name) for b in bindings}

    wait_until(lambda: described() == expected, 30, f"ACLs of {principal}")  # the broker applies them a moment later
    assert ("GROUP", app_id, "READ") in expected  # kafka.app_id is the group when --group is not given

    refused = grant_as("worker")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("error: the broker refused: ") and "CLUSTER_AUTHORIZATION_FAILED" in line, line
    assert refused.stdout == ""
    assert described() == expected


def _login(config: dict[str, str], timeout_s: float = 2.5) -> tuple[KafkaError | None, list[KafkaError]]:
    """The error of a metadata request with ``config`` (``None``: it succeeded), and the client's error reports.
    A refused login is retried until ``timeout_s``: short, since the refusal is reported within a second."""
    errors: list[KafkaError] = []
    admin = AdminClient({**config, "log_level": 0, "error_cb": errors.append})
    try:
        admin.list_topics(timeout=timeout_s)
        failure = None
    except KafkaException as error:
        failure = error.args[0]
    admin.poll(1)  # serves the error reports
    return failure, errors


def test_anonymous_clients_and_wrong_passwords_are_refused(sasl_broker: SaslBroker) -> None:
    authentication = KafkaError._AUTHENTICATION
    # No login on the SASL listener: the broker closes the connection at the first request that is not SASL.
    failure, _ = _login({"bootstrap.servers": sasl_broker.bootstrap})
    assert failure is not None and failure.code() == KafkaError._TRANSPORT, failure
    assert "Unexpected Kafka request of type METADATA during SASL handshake" in sasl_broker.log.read_text()

    failure, errors = _login(sasl_broker.kafka("worker", "not-the-password").client_config())
    assert failure is not None
    assert any(e.code() == authentication and "invalid credentials" in e.str() for e in errors), errors
    failure, errors = _login(sasl_broker.kafka("nobody", "no-such-user").client_config())
    assert failure is not None and any(e.code() == authentication for e in errors), errors
    failure, errors = _login(sasl_broker.kafka("worker").client_config(), timeout_s=20)
    assert failure is None and not errors  # the right password gets in

    # The controller's port: nothing without a login, SCRAM not offered, PLAIN only for the broker's own user.
    controller = {"bootstrap.servers": sasl_broker.controller}
    failure, _ = _login(controller)
    assert failure is not None
    scram = sasl_broker.kafka("worker", bootstrap_servers=sasl_broker.controller).client_config()
    failure, errors = _login(scram)
    assert failure is not None and any("Unsupported SASL mechanism" in e.str() for e in errors), errors
    failure, errors = _login(scram | {"sasl.mechanism": "PLAIN"})
    assert failure is not None and any(e.code() == authentication for e in errors), errors

    # aiokafka, Faust's client, with the credentials Faust is given (streams.app.broker_credentials).
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from streams.app import broker_credentials

    async def connect(kafka: KafkaSettings) -> None:
        auth = credentials_to_aiokafka_auth(broker_credentials(kafka))
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, request_timeout_ms=8_000, **auth)
        try:
            await producer.start()
        finally:
            await producer.stop()

    asyncio.run(connect(sasl_broker.kafka("worker")))
    with pytest.raises(KafkaConnectionError):
        asyncio.run(connect(sasl_broker.kafka("worker", "not-the-password")))


def test_every_protocol_reaches_faust_as_it_reaches_librdkafka() -> None:
    """No broker needed: the credentials Faust is given for each security protocol."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from streams.app import broker_credentials

    login = {"sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "worker", "sasl_password": "s3cret-password"}
    expected = {"PLAINTEXT": (None, False), "SSL": (None, True), "SASL_PLAINTEXT": ("SCRAM-SHA-512", False),
                "SASL_SSL": ("SCRAM-SHA-512", True)}  # fmt: skip
    for protocol, (mechanism, tls) in expected.items():
        kafka = KafkaSettings.model_validate({"security_protocol": protocol} | (login if mechanism else {}))
        auth = credentials_to_aiokafka_auth(broker_credentials(kafka))
        assert auth["security_protocol"] == kafka.client_config()["security.protocol"] == protocol
        assert auth.get("sasl_mechanism") == mechanism
        assert (auth.get("ssl_context") is not None) == tls
        if mechanism:
            assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("worker", "s3cret-password")
    with pytest.raises(ValueError, match="needs sasl_mechanism"):
        KafkaSettings(security_protocol="SASL_PLAINTEXT")


# --- where things listen ----------------------------------------------------------------------------------------


def test_faust_web_listens_on_loopback_only_and_only_when_enabled(
    secured: Secured, tmp_path: Path, stop: list[subprocess.Popen[bytes]]
) -> None:
    port = _free_port()
    process, log = start("worker", secured.worker, tmp_path, FRAUD_WEB__ENABLED="true", FRAUD_WEB__PORT=str(port),
                         FRAUD_WORKER__AGENTS='["labels"]')  # fmt: skip
    stop.append(process)
    wait_until(lambda: "Ready" in log.read_text(errors="replace") or process.poll() is not None, 90, "worker", log)
    assert process.poll() is None, log.read_text(errors="replace")[-4000:]
    wait_until(lambda: bool(listening(process.pid)), 10, "web server", log)
    assert listening(process.pid) == {("127.0.0.1", port)}


def test_api_binds_where_configured(secured: Secured, tmp_path: Path, stop: list[subprocess.Popen[bytes]]) -> None:
    port = _free_port()
    assert secured.worker.api.bind == "127.0.0.1"  # the default
    process, log = start("serve", secured.worker, tmp_path, FRAUD_API__PORT=str(port))
    stop.append(process)
    wait_until(lambda: process.poll() is not None or bool(listening(process.pid)), 60, "API", log)
    assert process.poll() is None, log.read_text(errors="replace")[-4000:]
    assert listening(process.pid) == {("127.0.0.1", port)}  # the API serves its metrics on its own /metrics
