"""The dashboard without services: exposition text parsed from real prometheus-client output, rates and quantiles,
and the JSON endpoints on in-memory twins (alert feed, metrics endpoints) with a registry in a temporary folder."""

from __future__ import annotations

import json
import math
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from fraudpipe.clock import FixedClock
from fraudpipe.codec import encode
from fraudpipe.settings import ApiSettings, MonitorSettings, Settings
from models.registry import Manifest, Registry
from streams.auth import Keys, hash_key, presented
from streams.dashboard.figures import Series, Snapshot, combine, parse, quantile, update
from streams.dashboard.routes import Dashboard, mount
from streams.dashboard.sources import (
    HttpSource,
    MemoryAlertFeed,
    SourceError,
    StaticSource,
    default_metrics_urls,
)
from tests import factories
from tests.factories import VISA_TEST_PAN

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SHA = "ab" * 32
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # streams.metrics'


def worker_text(*, approve: int = 0, decline: int = 0, latencies: tuple[float, ...] = (), dead: int = 0,
                psi: dict[str, float] | None = None, quality: dict[str, float] | None = None,
                fpr_ratios: dict[str, float] | None = None, fairness_breaches: float | None = None) -> str:  # fmt: skip
    """Exposition text as a worker (or the monitor) serves it: the same metric definitions as streams.metrics, in
    a registry of their own."""
    registry = CollectorRegistry()
    decisions = Counter("fraudpipe_decisions", "d", ["outcome"], registry=registry)
    letters = Counter("fraudpipe_dead_letters", "d", ["topic", "reason"], registry=registry)
    latency = Histogram("fraudpipe_end_to_end_seconds", "l", registry=registry, buckets=LATENCY_BUCKETS)
    Info("fraudpipe_model", "m", registry=registry).info({"version": "v0001", "sha256": SHA})
    drift = Gauge("fraudpipe_drift_psi", "p", ["model_version", "column"], registry=registry)
    live = Gauge("fraudpipe_live_quality", "q", ["model_version", "metric"], registry=registry)
    for metric, value in (quality or {}).items():
        live.labels("v0001", metric).set(value)
    ratios = Gauge("fraudpipe_segment_fpr_ratio", "r", ["column", "segment"], registry=registry)
    for segment, value in (fpr_ratios or {}).items():
        ratios.labels("home_country", segment).set(value)
    if fairness_breaches is not None:
        Gauge("fraudpipe_fairness_breaches", "b", ["column"], registry=registry).labels("home_country").set(
            fairness_breaches
        )
    if approve:
        decisions.labels("approve").inc(approve)
    if decline:
        decisions.labels("decline").inc(decline)
    if dead:
        letters.labels("transactions.v1", "invalid_json").inc(dead)
    for seconds in latencies:
        latency.observe(seconds)
    for column, value in (psi or {}).items():
        drift.labels("v0001", column).set(value)
    return generate_latest(registry).decode()


def test_parse_reads_the_series_the_dashboard_shows() -> None:
    text = worker_text(approve=7, decline=2, latencies=(0.004, 0.02), dead=3, psi={"amount": 0.3, "x": math.nan})
    snapshot = parse(text)
    assert snapshot.decisions == {"approve": 7.0, "decline": 2.0}
    assert snapshot.dead_letters == {("transactions.v1", "invalid_json"): 3.0}
    assert snapshot.latency_count == 2 and snapshot.latency[math.inf] == 2 and snapshot.latency[0.005] == 1
    assert snapshot.models == (("v0001", SHA),)
    assert snapshot.drift_psi == {("v0001", "amount"): 0.3}  # NaN left out: JSON has no NaN
    assert snapshot.fpr_ratios == {} and snapshot.fairness_breaches == {}  # the monitor not watching fairness
    watched = parse(worker_text(fpr_ratios={"FR": 1.4, "ES": 1.0}, fairness_breaches=1))
    assert watched.fpr_ratios == {("home_country", "FR"): 1.4, ("home_country", "ES"): 1.0}
    assert watched.fairness_breaches == {"home_country": 1.0}


def test_parse_refuses_what_is_not_exposition_text() -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (the parser's own message)
        parse("<html>not metrics</html>\n")


def test_combine_adds_processes_up() -> None:
    one, two = parse(worker_text(approve=3, latencies=(0.01,))), parse(worker_text(approve=4, decline=1))
    total = combine([one, two])
    assert total.decisions == {"approve": 7.0, "decline": 1.0}
    assert total.latency[math.inf] == 1 and total.latency_count == 1
    assert combine([]) == Snapshot()


def test_quantile_interpolates_inside_the_bucket_as_prometheus_does() -> None:
    buckets = {0.01: 50.0, 0.1: 100.0, math.inf: 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.01)
    assert quantile(0.75, buckets) == pytest.approx(0.055)
    assert quantile(0.99, {0.01: 0.0, 0.1: 0.0, math.inf: 10.0}) == pytest.approx(0.1)  # +Inf: largest finite
    assert quantile(0.5, {0.01: 0.0, math.inf: 0.0}) is None
    assert quantile(0.5, {}) is None


def test_update_turns_counters_into_rates_without_spikes() -> None:
    series = update(Series(), 100.0, {"w": parse(worker_text(approve=10))})
    assert series.points == ()  # the first sample is the baseline
    series = update(series, 102.0, {"w": parse(worker_text(approve=30, latencies=(0.02,) * 10))})
    assert series.points[-1].decisions_per_s == pytest.approx(10.0)
    assert series.points[-1].p50_ms is not None and 10.0 < series.points[-1].p50_ms <= 25.0
    assert update(series, 102.5, {"w": parse(worker_text(approve=999))}) is series  # too close: ignored
    restarted = update(series, 104.0, {"w": parse(worker_text(approve=4))})  # counters back at zero
    assert restarted.points[-1].decisions_per_s == pytest.approx(2.0)
    assert restarted.points[-1].p50_ms is None  # nothing timed in the interval
    gone = update(restarted, 106.0, {})
    back = update(gone, 108.0, {"w": parse(worker_text(approve=10_000))})  # a returning source is a new baseline
    assert [p.decisions_per_s for p in back.points[-2:]] == [0.0, 0.0]
    capped = Series()
    for second in range(10):
        capped = update(capped, float(second), {"w": parse(worker_text(approve=second))}, keep=3)
    assert len(capped.points) == 3 and capped.points[-1].at == 9.0


def test_default_metrics_urls_follow_the_settings() -> None:
    assert default_metrics_urls(Settings(_env_file=None)) == [
        "http://127.0.0.1:9108/metrics",
        "http://127.0.0.1:9109/metrics",
    ]
    wide = Settings(_env_file=None, metrics={"bind": "0.0.0.0", "port": 0})  # type: ignore[arg-type]
    assert default_metrics_urls(wide) == ["http://127.0.0.1:9109/metrics"]
    six = Settings(_env_file=None, metrics={"bind": "::1"}, monitor={"metrics_port": 0})  # type: ignore[arg-type]
    assert default_metrics_urls(six) == ["http://[::1]:9108/metrics"]


def test_http_source_reads_an_endpoint_and_names_one_that_does_not_answer() -> None:
    text = worker_text(approve=3)

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = text.encode() if self.path == "/metrics" else b"no"
            self.send_response(200 if self.path == "/metrics" else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert parse(HttpSource(f"http://127.0.0.1:{port}/metrics").read()).decisions == {"approve": 3.0}
        with pytest.raises(SourceError, match="Not Found"):
            HttpSource(f"http://127.0.0.1:{port}/other").read()
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(SourceError, match=f"127.0.0.1:{port}"):  # nothing listens there any more
        HttpSource(f"http://127.0.0.1:{port}/metrics", timeout_s=0.5).read()
    with pytest.raises(ValueError, match="http"):
        HttpSource("file:///etc/passwd")


# --- the endpoints ------------------------------------------------------------------------------------------------


def _registry(root: Path) -> Registry:
    """A registry with v0001 then v0002 promoted (files as the registry lays them out; no model needed to show)."""
    registry = Registry(root)
    for version in ("v0001", "v0002"):
        folder = registry.versions_dir / version
        folder.mkdir(parents=True)
        manifest = Manifest(version=version, created_at=T0, created_by="ci", model_sha256=SHA, lightgbm_version="4",
                            features=[], params={}, rounds=1, windows={}, metrics={"auc": 0.9, "ap": 0.7},
                            thresholds={}, data_fingerprint="f", reference={})  # fmt: skip
        (folder / "manifest.json").write_text(manifest.model_dump_json())
    (root / "aliases.json").write_text(json.dumps({"champion": "v0002", "challenger": None}))
    log = [{"at": T0.isoformat(), "alias": "champion", "version": v, "previous": p, "action": "promote", "by": "ci",
            "why": f"why {v}"} for v, p in (("v0001", None), ("v0002", "v0001"))]  # fmt: skip
    (root / "aliases.log.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in log))
    return registry


@pytest.fixture
def parts(tmp_path: Path) -> tuple[FastAPI, MemoryAlertFeed, StaticSource, FixedClock]:
    feed = MemoryAlertFeed()
    worker = StaticSource("http://127.0.0.1:9108/metrics", None)  # down until a test brings it up
    clock = FixedClock(T0)
    app = FastAPI()
    mount(app, Dashboard(feed, [worker], _registry(tmp_path), MonitorSettings(), clock, lambda: ("v0002", SHA)),
          keys=Keys({}, required=False))  # fmt: skip
    return app, feed, worker, clock


READER, SCORER = "reader-key-0123456789", "scorer-key-0123456789"


@pytest.fixture
def guarded(tmp_path: Path) -> tuple[FastAPI, Path, FixedClock]:
    """The dashboard behind keys: READER may read alerts, SCORER may only score; a demo report on disk."""
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "demo-1.html").write_text("<html>demo</html>")
    clock = FixedClock(T0)
    app = FastAPI()
    keys = Keys({hash_key(READER): ["read:alerts"], hash_key(SCORER): ["score"]}, required=True)
    dashboard = Dashboard(MemoryAlertFeed(), [], _registry(tmp_path / "registry"), MonitorSettings(), clock)
    mount(app, dashboard, reports, keys=keys)
    return app, reports, clock


DATA_ROUTES = ("/v1/dashboard/alerts", "/v1/dashboard/summary", "/reports/demo",
               "/v1/dashboard/ticket?path=/reports/demo")  # fmt: skip


@pytest.mark.parametrize("route", DATA_ROUTES)
def test_data_routes_need_a_key_with_read_alerts(guarded: tuple[FastAPI, Path, FixedClock], route: str) -> None:
    with TestClient(guarded[0]) as client:
        missing = client.get(route)
        unknown = client.get(route, headers={"Authorization": "Bearer not-a-key-we-know"})
        scorer = client.get(route, headers={"Authorization": f"Bearer {SCORER}"})
        reader = client.get(route, headers={"Authorization": f"Bearer {READER}"})
        by_header = client.get(route, headers={"X-API-Key": READER})
    assert missing.status_code == unknown.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["reason"] == "unauthorized" and "not-a-key" not in unknown.text
    assert scorer.status_code == 403 and scorer.json()["reason"] == "forbidden"
    assert 'error="insufficient_scope"' in scorer.headers["www-authenticate"]
    assert reader.status_code == by_header.status_code == 200


def test_the_page_shell_loads_without_a_key(guarded: tuple[FastAPI, Path, FixedClock]) -> None:
    with TestClient(guarded[0]) as client:
        for path in ("/dashboard", "/dashboard/app.js", "/dashboard/style.css"):
            assert client.get(path).status_code == 200, path
        page = client.get("/dashboard").text
    assert 'id="login"' in page and 'type="password"' in page  # the page asks for the key


def test_a_report_ticket_opens_its_report_only_for_a_minute(guarded: tuple[FastAPI, Path, FixedClock]) -> None:
    app, _, clock = guarded
    with TestClient(app) as client:
        url = client.get("/v1/dashboard/ticket", params={"path": "/reports/demo"},
                         headers={"Authorization": f"Bearer {READER}"}).json()["url"]  # fmt: skip
        assert url.startswith("/reports/demo?ticket=")
        assert client.get(url).text == "<html>demo</html>"  # no key: the ticket is enough
        ticket = url.partition("?")[2]
        assert client.get(f"/reports/champion?{ticket}").status_code == 401  # for that report only
        assert client.get(f"{url}0").status_code == 401  # altered
        clock.advance(61.0)
        assert client.get(url).status_code == 401  # expired
        refused = client.get("/v1/dashboard/ticket", params={"path": "/etc/passwd"},
                             headers={"Authorization": f"Bearer {READER}"})  # fmt: skip
    assert refused.status_code == 422 and "/etc/passwd" not in refused.text


def test_keys_are_required_outside_dev_or_once_set() -> None:
    digest = hash_key(READER)
    assert len(digest) == 64 and digest != READER
    assert Keys.from_settings(ApiSettings(), "dev").required is False
    assert Keys.from_settings(ApiSettings(), "test").required is True
    assert Keys.from_settings(ApiSettings(), "prod").required is True
    assert Keys.from_settings(ApiSettings(keys={digest: ("score",)}), "dev").required is True
    assert Keys.from_settings(ApiSettings(require_auth=False), "prod").required is False
    with pytest.raises(ValueError, match="SHA-256"):
        ApiSettings(keys={READER: ("score",)})  # a key in clear is refused: settings hold hashes only
    keys = Keys({digest: ["read:alerts"]}, required=True)
    assert keys.check(READER, "read:alerts").status == 200
    assert keys.check(READER, "score").status == 403
    assert keys.check(None, "score").status == keys.check("guess", "score").status == 401
    assert presented("Bearer abc", None) == "abc" and presented("Basic abc", "k") == "k"
    assert presented(None, None) is None


def test_the_page_is_self_contained(parts: tuple[FastAPI, MemoryAlertFeed, StaticSource, FixedClock]) -> None:
    with TestClient(parts[0]) as client:
        page = client.get("/dashboard")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
        assert client.get("/", follow_redirects=False).headers["location"] == "/dashboard"
        for asset, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
            response = client.get(f"/dashboard/{asset}")
            assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
            assert "https://" not in response.text


def test_alerts_come_newest_first_after_a_stream_id(
    parts: tuple[FastAPI, MemoryAlertFeed, StaticSource, FixedClock],
) -> None:
    app, feed, _, _ = parts
    feed.entries = [(f"1700000000000-{i}", encode(factories.alert(alert_id=f"alert:t{i}", txn_id=f"t{i}")))
                    for i in range(5)]  # fmt: skip
    feed.entries.insert(2, ("1700000000000-9", b'{"not": "an alert"}'))
    with TestClient(app) as client:
        everything = client.get("/v1/dashboard/alerts").json()
        newer = client.get("/v1/dashboard/alerts", params={"after": "1700000000000-2", "limit": 1}).json()
        none = client.get("/v1/dashboard/alerts", params={"after": "1700000000001-0"}).json()
    assert [a["alert"]["txn_id"] for a in everything["alerts"]] == ["t4", "t3", "t2", "t1", "t0"]
    assert everything["skipped"] == 1 and everything["last_id"] == "1700000000000-4"
    first = everything["alerts"][0]["alert"]
    assert first["card_last4"] == "1111" and first["reason_codes"][0]["feature"] == "card_amount_ratio_30d"
    assert VISA_TEST_PAN not in json.dumps(everything)
    assert [a["alert"]["txn_id"] for a in newer["alerts"]] == ["t4"]
    assert none == {"alerts": [], "last_id": "1700000000001-0", "skipped": 0}


@pytest.mark.parametrize(
    "params",
    [
        {"after": "abc"},
        {"after": "1700000000000"},
        {"after": "1-2-3"},
        {"after": "18446744073709551616-0"},  # beyond 2**64 - 1: Redis would refuse it
        {"after": "١٢-٣"},  # digits, but not ASCII ones
        {"limit": 0},
        {"limit": 501},
        {"limit": "x"},
    ],
)
def test_bad_query_parameters_get_422_with_a_reason(
    parts: tuple[FastAPI, MemoryAlertFeed, StaticSource, FixedClock], params: dict[str, object]
) -> None:
    with TestClient(parts[0]) as client:
        response = client.get("/v1/dashboard/alerts", params=params)
    assert response.status_code == 422
    assert response.json()["reason"] == "invalid_request" and response.json()["detail"].startswith("query.")


def test_alerts_without_redis_get_503_with_a_reason(
    parts: tuple[FastAPI, MemoryAlertFeed, StaticSource, FixedClock],
) -> None:
    parts[1].down = True
    with TestClient(parts[0]) as client:
        response = client.get("/v1/dashboard/alerts")
    assert response.status_code == 503 and response.json()["reason"] == "redis_unavailable"


def test_summary_without_any_worker_still_answers_with_notes(
    parts: tuple[FastAPI, MemoryAlertFeed, StaticSource, FixedClock],
) -> None:
    with TestClient(parts[0]) as client:
        summary = client.get("/v1/dashboard/summary").json()
    assert summary["sources"] == [{"name": "http://127.0.0.1:9108/metrics", "up": False,
                                   "error": "http://127.0.0.1:9108/metrics: connection refused"}]  # fmt: skip
    assert summary["throughput"] == [] and summary["drift"] == [] and summary["dead_letters"] == []
    assert summary["decisions"]["by_outcome"] == {"approve": 0, "review": 0, "decline": 0}
    assert any("no scoring worker answered" in note for note in summary["notes"])
    model = summary["model"]
    assert model["champion"]["version"] == "v0002" and model["champion"]["sha256"] == SHA
    assert model["champion"]["metrics"] == {"auc": 0.9, "ap": 0.7}
    assert [h["version"] for h in model["history"]] == ["v0002", "v0001"]  # newest first
    assert model["serving"] == {"version": "v0002", "sha256": SHA} and model["workers"] == []


def test_summary_with_an_endpoint_that_sends_garbage_still_answers(
    parts: tuple[FastAPI, MemoryAlertFeed, StaticSource, FixedClock],
) -> None:
    parts[2].text = "<html>a proxy's error page</html>"
    with TestClient(parts[0]) as client:
        response = client.get("/v1/dashboard/summary")
    assert response.status_code == 200
    assert response.json()["sources"][0]["up"] is False and "not Prometheus text" in response.json()["notes"][0]


def test_summary_with_a_worker_draws_rates_dead_letters_and_drift(
    parts: tuple[FastAPI, MemoryAlertFeed, StaticSource, FixedClock],
) -> None:
    app, _, worker, clock = parts
    with TestClient(app) as client:
        worker.text = worker_text(approve=10)
        client.get("/v1/dashboard/summary")
        clock.advance(2.0)
        worker.text = worker_text(approve=40, decline=10, latencies=(0.03,) * 40, dead=2,
                                  psi={"amount": 0.4, "hour": 0.15, "score": 0.01},
                                  quality={"saving_vs_rules_only": 0.8, "expected_cost": 2_300.0},
                                  fpr_ratios={"FR": 1.4, "ES": 1.0}, fairness_breaches=1)  # fmt: skip
        summary = client.get("/v1/dashboard/summary").json()
    assert summary["decisions"]["by_outcome"] == {"approve": 40, "review": 0, "decline": 10}
    assert summary["throughput"] == [{"at": T0.timestamp() + 2.0, "per_s": 20.0}]
    assert 25.0 < summary["latency"][0]["p50_ms"] <= 50.0
    assert summary["dead_letters"] == [{"topic": "transactions.v1", "reason": "invalid_json", "count": 2}]
    [drift] = summary["drift"]
    assert [(c["column"], c["level"]) for c in drift["columns"]] == [
        ("amount", "breach"),
        ("hour", "moderate"),
        ("score", "stable"),
    ]
    assert summary["model"]["workers"] == [{"version": "v0001", "sha256": SHA}]
    assert not any("no drift gauges" in note for note in summary["notes"])
    assert summary["money"] == [{"version": "v0001", "saving_vs_rules_only": 0.8, "expected_cost": 2_300.0}]
    assert summary["fairness"] == {
        "breaches": 1,
        "band": [0.8, 1.25],
        "segments": [
            {"column": "home_country", "segment": "ES", "fpr_ratio": 1.0, "level": "stable"},
            {"column": "home_country", "segment": "FR", "fpr_ratio": 1.4, "level": "moderate"},
        ],
    }
