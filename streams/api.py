"""The REST scoring API (``fraudpipe serve``): authorization-time decisions through the same pipeline as the
stream worker — features from the online store, the champion model, the decision policy, the audit record on
``scores.v1`` (and the alert on ``alerts.v1``).

- ``POST /v1/score``: a Transaction (the contract, JSON) in; its Decision out. The body is validated by the same
  codec as the stream, so a refused request gets ``422`` with the stream's machine-readable reason code
  (``{"reason": "amount_not_positive", "detail": ...}``).
- ``GET /healthz``: the process answers. ``GET /readyz``: a model is loaded and Redis answers (``503`` otherwise).
- ``GET /metrics``: Prometheus. ``GET /openapi.json``, ``/docs``: the schema.
- ``GET /dashboard`` (``/`` redirects there) and the JSON it polls, ``GET /v1/dashboard/alerts`` and
  ``/v1/dashboard/summary``: see :mod:`streams.dashboard.routes`.

The audit record is handed to the Kafka producer before the response returns; its delivery is confirmed in the
background (a failed delivery is logged and counted).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from confluent_kafka import Producer
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import REGISTRY, make_asgi_app

from fraudpipe.clock import Clock, SystemClock
from fraudpipe.codec import DecodeError, decode, encode
from fraudpipe.contracts import Decision, Transaction
from fraudpipe.settings import Settings
from streams import metrics
from streams.dashboard.routes import Dashboard, mount
from streams.dashboard.sources import HttpSource, MetricSource, ProcessSource, RedisAlertFeed, default_metrics_urls
from streams.pipeline import from_settings

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_ERROR = {
    "type": "object",
    "properties": {"reason": {"type": "string"}, "detail": {"type": "string"}},
    "required": ["reason", "detail"],
}


def create_app(settings: Settings, *, clock: Clock | None = None, metrics_urls: Sequence[str] | None = None) -> FastAPI:
    """The API for ``settings`` (Redis, registry alias, topics). The dashboard reads ``metrics_urls`` (Prometheus
    endpoints of workers and ``fraudpipe monitor``; default: this host's, from ``settings.metrics`` and
    ``settings.monitor``) besides this process's own metrics.

    Raises:
        RegistryError: no verified model behind the alias.
    """
    clock = clock or SystemClock()
    pipeline, client = from_settings(settings, clock)
    pipeline.models.start()  # no model, no API: the caller gets the registry's reason
    producer = Producer({**settings.kafka.client_config(), "linger.ms": 5, "acks": "all"})
    lock = threading.Lock()  # one call at a time through the pipeline (its model swaps between calls)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        producer.flush(10)
        client.close()

    app = FastAPI(title="fraudpipe", version="1", lifespan=lifespan)
    app.mount("/metrics", make_asgi_app())
    scores = settings.topics.full(settings.topics.scores)
    alerts = settings.topics.full(settings.topics.alerts)
    repairs = settings.topics.full(settings.topics.repairs)

    def delivered(error: Any, _: Any) -> None:
        if error is not None:
            log.error("audit record not delivered: %s", error)

    @app.post(
        "/v1/score",
        response_model=Decision,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": Transaction.model_json_schema(mode="validation")}},
            }
        },
        responses={422: {"description": "Refused transaction", "content": {"application/json": {"schema": _ERROR}}}},
    )
    async def score(request: Request) -> Response:
        """Decide one transaction (approve / review / decline), with reason codes when it is an alert."""
        body = await request.body()
        latest = clock.now() + timedelta(seconds=settings.scoring.max_clock_skew_s)
        try:
            txn = decode(body, Transaction, latest_event_time=latest)
        except DecodeError as error:
            metrics.DEAD_LETTERS.labels("api", error.reason.value).inc()
            return JSONResponse({"reason": error.reason.value, "detail": error.detail}, status_code=422)
        with lock:
            pipeline.models.refresh()
            batch = pipeline.score([txn], [clock.monotonic()])
        decision = batch.decisions[0]
        producer.produce(scores, key=txn.card_token.encode(), value=encode(decision), on_delivery=delivered)
        for alert in batch.alerts:
            producer.produce(alerts, key=txn.card_token.encode(), value=encode(alert), on_delivery=delivered)
        for unapplied in batch.unapplied:  # decided without Redis: the worker's repair agent applies it later
            producer.produce(repairs, key=txn.card_token.encode(), value=encode(unapplied), on_delivery=delivered)
        producer.poll(0)
        metrics.DECISIONS.labels(decision.decision).inc()
        return Response(encode(decision), media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "Not ready"}})
    async def readyz() -> Response:
        """A model is loaded and Redis answers."""
        scorer = pipeline.models.scorer
        try:
            client.ping()
        except Exception as error:
            return JSONResponse({"status": "not ready", "detail": f"redis: {str(error)[:200]}"}, status_code=503)
        if scorer is None:
            return JSONResponse({"status": "not ready", "detail": "no model"}, status_code=503)
        return JSONResponse({"status": "ready", "model": scorer.version})

    def serving() -> tuple[str, str] | None:
        scorer = pipeline.models.scorer
        return None if scorer is None else (scorer.version, scorer.model.sha256)

    urls = metrics_urls if metrics_urls is not None else (settings.api.dashboard_metrics_urls
                                                          or default_metrics_urls(settings))  # fmt: skip
    sources: list[MetricSource] = [ProcessSource(REGISTRY), *(HttpSource(url) for url in urls)]
    feed = RedisAlertFeed(client, settings.sinks.redis_stream_key)
    mount(app, Dashboard(feed, sources, pipeline.models.registry, settings.monitor, clock, serving),
          reports=settings.paths.data_dir / "reports")  # fmt: skip
    return app
