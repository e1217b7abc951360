"""Model events end to end: ``fraudpipe model promote`` announces the change on ``model-events.v1``, and two running
workers and the API swap the model within a second — with the registry polled only once a minute, so nothing but
the event can explain the swap. Then a rollback the same way, and the events themselves read back as contracts."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from fastapi.testclient import TestClient

from fraudpipe.codec import decode
from fraudpipe.contracts import ModelEvent
from fraudpipe.settings import Settings
from streams.api import create_app
from tests import factories
from tests.integration.conftest import run_cli, start_worker
from tests.integration.test_kafka import consume_all

SWAP_WITHIN_S = 1.0


def _wait_for(log: Path, text: str, timeout_s: float) -> float:
    """Seconds until ``text`` appears in ``log`` (monotonic clock), or fail with the log's tail."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"{text!r} not in {log} within {timeout_s} s:\n{log.read_text()[-3000:]}")


def _serving(client: TestClient) -> str:
    answer = client.get("/readyz")
    assert answer.status_code == 200, answer.text
    return str(answer.json()["model"])


def test_a_promotion_reaches_two_workers_and_the_api_within_a_second(
    topics: Settings, store_client: object, tmp_path: Path, stop: list[subprocess.Popen[bytes]]
) -> None:
    models = topics.paths.models_dir
    first = factories.register_champion(models)
    second = factories.register_champion(models, seed=1)  # the champion now; `model promote` brings `first` back
    slow = {"FRAUD_SCORING__MODEL_POLL_S": "60"}
    logs = []
    for name in ("w1", "w2"):
        (tmp_path / name).mkdir()
        worker, log = start_worker(topics, tmp_path / name, **slow)
        stop.append(worker)
        logs.append(log)
    for log in logs:
        _wait_for(log, "listening to", 90)
    polled_rarely = topics.scoring.model_copy(update={"model_poll_s": 60.0})
    with TestClient(create_app(topics.model_copy(update={"scoring": polled_rarely}))) as api:
        assert _serving(api) == second
        for target, command in ((first, ("promote", first)), (second, ("rollback",))):
            result = run_cli(topics, "model", *command, "--why", "test", cwd=tmp_path)
            announced = time.monotonic()  # the command returns once the broker acknowledged the event
            assert result.returncode == 0, result.stderr
            assert "warning" not in result.stderr, result.stderr
            swapped = [_wait_for(log, f"-> {target}", 10) - announced for log in logs]
            deadline = announced + 10
            while _serving(api) != target and time.monotonic() < deadline:
                time.sleep(0.02)
            swapped.append(time.monotonic() - announced)
            assert _serving(api) == target
            assert max(swapped) <= SWAP_WITHIN_S, swapped  # the workers' start-up logs no "-> version"

    messages = consume_all(topics.kafka.bootstrap_servers, topics.topics.full(topics.topics.registry_events), 2,
                           group="read-back", timeout_s=10)  # fmt: skip
    events = [decode(m.value(), ModelEvent) for m in messages]
    assert [(e.action, e.alias, e.version, e.previous, e.why) for e in events] == [
        ("promote", "champion", first, second, "test"),
        ("rollback", "champion", second, first, "test"),
    ]
