"""Kafka topic administration with confluent-kafka's AdminClient: what fraudpipe's topics are and making them.

:func:`topic_specs` is pure (settings in, specs out); :func:`create_topics` talks to the broker. Creating is
idempotent: a topic that already exists is reported as such and left alone (its partition count is never changed
behind the operator's back: a mismatch is reported).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from fraudpipe.settings import KafkaSettings, TopicSettings

__all__ = ["BrokerUnavailableError", "TopicReport", "TopicSpec", "create_topics", "topic_specs"]


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


def topic_specs(topics: TopicSettings) -> list[TopicSpec]:
    """Every topic fraudpipe uses, in a stable order: the five main topics, then a DLQ per consumed topic."""
    min_isr = str(min(2, max(1, topics.replication_factor - 1)))

    def spec(name: str, retention_ms: int) -> TopicSpec:
        config = {
            "retention.ms": str(retention_ms),
            "cleanup.policy": "delete",
            "min.insync.replicas": min_isr,
        }
        return TopicSpec(topics.full(name), topics.partitions, topics.replication_factor, config)

    main = [topics.transactions, topics.labels, topics.scores, topics.alerts, topics.registry_events]
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
