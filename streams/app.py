"""The one Faust application of fraudpipe, and the topics its agents use.

Built from :func:`fraudpipe.settings.get_settings` at import (this module is an entry point, as Faust expects).
Values and keys travel as raw bytes: :mod:`fraudpipe.codec` is the only (de)serializer. Faust's web server is off
by default and bound to loopback when on: it can serve table contents.

The broker connection follows ``settings.kafka`` as the confluent-kafka clients do (:func:`broker_credentials`):
PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL with PLAIN / SCRAM-SHA-256 / SCRAM-SHA-512 (TLS trusts the system's
CAs). The app declares no topic of its own: no tables, and no leader-election topic (no agent or timer runs
``on_leader``), so a worker needs no right to create topics — only those :func:`streams.topics.worker_acls` lists.

Run a worker with ``python -m streams worker`` or ``fraudpipe worker``.
"""

from __future__ import annotations

import ssl
from typing import Any

import faust

from fraudpipe.settings import KafkaSettings, Settings, get_settings

__all__ = [
    "alerts_topic",
    "app",
    "broker_credentials",
    "labels_topic",
    "repairs_topic",
    "settings",
    "transactions_topic",
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


def _raw_topic(application: faust.App, name: str) -> Any:
    return application.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


settings = get_settings()
app = build_app(settings)
transactions_topic = _raw_topic(app, settings.topics.full(settings.topics.transactions))
alerts_topic = _raw_topic(app, settings.topics.full(settings.topics.alerts))
labels_topic = _raw_topic(app, settings.topics.full(settings.topics.labels))
repairs_topic = _raw_topic(app, settings.topics.full(settings.topics.repairs))
