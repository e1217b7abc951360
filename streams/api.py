"""The REST scoring API (``fraudpipe serve``): authorization-time decisions through the same pipeline as the
stream worker — features from the online store, the champion model, the decision policy, the audit record on
``scores.v1`` (and the alert on ``alerts.v1``).

- ``POST /v1/score`` (scope ``score``): a Transaction (the contract, ``application/json``) in; its Decision out.
  The body is validated by the same codec as the stream, so a refused request gets ``422`` with the stream's
  machine-readable reason code (``{"reason": "amount_negative", "detail": ...}``). ``409`` ``txn_id_conflict``:
  the id was already decided for a different payment (an identical resend gets the same decision again, ``200``).
  ``413``: body over ``api.max_body_bytes`` (refused as it streams in, :mod:`streams.body_limit`). ``415``: not
  JSON. ``503``: ``api.max_pending`` requests already wait for a scoring thread.
- ``GET /healthz`` (liveness): the process answers; it touches neither Redis nor the scoring threads.
  ``GET /readyz``: a model is loaded and Redis answers a ``PING`` within :data:`READY_TIMEOUT_S` (``503``
  otherwise); the ping runs on a thread, one at a time however many probes ask.
- ``GET /metrics``: Prometheus (counts, latencies, model version: no card token, id or amount in any label).
  ``GET /openapi.json``, ``/docs``: the schema.
- ``GET /dashboard`` (``/`` redirects there) and its data (scope ``read:alerts``): see
  :mod:`streams.dashboard.routes`.

**Who may call** (:mod:`streams.auth`): ``score`` and the dashboard's data need an API key with the scope
(``401`` with ``WWW-Authenticate: Bearer`` without a known key, ``403`` without the scope), by default outside
``environment=dev``. ``/healthz``, ``/readyz``, ``/metrics``, the schema and the dashboard's page shell (HTML,
script, style: no data) stay open. No error body repeats what the client sent: errors name the field, never its
content.

**Off the event loop** (:mod:`streams.scoring_pool`): scoring (Redis, LightGBM, SHAP) and the Kafka produce run on
``api.scoring_threads`` threads, each with its own pipeline; the audit record is handed to the producer before the
response returns, and its delivery is confirmed in the background (a failed delivery is logged).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import redis
from confluent_kafka import Producer
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import REGISTRY, make_asgi_app

from fraudpipe.clock import Clock, SystemClock
from fraudpipe.codec import DecodeError, decode, encode
from fraudpipe.contracts import Decision, Reason, Transaction
from fraudpipe.settings import Settings
from streams import metrics
from streams.auth import Keys, Refused, answer, guard
from streams.body_limit import BodyLimit
from streams.dashboard.routes import Dashboard, mount
from streams.dashboard.sources import HttpSource, MetricSource, ProcessSource, RedisAlertFeed, default_metrics_urls
from streams.model_events import ModelEventListener
from streams.pipeline import Batch, from_settings
from streams.scoring_pool import PoolClosedError, PoolFullError, ScoringFailedError, ScoringPool

__all__ = ["READY_TIMEOUT_S", "create_app"]

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 1.0
"""Longest ``/readyz`` waits for Redis's answer (the client's own socket timeout is usually shorter)."""
_ERROR = {
    "type": "object",
    "properties": {"reason": {"type": "string"}, "detail": {"type": "string"}},
    "required": ["reason", "detail"],
}
_ERROR_JSON = {"application/json": {"schema": _ERROR}}
_CONFLICT = "txn_id was already decided for a different payment"


def create_app(settings: Settings, *, clock: Clock | None = None, metrics_urls: Sequence[str] | None = None) -> FastAPI:
    """The API for ``settings`` (Redis, registry alias, topics, ``settings.api``). The dashboard reads
    ``metrics_urls`` (Prometheus endpoints of workers and ``fraudpipe monitor``; default: this host's, from
    ``settings.metrics`` and ``settings.monitor``) besides this process's own metrics.

    Raises:
        RegistryError: no verified model behind the alias.
    """
    clock = clock or SystemClock()
    caps = settings.scoring.amount_caps()
    built = [from_settings(settings, clock) for _ in range(settings.api.scoring_threads)]
    for pipeline, _ in built:
        pipeline.models.start()  # no model, no API: the caller gets the registry's reason
    first, client = built[0]
    producer = Producer(settings.kafka.producer_config({"linger.ms": 5}))
    scores = settings.topics.full(settings.topics.scores)
    alerts = settings.topics.full(settings.topics.alerts)
    repairs = settings.topics.full(settings.topics.repairs)

    def delivered(error: Any, _: Any) -> None:
        if error is not None:
            log.error("audit record not delivered: %s", error)

    def publish(batch: Batch) -> None:
        """On a scoring thread: the batch's audit records, alerts and repairs to Kafka; counted."""
        for key, value in batch.decision_messages:
            producer.produce(scores, key=key, value=value, on_delivery=delivered)
        for key, value in batch.alert_messages:
            producer.produce(alerts, key=key, value=value, on_delivery=delivered)
        for unapplied in batch.unapplied:  # decided without Redis: the worker's repair agent applies it later
            producer.produce(repairs, key=unapplied.card_token.encode(), value=encode(unapplied),
                             on_delivery=delivered)  # fmt: skip
        for outcome, count in batch.outcomes.items():
            metrics.DECISIONS.labels(outcome).inc(count)
        for _ in batch.conflicts:
            metrics.DEAD_LETTERS.labels("api", Reason.TXN_ID_CONFLICT.value).inc()
        producer.poll(0)

    api = settings.api
    pool = ScoringPool([pipeline for pipeline, _ in built], publish, clock, max_pending=api.max_pending,
                       batch_max=api.batch_max)  # fmt: skip
    keys = Keys.from_settings(api, settings.environment)
    if keys.required and not keys.entries:
        log.warning("API keys are required (environment=%s) and none is set: every scoring and dashboard-data "
                    "request will be refused; add one to FRAUD_API__KEYS (fraudpipe api-key)",
                    settings.environment)  # fmt: skip
    ready = _Readiness(client)

    events = ModelEventListener(settings.kafka, settings.topics.full(settings.topics.registry_events),
                                pool.model_changed)  # fmt: skip

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(events.start)  # a promotion is swapped in at once; polling the registry stays
        yield
        events.close()
        await asyncio.to_thread(pool.close)
        producer.flush(10)
        for _, connection in built:
            connection.close()

    app = FastAPI(title="fraudpipe", version="1", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=api.max_body_bytes, on_refused=_count_too_large)
    app.add_exception_handler(Refused, answer)
    app.mount("/metrics", make_asgi_app())

    @app.post(
        "/v1/score",
        response_model=Decision,
        dependencies=[Depends(guard(keys, "score"))],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": Transaction.model_json_schema(mode="validation")}},
            }
        },
        responses={
            401: {"description": "No API key, or an unknown one", "content": _ERROR_JSON},
            403: {"description": "The API key lacks the score scope", "content": _ERROR_JSON},
            409: {"description": "txn_id already decided for a different payment", "content": _ERROR_JSON},
            413: {"description": "Body over api.max_body_bytes", "content": _ERROR_JSON},
            415: {"description": "Not application/json", "content": _ERROR_JSON},
            422: {"description": "Refused transaction", "content": _ERROR_JSON},
            500: {"description": "The batch holding the transaction failed", "content": _ERROR_JSON},
            503: {"description": "Too many requests waiting for a scoring thread", "content": _ERROR_JSON},
        },
    )
    async def score(request: Request) -> Response:
        """Decide one transaction (approve / review / decline), with reason codes when it is an alert."""
        if pool.full:  # before reading anything: a flood is refused at the least cost
            return _busy()
        if not _is_json(request.headers.get("content-type")):
            # Connection: close, as for every refusal before the body: it is neither read nor drained.
            return _error(415, "unsupported_media_type", "send the transaction as application/json (UTF-8)",
                          {"Connection": "close"})  # fmt: skip
        body = await request.body()  # bounded by BodyLimit while it streams in
        latest = clock.now() + timedelta(seconds=settings.scoring.max_clock_skew_s)
        try:
            txn = decode(body, Transaction, latest_event_time=latest, amount_caps=caps)
        except DecodeError as error:
            metrics.DEAD_LETTERS.labels("api", error.reason.value).inc()
            return _error(422, error.reason.value, error.detail)
        try:
            scored = await pool.score(txn)
        except (PoolFullError, PoolClosedError):
            return _busy()
        except ScoringFailedError:  # logged by the pool; a retry of the same payment gets its remembered decision
            return _error(500, "scoring_failed", "the transaction could not be decided; retry")
        if scored.decision is None:
            return _error(409, Reason.TXN_ID_CONFLICT.value, _CONFLICT)
        return Response(encode(scored.decision), media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers (no Redis, no scoring thread involved). Open: no key needed."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "Not ready"}})
    async def readyz() -> Response:
        """Readiness: a model is loaded and Redis answers a PING within a second. Open: no key needed."""
        scorer = first.models.scorer
        problem = await ready.check()
        if problem is not None:
            return JSONResponse({"status": "not ready", "detail": problem}, status_code=503)
        if scorer is None:
            return JSONResponse({"status": "not ready", "detail": "no model"}, status_code=503)
        return JSONResponse({"status": "ready", "model": scorer.version})

    def serving() -> tuple[str, str] | None:
        scorer = first.models.scorer
        return None if scorer is None else (scorer.version, scorer.model.sha256)

    urls = metrics_urls if metrics_urls is not None else (api.dashboard_metrics_urls
                                                          or default_metrics_urls(settings))  # fmt: skip
    sources: list[MetricSource] = [ProcessSource(REGISTRY), *(HttpSource(url) for url in urls)]
    feed = RedisAlertFeed(client, settings.sinks.redis_stream_key)
    mount(app, Dashboard(feed, sources, first.models.registry, settings.monitor, clock, serving,
                         disparity_bound=settings.governance.disparity_bound),
          reports=settings.paths.data_dir / "reports", keys=keys)  # fmt: skip
    return app


class _Readiness:
    """Redis's answer to ``PING`` for ``/readyz``: on a thread, one ping at a time (concurrent probes share it)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._ping: asyncio.Future[Any] | None = None

    async def check(self) -> str | None:
        """``None`` when Redis answered within :data:`READY_TIMEOUT_S`, else what went wrong (no secret in it)."""
        ping = self._ping
        if ping is None or ping.done() or ping.get_loop() is not asyncio.get_running_loop():
            self._ping = ping = asyncio.ensure_future(asyncio.to_thread(self.client.ping))
        try:
            await asyncio.wait_for(asyncio.shield(ping), READY_TIMEOUT_S)
        except TimeoutError:
            return f"redis: no answer within {READY_TIMEOUT_S:g} s"
        except Exception as error:
            return f"redis: {str(error)[:200]}"
        return None


def _is_json(content_type: str | None) -> bool:
    """``application/json``, with no parameter but a UTF-8 charset."""
    media, *parameters = (content_type or "").split(";")
    if media.strip().lower() != "application/json":
        return False
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() != "charset" or value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


def _count_too_large() -> None:
    metrics.DEAD_LETTERS.labels("api", Reason.PAYLOAD_TOO_LARGE.value).inc()  # labelled when it happens: no 0 row


def _busy() -> JSONResponse:
    return _error(503, "busy", "too many requests waiting for scoring; retry shortly", {"Retry-After": "1"})


def _error(status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The API's error body: ``{"reason": stable code, "detail": human text}``, never the refused content."""
    return JSONResponse({"reason": reason, "detail": detail}, status_code=status, headers=headers)
