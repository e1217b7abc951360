"""``model-events.v1``: every change of a registry alias announced, and every worker and API listening to it.

**Announcing.** :func:`announcer` is the registry hook (:class:`models.registry.Registry`'s ``on_change``) the CLI
gives every registry it changes aliases through — ``train --promote``, ``model promote`` / ``rollback``, ``retrain``
and the monitor's automatic rollback: each change becomes a :class:`~fraudpipe.contracts.ModelEvent`, produced with
the project's one producer configuration and waited for. A broker that does not take it is a warning, never a
failure: the change is made and written, and every instance still finds it by polling the registry
(``scoring.model_poll_s``). ``retrain`` also announces a challenger the gates refused (``refuse``).

**Listening.** :class:`ModelEventListener` is a thread with its own consumer, assigned every partition of the topic
from its end: it joins no consumer group and commits nothing, so every instance sees every event from the moment
it starts (the group it names, ``KafkaSettings.model_events_group_of``, is only looked up: READ on it and on the
topic, :func:`streams.topics.worker_acls`). An event calls ``on_event``: the worker hands a model refresh to its scoring
thread (:meth:`streams.scoring.Scoring.model_changed`), the API to each of its scoring threads
(:meth:`streams.scoring_pool.ScoringPool.model_changed`); a promotion is served within about a second
(tests/integration/test_model_events.py). An event that does not decode is logged and skipped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from fraudpipe.codec import DecodeError, decode, encode
from fraudpipe.contracts import ModelEvent
from fraudpipe.settings import KafkaSettings, Settings

__all__ = ["ModelEventListener", "announcer", "publish"]

log = logging.getLogger(__name__)


def publish(kafka: KafkaSettings, topic: str, event: ModelEvent, timeout_s: float = 5.0) -> str | None:
    """Produce ``event`` (keyed by its alias) and wait for the broker: ``None`` once acknowledged, else why not."""
    failures: list[str] = []

    def delivered(error: Any, _: Any) -> None:
        if error is not None:
            failures.append(str(error))

    try:
        # log_level 2: librdkafka's per-retry connection errors would flood the terminal; the failure is said once
        producer = Producer(kafka.producer_config({"message.timeout.ms": int(timeout_s * 1000), "log_level": 2}),
                            logger=logging.getLogger("fraudpipe.kafka"))  # fmt: skip
        producer.list_topics(topic, timeout=min(timeout_s, 2.0))  # no broker: say so in 2 s, not after the timeout
        producer.produce(topic, value=encode(event), key=event.alias.encode(), on_delivery=delivered)
        left = producer.flush(timeout_s + 1)
    except KafkaException as error:
        return str(error)
    if failures:
        return failures[0]
    return None if left == 0 else f"not acknowledged within {timeout_s:g} s"


def announcer(settings: Settings, warn: Callable[[str], None]) -> Callable[[dict[str, Any]], None]:
    """The registry hook that publishes each alias change (module docstring); ``warn`` is told when one could
    not be."""
    topic = settings.topics.full(settings.topics.registry_events)

    def announce(entry: dict[str, Any]) -> None:
        event = ModelEvent(action=entry["action"], alias=entry["alias"], version=entry["version"],
                           previous=entry["previous"], by=entry["by"], why=entry["why"],
                           at=datetime.fromisoformat(entry["at"]))  # fmt: skip
        problem = publish(settings.kafka, topic, event)
        if problem is not None:
            warn(f"model event not published to {topic}: {problem} (instances find the change by polling the registry)")

    return announce


class ModelEventListener:
    """Calls ``on_event`` with each :class:`~fraudpipe.contracts.ModelEvent` published on ``topic`` after
    :meth:`start` (module docstring), on its own thread; :meth:`close` stops it."""

    def __init__(self, kafka: KafkaSettings, topic: str, on_event: Callable[[ModelEvent], None], *,
                 poll_s: float = 0.2) -> None:  # fmt: skip
        self.kafka, self.topic, self.on_event, self.poll_s = kafka, topic, on_event, poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None

    def start(self, timeout_s: float = 10.0) -> bool:
        """Assign every partition of the topic from its end (read now: every event published after this returns is
        seen) and start listening; ``False`` (logged) when the topic
        cannot be read now — the registry's polling still finds every change."""
        config = self.kafka.consumer_config(KafkaSettings.model_events_group_of(self.kafka.app_id),
                                            {"enable.auto.offset.store": False})  # fmt: skip
        consumer = Consumer(config, logger=logging.getLogger("fraudpipe.kafka"))
        try:
            found = consumer.list_topics(self.topic, timeout=timeout_s).topics.get(self.topic)
            if found is None or found.error is not None or not found.partitions:
                raise KafkaException(f"topic {self.topic} not found")
            ends = [consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=timeout_s)[1]
                    for p in found.partitions]  # fmt: skip
            consumer.assign([TopicPartition(self.topic, p, end) for p, end in zip(found.partitions, ends, strict=True)])
        except KafkaException as error:
            consumer.close()
            log.warning("not listening to %s (%s); model changes are found by polling the registry", self.topic, error)
            return False
        self._consumer = consumer
        log.info("listening to %s from its end", self.topic)
        self._thread = threading.Thread(target=self._run, name="model-events", daemon=True)
        self._thread.start()
        return True

    def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        told: set[int] = set()  # each kind of error is logged once: a refusal would repeat at every poll
        while not self._stop.is_set():
            message = consumer.poll(self.poll_s)
            if message is None:
                continue
            if (error := message.error()) is not None:
                if error.code() not in told:
                    told.add(error.code())
                    log.warning("model events: %s (the registry's polling still finds every change)", error)
                continue
            try:
                event = decode(message.value(), ModelEvent)
            except DecodeError as error:
                log.warning("skipped a model event that does not decode (offset %s): %s", message.offset(), error)
                continue
            log.info("model event: %s %s -> %s (%s)", event.action, event.alias, event.version, event.why)
            try:
                self.on_event(event)
            except Exception:
                log.exception("handling a model event failed (the registry's polling still applies it)")

    def close(self) -> None:
        """Stop the thread and close the consumer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
