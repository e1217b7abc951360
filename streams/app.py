"""The one Faust application of fraudpipe, and the topics its agents use.

Built from :func:`fraudpipe.settings.get_settings` at import (this module is an entry point, as Faust expects).
Values and keys travel as raw bytes: :mod:`fraudpipe.codec` is the only (de)serializer. Faust's web server is off
by default and bound to loopback when on: it can serve table contents.

Run a worker with ``python -m streams worker`` or ``fraudpipe worker``.
"""

from __future__ import annotations

from typing import Any

import faust

from fraudpipe.settings import Settings, get_settings

__all__ = [
    "alerts_topic",
    "app",
    "labels_topic",
    "settings",
    "transactions_topic",
    "web_flags",
]


def build_app(settings: Settings) -> faust.App:
    """A Faust app configured from ``settings`` (no connection is made until a worker starts)."""
    if settings.kafka.security_protocol != "PLAINTEXT":
        raise ValueError(
            "the Faust worker supports PLAINTEXT Kafka only for now; SASL/TLS come with the security issue"
        )
    return faust.App(
        settings.kafka.app_id,
        broker=settings.kafka.faust_broker_url(),
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
