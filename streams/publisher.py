"""Publishing a micro-batch's outputs with confluent-kafka (librdkafka), awaited as a whole.

Faust's ``topic.send`` costs hundreds of microseconds per message in Python; the worker's outputs (a decision per
transaction, alerts, dead letters) are produced here instead, in C, and :meth:`KafkaPublisher.publish` returns once
the broker has acknowledged every message of the batch — so the agent still never takes the next batch (and never
lets Faust commit) before its outputs are durable. A message that fails (broker away longer than the delivery
timeout) is produced again until it is delivered: nothing is dropped, the agent waits. Idempotent producer,
``acks=all``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from confluent_kafka import Producer

from fraudpipe.settings import KafkaSettings

__all__ = ["KafkaPublisher", "Message", "Publisher"]

log = logging.getLogger(__name__)

Message = tuple[str, bytes, bytes]
"""(topic, key, value)."""


class Publisher(Protocol):
    """Where an agent's outputs go (Kafka, or a list in unit tests)."""

    async def publish(self, messages: Sequence[Message]) -> None:
        """Return once every message is acknowledged by the broker."""
        ...


class KafkaPublisher:
    """The worker's producer (see the module docstring)."""

    def __init__(self, kafka: KafkaSettings, *, delivery_timeout_s: float = 30.0, retry_pause_s: float = 1.0) -> None:
        self.producer = Producer(
            {
                **kafka.client_config(),
                "enable.idempotence": True,
                "acks": "all",
                "compression.type": "lz4",
                "linger.ms": 2,
                "message.timeout.ms": int(delivery_timeout_s * 1000),
                "log_level": 3,
            }
        )
        self.retry_pause_s = retry_pause_s
        self._failed: list[Message] = []

    def _report(self, error: Any, message: Any) -> None:
        if error is not None:
            self._failed.append((message.topic(), message.key(), message.value()))

    async def publish(self, messages: Sequence[Message]) -> None:
        pending = list(messages)
        loop = asyncio.get_running_loop()
        while pending:
            self._failed = []
            for topic, key, value in pending:
                while True:
                    try:
                        self.producer.produce(topic, value, key, on_delivery=self._report)
                        break
                    except BufferError:  # local queue full: let librdkafka drain it
                        await loop.run_in_executor(None, self.producer.poll, 0.05)
            while await loop.run_in_executor(None, self.producer.flush, 1.0):
                pass  # flush releases the GIL; the event loop keeps heartbeating meanwhile
            if self._failed:
                log.error("%d of %d messages not delivered; producing them again", len(self._failed), len(pending))
                await asyncio.sleep(self.retry_pause_s)
            pending = self._failed

    def close(self) -> None:
        self.producer.flush(10)
