"""The local Redis of ``scripts/services.sh`` asks who you are: a password for its default user, and a ``worker`` ACL
user confined to the worker's key prefix, its alert stream and the commands a worker sends.

A Redis of its own is started for this module with the real script, in a temporary state folder on a free port
(the suite's shared Redis is never touched); with ``CI=true`` a missing ``redis-server`` is a failure, not a skip.

- without a login, or with a wrong one, every command is refused (NOAUTH / WRONGPASS);
- the default user's generated password (``users/default.env``) opens everything, through the settings users load
  (``FRAUD_REDIS__USERNAME`` / ``FRAUD_REDIS__PASSWORD``) and through a URL;
- the worker's login (``users/worker.env``) runs the feature store's real script on its prefix, appends to its alert
  stream, and is refused FLUSHALL, CONFIG, KEYS, SCAN, EVAL, keys outside its prefix and the store at another prefix;
  its rules are exactly ``REDIS_WORKER_COMMANDS`` of the script;
- the passwords: files of mode 600 in a folder of mode 700, not in the script's output, not on any process's command
  line, not in the server's configuration file (SHA-256 only) nor its log; kept across restarts, and taken from
  ``FRAUD_REDIS__PASSWORD`` when that is set;
- ``fraudpipe demo --sasl`` with no login given logs every process in: to Redis with the script's default user, to
  a SASL broker the script starts for it (the worker as ``worker``, with only its ACLs); no password in its output.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis as redis_lib
from redis.backoff import NoBackoff
from redis.retry import Retry

from features.plan import marker_key
from features.store import RedisFeatureStore, redis_client
from fraudpipe.settings import RedisSettings, Settings
from streams.local_services import SASL_PORT_OFFSET, free_port
from tests import factories
from tests.reliability.test_redis_acl import WORKER_COMMANDS
from tests.services import need, need_sasl_broker_tools

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "services.sh"
PREFIX = "fp:auth:"
STREAM = "fp:auth:alerts"


@dataclass
class LocalRedis:
    """The script's Redis: where it listens, its state folder, the environment the script ran with, and everything
    the script printed so far."""

    port: int
    state: Path
    env: dict[str, str]
    output: str = ""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def users(self) -> Path:
        return self.state / "redis" / "users"

    def login(self, user: str) -> dict[str, str]:
        """The ``FRAUD_REDIS__*`` variables of ``users/<user>.env``."""
        lines = (self.users / f"{user}.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))

    def password(self, user: str) -> str:
        return self.login(user)["FRAUD_REDIS__PASSWORD"]

    def settings(self, user: str, prefix: str = PREFIX) -> RedisSettings:
        """What a client gets after ``set -a; . users/<user>.env; set +a`` (the real Settings, read from the
        environment as ``get_settings`` reads it)."""
        env = {"FRAUD_REDIS__URL": self.url, "FRAUD_REDIS__KEY_PREFIX": prefix, **self.login(user)}
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            redis = Settings(_env_file=None).redis
        return redis.model_copy(update={"socket_timeout_ms": 5_000, "connect_timeout_ms": 5_000})

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(SCRIPT), *args, "redis"], env=self.env | env, capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip
        self.output += done.stdout + done.stderr
        assert done.returncode in (0, 3), done.stdout + done.stderr
        return done


@pytest.fixture(scope="module")
def local_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    if shutil.which("redis-server") is None:
        need("redis-server is needed (scripts/services.sh runs it; apt-get install redis-server)")
    state = tmp_path_factory.mktemp("redis-auth-services")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("FRAUD_", "REDISCLI_"))}
    env |= {"FRAUDPIPE_SERVICES_DIR": str(state), "FRAUD_REDIS__URL": f"redis://127.0.0.1:{port}/0",
            "FRAUD_REDIS__KEY_PREFIX": PREFIX, "FRAUD_SINKS__REDIS_STREAM_KEY": STREAM}  # fmt: skip
    local = LocalRedis(port, state, env)
    try:
        assert "redis: started" in local.run("start").stdout
        yield local
    finally:
        subprocess.run([str(SCRIPT), "stop", "redis"], env=env, capture_output=True, timeout=60, check=False)


def _client(local: LocalRedis, **login: str) -> redis_lib.Redis:
    """A client logging in with ``login`` (none: anonymous); a refused login is not retried."""
    return redis_lib.Redis(port=local.port, socket_timeout=5, retry=Retry(NoBackoff(), 0), **login)


def test_without_the_password_nothing_is_answered(local_redis: LocalRedis) -> None:
    anonymous = _client(local_redis)
    for command in (("PING",), ("GET", f"{PREFIX}card:x"), ("KEYS", "*"), ("FLUSHALL",), ("CONFIG", "GET", "*")):
        # NOAUTH: redis-py opens with HELLO 3, which Redis answers so until a login is given.
        with pytest.raises(redis_lib.AuthenticationError, match="must be called with the client already authenticated"):
            anonymous.execute_command(*command)
    worker = local_redis.password("worker")
    for login in ({"password": "not-the-password"}, {"password": worker},  # worker's password is not default's
                  {"username": "worker", "password": local_redis.password("default")},
                  {"username": "nobody", "password": worker}):  # fmt: skip
        with pytest.raises(redis_lib.AuthenticationError, match="invalid username-password pair"):
            _client(local_redis, **login).ping()


def test_the_default_user_with_its_generated_password_opens_everything(local_redis: LocalRedis) -> None:
    settings = local_redis.settings("default")
    assert settings.username == "default" and settings.password is not None
    with redis_client(settings) as client:  # the client every fraudpipe command builds
        assert client.execute_command("ACL", "WHOAMI") == b"default"
        assert client.set("elsewhere:key", b"1") and client.get("elsewhere:key") == b"1"
        assert client.delete("elsewhere:key") == 1
        assert client.config_get("appendonly") == {"appendonly": "yes"}  # the script's persistence, as before
    # The same login in the URL (how `make test` hands it to the suite).
    password = local_redis.password("default")
    with redis_lib.Redis.from_url(f"redis://:{password}@127.0.0.1:{local_redis.port}/0") as client:
        assert client.ping()


def test_the_worker_user_runs_the_feature_store_and_nothing_more(local_redis: LocalRedis, unique: str) -> None:
    with _client(local_redis, password=local_redis.password("default")) as admin:
        rules = admin.acl_getuser("worker")
        # Exactly the script's list: every command a worker sends, nothing else; its prefix and stream only.
        assert rules["categories"] == ["-@all"] and rules["channels"] == [] and rules["selectors"] == []
        assert sorted(rules["commands"]) == sorted(f"+{command}" for command in WORKER_COMMANDS)
        assert sorted(rules["keys"]) == sorted([f"~{PREFIX}*", f"~{STREAM}"])
        settings = local_redis.settings("worker")
        with redis_client(settings) as worker:
            assert worker.ping()
            assert {entry["user"] for entry in admin.client_list()} == {"default", "worker"}  # logged in as worker
            store = RedisFeatureStore(worker, settings.key_prefix)
            txns = [factories.transaction(txn_id=f"auth-{unique}-{i}", card_token=f"tok_{unique}{i % 2}")
                    for i in range(6)]  # fmt: skip
            assert len(store.apply(txns)) == 6
            assert len(store.apply(txns[:2])) == 2  # redelivered: read, not applied again
            assert store.apply_labels([factories.label(txn_id=txns[0].txn_id, card_token=f"tok_{unique}0")]) == 1
            assert store.card_state(f"tok_{unique}0") is not None
            assert admin.exists(f"{PREFIX}card:tok_{unique}0")
            assert admin.hexists(marker_key(PREFIX, txns[5]), txns[5].txn_id)
            assert worker.xadd(STREAM, {"alert": "a"})  # the alert stream sink

            refused = [("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "GET", "maxmemory"), ("KEYS", "*"), ("SCAN", "0"),
                       ("EVAL", "return 1", "0"), ("ACL", "SETUSER", "worker", "+@all"), ("SELECT", "1")]  # fmt: skip
            for command in refused:
                with pytest.raises(redis_lib.exceptions.NoPermissionError):
                    worker.execute_command(*command)
            for key in ("fp:v3:card:x", "elsewhere", f"{PREFIX[:-1]}x:card:x"):
                with pytest.raises(redis_lib.exceptions.NoPermissionError, match="keys"):
                    worker.get(key)
            # The store pointed at another prefix: refused, nothing written there.
            with pytest.raises(redis_lib.exceptions.ResponseError, match=r"access (at least )?one of the keys"):
                RedisFeatureStore(worker, "fp:other:").apply(txns[:1])
            assert not list(admin.scan_iter(match="fp:other:*"))
            assert admin.dbsize() > 0  # FLUSHALL was refused for real


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _command_lines() -> list[str]:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return lines


def test_the_passwords_stay_in_their_files(local_redis: LocalRedis) -> None:
    local_redis.run("status")
    passwords = [local_redis.password("default"), local_redis.password("worker")]
    assert len(set(passwords)) == 2 and all(len(p) >= 24 for p in passwords)
    assert _mode(local_redis.users) == 0o700
    for path in (local_redis.users / "default.env", local_redis.users / "worker.env",
                 local_redis.state / "redis" / "redis.conf"):  # fmt: skip
        assert _mode(path) == 0o600, path
    assert "logins in" in local_redis.output  # where they are, said; what they are, not
    config = (local_redis.state / "redis" / "redis.conf").read_text()
    assert config.count("#") >= 3  # the two users' rules carry SHA-256 hashes
    for password in passwords:
        assert password not in local_redis.output
        assert password not in config
        assert password not in (local_redis.state / "redis" / "redis.log").read_text()
        assert not [line for line in _command_lines() if password in line]
    server = [line for line in _command_lines() if f"redis-server 127.0.0.1:{local_redis.port}" in line]
    assert server, "the script's redis-server is not running"


def test_restarts_keep_the_passwords_and_the_operator_may_choose_the_default_one(local_redis: LocalRedis) -> None:
    before = {user: local_redis.password(user) for user in ("default", "worker")}
    local_redis.run("restart")
    assert {user: local_redis.password(user) for user in before} == before
    chosen = "chosen-by-the-operator-1"  # FRAUD_REDIS__PASSWORD, as fraudpipe's settings read it
    try:
        local_redis.run("restart", FRAUD_REDIS__PASSWORD=chosen)
        assert local_redis.password("default") == chosen and local_redis.password("worker") == before["worker"]
        assert _client(local_redis, password=chosen).ping()
        with pytest.raises(redis_lib.AuthenticationError):
            _client(local_redis, password=before["default"]).ping()
        assert chosen not in local_redis.output
    finally:
        (local_redis.users / "default.env").write_text(f"FRAUD_REDIS__PASSWORD={before['default']}\n")
        local_redis.run("restart")  # back to the generated one for the tests after this
    assert _client(local_redis, password=before["default"]).ping()


# --- every client the demo starts logs in -------------------------------------------------------------------------


def _free_pair() -> int:
    """A free port whose successor is free too (the KRaft controller listens on port + 1)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        if 1_024 + SASL_PORT_OFFSET < port < 65_000:
            return port
    raise RuntimeError("no two consecutive free ports")


def test_the_demo_logs_in_everywhere_with_sasl(local_redis: LocalRedis, tmp_path: Path) -> None:
    """`fraudpipe demo --sasl`, given no login at all: Redis through the script's users/default.env, Kafka through
    a SASL broker it starts (and stops) with the script, the worker as `worker` with only its ACLs. It decides
    payments, nothing is refused, and no password reaches its output or its processes' logs."""
    need_sasl_broker_tools()
    sasl_port = _free_pair()
    env = local_redis.env | {"FRAUD_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{sasl_port - SASL_PORT_OFFSET}"}
    env = {key: value for key, value in env.items() if not key.startswith(("FRAUD_REDIS__KEY", "FRAUD_SINKS__"))}
    work = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "fraudpipe", "demo", "--sasl", "--duration", "10", "--customers",
                           "100", "--history-days", "20", "--live-days", "1", "--rate", "100", "--port", "0",
                           "--work-dir", str(work)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=420, check=False)  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    found = re.search(r"demo done: ([\d,]+) decisions", done.stdout)
    assert found and int(found.group(1).replace(",", "")) > 0, output[-3000:]
    assert f"127.0.0.1:{sasl_port}, SASL_PLAINTEXT SCRAM-SHA-512 with ACLs" in done.stdout
    (logs,) = (work / "logs").iterdir()
    texts = {path.name: path.read_text(errors="replace") for path in logs.glob("*.log")}
    assert "Authenticated as worker via SCRAM-SHA-512" in texts["worker.log"], texts["worker.log"][-3000:]
    for name, text in texts.items():
        for refusal in ("AUTHORIZATION_FAILED", "AuthorizationFailed", "NOPERM", "NOAUTH", "WRONGPASS"):
            assert refusal not in text, f"{name}: {text[-3000:]}"
    users = local_redis.state / "sasl" / "kafka" / "sasl"
    passwords = [local_redis.password(user) for user in ("default", "worker")]
    passwords += [line.split("=", 1)[1] for path in users.glob("*.env") for line in path.read_text().splitlines()
                  if line.startswith("FRAUD_KAFKA__SASL_PASSWORD=")]  # fmt: skip
    assert len(passwords) >= 4
    for password in passwords:
        assert password not in output and not [name for name, text in texts.items() if password in text]
    # It stopped the broker it started, and left the Redis it found running.
    sasl_env = env | {"FRAUDPIPE_SERVICES_DIR": str(local_redis.state / "sasl"),
                      "FRAUD_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{sasl_port}"}  # fmt: skip
    status = subprocess.run(
        [str(SCRIPT), "status", "kafka"], env=sasl_env, capture_output=True, timeout=60, check=False
    )
    assert status.returncode == 3, status.stdout
    assert _client(local_redis, password=passwords[0]).ping()
