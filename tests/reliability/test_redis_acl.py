"""Redis ACL users: a worker's user reaches only its key prefix and the commands the worker sends.

The commands are the product's list, ``REDIS_WORKER_COMMANDS`` in ``scripts/services.sh`` (which gives its ``worker``
user exactly those; tests/reliability/test_redis_auth.py checks that user on a Redis of its own). Here a user with the
same rules on a prefix of the test's own is made (``ACL SETUSER`` as the default user of the suite's Redis) and
deleted afterwards. What is asserted with it: the administrative and whole-keyspace commands are refused (FLUSHALL,
FLUSHDB, CONFIG, KEYS, SCAN, ACL, arbitrary EVAL), a key outside the prefix is refused, and the real feature-store
script works.

Finding (Redis 7): ACL key patterns are checked on every command a script runs (``redis.call``), including keys the
script builds from ARGV instead of declaring them in KEYS — so the feature store's script, which names its keys in
its arguments, is confined like any other client: pointed at another prefix it fails with "can't access at least
one of the keys" and writes nothing. Commands are checked inside scripts too: EVALSHA gives no way around the list.

Destructive commands are first checked with ``ACL DRYRUN`` (nothing runs), and only then sent for real: a broken
rule must not flush the Redis other tests share.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis as redis_lib
from pydantic import SecretStr

from features.plan import marker_key
from features.store import RedisFeatureStore, redis_client
from fraudpipe.settings import RedisSettings
from tests import factories
from tests.integration.conftest import redis_url  # noqa: F401 (the fixture)
from tests.services import without_login

pytestmark = pytest.mark.integration

SERVICES_SH = Path(__file__).resolve().parents[2] / "scripts" / "services.sh"


def worker_commands() -> tuple[str, ...]:
    """``REDIS_WORKER_COMMANDS`` of scripts/services.sh: every command a worker sends (the script says which does
    what). A command added to the worker's path must be added there, or the end-to-end test in test_security.py
    fails."""
    found = re.search(r'^REDIS_WORKER_COMMANDS="([^"]+)"$', SERVICES_SH.read_text(), re.MULTILINE)
    assert found, "scripts/services.sh: no REDIS_WORKER_COMMANDS line"
    return tuple(found.group(1).split())


WORKER_COMMANDS = worker_commands()


def worker_rules(password: str, key_prefix: str, stream_key: str) -> list[str]:
    """``ACL SETUSER`` rules for a worker: its prefix and alert stream, no channels, only ``WORKER_COMMANDS``."""
    return ["reset", "on", f">{password}", f"~{key_prefix}*", f"~{stream_key}", "resetchannels", "-@all",
            *(f"+{command}" for command in WORKER_COMMANDS)]  # fmt: skip


@contextmanager
def redis_user(admin: redis_lib.Redis, name: str, rules: list[str]) -> Iterator[None]:
    """An ACL user ``name`` with ``rules`` for the duration of the block (deleted after, even on failure)."""
    admin.execute_command("ACL", "SETUSER", name, *rules)
    try:
        yield
    finally:
        admin.execute_command("ACL", "DELUSER", name)


def _denied(admin: redis_lib.Redis, user: str, *command: str) -> bool:
    """Whether ``ACL DRYRUN`` says ``user`` may not run ``command`` (nothing is executed)."""
    return admin.execute_command("ACL", "DRYRUN", user, *command) != b"OK"


def test_worker_user_is_confined_to_its_prefix_and_commands(redis_url: str, unique: str) -> None:  # noqa: F811
    admin = redis_lib.Redis.from_url(redis_url, socket_timeout=5)
    name, password = f"fp-test-{unique}", secrets.token_urlsafe(18)
    prefix, other = f"fp:test:{unique}:", f"fp:test:{unique}x:"
    # The suite's URL may carry the default user's login, which would win over the settings' username and password.
    settings = RedisSettings(url=without_login(redis_url), username=name, password=password, key_prefix=prefix,  # type: ignore[arg-type]
                             socket_timeout_ms=5_000, connect_timeout_ms=5_000)  # fmt: skip
    try:
        with redis_user(admin, name, worker_rules(password, prefix, f"{prefix}alerts")), redis_client(settings) as user:
            # the user logs in with the settings' username and password
            assert user.ping()
            refused: list[tuple[str, ...]] = [
                ("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "GET", "maxmemory"), ("CONFIG", "SET", "maxmemory", "1"),
                ("KEYS", "*"), ("SCAN", "0"), ("ACL", "SETUSER", name, "+@all"), ("DEBUG", "SLEEP", "0"),
                ("SHUTDOWN",), ("EVAL", "return 1", "0"), ("SELECT", "1"), ("PUBLISH", "channel", "message"),
            ]  # fmt: skip
            for command in refused:
                assert _denied(admin, name, *command), command
            for command in refused:
                if command[0] not in {"SHUTDOWN", "DEBUG"}:  # those two: the dry run only, never sent
                    with pytest.raises(redis_lib.exceptions.NoPermissionError):
                        user.execute_command(*command)

            with pytest.raises(redis_lib.exceptions.NoPermissionError, match="keys"):
                user.set(f"{other}card:x", b"1")
            with pytest.raises(redis_lib.exceptions.NoPermissionError, match="keys"):
                user.get("fp:v3:card:x")
            assert user.set(f"{prefix}probe", b"1")
            assert user.get(f"{prefix}probe") == b"1"

            # The real script, as the user: applies once, answers a redelivery, takes a label, shows a card.
            store = RedisFeatureStore(user, prefix)
            txns = [factories.transaction(txn_id=f"acl-{i}", card_token=f"tok_{unique}{i % 2}") for i in range(6)]
            assert len(store.apply(txns)) == 6
            assert len(store.apply(txns[:2])) == 2  # redelivered: read, not applied again
            assert store.apply_labels([factories.label(txn_id="acl-0", card_token=f"tok_{unique}0")]) == 1
            assert store.card_state(f"tok_{unique}0") is not None
            assert admin.exists(f"{prefix}card:tok_{unique}0") and admin.hexists(marker_key(prefix, txns[5]), "acl-5")

            # The store at another prefix: its transaction is refused (the MGET when queued, or the script's first
            # redis.call) and nothing is written there.
            with pytest.raises(redis_lib.exceptions.ResponseError, match=r"access (at least )?one of the keys"):
                RedisFeatureStore(user, other).apply(txns[:1])
            assert not list(admin.scan_iter(match=f"{other}*"))
            # A script of one's own runs under the same rules: loading it is allowed, what it calls is checked.
            sha = user.script_load("return redis.call('DBSIZE')")
            with pytest.raises(redis_lib.exceptions.ResponseError, match="can't run this command"):
                user.evalsha(sha, 0)

            with pytest.raises(redis_lib.exceptions.AuthenticationError):
                redis_client(settings.model_copy(update={"password": SecretStr("not-the-password")})).ping()
        assert name.encode() not in admin.execute_command("ACL", "USERS")
        with pytest.raises(redis_lib.exceptions.AuthenticationError):
            redis_client(settings).ping()  # deleted: its password opens nothing any more
    finally:
        for key in admin.scan_iter(match=f"{prefix}*", count=1000):
            admin.delete(key)
        admin.close()
