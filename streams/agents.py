"""Faust agents: load, call the pure code, publish. No business ``if`` lives here.

``score_transactions`` consumes ``transactions.v1`` in micro-batches: each record is validated
(:func:`streams.intake.intake`: the contract, and a Kafka key equal to the card token; refused ones go to
``transactions.dlq.v1`` with reason and coordinates, their key PAN-masked), the valid ones go through
:class:`streams.pipeline.Pipeline` (features, model, decision, reason codes), and every decision is published to
``scores.v1`` and every review / decline to ``alerts.v1``, keyed by card token, by a confluent-kafka producer
(:mod:`streams.publisher`). A reused transaction id (known, other content: :attr:`Batch.conflicts`) is
dead-lettered as ``txn_id_conflict`` and kept in the conflict log for ``fraudpipe audit show``. All deliveries of a
batch are awaited before the next batch is taken, so Faust never commits an offset past an event whose outputs the
broker does not have. Anything unexpected while handling one event dead-letters that event (``processing_error``)
and the batch goes on: an exception escaping the agent would make Faust acknowledge the whole batch.

Before each batch the model alias is checked (every ``scoring.model_poll_s``) and a new version swapped in; a batch
is scored by one version. Transactions decided in degraded mode (Redis away) are published with the batch to
``feature-repairs.v1``, and ``apply_repairs`` applies them once Redis answers: a crash in between loses none.
With ``scoring.shadow`` the registry's challenger scores each batch after it is published (same features), into
``data_dir/shadow``: it never changes a decision, and its failures are counted, logged and ignored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timedelta
from typing import Any, Protocol

import polars as pl

from features.definitions import FEATURE_NAMES
from features.store import RedisFeatureStore, StoreUnavailableError, redis_client
from fraudpipe.audit import CONFLICT_COLUMNS, EVENT_COLUMNS
from fraudpipe.clock import SystemClock
from fraudpipe.codec import dead_letter, dead_letter_key, decode, encode
from fraudpipe.contracts import Alert, DeadLetter, Decision, Label, Reason, Transaction
from fraudpipe.logstore import DayLog, Logs
from fraudpipe.privacy import ErasureList
from fraudpipe.settings import TopicSettings
from models.registry import Registry
from streams import metrics
from streams.app import (
    alerts_topic,
    app,
    labels_topic,
    repairs_topic,
    settings,
    transactions_topic,
)
from streams.intake import RawRecord, intake
from streams.pipeline import Batch, Models, Pipeline, from_settings
from streams.publisher import KafkaPublisher, Message, Publisher
from streams.sinks import Dispatcher, build_sinks

__all__ = [
    "AGENTS",
    "apply_labels",
    "apply_repairs",
    "conflict_rows",
    "decision_rows",
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


def make_decision_log() -> DayLog:
    """The decision log (``data_dir/decisions``)."""
    return make_logs().decisions


def make_conflict_log() -> DayLog:
    """The conflict log (``data_dir/conflicts``): payments refused as reused transaction ids."""
    return make_logs().conflicts


def make_erasures() -> ErasureList:
    """The erasure list in Redis (:mod:`fraudpipe.privacy`); unit tests put a dict here."""
    return ErasureList.in_redis(redis_client(settings.redis), settings.redis.key_prefix,
                                settings.privacy.audit_key.get_secret_value().encode(),
                                poll_s=settings.privacy.erasure_poll_s, clock=clock)  # fmt: skip


def make_shadow() -> tuple[Models, DayLog] | None:
    """The challenger's scorer and the shadow log, when ``scoring.shadow`` is on."""
    if not settings.scoring.shadow:
        return None
    scoring = settings.scoring
    models = Models(Registry(settings.paths.models_dir), "challenger", threads=scoring.model_threads,
                    poll_s=scoring.model_poll_s, clock=clock)  # fmt: skip
    models.refresh(force=True)  # no challenger yet: the shadow stays idle until one is promoted
    return models, make_logs().shadow


def _shadow(pipeline: Pipeline, batch: Batch | None, shadow: tuple[Models, DayLog] | None) -> None:
    """Score the batch in shadow; any failure is counted and logged, never raised (module docstring)."""
    if shadow is None or batch is None:
        return
    models, shadow_log = shadow
    try:
        models.refresh()
        rows = pipeline.shadow(batch, models)
        if rows is not None:
            shadow_log.append(rows)
            metrics.SHADOW_SCORED.inc(rows.height)
    except Exception:
        metrics.SHADOW_FAILURES.inc()
        log.exception("shadow scoring failed (the champion's decisions are not affected)")


def make_pipeline() -> Pipeline:
    """The worker's pipeline (Redis, the registry alias); unit tests put their twins here."""
    return from_settings(settings, clock)[0]


@app.agent(transactions_topic, concurrency=1)
async def score_transactions(stream: Any) -> None:
    """Validate, score and decide transactions in micro-batches; publish decisions, alerts and dead letters."""
    scoring = settings.scoring
    pipeline = make_pipeline()
    scorer = pipeline.models.start()  # no model, no scoring: the worker stops here with the reason
    metrics.MODEL_INFO.info({"version": scorer.version, "sha256": scorer.model.sha256})
    publisher = make_publisher()
    decision_log = make_decision_log()
    conflict_log = make_conflict_log()
    caps = scoring.amount_caps()
    erasures = make_erasures()
    shadow = make_shadow()
    topic = settings.topics.full(settings.topics.transactions)
    dlq = settings.topics.full(TopicSettings.dlq_of(settings.topics.transactions))
    async for events in stream.take_events(scoring.batch_size, within=scoring.batch_within_ms / 1000):
        received = clock.monotonic()
        if scoring.mode == "passthrough":  # fraudpipe bench's ceiling: consume and produce, nothing else
            await publisher.publish([(SCORES, e.message.key or b"", e.message.value or b"") for e in events])
            continue
        if pipeline.models.refresh():
            current = pipeline.models.scorer
            assert current is not None
            metrics.MODEL_SWAPS.inc()
            metrics.MODEL_INFO.info({"version": current.version, "sha256": current.model.sha256})
        now = clock.now()
        metrics.EVENTS_IN.labels(topic).inc(len(events))
        metrics.BATCH_SIZE.observe(len(events))
        result = intake(
            (_raw(event) for event in events),
            Transaction,
            latest_event_time=now + timedelta(seconds=scoring.max_clock_skew_s),
            failed_at=now,
            key_of=_card_token,
            amount_caps=caps,
        )
        dead = list(result.dead)
        erasures.refresh()
        valid, erased = erasures.split(result.valid, lambda pair: pair[1].card_token, lambda pair: pair[1].event_time)
        metrics.ERASED.labels(topic).inc(erased)
        records = [record for record, _ in valid]
        txns = [txn for _, txn in valid]
        try:
            if scoring.mode == "naive":  # fraudpipe bench's floor: one store call and one model call per event
                batch = pipeline.score_one_by_one(txns, [received] * len(txns))
            else:
                batch = pipeline.score(txns, [received] * len(txns))
        except Exception:  # one bad event must not take the batch (or the offsets) with it
            log.exception("batch failed; scoring its %d transactions one by one", len(txns))
            batch = None
        out: list[Message] = []
        decided: list[Decision] = []
        refused: list[Transaction] = []
        if batch is None:
            for record, txn in zip(records, txns, strict=True):
                try:
                    single = pipeline.score([txn], [received])
                except Exception as error:
                    detail = f"{type(error).__name__} while scoring"
                    dead.append((record, dead_letter(record.value, reason=Reason.PROCESSING_ERROR, detail=detail,
                                                     source_topic=record.topic, source_partition=record.partition,
                                                     source_offset=record.offset, failed_at=now)))  # fmt: skip
                    continue
                out += _outputs(single.decisions, single.alerts)
                decided += single.decisions
                refused += single.conflicts
        else:
            out += _outputs(batch.decisions, batch.alerts)
            decided = batch.decisions
            out += [(REPAIRS, txn.card_token.encode(), encode(txn)) for txn in batch.unapplied]
            metrics.REPAIRS_SENT.inc(len(batch.unapplied))
            metrics.STORE_SECONDS.observe(batch.store_s)
            metrics.MODEL_SECONDS.observe(batch.model_s)
            metrics.REDELIVERED.inc(batch.redelivered)
            refused = batch.conflicts
        dead += _conflicts(refused, records, txns, now)
        for record, letter in dead:
            out.append((dlq, dead_letter_key(record.key), encode(letter)))
            metrics.DEAD_LETTERS.labels(topic, letter.reason.value).inc()
        # Logged before publishing: a crash in between redelivers the batch, which logs (and publishes) again.
        decision_log.append(decision_rows(decided, txns))
        if refused:
            conflict_log.append(conflict_rows(refused, now))
        await publisher.publish(out)
        published = time.time()
        for event in events:
            metrics.END_TO_END.observe(max(0.0, published - event.message.timestamp))
        if dead:
            log.warning("dead-lettered %d of %d transactions", len(dead), len(events))
        _shadow(pipeline, batch, shadow)


def _card_token(txn: Transaction) -> str:
    """What a transaction's Kafka key must be (``transactions.v1`` is keyed by card token)."""
    return txn.card_token


def _conflicts(refused: list[Transaction], records: list[RawRecord], txns: list[Transaction],
               at: datetime) -> list[tuple[RawRecord, DeadLetter]]:  # fmt: skip
    """The dead letters of the transactions refused as reused ids (:attr:`Batch.conflicts`), with their records."""
    if not refused:
        return []
    record_of = {id(txn): record for record, txn in zip(records, txns, strict=True)}
    detail = "txn_id was already decided for a payment with other content"
    return [(record, dead_letter(record.value, reason=Reason.TXN_ID_CONFLICT, detail=detail,
                                 source_topic=record.topic, source_partition=record.partition,
                                 source_offset=record.offset, failed_at=at))
            for record in (record_of[id(txn)] for txn in refused)]  # fmt: skip


def conflict_rows(refused: list[Transaction], at: datetime) -> pl.DataFrame:
    """The conflict log's rows (``data_dir/conflicts``, by event day): each payment refused because its id was
    already decided for other content, tokenized as the decision log keeps events; ``refused_at`` when. ``fraudpipe
    audit show`` lists them under the id's trail."""
    columns: dict[str, Any] = {name: [getattr(t, name) for t in refused] for name in CONFLICT_COLUMNS}
    columns["refused_at"] = [at] * len(refused)
    optional = {name: pl.String for name in ("card_last4", "terminal_id", "merchant_id")}  # may be all None
    return pl.DataFrame(columns, schema_overrides=optional)


SCORES = settings.topics.full(settings.topics.scores)
ALERTS = settings.topics.full(settings.topics.alerts)
REPAIRS = settings.topics.full(settings.topics.repairs)


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


def _outputs(decisions: list[Any], alerts: list[Any]) -> list[Message]:
    """The messages of decisions and alerts, keyed by card token; counted."""
    out = [(SCORES, d.card_token.encode(), encode(d)) for d in decisions]
    out += [(ALERTS, a.card_token.encode(), encode(a)) for a in alerts]
    for decision in decisions:
        metrics.DECISIONS.labels(decision.decision).inc()
        if decision.degraded:
            metrics.DEGRADED.inc()
    metrics.PUBLISHED.labels("scores").inc(len(decisions))
    metrics.PUBLISHED.labels("alerts").inc(len(alerts))
    return out


@app.agent(alerts_topic, concurrency=1)
async def deliver_alerts(stream: Any) -> None:
    """Hand alerts to the configured sinks (:mod:`streams.sinks`); dead-letter what a sink gave up on."""
    redis = settings.redis
    password = redis.password.get_secret_value() if redis.password else None
    sinks = build_sinks(settings.sinks, redis.url, redis.key_prefix, username=redis.username, password=password)
    dispatcher = Dispatcher(sinks, settings.sinks.budget_s)
    await dispatcher.setup()
    deliveries = make_logs().deliveries
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
            label_log.append(pl.DataFrame([label.model_dump(exclude={"schema_version"}) for label in labels]))
        for _, letter in result.dead:
            metrics.DEAD_LETTERS.labels(topic, letter.reason.value).inc()
        await publisher.publish([(dlq, dead_letter_key(record.key), encode(letter)) for record, letter in result.dead])


def decision_rows(decisions: list[Decision], txns: list[Transaction]) -> pl.DataFrame:
    """The decision log's rows, built column by column: the audit fields, the event's fields (``EVENT_COLUMNS``,
    from ``txns`` by id), one column per feature as served (``f_<name>``), reason codes as JSON text. The scorer
    agent writes them to ``data_dir/decisions`` (by event day) before publishing each batch: the audit trail, and
    the training source of the feedback loop (features exactly as served). Redeliveries append again; readers
    de-duplicate by ``txn_id``."""
    events = {txn.txn_id: txn for txn in txns}
    columns: dict[str, Any] = {
        "txn_id": [d.txn_id for d in decisions],
        "card_token": [d.card_token for d in decisions],
        "event_time": [d.event_time for d in decisions],
        "decided_at": [d.decided_at for d in decisions],
        "amount": [d.amount for d in decisions],
        "currency": [d.currency for d in decisions],
        "model_version": [d.model.version if d.model else None for d in decisions],
        "model_sha256": [d.model.sha256 if d.model else None for d in decisions],
        "score": [d.score for d in decisions],
        "decision": [d.decision for d in decisions],
        "review_threshold": [d.thresholds.review for d in decisions],
        "decline_threshold": [d.thresholds.decline for d in decisions],
        "degraded": [d.degraded for d in decisions],
        "latency_ms": [d.latency_ms for d in decisions],
        "reason_codes": [json.dumps([c.model_dump() for c in d.reason_codes]) if d.reason_codes else "[]"
                         for d in decisions],
    }  # fmt: skip
    for name in EVENT_COLUMNS:
        columns[name] = [getattr(events[d.txn_id], name) for d in decisions]
    for name in FEATURE_NAMES:
        columns[f"f_{name}"] = pl.Series([d.features.get(name) for d in decisions], dtype=pl.Float64)
    schema = {name: pl.String for name in EVENT_COLUMNS} | {"lat": pl.Float64, "lon": pl.Float64}
    schema |= {"score": pl.Float64, "model_version": pl.String, "model_sha256": pl.String}
    return pl.DataFrame(columns, schema_overrides=schema)


AGENTS = {"score": (score_transactions, apply_repairs), "alerts": (deliver_alerts,), "labels": (apply_labels,)}
"""The agents by the names ``FRAUD_WORKER__AGENTS`` uses."""
