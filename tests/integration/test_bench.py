"""``fraudpipe bench`` as users run it, at a small size: every run, baseline, the sweep and the in-process figure
are measured, the JSON has the keys the README and issue 22 name, and the HTML report draws the sweep (the numbers
are this machine's, so only their sanity is checked). And a run that does not get every decision back fails
loudly, on a real broker, with what was missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import Producer

from fraudpipe.settings import Settings
from streams.bench_decisions import STAMP_AT_APPEND, IncompleteRunError, check_complete, decisions_of, inputs_of
from streams.bench_report import TARGETS, markdown, render_html
from streams.topics import create_topics, topic_specs, topics_under
from tests.integration.conftest import settings_env

KEPT = ("throughput_eps", "p50_ms", "p99_ms", "passthrough_eps", "naive_eps", "p99_ms_at_1k", "p99_ms_at_half",
        "rss_mb", "redis_bytes_per_card")  # fmt: skip
ADDED = ("redis_total_bytes_per_card", "replay_eps", "inprocess_eps", "ratio_to_inprocess")


@pytest.mark.timeout(900)
def test_bench_runs_every_measurement_and_writes_the_report(settings: Settings, tmp_path: Path) -> None:
    before = _bench_topics(settings)
    out = tmp_path / "bench.json"
    work = tmp_path / "bench"
    args = ["bench", "--events", "3000", "--paced-events", "1000", "--naive-events", "500", "--customers", "300",
            "--history-days", "10", "--inprocess-events", "1000", "--sweep", "10,200", "--sweep-events", "500",
            "--warmup-events", "200", "--work-dir", str(work), "--json", str(out)]  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "fraudpipe", *args], cwd=tmp_path, env=settings_env(settings),
                            capture_output=True, text=True, timeout=850)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert _bench_topics(settings) == before  # each run deleted its own: a long bench must not exhaust the broker
    report = json.loads(out.read_text())
    for key in KEPT + ADDED:
        assert report[key] is not None and report[key] > 0, key
    assert report["throughput_eps"] > report["naive_eps"]  # batching beats one call per event even when small
    assert report["p99_ms"] >= report["p50_ms"] and report["p99_ms_at_1k"] >= report["p50_ms_at_1k"]
    assert 0 < report["rss_mb"] < 4_000
    assert report["redis_total_bytes_per_card"] > report["redis_bytes_per_card"]  # markers and decisions too
    own = [size for family, size in report["redis_bytes_per_card_by_family"].items() if family.startswith("card")]
    assert sum(own) == pytest.approx(report["redis_bytes_per_card"], abs=len(own))
    assert report["decision_files_per_min_at_1k"] >= 0
    assert report["ratio_to_inprocess"] == pytest.approx(report["throughput_eps"] / report["inprocess_eps"], rel=0.01)
    assert [point["batch_size"] for point in report["sweep"]] == [10, 200]
    assert all(point["throughput_eps"] > 0 and point["p99_ms"] > 0 for point in report["sweep"])
    assert {"decode_validate", "score", "encode"} <= set(report["stages_us_per_event"])
    runs = {run["name"]: run for run in report["runs"]}
    assert set(runs) == {"passthrough", "max-0", "1k-0", "half-0", "naive", "sweep-10", "sweep-200"}
    assert all(run["decisions"] == run["events"] > 0 and run["warmup_events"] > 0 for run in runs.values())
    assert runs["1k-0"]["latency_clock"] == "broker" and runs["max-0"]["latency_clock"] == "worker"
    assert "| throughput_eps |" in result.stdout and "| ratio_to_inprocess |" in result.stdout
    page = out.with_suffix(".html").read_text()  # beside the JSON by default
    assert page.count("<svg") == 1 and "Latency / throughput by batch size" in page and "ratio_to_inprocess" in page
    refused = subprocess.run([sys.executable, "-m", "fraudpipe", "bench", "--work-dir", str(tmp_path)], cwd=tmp_path,
                             env=settings_env(settings), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert refused.returncode != 0 and "not touching it" in refused.stderr and "Traceback" not in refused.stderr


def _bench_topics(settings: Settings) -> set[str]:
    return set(topics_under(settings.kafka, "bench-", timeout_s=30))


@pytest.mark.timeout(120)
def test_a_run_missing_decisions_fails_loudly_with_what_is_missing(settings: Settings) -> None:
    create_topics(settings.kafka, topic_specs(settings.topics, config=STAMP_AT_APPEND), timeout_s=15)
    topics = settings.topics
    producer = Producer(settings.kafka.client_config())
    ids = [f"TXBENCH{i}" for i in range(5)]
    for ident in ids:
        producer.produce(topics.full(topics.transactions), json.dumps({"txn_id": ident}).encode(), b"card")
    for ident in ids[:3]:  # a worker that answered three of the five
        producer.produce(topics.full(topics.scores), json.dumps({"txn_id": ident, "latency_ms": 1.5}).encode())
    assert producer.flush(30) == 0
    decided = decisions_of(settings.kafka, topics, len(ids), stall_s=2)
    inputs = inputs_of(settings.kafka, topics)
    assert set(decided) == set(ids[:3]) and set(inputs) == set(ids)
    assert all(latency == 1.5 and stamp > 0 for stamp, latency in decided.values())  # broker's append time
    with pytest.raises(IncompleteRunError, match=r"^2 of 5 transactions got no decision \(e\.g\. TXBENCH3, TXBENCH4\)"):
        check_complete(inputs, decided, len(ids))
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    exited.wait(30)
    with pytest.raises(IncompleteRunError, match=r"a worker exited \(code 3\) with 3 of 6 decisions made"):
        decisions_of(settings.kafka, topics, 6, processes=[exited], stall_s=30)


def test_the_report_says_each_verdict_and_draws_no_sweep_when_there_was_none() -> None:
    report = {"throughput_eps": 16_000, "p99_ms_at_1k": 30.0, "sweep": [], "stages_us_per_event": {"score": 50.0}}
    table = markdown(report)
    assert "| throughput_eps | 16000 | >= 15,000" in table and "| yes |" in table
    assert "| p99_ms_at_1k | 30.0 | <= 25.0" in table and "| ratio_to_inprocess | None |" in table
    assert {key for key, *_ in TARGETS} >= {"ratio_to_inprocess", "redis_total_bytes_per_card",
                                            "decision_files_per_min_at_1k"}  # fmt: skip
    page = render_html(report)
    assert "<svg" not in page and "No batch-size sweep" in page
