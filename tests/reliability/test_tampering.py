"""Model artifacts tampered with after promotion, under a running worker: a flipped byte, a manifest whose hash was
swapped for another version's, a pickle payload with a manifest made to match. Each is refused before its bytes
are parsed as a model, the champion in force keeps serving, and the refusal is logged and counted."""

from __future__ import annotations

import hashlib
import json
import pickle
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from fraudpipe.settings import Settings
from models.registry import Registry
from tests import factories
from tests.reliability.conftest import Decisions, send, start


def _flip_a_byte(folder: Path) -> None:
    data = bytearray((folder / "model.txt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / "model.txt").write_bytes(bytes(data))


def _swap_the_hash(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["model_sha256"] = hashlib.sha256(b"another model").hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _pickle_with_matching_hash(folder: Path) -> None:
    payload = pickle.dumps({"__reduce__": "os.system"})
    (folder / "model.txt").write_bytes(payload)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["model_sha256"] = hashlib.sha256(payload).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _refusals(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("fraudpipe_models_refused_total"))


def test_tampered_models_are_refused_and_the_champion_keeps_serving(
    champion: Settings, tmp_path: Path, stop: list[subprocess.Popen[bytes]]
) -> None:
    config = champion
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    worker, log = start(config, tmp_path, FRAUD_SCORING__MODEL_POLL_S="2", FRAUD_METRICS__PORT=str(port))
    stop.append(worker)
    registry = Registry(config.paths.models_dir)
    decisions = Decisions(config)
    tampers: list[Callable[[Path], None]] = [_flip_a_byte, _swap_the_hash, _pickle_with_matching_hash]
    send(config, [factories.transaction(txn_id=f"warm-{i}") for i in range(5)])
    sent = 5
    decisions.wait_for(sent, 120, log)  # the worker serves v0001 before anything is tampered with
    for round_, tamper in enumerate(tampers, 1):
        version = factories.register_champion(config.paths.models_dir, seed=round_)  # promoted, still intact
        tamper(registry.versions_dir / version)  # before the worker's next look at the registry (every 2 s)
        time.sleep(4)
        batch = [factories.transaction(txn_id=f"after-{round_}-{i}", card_token=f"tok_t{i % 4}") for i in range(20)]
        send(config, batch)
        sent += len(batch)
        decisions.wait_for(sent, 60, log)
        served = {d.model.version for d in decisions.decisions[-len(batch) :] if d.model is not None}
        assert served == {"v0001"}, (tamper.__name__, served, log.read_text()[-2000:])
        assert f"refused model {version}" in log.read_text(), tamper.__name__
        assert _refusals(port) == round_, tamper.__name__
    assert worker.poll() is None
