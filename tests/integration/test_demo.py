"""``fraudpipe demo --duration``, the README's one command, end to end on the test's Kafka and Redis: it trains,
warms, starts the worker, the monitor and the API, replays a live stream with labels, exits 0 with a summary and a
report, and leaves nothing behind (no process, no topic)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from confluent_kafka.admin import AdminClient

from fraudpipe.settings import Settings
from tests.integration.conftest import run_cli


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_the_demo_runs_end_to_end_and_cleans_up(settings: Settings, tmp_path: Path) -> None:
    work = tmp_path / "demo"
    done = run_cli(settings, "demo", "--duration", "30", "--customers", "300", "--history-days", "20",
                   "--live-days", "2", "--rate", "150", "--port", "0", "--work-dir", str(work), cwd=tmp_path,
                   timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = re.search(r"demo done: ([\d,]+) decisions \(([\d,]+) review, ([\d,]+) decline\), ([\d,]+) alerts seen",
                      done.stdout)  # fmt: skip
    assert found, done.stdout[-2000:]
    decisions, review, decline, alerts = (int(g.replace(",", "")) for g in found.groups())
    assert decisions > 500 and review + decline > 0 and alerts > 0
    assert "dashboard: http://127.0.0.1:" in done.stdout
    (report,) = (work / "data" / "reports").glob("demo-*.html")
    text = report.read_text()
    assert "decisions per second" in text and "<svg" in text and "reason codes" in text
    (logs,) = (work / "logs").iterdir()
    assert {p.name for p in logs.iterdir()} == {
        "worker.log",
        "monitor.log",
        "api.log",
        "replay.log",
        "compactor.log",
        "pids",
    }
    topics = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers}).list_topics(timeout=10).topics
    assert not [name for name in topics if name.startswith("demo")], "the demo left its topics behind"
    pids = {line.split()[0]: int(line.split()[1]) for line in (logs / "pids").read_text().splitlines()}
    assert set(pids) == {"worker", "monitor", "api", "replay", "compactor"}
    assert not [name for name, pid in pids.items() if _alive(pid)], "the demo left a process running"
