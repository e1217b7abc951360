"""``fraudpipe bench`` as users run it, at a small size: every run, baseline and stage is measured, and the JSON
has the keys the README and the issue name (the numbers are this machine's, so only their sanity is checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fraudpipe.settings import Settings
from tests.integration.conftest import settings_env


@pytest.mark.timeout(900)
def test_bench_runs_every_measurement_and_writes_the_report(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    work = tmp_path / "bench"
    args = ["bench", "--events", "3000", "--paced-events", "1000", "--naive-events", "500", "--customers", "300",
            "--history-days", "10", "--stage-events", "1000",
            "--work-dir", str(work), "--json", str(out)]  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "fraudpipe", *args], cwd=tmp_path, env=settings_env(settings),
                            capture_output=True, text=True, timeout=850)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    for key in ("throughput_eps", "p50_ms", "p99_ms", "passthrough_eps", "naive_eps", "p99_ms_at_1k",
                "p99_ms_at_half", "rss_mb", "redis_bytes_per_card"):  # fmt: skip
        assert report[key] is not None and report[key] > 0, key
    assert report["throughput_eps"] > report["naive_eps"]  # batching beats one call per event even when small
    assert 0 < report["rss_mb"] < 4_000
    assert set(report["stages_us_per_event"]) == {"decode_validate", "features", "model", "decide_encode_produce"}
    assert all(run["decisions"] == run["events"] for run in report["runs"])  # nothing lost in any run
    assert "| throughput_eps |" in result.stdout
    refused = subprocess.run([sys.executable, "-m", "fraudpipe", "bench", "--work-dir", str(tmp_path)], cwd=tmp_path,
                             env=settings_env(settings), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert refused.returncode != 0 and "not touching it" in refused.stderr and "Traceback" not in refused.stderr
