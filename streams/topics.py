"""Kafka topic administration with confluent-kafka's AdminClient: what fraudpipe's topics are and making them,
and the ACLs a worker needs on a broker that enforces them.

:func:`topic_specs` and :func:`worker_acls` are pure (settings in, specs out); :func:`create_topics`,
:func:`delete_topics` and :func:`grant_acls` talk to the broker. Creating is idempotent: a topic that already exists
is reported as such and left alone (its partition count is never changed behind the operator's back: a mismatch is
reported); granting an ACL that exists changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from fraudpipe.settings import KafkaSettings, TopicSettings

__all__ = [
    "AclSpec",
    "BrokerUnavailableError",
    "TopicReport",
    "TopicSpec",
    "create_topics",
    "delete_topics",
    "grant_acls",
    "topic_specs",
    "topics_under",
    "worker_acls",
]

log = logging.getLogger(__name__)


class BrokerUnavailableError(RuntimeError):
    """The Kafka broker did not answer within the timeout."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic to create: name, partitions, replication factor and topic-level configs (strings, as Kafka)."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class TopicReport:
    """Outcome of :func:`create_topics`: names created, names already there, and mismatches found."""

    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)


def topic_specs(topics: TopicSettings, *, config: Mapping[str, str] | None = None) -> list[TopicSpec]:
    """Every topic fraudpipe uses, in a stable order: the six main topics, then a DLQ per consumed topic.

    ``config``: topic-level configs set on every topic over the defaults (``fraudpipe bench`` creates its topics
    with ``{"message.timestamp.type": "LogAppendTime"}``); production topics take none.
    """
    min_isr = str(min(2, max(1, topics.replication_factor - 1)))

    def spec(name: str, retention_ms: int) -> TopicSpec:
        settings = {
            "retention.ms": str(retention_ms),
            "cleanup.policy": "delete",
            "min.insync.replicas": min_isr,
            **(config or {}),
        }
        return TopicSpec(topics.full(name), topics.partitions, topics.replication_factor, settings)

    main = [topics.transactions, topics.labels, topics.scores, topics.alerts, topics.registry_events, topics.repairs]
    consumed = [topics.transactions, topics.labels, topics.registry_events, topics.alerts]
    return [spec(name, topics.retention_ms) for name in main] + [
        spec(TopicSettings.dlq_of(name), topics.dlq_retention_ms) for name in consumed
    ]


def create_topics(kafka: KafkaSettings, specs: list[TopicSpec], *, timeout_s: float = 10.0) -> TopicReport:
    """Create the topics in ``specs`` that do not exist yet.

    Raises:
        BrokerUnavailableError: the broker did not answer within ``timeout_s`` seconds.
        KafkaException: the broker refused a creation for another reason (authorization, invalid config).
    """
    # log_level 2: librdkafka's per-retry connection errors would flood the terminal; the failure is reported once.
    admin = AdminClient({**kafka.client_config(), "socket.timeout.ms": str(int(timeout_s * 1000)), "log_level": "2"})
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as error:
        raise BrokerUnavailableError(
            f"Kafka at {kafka.bootstrap_servers} did not answer within {timeout_s:g}s ({error.args[0]})"
        ) from None
    report = TopicReport()
    missing = []
    for spec in specs:
        known = metadata.topics.get(spec.name)
        if known is None:
            missing.append(spec)
            continue
        report.existing.append(spec.name)
        if len(known.partitions) != spec.partitions:
            report.mismatched.append(f"{spec.name}: {len(known.partitions)} partitions, settings say {spec.partitions}")
    if not missing:
        return report
    futures = admin.create_topics(
        [NewTopic(s.name, s.partitions, s.replication_factor, config=s.config) for s in missing],
        request_timeout=timeout_s,
    )
    for name, future in futures.items():
        try:
            future.result()
            report.created.append(name)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            report.existing.append(name)  # created concurrently by someone else
    return report


@dataclass(frozen=True, slots=True)
class AclSpec:
    """One ALLOW grant on a literal resource: ``operation`` on the topic or consumer group ``name``."""

    resource: Literal["topic", "group"]
    name: str
    operation: Literal["read", "write"]


def topics_under(kafka: KafkaSettings, prefix: str, *, timeout_s: float = 10.0) -> list[str]:
    """The broker's topics whose names start with ``prefix`` (a run's or a test's own). Raises ``KafkaException``
    when the broker does not answer within ``timeout_s``."""
    admin = AdminClient({**kafka.client_config(), "log_level": "2"})
    return sorted(name for name in admin.list_topics(timeout=timeout_s).topics if name.startswith(prefix))


def delete_topics(kafka: KafkaSettings, names: list[str], *, timeout_s: float = 30.0) -> list[str]:
    """Delete ``names`` (a run's own topics: the demo's, the bench's, a test's); the names not deleted, each logged
    with why (one already gone counts as deleted)."""
    if not names:
        return []
    admin = AdminClient({**kafka.client_config(), "log_level": "2"})
    left = []
    for name, future in admin.delete_topics(names, operation_timeout=timeout_s).items():
        try:
            future.result(timeout_s)
        except Exception as error:  # reported by name: a cleanup must not fail its caller
            gone = isinstance(error, KafkaException) and error.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
            if not gone:
                log.info("topic %s not deleted: %s", name, error)
                left.append(name)
    return left


def worker_acls(
    topics: TopicSettings, group: str, agents: Iterable[str] = ("score", "alerts", "labels")
) -> list[AclSpec]:
    """The least a ``fraudpipe worker`` running ``agents`` needs (``group``: ``kafka.app_id``), in a stable order.

    Reading implies describing. ``score`` reads transactions, feature repairs and model events (no group: see
    :mod:`streams.model_events`), writes scores, alerts, feature
    repairs and transactions' dead letters; ``alerts`` reads alerts and writes their dead letters; ``labels`` reads
    labels and writes their dead letters; every agent reads (joins, commits in) the group, and ``score`` the scoring
    consumer's group too (``KafkaSettings.scoring_group_of(group)``) and the model-event listener's
    (``KafkaSettings.model_events_group_of(group)``). Nothing on the cluster:
    a worker creates no topic (``fraudpipe topics create`` does, as an administrator).
    """
    agents = tuple(agents)
    dlq = TopicSettings.dlq_of
    reads = {"score": [topics.transactions, topics.repairs, topics.registry_events], "alerts": [topics.alerts],
             "labels": [topics.labels]}  # fmt: skip
    writes = {
        "score": [topics.scores, topics.alerts, topics.repairs, dlq(topics.transactions)],
        "alerts": [dlq(topics.alerts)],
        "labels": [dlq(topics.labels)],
    }
    specs: list[AclSpec] = []
    for agent in agents:
        specs += [AclSpec("topic", topics.full(name), "read") for name in reads[agent]]
        specs += [AclSpec("topic", topics.full(name), "write") for name in writes[agent]]
    if specs:
        specs.append(AclSpec("group", group, "read"))
    if "score" in agents:  # the scoring consumer's own group (streams.consumer), the model events' (never joined)
        specs.append(AclSpec("group", KafkaSettings.scoring_group_of(group), "read"))
        specs.append(AclSpec("group", KafkaSettings.model_events_group_of(group), "read"))
    return list(dict.fromkeys(specs))


def grant_acls(kafka: KafkaSettings, principal: str, specs: list[AclSpec], *, timeout_s: float = 10.0) -> None:
    """Grant ``specs`` to ``principal`` (``User:worker``) from any host; ``kafka`` must name an administrator.

    Raises:
        KafkaException: the broker refused (not an administrator, or no authorizer configured).
    """
    admin = AdminClient({**kafka.client_config(), "log_level": "2"})
    kinds = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP}
    operations = {"read": AclOperation.READ, "write": AclOperation.WRITE}
    bindings = [
        AclBinding(kinds[spec.resource], spec.name, ResourcePatternType.LITERAL, principal, "*",
                   operations[spec.operation], AclPermissionType.ALLOW)
        for spec in specs
    ]  # fmt: skip
    for future in admin.create_acls(bindings, request_timeout=timeout_s).values():
        future.result()
