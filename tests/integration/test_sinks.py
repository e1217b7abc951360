"""Alert sinks against real Redis and a real local HTTP server: each alert reaches each sink once, whatever the
redeliveries; a failing sink is retried; the webhook backs off, sends an idempotency key and gives up after its
attempts; the dispatcher keeps a batch for a failed or slow sink without holding the others."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import redis as redis_lib
import redis.asyncio as aioredis
from aiohttp import web

from fraudpipe.codec import decode
from fraudpipe.contracts import Alert
from fraudpipe.settings import Settings
from streams.sinks import Dispatcher, JsonlSink, RedisStreamSink, SinkError, WebhookSink, _Marked
from tests import factories


def _alerts(n: int, prefix: str = "a") -> list[Alert]:
    return [factories.alert(alert_id=f"alert:{prefix}{i}", txn_id=f"{prefix}{i}") for i in range(n)]


def test_redis_stream_gets_each_alert_once_and_stays_capped(settings: Settings, store_client: redis_lib.Redis) -> None:
    key = f"{settings.redis.key_prefix}alerts"

    async def run() -> None:
        client = aioredis.Redis.from_url(settings.redis.url)
        sink = RedisStreamSink(client, key, maxlen=100, ttl_s=600, key_prefix=settings.redis.key_prefix)
        await sink.setup()
        first = _alerts(30)
        await sink.send(first)
        await sink.send(first[10:] + _alerts(5, "b"))  # a redelivery and five new ones
        await sink.send(_alerts(1000, "c"))
        await client.aclose()

    asyncio.run(run())
    entries = store_client.xrange(key)
    ids = [decode(fields[b"alert"], Alert).alert_id for _, fields in entries]
    assert len(ids) == len(set(ids))
    assert store_client.xlen(key) < 300  # capped near maxlen (approximate trimming)
    assert store_client.xinfo_stream(key)["entries-added"] == 30 + 5 + 1000


def test_jsonl_sink_writes_each_alert_once_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "out" / "alerts.jsonl"

    async def run() -> None:
        for batch in (_alerts(10), _alerts(15)):
            sink = JsonlSink(path)
            await sink.setup()
            await sink.send(batch)

    asyncio.run(run())
    ids = [json.loads(line)["alert_id"] for line in path.read_text().splitlines()]
    assert sorted(ids) == sorted(a.alert_id for a in _alerts(15))


def test_webhook_retries_with_an_idempotency_key_and_gives_up(
    settings: Settings, store_client: redis_lib.Redis
) -> None:
    keys: Counter[str] = Counter()
    failures_left: Counter[str] = Counter()

    async def handler(request: web.Request) -> web.Response:
        key = request.headers["Idempotency-Key"]
        body = await request.read()
        assert decode(body, Alert).alert_id == key
        keys[key] += 1
        if key.endswith("doomed"):
            return web.Response(status=503)
        if failures_left[key] < 2:  # every alert fails twice before it is taken
            failures_left[key] += 1
            return web.Response(status=503)
        return web.Response(status=204)

    async def run() -> list[Alert]:
        app = web.Application()
        app.router.add_post("/hook", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        client = aioredis.Redis.from_url(settings.redis.url)
        marks = _Marked(client, settings.redis.key_prefix, "webhook", 600)
        sink = WebhookSink(f"http://127.0.0.1:{port}/hook", marks, attempts=4, timeout_s=2, backoff_s=0.01)
        await sink.setup()
        batch = [*_alerts(5), factories.alert(alert_id="alert:doomed", txn_id="doomed")]
        dead = await sink.send(batch)
        dead += await sink.send(batch)  # redelivered: nothing is sent again
        await sink.flush()
        await client.aclose()
        await runner.cleanup()
        return dead

    dead = asyncio.run(run())
    assert [a.alert_id for a in dead] == ["alert:doomed"]
    assert keys["alert:doomed"] == 4
    assert all(keys[a.alert_id] == 3 for a in _alerts(5))  # two failures, one success, never again


class _Flaky:
    name = "flaky"

    def __init__(self) -> None:
        self.down, self.got = True, list[str]()

    async def setup(self) -> None:
        return None

    async def send(self, alerts: Sequence[Alert]) -> list[Alert]:
        if self.down:
            raise SinkError("down")
        self.got += [a.alert_id for a in alerts]
        return []

    async def flush(self) -> None:
        return None


class _Slow(_Flaky):
    name = "slow"

    async def send(self, alerts: Sequence[Alert]) -> list[Alert]:
        await asyncio.sleep(5)
        return []


def test_dispatcher_retries_a_failed_sink_and_bounds_a_slow_one() -> None:
    flaky, slow = _Flaky(), _Slow()
    dispatcher = Dispatcher([flaky, slow], budget_s=0.2)

    async def run() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await dispatcher.dispatch(_alerts(3))
        flaky.down = False
        await dispatcher.dispatch(_alerts(2, "b"))
        return loop.time() - started

    elapsed = asyncio.run(run())
    assert flaky.got == [a.alert_id for a in _alerts(3) + _alerts(2, "b")]  # the failed batch came first
    assert dispatcher.failures == {"flaky": 1, "slow": 2}
    assert len(dispatcher.pending["slow"]) == 5 and dispatcher.pending["flaky"] == []
    assert elapsed < 1.5  # two batches, each bounded by the budget, not by the slow sink
