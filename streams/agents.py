"""Faust agents: load, call the pure code, publish. No business ``if`` lives here.

``score_transactions`` decides ``transactions.v1``. Its records do not come through Faust's consumer, which costs
more per record than scoring it: :class:`streams.consumer.TransactionConsumer`, a service the agent starts, takes
them from librdkafka in batches and hands each batch to the agent through the ``scoring_batches`` channel. The agent
runs :meth:`streams.scoring.Scoring.handle` on each (validate, score, decide, log, produce: see
:mod:`streams.scoring`); the consumer commits a batch's offsets once its outputs are acknowledged and its log rows
durable (:mod:`streams.watermark`). A batch whose handling raises stops the worker: its records are redelivered
from the last commit, never skipped.

``apply_repairs`` applies to Redis the transactions a degraded batch decided without it; ``deliver_alerts`` hands
alerts to the sinks; ``apply_labels`` applies labels to the online store and the label log. These three run on
Faust's own consumer (their volume is a fraction of the payments'), and write their logs before Faust may commit.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

import polars as pl

from features.store import RedisFeatureStore, StoreUnavailableError, redis_client
from fraudpipe.clock import SystemClock
from fraudpipe.codec import dead_letter, dead_letter_key, decode, encode
from fraudpipe.contracts import Alert, Label, Reason, Transaction
from fraudpipe.groupcommit import GroupWriter
from fraudpipe.logstore import DayLog, Logs
from fraudpipe.privacy import ErasureList
from fraudpipe.settings import TopicSettings
from models.registry import Registry
from streams import metrics
from streams.app import alerts_topic, app, labels_topic, repairs_topic, scoring_batches, settings
from streams.consumer import Records, TransactionConsumer
from streams.intake import RawRecord, intake
from streams.model_events import ModelEventListener
from streams.outputs import decision_rows
from streams.pipeline import Pipeline, from_settings
from streams.publisher import KafkaPublisher, Publisher
from streams.scoring import Scoring, Shadow, Writers
from streams.sinks import Dispatcher, build_sinks

__all__ = [
    "AGENTS",
    "apply_labels",
    "apply_repairs",
    "deliver_alerts",
    "delivery_rows",
    "score_transactions",
]

log = logging.getLogger(__name__)
clock = SystemClock()


def _raw(event: Any) -> RawRecord:
    message = event.message
    return RawRecord(message.topic, message.partition, message.offset, message.key, message.value)


class LabelApplier(Protocol):
    def apply_labels(self, labels: list[Label]) -> int: ...


def make_publisher() -> Publisher:
    """The worker's producer for its outputs; unit tests put a list here."""
    return KafkaPublisher(settings.kafka)


def make_logs() -> Logs:
    """The worker's logs under ``data_dir``, sealed with ``privacy.audit_key``; unit tests point them elsewhere."""
    return Logs.under(settings.paths.data_dir, settings.privacy.audit_key.get_secret_value().encode())


def make_writer(day_log: DayLog, combine: Callable[[list[Any]], pl.DataFrame] | None = None) -> GroupWriter:
    """A group-commit writer for ``day_log`` (``settings.logs``); ``combine`` see :class:`GroupWriter`."""
    return GroupWriter(day_log, interval_s=settings.logs.flush_interval_s, max_rows=settings.logs.flush_rows,
                       combine=combine)  # fmt: skip


def make_erasures() -> ErasureList:
    """The erasure list in Redis (:mod:`fraudpipe.privacy`); unit tests put a dict here."""
    return ErasureList.in_redis(redis_client(settings.redis), settings.redis.key_prefix,
                                settings.privacy.audit_key.get_secret_value().encode(),
                                poll_s=settings.privacy.erasure_poll_s, clock=clock)  # fmt: skip


def make_pipeline() -> Pipeline:
    """The worker's pipeline (Redis, the registry alias); unit tests put their twins here."""
    return from_settings(settings, clock)[0]


def make_scoring() -> Scoring:
    """The scoring agent's batch handler: the pipeline, the producer, the decision / conflict (/ shadow) writers."""
    logs = make_logs()
    shadow = (
        Shadow.of(Registry(settings.paths.models_dir), settings.scoring, clock) if settings.scoring.shadow else None
    )
    writers = Writers(make_writer(logs.decisions, decision_rows), make_writer(logs.conflicts),
                      make_writer(logs.shadow) if shadow else None)  # fmt: skip
    return Scoring(make_pipeline(), make_publisher(), writers, make_erasures(), settings.scoring, settings.topics,
                   clock, shadow=shadow)  # fmt: skip


async def _hand(batch: Records) -> None:
    await scoring_batches.put(batch)


def make_consumer() -> TransactionConsumer | None:
    """The consumer of ``transactions.v1`` (:mod:`streams.consumer`); unit tests, which put batches on the channel
    themselves, put ``None`` here."""
    s = settings.scoring
    return TransactionConsumer(settings.kafka, settings.topics.full(settings.topics.transactions), _hand,
                               batch_size=s.batch_size, within_s=s.batch_within_ms / 1000,
                               commit_interval_s=s.commit_interval_s)  # fmt: skip


@app.agent(scoring_batches, concurrency=1)
async def score_transactions(stream: Any) -> None:
    """Decide each batch of transactions the consumer hands over (module docstring)."""
    scoring = make_scoring()
    scoring.start()  # no model, no scoring: the worker stops here with the reason
    gc.collect()
    gc.freeze()  # what start-up loaded (libraries, the model) stays: collections scan only what batches allocate
    consumer = make_consumer()
    if consumer is not None:
        await app.add_runtime_dependency(consumer)
    events = ModelEventListener(settings.kafka, settings.topics.full(settings.topics.registry_events),
                                scoring.model_changed)  # fmt: skip
    await asyncio.to_thread(events.start)  # a promotion is swapped in at once; polling the registry stays
    try:
        async for records in stream:
            await scoring.submit(records)  # returns while the batch is scored: the next one is validated meanwhile
    except Exception as error:  # the batch's ticket holds the watermark: stop rather than stall
        log.exception("a batch could not be handled; stopping the worker (its records will be redelivered)")
        if consumer is not None:
            await consumer.crash(error)
        raise
    finally:
        if consumer is not None:
            consumer.abandon()  # batches still queued will not be handled: do not wait for them at shutdown
        events.close()
        scoring.close()


@app.agent(repairs_topic, concurrency=1)
async def apply_repairs(stream: Any) -> None:
    """Apply to the online store the transactions a degraded batch decided without it (``feature-repairs.v1``):
    they were published with the batch's decisions, so a worker crash loses none. The store's markers make each
    apply once whatever the redeliveries; while Redis does not answer the agent waits, and acknowledges nothing."""
    store = make_pipeline().store
    async for events in stream.take_events(settings.scoring.batch_size, within=0.5):
        txns = [decode(event.message.value, Transaction) for event in events]
        while True:
            try:
                store.raw(txns)
                break
            except StoreUnavailableError as error:
                log.warning("%d repairs wait for Redis: %s", len(txns), error)
                await asyncio.sleep(1.0)
        metrics.REPAIRS_APPLIED.inc(len(txns))


@app.agent(alerts_topic, concurrency=1)
async def deliver_alerts(stream: Any) -> None:
    """Hand alerts to the configured sinks (:mod:`streams.sinks`); dead-letter what a sink gave up on."""
    redis = settings.redis
    password = redis.password.get_secret_value() if redis.password else None
    sinks = build_sinks(settings.sinks, redis.url, redis.key_prefix, username=redis.username, password=password)
    dispatcher = Dispatcher(sinks, settings.sinks.budget_s)
    await dispatcher.setup()
    deliveries = make_writer(make_logs().deliveries)  # flushed per batch: Faust commits behind the agent
    publisher = make_publisher()
    topic = settings.topics.full(settings.topics.alerts)
    dlq = settings.topics.full(TopicSettings.dlq_of(settings.topics.alerts))
    async for events in stream.take_events(settings.scoring.batch_size, within=settings.scoring.batch_within_ms / 1000):
        now = clock.now()
        metrics.EVENTS_IN.labels(topic).inc(len(events))
        result = intake((_raw(event) for event in events), Alert, latest_event_time=None, failed_at=now)
        before = dict(dispatcher.failures)
        await dispatcher.dispatch([alert for _, alert in result.valid])
        for name, count in dispatcher.failures.items():
            metrics.SINK_FAILURES.labels(name).inc(count - before[name])
        dead = list(result.dead)
        for name, alert in dispatcher.dead:
            metrics.SINK_DEAD.labels(name).inc()
            letter = dead_letter(encode(alert), reason=Reason.SINK_FAILED, detail=f"sink {name} gave up",
                                 source_topic=topic, source_partition=-1, source_offset=-1, failed_at=now)  # fmt: skip
            dead.append((RawRecord(topic, -1, -1, alert.card_token.encode(), None), letter))
        deliveries.append(delivery_rows(dispatcher.delivered, dispatcher.dead, now))
        await deliveries.flushed()
        dispatcher.dead.clear()
        dispatcher.delivered.clear()
        await publisher.publish([(dlq, dead_letter_key(record.key), encode(letter)) for record, letter in dead])


def delivery_rows(delivered: list[tuple[str, Alert]], dead: list[tuple[str, Alert]], at: datetime) -> pl.DataFrame:
    """The delivery log's rows: which sink took (``delivered``) or gave up on (``gave_up``) which alert, when."""
    done = [(sink, alert, "delivered") for sink, alert in delivered] + [(sink, a, "gave_up") for sink, a in dead]
    return pl.DataFrame(
        {
            "alert_id": [alert.alert_id for _, alert, _ in done],
            "txn_id": [alert.txn_id for _, alert, _ in done],
            "card_token": [alert.card_token for _, alert, _ in done],
            "event_time": [alert.event_time for _, alert, _ in done],
            "sink": [sink for sink, _, _ in done],
            "outcome": [outcome for _, _, outcome in done],
            "at": [at] * len(done),
        },
        schema_overrides={"event_time": pl.Datetime("us", "UTC"), "at": pl.Datetime("us", "UTC")},
    )


def make_label_store() -> tuple[LabelApplier, DayLog]:
    """Where labels go: the online store (label-derived features) and the label log; unit tests put twins here."""
    store = RedisFeatureStore(redis_client(settings.redis), settings.redis.key_prefix)
    return store, make_logs().labels


@app.agent(labels_topic, concurrency=1)
async def apply_labels(stream: Any) -> None:
    """Validate labels (refused ones to ``labels.dlq.v1``), apply them to the online store once per (transaction,
    version) and append them to the label log. While Redis does not answer, the agent waits and retries: a label is
    never acknowledged before it is applied."""
    store, label_log = make_label_store()
    labels_written = make_writer(label_log)  # flushed per batch: Faust commits behind the agent
    erasures = make_erasures()
    publisher = make_publisher()
    topic = settings.topics.full(settings.topics.labels)
    dlq = settings.topics.full(TopicSettings.dlq_of(settings.topics.labels))
    async for events in stream.take_events(settings.scoring.batch_size, within=0.5):
        now = clock.now()
        metrics.EVENTS_IN.labels(topic).inc(len(events))
        result = intake((_raw(event) for event in events), Label, latest_event_time=None, failed_at=now)
        erasures.refresh()
        labels, erased = erasures.split([label for _, label in result.valid], lambda x: x.card_token,
                                        lambda x: x.event_time)  # fmt: skip
        metrics.ERASED.labels(topic).inc(erased)
        while True:
            try:
                applied = store.apply_labels(labels)
                break
            except StoreUnavailableError as error:
                log.warning("labels wait for Redis: %s", error)
                await asyncio.sleep(1.0)
        metrics.LABELS_APPLIED.inc(applied)
        if labels:
            labels_written.append(pl.DataFrame([label.model_dump(exclude={"schema_version"}) for label in labels]))
            await labels_written.flushed()
        for _, letter in result.dead:
            metrics.DEAD_LETTERS.labels(topic, letter.reason.value).inc()
        await publisher.publish([(dlq, dead_letter_key(record.key), encode(letter)) for record, letter in result.dead])


AGENTS = {"score": (score_transactions, apply_repairs), "alerts": (deliver_alerts,), "labels": (apply_labels,)}
"""The agents by the names ``FRAUD_WORKER__AGENTS`` uses."""
