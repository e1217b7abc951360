"""Faust agents: load, call the pure code, store. No business ``if`` lives here.

``screen_transactions`` is the intake edge of ``transactions.v1``: it takes micro-batches, validates each record
(:func:`streams.intake.intake`), and sends every refused record to ``transactions.dlq.v1`` with its reason and
source coordinates. Dead letters are awaited until the broker has them before the batch is acknowledged, so a
source offset is never committed past a poison record that is not yet in the DLQ. Scoring of the valid events is
added by the streaming issue on this same agent.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from fraudpipe.clock import SystemClock
from fraudpipe.codec import encode
from fraudpipe.contracts import Transaction
from streams.app import app, settings, transactions_dlq_topic, transactions_topic
from streams.intake import RawRecord, intake

__all__ = ["screen_transactions"]

log = logging.getLogger(__name__)
clock = SystemClock()


def _raw(event: Any) -> RawRecord:
    message = event.message
    return RawRecord(message.topic, message.partition, message.offset, message.key, message.value)


@app.agent(transactions_topic, concurrency=1)
async def screen_transactions(stream: Any) -> None:
    """Validate transactions in micro-batches; dead-letter what is refused."""
    scoring = settings.scoring
    async for events in stream.take_events(scoring.batch_size, within=scoring.batch_within_ms / 1000):
        now = clock.now()
        result = intake(
            (_raw(event) for event in events),
            Transaction,
            latest_event_time=now + timedelta(seconds=scoring.max_clock_skew_s),
            failed_at=now,
        )
        deliveries = [
            await transactions_dlq_topic.send(key=record.key, value=encode(letter), force=True)
            for record, letter in result.dead
        ]
        for delivery in deliveries:
            await delivery
        if result.dead:
            log.warning("dead-lettered %d of %d transactions", len(result.dead), len(events))
