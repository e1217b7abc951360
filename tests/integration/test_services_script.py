"""scripts/services.sh: idempotent start, stop by its own PID files, nothing of ours left running.

Runs a second Kafka and Redis on free ports in a private state folder, beside the ones the suite uses: this also
proves that two copies run side by side.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "services.sh"


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port < 65_000 and _free(port + 1):
            return port
    raise RuntimeError("no two consecutive free ports")


def _ours(state: Path) -> dict[str, set[int]]:
    """PIDs of processes belonging to ``state``: the broker by its marker, Redis by its working directory."""
    found: dict[str, set[int]] = {"kafka": set(), "redis": set()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if f"-Dfraudpipe.state={state} " in cmdline:
            found["kafka"].add(int(entry.name))
        if cwd == str(state / "redis") and "redis-server" in cmdline:
            found["redis"].add(int(entry.name))
    return found


@pytest.fixture
def private_services(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path, int, int]]:
    state = tmp_path / "services"
    kafka_port = _free_port_pair()
    redis_port = _free_port_pair()
    while redis_port in {kafka_port, kafka_port + 1}:  # the broker's controller takes kafka_port + 1
        redis_port = _free_port_pair()
    env = {
        **os.environ,
        "FRAUDPIPE_SERVICES_DIR": str(state),
        "FRAUD_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka_port}",
        "FRAUD_REDIS__URL": f"redis://127.0.0.1:{redis_port}/0",
    }
    yield env, state, kafka_port, redis_port
    subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120, check=False)


def _script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300, check=False)


def test_start_twice_runs_one_of_each_and_stop_leaves_nothing(
    private_services: tuple[dict[str, str], Path, int, int],
) -> None:
    env, state, kafka_port, redis_port = private_services
    first = _script(env, "start")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "kafka: started" in first.stdout and "redis: started" in first.stdout
    running = _ours(state)
    assert (len(running["kafka"]), len(running["redis"])) == (1, 1)

    second = _script(env, "start")
    assert second.returncode == 0, second.stderr
    assert "kafka: already running" in second.stdout and "redis: already running" in second.stdout
    assert _ours(state) == running

    assert AdminClient({"bootstrap.servers": f"127.0.0.1:{kafka_port}"}).list_topics(timeout=10).brokers
    login = dict(line.split("=", 1) for line in (state / "redis/users/default.env").read_text().splitlines()
                 if not line.startswith("#"))  # fmt: skip
    assert redis.Redis(port=redis_port, username=login["FRAUD_REDIS__USERNAME"],
                       password=login["FRAUD_REDIS__PASSWORD"], socket_timeout=5).ping()  # fmt: skip
    assert _script(env, "status").returncode == 0

    stopped = _script(env, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert _ours(state) == {"kafka": set(), "redis": set()}
    assert _script(env, "status").returncode == 3
    assert not list(state.glob("*.pid"))


def test_a_port_taken_by_someone_else_is_a_clear_error(
    private_services: tuple[dict[str, str], Path, int, int],
) -> None:
    env, _, _, redis_port = private_services
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", redis_port))
        squatter.listen()
        result = _script(env, "start", "redis")
    assert result.returncode == 1
    assert f"port {redis_port} is in use by another process" in result.stderr


def test_unknown_command_prints_usage(private_services: tuple[dict[str, str], Path, int, int]) -> None:
    env = private_services[0]
    result = _script(env, "launch")
    assert result.returncode == 1
    assert "usage: scripts/services.sh start|stop|status|restart" in result.stderr
