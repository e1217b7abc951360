"""Attacks on the REST API (issue 21), against ``fraudpipe serve`` started as users start it — a subprocess on
loopback — on the suite's real Kafka and Redis, with two API keys: one for ``score``, one for ``read:alerts``.

- **Health under load:** 200 closed-loop score clients (a subprocess, 8 s): ``/healthz`` p99 ≤ 50 ms (a new
  connection per probe, as a kubelet probes) and ``/metrics`` answers throughout, with no card data in it.
- **Redis paused 6 s** (``CLIENT PAUSE 6000 ALL``) under 20 score clients: ``/healthz`` p99 ≤ 50 ms throughout,
  ``/readyz`` 503 during the pause and 200 after it, and once the breaker is open degraded decisions come at once
  (median ≤ 100 ms, where each batch used to wait out the 250 ms socket timeout).
- **Oversized bodies:** a 400 MB chunked POST gets 413 and the process grows ≤ 20 MB (``VmRSS`` sampled every 20
  ms); a ``Content-Length`` of 400 MB gets 413 at once, with no body sent; an unauthenticated upload gets 401 and
  is not read either.
- **Keys:** no key or an unknown one 401 (with ``WWW-Authenticate: Bearer``), a key without the scope 403, the
  right key 200, for ``/v1/score`` and every dashboard data route; probes, metrics and the page shell stay open;
  a body that is not JSON gets 415; no key ever reaches the log.
- **Nothing echoed:** a PAN as a JSON key, as any identifier, in a header or a query parameter is not in any 4xx.
- **Reused transaction id:** the same id with other content gets 409 ``txn_id_conflict`` and publishes nothing
  (no decision, alert or repair, no feature of its card); the identical resend gets the same decision.
- **Flood past ``api.max_pending``:** 503 with ``Retry-After``, answered at once.

Each failed on the code before issue 21 (measured: ``/healthz`` p99 1220 ms under 200 clients, up to 830 ms
during the pause; the 400 MB body grew the process 187 → 979 MB and was refused with 422; a 400 MB
``Content-Length`` waited for its body; no key was asked). Figures go to ``$FRAUDPIPE_ARTIFACTS/api-attacks.json``.
Timing bounds are those of the issue, measured loosely enough for a busy 2-core machine.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from fraudpipe.codec import decode
from fraudpipe.contracts import Decision
from fraudpipe.settings import Settings
from streams.auth import hash_key
from tests.factories import VISA_TEST_PAN, transaction_fields, transaction_json
from tests.integration.conftest import settings_env
from tests.reliability.conftest import ROOT, Decisions, Tail
from tests.services import _free_port

SCORER = "fpk_attack-suite-scorer-0123456789abcdef"
READER = "fpk_attack-suite-reader-0123456789abcdef"
KEYS = json.dumps({hash_key(SCORER): ["score"], hash_key(READER): ["read:alerts"]})
AS_SCORER = {"Authorization": f"Bearer {SCORER}", "Content-Type": "application/json"}
AS_READER = {"Authorization": f"Bearer {READER}"}
DATA_ROUTES = ("/v1/dashboard/alerts", "/v1/dashboard/summary", "/v1/dashboard/ticket?path=/reports/champion",
               "/reports/champion", "/reports/demo")  # fmt: skip
HEALTH_P99_MS = 50.0
RSS_GROWTH_MB = 20.0

LOAD = r'''
"""Closed-loop score clients: load.py PORT SECONDS CLIENTS KEY TEMPLATE OUT. Each client sends a new transaction
as soon as the previous answer arrives; OUT gets [[sent (monotonic s), latency s, status, degraded], ...]
(status 0: the connection failed)."""
import asyncio, json, sys, time, uuid
from datetime import UTC, datetime

port, seconds, clients, key, template, out = sys.argv[1:7]
port, seconds, clients, template = int(port), float(seconds), int(clients), json.loads(template)
run, records = uuid.uuid4().hex[:8], []

async def client(number, until):
    reader = writer = None
    sent = 0
    while time.monotonic() < until:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            sent += 1
            body = json.dumps(dict(template, txn_id=f"load{run}c{number}n{sent}", amount=10.0 + sent % 300,
                                   card_token=f"tok_load{run}c{number % 50}",
                                   event_time=datetime.now(UTC).isoformat())).encode()
            began = time.monotonic()
            writer.write(f"POST /v1/score HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
                         f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            status = int((await reader.readline()).split()[1])
            length, close = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                length = int(value) if name == b"content-length" else length
                close = close or (name == b"connection" and b"close" in value.lower())
            answer = await reader.readexactly(length)
            degraded = json.loads(answer).get("degraded") if status == 200 else None
            records.append((began, time.monotonic() - began, status, degraded))
            if close:
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            records.append((time.monotonic(), 0.0, 0, None))
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.05)
    if writer is not None:
        writer.close()

async def main():
    until = time.monotonic() + seconds
    await asyncio.gather(*(client(n, until) for n in range(clients)))

asyncio.run(main())
with open(out, "w") as f:
    json.dump(records, f)
'''


@dataclass
class Api:
    """A running ``fraudpipe serve``: ``call`` it (a new connection each time), read its RSS."""

    config: Settings
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
             timeout_s: float = 10.0) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout_s)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def score(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        return self.call("POST", "/v1/score", body, AS_SCORER if headers is None else headers)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def load(self, folder: Path, *, clients: int, seconds: float) -> list[tuple[float, float, int, bool | None]]:
        """``clients`` closed-loop score clients for ``seconds`` (a subprocess: its CPU is not the probes')."""
        script, out = folder / "load.py", folder / f"load-{time.monotonic_ns()}.json"
        script.write_text(LOAD)
        subprocess.run([sys.executable, str(script), str(self.port), str(seconds), str(clients), SCORER,
                        json.dumps(transaction_fields()), str(out)], check=True, timeout=seconds + 60)  # fmt: skip
        return [tuple(r) for r in json.loads(out.read_text())]  # type: ignore[misc]


@pytest.fixture
def serve(champion: Settings, tmp_path: Path, stop: list[subprocess.Popen[bytes]]) -> Callable[..., Api]:
    """Start ``fraudpipe serve`` (keys set, environment=test) with extra ``FRAUD_*`` variables; waits for /readyz."""

    def start(**env: str) -> Api:
        port = _free_port()
        log = tmp_path / f"api-{port}.log"
        variables = settings_env(champion) | {"FRAUD_API__PORT": str(port), "FRAUD_API__KEYS": KEYS,
                                              "FRAUD_LOG_LEVEL": "WARNING"} | env  # fmt: skip
        with log.open("wb") as output:
            process = subprocess.Popen([sys.executable, "-m", "fraudpipe", "serve"], cwd=tmp_path, env=variables,
                                       stdout=output, stderr=subprocess.STDOUT)  # fmt: skip
        stop.append(process)
        api = Api(champion, port, process, log)
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, f"the API exited: {log.read_text()[-3000:]}"
            with contextlib.suppress(OSError):
                if api.call("GET", "/readyz", timeout_s=2)[0] == 200:
                    break
            assert time.monotonic() < deadline, f"the API was not ready in 90 s: {log.read_text()[-3000:]}"
            time.sleep(0.2)
        now = datetime.now(UTC)
        for i in range(20):  # the first calls pay for lazy set-ups (model, producer, connections): not measured
            status, _, body = api.score(transaction_json(txn_id=f"warm{i}x", event_time=now.isoformat()))
            assert status == 200, body
        return api

    return start


class Prober(threading.Thread):
    """GET ``path`` every ``every_s`` on a new connection; keeps (monotonic start, seconds, status)."""

    def __init__(self, api: Api, path: str, every_s: float) -> None:
        super().__init__(daemon=True)
        self.api, self.path, self.every_s = api, path, every_s
        self.seen: list[tuple[float, float, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            began = time.monotonic()
            try:
                status = self.api.call("GET", self.path, timeout_s=30)[0]
            except OSError:
                status = 0
            self.seen.append((began, time.monotonic() - began, status))
            self.halt.wait(self.every_s)

    def ms(self, since: float = 0.0, until: float = float("inf")) -> list[float]:
        return [seconds * 1000 for began, seconds, _ in self.seen if since <= began < until]


@contextlib.contextmanager
def probing(api: Api, *paths: tuple[str, float]) -> Iterator[list[Prober]]:
    probers = [Prober(api, path, every) for path, every in paths]
    for prober in probers:
        prober.start()
    try:
        yield probers
    finally:
        for prober in probers:
            prober.halt.set()
            prober.join(35)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def record(name: str, figures: dict[str, Any]) -> None:
    """Add this attack's figures to ``api-attacks.json`` in the artifacts folder."""
    folder = Path(os.environ.get("FRAUDPIPE_ARTIFACTS", ROOT / "var" / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "api-attacks.json"
    rows = json.loads(path.read_text()) if path.exists() else {}
    rows[name] = figures
    path.write_text(json.dumps(rows, indent=2) + "\n")


def test_health_answers_within_50_ms_while_200_clients_score(serve: Callable[..., Api], tmp_path: Path) -> None:
    api = serve()
    with probing(api, ("/healthz", 0.01), ("/metrics/", 0.25)) as (health, metrics):
        answers = api.load(tmp_path, clients=200, seconds=8)
    statuses = {status for _, _, status, _ in answers}
    scored = sum(status == 200 for _, _, status, _ in answers)
    figures = {"clients": 200, "seconds": 8, "scored": scored, "healthz_probes": len(health.seen),
               "healthz_p50_ms": statistics.median(health.ms()), "healthz_p99_ms": p99(health.ms()),
               "healthz_max_ms": max(health.ms()), "metrics_max_ms": max(metrics.ms()),
               "score_p99_ms": p99([s * 1000 for _, s, status, _ in answers if status == 200])}  # fmt: skip
    record("200 clients scoring", figures)
    assert statuses <= {200, 503}, statuses  # no error, no broken connection
    assert scored >= 500, figures  # the load was real (about 1,000 decisions a second here)
    assert {status for *_, status in health.seen} == {200} and len(health.seen) >= 200, figures
    assert figures["healthz_p99_ms"] <= HEALTH_P99_MS, figures
    assert {status for *_, status in metrics.seen} == {200} and len(metrics.seen) >= 10, figures
    assert figures["metrics_max_ms"] <= 1_000, figures
    exposition = api.call("GET", "/metrics/")[2].decode()
    assert "fraudpipe_decisions_total" in exposition
    assert "tok_" not in exposition and not re.search(r"load[0-9a-f]{8}c|warm\d", exposition)  # no card, no txn id


def test_redis_paused_6_s_health_stays_fast_readiness_fails_scoring_degrades_at_once(
    serve: Callable[..., Api], tmp_path: Path, redis_url: str
) -> None:
    api = serve(FRAUD_SCORING__BREAKER_COOLDOWN_S="2")
    pauser = redis_lib.Redis.from_url(redis_url, socket_timeout=5)
    moment: list[float] = []

    def pause() -> None:
        time.sleep(2.0)
        moment.append(time.monotonic())
        pauser.execute_command("CLIENT", "PAUSE", "6000", "ALL")

    with probing(api, ("/healthz", 0.02), ("/readyz", 0.25)) as (health, ready):
        thread = threading.Thread(target=pause)
        thread.start()
        answers = api.load(tmp_path, clients=20, seconds=13)
        thread.join()
    pauser.close()
    paused = moment[0]
    resumed = paused + 6.0
    during = [(latency, status, degraded) for sent, latency, status, degraded in answers
              if paused + 1.5 <= sent < paused + 5.5]  # fmt: skip
    later = [sent for sent, _, status, degraded in answers if sent >= resumed and status == 200 and not degraded]
    ready_during = {status for began, _, status in ready.seen if paused + 0.5 <= began < paused + 5.5}
    ready_after = [began for began, _, status in ready.seen if began >= resumed and status == 200]
    figures = {"healthz_p99_ms": p99(health.ms()), "healthz_max_ms_during_pause": max(health.ms(paused, resumed)),
               "readyz_during_pause": sorted(ready_during), "readyz_max_ms": max(ready.ms()),
               "degraded_during_pause": sum(1 for _, _, d in during if d), "answered_during_pause": len(during),
               "median_ms_once_breaker_open": statistics.median(lat * 1000 for lat, _, _ in during),
               "first_fresh_decision_s_after_pause": (min(later) - resumed) if later else None,
               "readyz_200_s_after_pause": (min(ready_after) - resumed) if ready_after else None}  # fmt: skip
    record("Redis paused 6 s", figures)
    assert {status for _, _, status, _ in answers} == {200}, figures  # every payment decided, none failed
    assert figures["healthz_p99_ms"] <= HEALTH_P99_MS, figures
    assert ready_during == {503}, figures
    assert during and all(degraded for _, _, degraded in during), figures
    assert figures["median_ms_once_breaker_open"] <= 100, figures
    assert later and min(later) - resumed <= 5.0, figures  # the breaker closes again once Redis answers
    assert ready_after and min(ready_after) - resumed <= 3.0, figures


def _upload(api: Api, headers: str, limit_mb: int = 400) -> tuple[bytes, int, float]:
    """POST a chunked body of up to ``limit_mb`` MB, reading the answer while sending; (answer, bytes sent, s)."""
    began = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", api.port))
    sock.sendall(f"POST /v1/score HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n{headers}\r\n".encode())
    chunk = b"%x\r\n" % (1 << 20) + b"7" * (1 << 20) + b"\r\n"
    sock.setblocking(False)
    answer, sent = b"", 0
    with contextlib.closing(sock):
        while sent < limit_mb << 20 and time.monotonic() - began < 60:
            readable, writable, _ = select.select([sock], [sock], [], 5)
            if readable:
                with contextlib.suppress(BlockingIOError):
                    answer += sock.recv(65_536)
                break
            if writable:
                try:
                    sent += sock.send(chunk)
                except BlockingIOError:
                    continue
                except OSError:
                    break
        sock.settimeout(10)
        with contextlib.suppress(OSError):  # the refusal closes the connection: read to its end
            while more := sock.recv(65_536):
                answer += more
    return answer, sent, time.monotonic() - began


def test_an_endless_body_gets_413_and_the_process_does_not_grow(serve: Callable[..., Api]) -> None:
    api = serve()
    time.sleep(1.0)
    baseline = api.rss_mb()
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak.append(api.rss_mb())
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        answer, sent, seconds = _upload(api, f"Content-Type: application/json\r\nAuthorization: Bearer {SCORER}\r\n")
        anonymous, anonymous_sent, _ = _upload(api, "Content-Type: application/json\r\n")
        time.sleep(0.5)
    finally:
        done.set()
        sampler.join(5)
    began = time.monotonic()
    declared = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    declared.putrequest("POST", "/v1/score")
    for name, value in {**AS_SCORER, "Content-Length": str(400 << 20)}.items():
        declared.putheader(name, value)
    declared.endheaders()  # and no body at all: the answer must not wait for one
    response = declared.getresponse()
    declared_status, declared_body, declared_s = response.status, response.read(), time.monotonic() - began
    declared.close()
    figures = {"rss_baseline_mb": baseline, "rss_growth_mb": max(peak) - baseline, "sent_mb": sent / 2**20,
               "answered_s": seconds, "anonymous_sent_mb": anonymous_sent / 2**20,
               "declared_answer_s": declared_s}  # fmt: skip
    record("400 MB body", figures)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"payload_too_large"' in answer
    assert figures["rss_growth_mb"] <= RSS_GROWTH_MB, figures
    assert sent < 64 << 20 and seconds < 10, figures  # refused as it streamed in, not after 400 MB
    assert anonymous.startswith(b"HTTP/1.1 401") and anonymous_sent < 64 << 20, figures  # not read, not drained
    assert declared_status == 413 and json.loads(declared_body)["reason"] == "payload_too_large"
    assert declared_s < 2.0, figures
    assert api.call("GET", "/healthz")[0] == 200


def test_score_and_dashboard_data_need_a_key_with_their_scope(serve: Callable[..., Api]) -> None:
    api = serve()
    body = transaction_json(txn_id="auth-1x", event_time=datetime.now(UTC).isoformat())
    json_only = {"Content-Type": "application/json"}
    missing = api.score(body, json_only)
    unknown = api.score(body, json_only | {"Authorization": "Bearer fpk_guessed-0123456789abcdef"})
    wrong_scope = api.score(body, json_only | AS_READER)
    right = api.score(body)
    assert missing[0] == unknown[0] == 401, (missing, unknown)
    assert missing[1]["www-authenticate"].startswith("Bearer") and json.loads(missing[2])["reason"] == "unauthorized"
    assert wrong_scope[0] == 403 and 'error="insufficient_scope"' in wrong_scope[1]["www-authenticate"]
    assert right[0] == 200 and decode(right[2], Decision).txn_id == "auth-1x"
    for route in DATA_ROUTES:
        assert api.call("GET", route)[0] == 401, route
        assert api.call("GET", route, headers={"Authorization": f"Bearer {SCORER}"})[0] == 403, route
        status, _, answer = api.call("GET", route, headers=AS_READER)
        assert status not in (401, 403) and status < 500, (route, status, answer[:200])  # reports: 404, none yet
    url = json.loads(api.call("GET", "/v1/dashboard/ticket?path=/reports/demo", headers=AS_READER)[2])["url"]
    assert api.call("GET", url)[0] == 404  # the ticket lets a link through (no demo report in this folder)
    for open_route in ("/healthz", "/readyz", "/metrics/", "/dashboard", "/dashboard/app.js", "/openapi.json"):
        assert api.call("GET", open_route)[0] == 200, open_route
    for kind in ("text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1",
                 "application/jsonl", None):  # fmt: skip
        headers = {"Authorization": f"Bearer {SCORER}"} | ({"Content-Type": kind} if kind else {})
        status, _, answer = api.score(body, headers)
        assert status == 415 and json.loads(answer)["reason"] == "unsupported_media_type", (kind, status)
    utf8 = {"Authorization": f"Bearer {SCORER}", "Content-Type": "application/json; charset=UTF-8"}
    assert api.score(body, utf8)[0] == 200
    log = api.log.read_text()
    assert SCORER not in log and READER not in log  # keys are never logged


def test_no_refused_value_is_echoed_back(serve: Callable[..., Api]) -> None:
    api = serve()
    now = datetime.now(UTC).isoformat()
    spaced = " ".join(VISA_TEST_PAN[i : i + 4] for i in range(0, 16, 4))
    bodies = [
        json.dumps(transaction_fields(event_time=now) | {VISA_TEST_PAN: "x"}).encode(),  # the PAN as a key
        json.dumps({VISA_TEST_PAN: 1}).encode(),
        f'{{"{VISA_TEST_PAN}": 1, "{VISA_TEST_PAN}": 2}}'.encode(),
        f'{{"txn_id": "{VISA_TEST_PAN}", '.encode(),  # not JSON
        VISA_TEST_PAN.encode(),
        b"\xff" + VISA_TEST_PAN.encode(),  # not UTF-8
    ]
    for name in ("txn_id", "terminal_id", "merchant_id", "customer_id", "device_id", "merchant_name", "card_token"):
        for pan in (VISA_TEST_PAN, spaced, VISA_TEST_PAN.replace("1111", "1111-", 3)):
            bodies.append(transaction_json(event_time=now, **{name: pan}))
    answers = [api.score(body) for body in bodies]
    answers += [
        api.score(bodies[0], {"Authorization": f"Bearer {VISA_TEST_PAN}", "Content-Type": "application/json"}),
        api.score(bodies[0], {"X-API-Key": VISA_TEST_PAN, "Content-Type": "application/json"}),
        api.score(bodies[0], {"Authorization": f"Bearer {SCORER}", "Content-Type": f"text/{VISA_TEST_PAN}"}),
        api.call("GET", f"/v1/dashboard/alerts?after={VISA_TEST_PAN}", headers=AS_READER),
        api.call("GET", f"/v1/dashboard/alerts?limit={VISA_TEST_PAN}", headers=AS_READER),
        api.call("GET", f"/v1/dashboard/alerts?after=1-2&{VISA_TEST_PAN}=1&limit=x", headers=AS_READER),
        api.call("GET", f"/v1/dashboard/ticket?path=/{VISA_TEST_PAN}", headers=AS_READER),
        api.call("GET", f"/v1/score/{VISA_TEST_PAN}", headers=AS_READER),
    ]
    for status, _, answer in answers:
        assert 400 <= status < 500, (status, answer[:300])
        assert VISA_TEST_PAN not in re.sub(rb"\D", b"", answer).decode(), (status, answer[:300])


def test_a_reused_txn_id_gets_409_and_publishes_nothing(serve: Callable[..., Api], redis_url: str) -> None:
    api = serve()
    config = api.config
    now = datetime.now(UTC)
    txn_id, first_card, other_card = f"reused-{api.port}", f"tok_first{api.port}", f"tok_other{api.port}"
    first = transaction_json(txn_id=txn_id, card_token=first_card, amount=10.0,
                             event_time=(now - timedelta(hours=1)).isoformat())  # fmt: skip
    reused = transaction_json(txn_id=txn_id, card_token=other_card, amount=9_999.0, currency="EUR",
                              event_time=now.isoformat())  # fmt: skip
    decided = api.score(first)
    again = api.score(first)
    refused = api.score(reused)
    assert decided[0] == again[0] == 200, (decided, again)
    one, two = decode(decided[2], Decision), decode(again[2], Decision)
    assert (two.decision, two.score, two.model) == (one.decision, one.score, one.model)  # a redelivery: same answer
    assert refused[0] == 409, refused
    assert json.loads(refused[2]) == {"reason": "txn_id_conflict",
                                      "detail": "txn_id was already decided for a different payment"}  # fmt: skip
    decisions, alerts = Decisions(config), Tail(config, config.topics.alerts)
    repairs = Tail(config, config.topics.repairs)
    try:
        deadline = time.monotonic() + 30
        while len([d for d in decisions.decisions if d.txn_id == txn_id]) < 2 and time.monotonic() < deadline:
            decisions.poll(0.5)
        decisions.poll(2.0)  # anything published for the refused payment would be there by now
        published = [d for d in decisions.decisions if d.txn_id == txn_id]
        raised = [json.loads(v) for v in alerts.poll(1.0)]
        repaired = [json.loads(v) for v in repairs.poll(1.0)]
    finally:
        for tail in (decisions, alerts, repairs):
            tail.close()
    assert len(published) == 2 and {(d.card_token, d.amount) for d in published} == {(first_card, 10.0)}
    assert not [a for a in raised if a["card_token"] == other_card]
    assert not [r for r in repaired if r["card_token"] == other_card]
    with redis_lib.Redis.from_url(redis_url) as client:  # the refused payment touched no feature of its card
        assert not list(client.scan_iter(match=f"{config.redis.key_prefix}*{other_card}*", count=1_000))
    exposition = api.call("GET", "/metrics/")[2].decode()
    assert 'fraudpipe_dead_letters_total{reason="txn_id_conflict",topic="api"} 1.0' in exposition


def test_a_flood_past_max_pending_gets_503_at_once(serve: Callable[..., Api], tmp_path: Path) -> None:
    api = serve(FRAUD_API__MAX_PENDING="8", FRAUD_API__BATCH_MAX="4")
    answers: list[tuple[float, float, int, bool | None]] = []
    flood = threading.Thread(target=lambda: answers.extend(api.load(tmp_path, clients=100, seconds=4)))
    flood.start()
    time.sleep(1.5)
    seen = [api.score(transaction_json(txn_id=f"flood{i}x", event_time=datetime.now(UTC).isoformat()))
            for i in range(20)]  # fmt: skip
    flood.join()
    busy = [latency * 1000 for _, latency, status, _ in answers if status == 503]
    scored = sum(status == 200 for _, _, status, _ in answers)
    figures = {"clients": 100, "max_pending": 8, "busy": len(busy), "scored": scored,
               "busy_median_ms": statistics.median(busy) if busy else None}  # fmt: skip
    record("flood past max_pending", figures)
    assert {status for _, _, status, _ in answers} == {200, 503}, figures
    assert scored > 0 and len(busy) > scored, figures
    # At once: behind the other clients' requests in the event loop (100 of them, spinning), never behind scoring.
    assert figures["busy_median_ms"] is not None and figures["busy_median_ms"] <= 100, figures
    refused = [(headers, answer) for status, headers, answer in seen if status == 503]
    assert refused, [status for status, _, _ in seen]
    assert refused[0][0]["retry-after"] == "1" and json.loads(refused[0][1])["reason"] == "busy"
    assert api.call("GET", "/healthz")[0] == 200
