"""Alert sinks: where alerts go besides ``alerts.v1`` (the analysts' stream for the dashboard, a webhook, a file,
the log).

A sink has ``setup`` / ``send`` / ``flush`` and is idempotent on the alert id: an alert redelivered by Kafka, or
retried after a failure, reaches it once. :class:`Dispatcher` runs every sink on each batch of alerts within a
time budget; a sink that fails or overruns is counted, and its alerts are retried with the next batch. Sinks run
in their own agent on ``alerts.v1`` (:mod:`streams.agents`), so a failing sink never slows scoring. The webhook
retries with exponential backoff and an ``Idempotency-Key`` header; an alert it still cannot deliver after
``webhook_attempts`` goes to ``alerts.dlq.v1`` (:attr:`Dispatcher.dead`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import aiohttp
import redis.asyncio as aioredis

from fraudpipe import keys
from fraudpipe.codec import encode
from fraudpipe.contracts import Alert, Contribution, RuleReason
from fraudpipe.settings import SinkSettings

__all__ = ["Dispatcher", "JsonlSink", "LogSink", "RedisStreamSink", "Sink", "SinkError", "WebhookSink", "build_sinks"]

log = logging.getLogger(__name__)


class SinkError(RuntimeError):
    """A sink could not take a batch (it will be retried)."""


class Sink(Protocol):
    name: str

    async def setup(self) -> None: ...

    async def send(self, alerts: Sequence[Alert]) -> list[Alert]:
        """Deliver ``alerts`` (each at most once); return those given up on for good (dead letters).

        Raises:
            SinkError: nothing was lost, try again later.
        """
        ...

    async def flush(self) -> None: ...


class LogSink:
    """One log line per alert (no PAN: alerts carry the card token and last four only)."""

    name = "log"

    def __init__(self) -> None:
        self._seen: dict[str, None] = {}

    async def setup(self) -> None:
        return None

    async def send(self, alerts: Sequence[Alert]) -> list[Alert]:
        for alert in alerts:
            if alert.alert_id in self._seen:
                continue
            reasons = ", ".join(_reason(code) for code in alert.reason_codes)
            log.info("alert %s %s score=%s %s", alert.decision, alert.txn_id, alert.score, reasons)
            self._seen[alert.alert_id] = None
            if len(self._seen) > 100_000:
                del self._seen[next(iter(self._seen))]
        return []

    async def flush(self) -> None:
        return None


def _reason(code: Contribution | RuleReason) -> str:
    """A reason code in a log line: ``rule:<id>`` (with what it tested) or ``<feature>=<value>``."""
    if isinstance(code, RuleReason):
        return f"rule:{code.rule}" + ("" if code.value is None else f"={code.value}")
    return f"{code.feature}={code.value}"


class _Marked:
    """Idempotency through Redis markers (``SET NX``) shared by every worker: ``<key prefix>sunk:<sink>:<alert
    id>``, each kept ``ttl_s``."""

    def __init__(self, client: aioredis.Redis, key_prefix: str, name: str, ttl_s: int) -> None:
        self.client, self.prefix, self.ttl_s = client, keys.sunk(key_prefix, name), ttl_s

    async def claim(self, alerts: Sequence[Alert]) -> list[Alert]:
        pipe = self.client.pipeline(transaction=False)
        for alert in alerts:
            pipe.set(self.prefix + alert.alert_id, "1", nx=True, ex=self.ttl_s)
        claimed = await pipe.execute()
        return [alert for alert, ok in zip(alerts, claimed, strict=True) if ok]

    async def release(self, alerts: Sequence[Alert]) -> None:
        if alerts:
            await self.client.delete(*(self.prefix + alert.alert_id for alert in alerts))


class RedisStreamSink:
    """``XADD`` to a capped Redis stream (the dashboard's live feed)."""

    name = "redis_stream"

    def __init__(self, client: aioredis.Redis, key: str, maxlen: int, ttl_s: int, key_prefix: str) -> None:
        self.client, self.key, self.maxlen = client, key, maxlen
        self.marks = _Marked(client, key_prefix, self.name, ttl_s)

    async def setup(self) -> None:
        await self.client.ping()

    async def send(self, alerts: Sequence[Alert]) -> list[Alert]:
        try:
            fresh = await self.marks.claim(alerts)
            pipe = self.client.pipeline(transaction=False)
            for alert in fresh:
                pipe.xadd(self.key, {"alert": encode(alert)}, maxlen=self.maxlen, approximate=True)
            try:
                await pipe.execute()
            except Exception:
                await self.marks.release(fresh)
                raise
        except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as error:
            raise SinkError(f"redis stream: {error}") from None
        return []

    async def flush(self) -> None:
        return None


class JsonlSink:
    """Appends one JSON line per alert to a file; ids already in the file are not written again."""

    name = "jsonl"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: set[str] = set()

    async def setup(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            with self.path.open("rb") as handle:
                for line in handle:
                    try:
                        self._seen.add(json.loads(line)["alert_id"])
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn last line from a crash: its alert is written again

    async def send(self, alerts: Sequence[Alert]) -> list[Alert]:
        fresh = [a for a in alerts if a.alert_id not in self._seen]
        if fresh:
            try:
                with self.path.open("ab") as handle:
                    handle.write(b"".join(encode(a) + b"\n" for a in fresh))
            except OSError as error:
                raise SinkError(f"jsonl: {error}") from None
            self._seen.update(a.alert_id for a in fresh)
        return []

    async def flush(self) -> None:
        return None


class WebhookSink:
    """POSTs each alert as JSON with an ``Idempotency-Key`` header; retries with exponential backoff; gives up on
    an alert after ``attempts`` failed deliveries (returned as dead)."""

    name = "webhook"

    def __init__(self, url: str, marks: _Marked, *, attempts: int, timeout_s: float, backoff_s: float) -> None:
        self.url, self.marks, self.attempts, self.backoff_s = url, marks, attempts, backoff_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.session: aiohttp.ClientSession | None = None

    async def setup(self) -> None:
        self.session = aiohttp.ClientSession(timeout=self.timeout)

    async def _post(self, alert: Alert) -> bool:
        assert self.session is not None
        for attempt in range(self.attempts):
            try:
                async with self.session.post(
                    self.url, data=encode(alert),
                    headers={"Content-Type": "application/json", "Idempotency-Key": alert.alert_id},
                ) as response:  # fmt: skip
                    if response.status < 300:
                        return True
                    if 400 <= response.status < 500 and response.status not in (408, 429):
                        return False  # refused for good: retrying cannot help
            except (aiohttp.ClientError, TimeoutError):
                pass
            if attempt + 1 < self.attempts:
                await asyncio.sleep(self.backoff_s * 2**attempt)
        return False

    async def send(self, alerts: Sequence[Alert]) -> list[Alert]:
        try:
            fresh = await self.marks.claim(alerts)
        except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as error:
            raise SinkError(f"webhook: cannot claim alerts ({error})") from None
        delivered = await asyncio.gather(*(self._post(alert) for alert in fresh))
        return [alert for alert, ok in zip(fresh, delivered, strict=True) if not ok]

    async def flush(self) -> None:
        if self.session is not None:
            await self.session.close()


class Dispatcher:
    """Every sink on every batch, each within ``budget_s``; failed batches are kept per sink and retried."""

    def __init__(self, sinks: Sequence[Sink], budget_s: float, *, max_pending: int = 100_000) -> None:
        self.sinks, self.budget_s, self.max_pending = list(sinks), budget_s, max_pending
        self.pending: dict[str, list[Alert]] = {sink.name: [] for sink in sinks}
        self.failures: dict[str, int] = {sink.name: 0 for sink in sinks}
        self.dead: list[tuple[str, Alert]] = []
        self.delivered: list[tuple[str, Alert]] = []
        """(sink, alert) handed over since the caller last cleared it (an alert a sink had already: again)."""

    async def setup(self) -> None:
        for sink in self.sinks:
            await sink.setup()

    async def _one(self, sink: Sink, alerts: list[Alert]) -> None:
        batch = self.pending[sink.name] + alerts
        try:
            given_up = await asyncio.wait_for(sink.send(batch), self.budget_s)
        except (SinkError, TimeoutError) as error:
            self.failures[sink.name] += 1
            self.pending[sink.name] = batch[-self.max_pending :]
            log.warning("sink %s failed (%d alerts kept for retry): %s", sink.name, len(batch), error or "timeout")
            return
        self.pending[sink.name] = []
        self.dead += [(sink.name, alert) for alert in given_up]
        refused = {alert.alert_id for alert in given_up}
        self.delivered += [(sink.name, alert) for alert in batch if alert.alert_id not in refused]

    async def dispatch(self, alerts: Sequence[Alert]) -> None:
        await asyncio.gather(*(self._one(sink, list(alerts)) for sink in self.sinks))

    async def flush(self) -> None:
        for sink in self.sinks:
            await sink.flush()


def build_sinks(
    settings: SinkSettings, redis_url: str, key_prefix: str, *, username: str | None = None, password: str | None = None
) -> list[Sink]:
    """The sinks ``settings.enabled`` names; their idempotency markers live under ``key_prefix``. ``username`` and
    ``password`` log the Redis client in (``redis.username``, ``redis.password``; a login in the URL wins)."""
    client = aioredis.Redis.from_url(
        redis_url, username=username, password=password, socket_timeout=settings.budget_s, socket_connect_timeout=1.0
    )
    marks = _Marked(client, key_prefix, WebhookSink.name, settings.dedupe_ttl_s)
    made: dict[str, Sink] = {}
    for name in settings.enabled:
        if name == "log":
            made[name] = LogSink()
        elif name == "redis_stream":
            made[name] = RedisStreamSink(client, settings.redis_stream_key, settings.redis_stream_maxlen,
                                         settings.dedupe_ttl_s, key_prefix)  # fmt: skip
        elif name == "jsonl":
            made[name] = JsonlSink(settings.jsonl_path)
        elif settings.webhook_url:
            made[name] = WebhookSink(
                settings.webhook_url,
                marks,
                attempts=settings.webhook_attempts,
                timeout_s=settings.webhook_timeout_s,
                backoff_s=settings.webhook_backoff_s,
            )
        else:
            raise ValueError("the webhook sink needs FRAUD_SINKS__WEBHOOK_URL")
    return list(made.values())
