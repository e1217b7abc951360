"""The dashboard in a real headless browser (Debian's Chromium, driven by playwright) against the API, a worker and
the monitor started as users start them (``fraudpipe serve``, ``fraudpipe worker``, ``fraudpipe monitor --every``)
on real Kafka and Redis.

The page shell loads without a key and asks for one (``environment=test``: the data needs ``read:alerts``); once it
is given, there is no console error, no failed request and no error response; the worker's decisions, its dead
letter and its latency reach the page through its Prometheus endpoint, drift through the monitor's; a payment that
must be reviewed, sent during the test, goes through the whole alert path (worker -> ``alerts.v1`` -> alert agent
-> Redis stream sink -> API) and appears on the page, with its reason codes, within a few seconds. A screenshot is
kept in ``$FRAUDPIPE_ARTIFACTS`` (default ``var/test-artifacts/``), pass or fail. The alert feed is also read back
from what the real Redis stream sink wrote.

Chromium is ``$FRAUDPIPE_TEST_CHROMIUM``, else ``chromium`` on the PATH; without it (or without playwright) the
browser test is skipped, except with ``CI=true``, where it fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
import redis.asyncio as aioredis
from confluent_kafka import Producer

from fraudpipe.codec import decode, encode
from fraudpipe.contracts import Alert
from fraudpipe.settings import Settings
from streams.auth import hash_key
from streams.dashboard.sources import FeedUnavailableError, RedisAlertFeed
from streams.sinks import RedisStreamSink
from tests import factories
from tests.integration.conftest import ROOT, settings_env, start_worker
from tests.services import _free_port, in_ci

CHROMIUM_ENV = "FRAUDPIPE_TEST_CHROMIUM"
ARTIFACTS_ENV = "FRAUDPIPE_ARTIFACTS"
ALERT_WITHIN_S = 5.0
READER = "fpk_dashboard-test-reader-0123456789"


def _missing(message: str) -> None:
    if in_ci():
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium (the system's, not a downloaded build). Per test: playwright's sync API keeps an event
    loop running in this thread while it is open."""
    named = os.environ.get(CHROMIUM_ENV)
    if named and not Path(named).is_file():
        pytest.fail(f"{CHROMIUM_ENV}={named} does not exist", pytrace=False)  # named, so never silently skipped
    executable = named or shutil.which("chromium") or shutil.which("chromium-browser")
    if not executable:
        _missing(f"no Chromium ({CHROMIUM_ENV} unset, none on the PATH): apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed: pip install -e '.[dev]'")
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=executable, headless=True)
        yield launched
        launched.close()


def _serve(settings: Settings, cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    """``fraudpipe serve`` as users start it, logging to ``cwd/api.log``."""
    log = cwd / "api.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "fraudpipe", "serve"],
            cwd=cwd, env=settings_env(settings) | env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return process, log


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the API exited: {log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"the API did not answer in {timeout_s} s: {log.read_text()[-3000:]}")


def test_the_dashboard_shows_live_alerts_and_the_pipeline(
    topics: Settings, store_client: object, tmp_path: Path, stop: list[subprocess.Popen[bytes]], browser: Any
) -> None:
    from playwright.sync_api import TimeoutError as PageTimeoutError  # present: the browser fixture found it

    started = time.monotonic()
    version = factories.register_champion(topics.paths.models_dir)
    metrics_port, monitor_port, api_port = _free_port(), _free_port(), _free_port()
    env = {  # the worker and the monitor serve their metrics on these ports; the API's dashboard reads both
        "FRAUD_METRICS__PORT": str(metrics_port),
        "FRAUD_MONITOR__METRICS_PORT": str(monitor_port),
        "FRAUD_API__PORT": str(api_port),
        "FRAUD_WORKER__AGENTS": '["score", "alerts"]',
        "FRAUD_SCORING__RULES": '["card_blocked", {"id": "large_amount", "threshold": 5000}]',  # the test's alert
        "FRAUD_API__KEYS": f'{{"{hash_key(READER)}": ["read:alerts"]}}',
    }
    worker, worker_log = start_worker(topics, tmp_path, **env)
    stop.append(worker)
    api, api_log = _serve(topics, tmp_path, env)
    stop.append(api)
    url = f"http://127.0.0.1:{api_port}"
    _wait_healthy(url, api, api_log)

    problems: list[str] = []
    refused: list[str] = []  # the data calls before the key is given: 401, as they must be
    phase = ["locked"]  # then "open" once the key is given, "leaving" once the page follows a report link

    def problem(text: str) -> None:
        if phase[0] != "leaving":
            (refused if phase[0] == "locked" and "401" in text else problems).append(text)

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("console", lambda m: problem(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda error: problem(f"page error: {error}"))
    page.on("requestfailed", lambda r: problem(f"request failed: {r.url} {r.failure}"))
    page.on("response", lambda r: problem(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    artifacts = Path(os.environ.get(ARTIFACTS_ENV) or ROOT / "var" / "test-artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = False
    try:
        page.goto(f"{url}/", wait_until="load")  # the page's CSP holds: expressions below are functions (no eval)
        page.wait_for_selector("#login", state="visible")  # the shell loads; its data asks for a key
        assert page.inner_text("#champion-version") == "…" and not page.query_selector("#alerts tbody tr")
        page.fill("#api-key", "fpk_not-a-key-of-this-api")
        page.click("#login button[type=submit]")
        page.wait_for_function("() => document.getElementById('login-problem').textContent.includes('refused')")
        assert page.is_visible("#login")  # asked again
        page.fill("#api-key", READER)
        page.click("#login button[type=submit]")
        page.wait_for_selector("#login", state="hidden")
        page.wait_for_function("v => document.getElementById('champion-version').textContent === v", arg=version)
        phase[0] = "open"
        assert any("HTTP 401" in text and "/v1/dashboard/" in text for text in refused), refused
        assert page.evaluate("() => sessionStorage.getItem('fraudpipe.apiKey')") == READER
        page.wait_for_function("() => document.getElementById('notes').textContent.includes('not answering')")
        page_loaded = time.monotonic()  # no monitor yet: the page says so and the drift panel waits for it

        producer = Producer(topics.kafka.client_config())
        transactions = topics.topics.full(topics.topics.transactions)
        for i in range(20):
            txn = factories.transaction(txn_id=f"warm-{i}", card_token=f"tok_dashboard{i % 4}", amount=10.0 + i)
            producer.produce(transactions, key=txn.card_token.encode(), value=encode(txn))
        producer.produce(transactions, key=b"poison", value=b'{"txn_id": ')
        assert producer.flush(30) == 0
        try:  # the worker is consuming once its decisions reach the page through its metrics endpoint
            page.wait_for_function(
                "() => document.getElementById('decisions-caption').textContent.startsWith('20 decisions')",
                timeout=90_000,
            )
        except PageTimeoutError:
            raise AssertionError(f"no decisions on the page: {worker_log.read_text()[-3000:]}") from None
        worker_ready = time.monotonic()
        monitor = subprocess.Popen(
            [sys.executable, "-m", "fraudpipe", "monitor", "--every", "2"],
            cwd=tmp_path, env=settings_env(topics) | env | {"FRAUD_MONITOR__DRIFT_MIN_DECISIONS": "1"},  # 21 decisions
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        stop.append(monitor)  # the decision log has the worker's decisions: the monitor measures their drift

        txn = factories.transaction(txn_id="dashboard-alert-1", card_token="tok_dashboard9", amount=9000.0)
        sent = time.monotonic()
        producer.produce(transactions, key=txn.card_token.encode(), value=encode(txn))
        assert producer.flush(30) == 0
        row = page.wait_for_selector('tr[data-txn-id="dashboard-alert-1"]', timeout=30_000)
        alert_after_s = time.monotonic() - sent
        assert row is not None
        shown = row.inner_text()
        assert ("review" in shown or "decline" in shown) and "9000.00 EUR" in shown and "•••• 1111" in shown
        assert len(row.query_selector_all("ul.reasons li")) >= 1  # reason codes shown

        page.wait_for_function(
            "() => document.querySelector('#dead-letters tbody').textContent.includes('invalid_json')"
        )
        page.wait_for_function("() => document.querySelector('#latency-caption').textContent.includes('latest')")
        page.wait_for_selector("#throughput-chart path.throughput", state="attached")  # from the second sample on
        assert "promote" in page.inner_text("#history")
        page.wait_for_selector("#drift .bar", timeout=60_000)  # PSI per served feature, from the monitor's gauges
        assert "amount" in page.inner_text("#drift") and "not answering" not in page.inner_text("#notes")
        assert "not watched" in page.inner_text("#fairness")  # no segment table for the monitor here
        assert factories.VISA_TEST_PAN not in page.content()

        drift_shown = time.monotonic()
        page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)
        shot = True
        phase[0] = "leaving"  # the polls in flight are aborted by the navigation
        with page.expect_response(lambda r: "/reports/champion" in r.url) as report:
            page.click("a[href='/reports/champion']")  # through a one-minute ticket: a link carries no key
        assert "?ticket=" in report.value.url and report.value.status == 404  # let in; this champion has no report
    finally:  # kept whether the test passes or not: what the page showed
        if not shot:
            page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)
        page.close()
    print(  # timings, shown with -s or on failure
        f"dashboard timings: page loaded {page_loaded - started:.1f} s after start, worker live "
        f"{worker_ready - page_loaded:.1f} s later, alert on the page {alert_after_s:.2f} s after it was sent, "
        f"drift {drift_shown - worker_ready:.1f} s after the monitor started"
    )
    assert problems == []
    assert alert_after_s < ALERT_WITHIN_S, f"the alert took {alert_after_s:.1f} s to appear"


def test_the_feed_reads_what_the_redis_stream_sink_wrote(settings: Settings, store_client: redis_lib.Redis) -> None:
    key = f"{settings.redis.key_prefix}alerts"
    alerts = [factories.alert(alert_id=f"alert:f{i}", txn_id=f"f{i}") for i in range(5)]

    async def sink() -> None:
        client = aioredis.Redis.from_url(settings.redis.url)
        stream = RedisStreamSink(client, key, maxlen=100, ttl_s=600, key_prefix=settings.redis.key_prefix)
        await stream.setup()
        await stream.send(alerts)
        await client.aclose()

    asyncio.run(sink())
    feed = RedisAlertFeed(store_client, key)
    entries = feed.latest(None, 50)
    assert [decode(raw, Alert).txn_id for _, raw in entries] == ["f4", "f3", "f2", "f1", "f0"]  # newest first
    assert [decode(raw, Alert).txn_id for _, raw in feed.latest(entries[2][0], 1)] == ["f4"]
    assert feed.latest(entries[0][0], 50) == []
    assert feed.latest(f"{2**64 - 1}-{2**64 - 1}", 50) == []  # nothing after the last id (Redis refuses it)
    store_client.set(f"{settings.redis.key_prefix}not-a-stream", "x")
    with pytest.raises(FeedUnavailableError, match="WRONGTYPE"):
        RedisAlertFeed(store_client, f"{settings.redis.key_prefix}not-a-stream").latest(None, 5)
