"""Publishing outputs with confluent-kafka (librdkafka): produced now, acknowledged later, never dropped.

Faust's ``topic.send`` costs hundreds of microseconds per message in Python; the workers' outputs (a decision per
transaction, alerts, dead letters, repairs) are produced here instead, in C. Idempotent producer, ``acks=all``.

- :meth:`KafkaPublisher.send` produces a group of messages and returns at once; ``done()`` is called (on the
  delivery thread) once the broker has acknowledged every one of them. The scoring agent uses it: the next batch
  is taken while this one is in flight, and the offsets of a batch are committed only after its ``done``
  (:mod:`streams.watermark`).
- :meth:`KafkaPublisher.publish` awaits the same: for agents and the API that wait for their outputs.

A daemon thread serves librdkafka's delivery reports (``poll``). A message that fails (broker away longer than the
delivery timeout) is produced again after ``retry_pause_s``, until it is delivered: nothing is dropped, its group
stays unacknowledged meanwhile. When librdkafka's local queue is full, :meth:`send` waits for it to drain.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import Producer

from fraudpipe.settings import KafkaSettings

__all__ = ["KafkaPublisher", "Message", "Publisher"]

log = logging.getLogger(__name__)

Message = tuple[str, bytes, bytes]
"""(topic, key, value)."""


class Publisher(Protocol):
    """Where an agent's outputs go (Kafka, or a list in unit tests)."""

    async def send(self, messages: Sequence[Message], done: Callable[[], None]) -> None:
        """Produce ``messages``; ``done()`` once every one is acknowledged (maybe on another thread)."""
        ...

    async def publish(self, messages: Sequence[Message]) -> None:
        """Return once every message is acknowledged by the broker."""
        ...


@dataclass(slots=True, eq=False)
class _Group:
    """Messages produced together: how many are not acknowledged yet, and whom to tell when none is left."""

    remaining: int
    done: Callable[[], None]


class KafkaPublisher:
    """The workers' producer (module docstring). ``linger_ms``: how long librdkafka waits to fill a request."""

    def __init__(self, kafka: KafkaSettings, *, delivery_timeout_s: float = 30.0, retry_pause_s: float = 1.0,
                 linger_ms: float = 1.0) -> None:  # fmt: skip
        self.producer = Producer(
            kafka.producer_config(
                {"linger.ms": linger_ms, "message.timeout.ms": int(delivery_timeout_s * 1000), "log_level": 3}
            )
        )
        self.retry_pause_s = retry_pause_s
        self._failed: list[tuple[Message, _Group]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fraudpipe-deliveries", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """Serve delivery reports; produce the failed messages again after a pause."""
        while not self._stop.is_set():
            self.producer.poll(0.05)
            if self._failed:
                failed, self._failed = self._failed, []
                log.error("%d messages not delivered; producing them again", len(failed))
                self._stop.wait(self.retry_pause_s)
                for message, group in failed:
                    self._produce_blocking(message, group)

    def _produce_blocking(self, message: Message, group: _Group) -> None:
        topic, key, value = message
        while True:
            try:
                self.producer.produce(topic, value, key, on_delivery=self._reporter(group))
                return
            except BufferError:
                self.producer.poll(0.05)

    def _reporter(self, group: _Group) -> Callable[[Any, Any], None]:
        def report(error: Any, message: Any) -> None:
            if error is not None:
                self._failed.append(((message.topic(), message.key(), message.value()), group))
                return
            group.remaining -= 1
            if group.remaining == 0:
                group.done()

        return report

    async def send(self, messages: Sequence[Message], done: Callable[[], None]) -> None:
        if not messages:
            done()
            return
        group = _Group(len(messages), done)
        report = self._reporter(group)
        produce = self.producer.produce
        for topic, key, value in messages:
            while True:
                try:
                    produce(topic, value, key, on_delivery=report)
                    break
                except BufferError:  # local queue full: the delivery thread drains it
                    await asyncio.sleep(0.005)

    async def publish(self, messages: Sequence[Message]) -> None:
        loop = asyncio.get_running_loop()
        delivered = loop.create_future()

        def resolve() -> None:
            if not delivered.done():
                delivered.set_result(None)

        def done() -> None:
            loop.call_soon_threadsafe(resolve)

        await self.send(messages, done)
        await delivered

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the delivery thread and wait (up to ``timeout_s``) for what is in flight."""
        self._stop.set()
        self._thread.join()
        self.producer.flush(timeout_s)
