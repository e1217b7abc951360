"""Topic specs: names, DLQs, configs (pure; creation against the broker is an integration test)."""

from __future__ import annotations

from fraudpipe.settings import TopicSettings
from streams.topics import topic_specs


def test_every_topic_and_its_dlq() -> None:
    specs = topic_specs(TopicSettings())
    assert [spec.name for spec in specs] == [
        "transactions.v1",
        "labels.v1",
        "scores.v1",
        "alerts.v1",
        "model-events.v1",
        "feature-repairs.v1",
        "transactions.dlq.v1",
        "labels.dlq.v1",
        "model-events.dlq.v1",
        "alerts.dlq.v1",
    ]
    assert {spec.partitions for spec in specs} == {6}


def test_prefix_partitions_replication_and_retention() -> None:
    settings = TopicSettings(prefix="t9-", partitions=3, replication_factor=3, retention_ms=1000, dlq_retention_ms=5)
    specs = {spec.name: spec for spec in topic_specs(settings)}
    assert specs["t9-scores.v1"].config["retention.ms"] == "1000"
    assert specs["t9-labels.dlq.v1"].config["retention.ms"] == "5"
    assert specs["t9-scores.v1"].replication_factor == 3
    assert specs["t9-scores.v1"].config["min.insync.replicas"] == "2"
    assert all(name.startswith("t9-") for name in specs)
