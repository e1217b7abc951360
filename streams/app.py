"""The one Faust application of fraudpipe, and the topics its agents use.

Built from :func:`fraudpipe.settings.get_settings` at import (this module is an entry point, as Faust expects).
``transactions.v1`` is not one of its topics: the scoring consumer (:mod:`streams.consumer`) reads it and hands
batches to the scoring agent through the ``scoring_batches`` channel. Values and keys travel as raw bytes:
:mod:`fraudpipe.codec` is the only (de)serializer. Faust's web server is off by default and bound to loopback when
on: it can serve table contents.

The broker connection follows ``settings.kafka`` as the confluent-kafka clients do (:func:`broker_credentials`):
PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL with PLAIN / SCRAM-SHA-256 / SCRAM-SHA-512 (TLS trusts the system's
CAs). The app declares no topic of its own: no tables, and no leader-election topic (no agent or timer runs
``on_leader``), so a worker needs no right to create topics — only those :func:`streams.topics.worker_acls` lists.

Run a worker with ``python -m streams worker`` or ``fraudpipe worker``.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import faust
from mode.utils.queues import FlowControlEvent, ThrowableQueue

from fraudpipe.settings import KafkaSettings, Settings, get_settings

__all__ = [
    "BatchChannel",
    "alerts_topic",
    "app",
    "broker_credentials",
    "labels_topic",
    "repairs_topic",
    "scoring_batches",
    "settings",
    "web_flags",
]


def broker_credentials(kafka: KafkaSettings) -> Any:
    """Faust's ``broker_credentials`` for ``kafka``: ``SASLCredentials`` (over TLS for SASL_SSL), ``SSLCredentials``
    for SSL, ``None`` for PLAINTEXT. The password is read from its ``SecretStr`` here and nowhere else."""
    tls = ssl.create_default_context() if kafka.security_protocol in {"SSL", "SASL_SSL"} else None
    if kafka.security_protocol in {"SASL_PLAINTEXT", "SASL_SSL"}:
        password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
        return faust.SASLCredentials(
            username=kafka.sasl_username, password=password, mechanism=kafka.sasl_mechanism, ssl_context=tls
        )
    return None if tls is None else faust.SSLCredentials(tls)


def build_app(settings: Settings) -> faust.App:
    """A Faust app configured from ``settings`` (no connection is made until a worker starts)."""
    return faust.App(
        settings.kafka.app_id,
        broker=settings.kafka.faust_broker_url(),
        broker_credentials=broker_credentials(settings.kafka),
        topic_disable_leader=True,
        autodiscover=["streams.agents"],
        origin="streams",
        datadir=str(settings.paths.data_dir / "faust"),
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        topic_partitions=settings.topics.partitions,
        topic_replication_factor=settings.topics.replication_factor,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        web_enabled=settings.web.enabled,
        web_bind=settings.web.bind,
        web_port=settings.web.port,
        web_host=settings.web.bind,
    )


def web_flags(settings: Settings) -> list[str]:
    """Faust worker flags for ``settings.web``. They are needed: ``faust worker`` turns its web server on unless
    told ``--without-web``, whatever the app's ``web_enabled`` says (and it serves table contents)."""
    if not settings.web.enabled:
        return ["--without-web"]
    return ["--with-web", "--web-bind", settings.web.bind, "--web-port", str(settings.web.port)]


class BatchChannel(faust.Channel[Any]):
    """An in-memory channel fed by the scoring consumer, untouched by Faust's own rebalances.

    A plain Faust channel belongs to Faust's consumer: its queues are cleared when that consumer's group rebalances,
    and events sent before are skipped as of an older generation. The scoring consumer's batches have their own
    group and must never vanish (a lost batch would hold the commit watermark for good). So here each subscriber's
    queue has flow control of its own (never suspended, never cleared), and :meth:`put` takes a batch as it is —
    no Faust event around it, so no generation to be skipped by — once the agent is listening."""

    @property
    def queue(self) -> ThrowableQueue[Any]:
        if self._queue is None:
            self._queue = ThrowableQueue(maxsize=self.maxsize or 0,
                                         flow_control=FlowControlEvent(initially_suspended=False))  # fmt: skip
        return self._queue

    async def put(self, value: Any) -> None:
        root = self._root if self._root is not None else self
        while not root._subscribers:  # the agent starts iterating after it started the consumer
            await asyncio.sleep(0.01)
        for subscriber in root._subscribers:
            await subscriber.queue.put(value)


def _raw_topic(application: faust.App, name: str) -> Any:
    return application.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


settings = get_settings()
app = build_app(settings)
scoring_batches = BatchChannel(app, maxsize=settings.scoring.max_batches_in_flight)
"""Batches of ``transactions.v1`` (:class:`streams.consumer.Records`) on their way to the scoring agent: in memory,
never serialized; the consumer waits when ``scoring.max_batches_in_flight`` are queued."""
alerts_topic = _raw_topic(app, settings.topics.full(settings.topics.alerts))
labels_topic = _raw_topic(app, settings.topics.full(settings.topics.labels))
repairs_topic = _raw_topic(app, settings.topics.full(settings.topics.repairs))
