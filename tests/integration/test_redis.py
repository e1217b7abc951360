"""redis-py (with hiredis) against the real server: round trips, one-call pipelines, atomic Lua."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from fraudpipe.settings import Settings


@pytest.fixture
def client(settings: Settings) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(
        settings.redis.url,
        socket_timeout=settings.redis.socket_timeout_ms / 1000,
        socket_connect_timeout=settings.redis.connect_timeout_ms / 1000,
    )
    yield connection
    for key in connection.scan_iter(match=f"{settings.redis.key_prefix}*", count=1000):
        connection.delete(key)
    connection.close()


def test_hiredis_parser_is_in_use() -> None:
    assert redis.utils.HIREDIS_AVAILABLE


def test_round_trip(client: redis.Redis, settings: Settings) -> None:
    key = f"{settings.redis.key_prefix}card:tok_1"
    client.hset(key, mapping={"count": 3, "sum": 12.5})
    client.expire(key, 60)
    assert client.hgetall(key) == {b"count": b"3", b"sum": b"12.5"}
    assert 0 < client.ttl(key) <= 60


def test_a_pipeline_is_one_round_trip_for_many_commands(client: redis.Redis, settings: Settings) -> None:
    prefix = settings.redis.key_prefix
    with client.pipeline(transaction=False) as pipe:
        for i in range(500):
            pipe.incrbyfloat(f"{prefix}bucket:{i % 10}", 1.5)
        results = pipe.execute()
    assert len(results) == 500
    assert float(client.get(f"{prefix}bucket:3") or 0) == 50 * 1.5


def test_lua_applies_an_update_once_per_id(client: redis.Redis, settings: Settings) -> None:
    """The shape the online store builds on: dedupe marker and mutation in one atomic step."""
    apply_once = client.register_script(
        """
        if redis.call('SET', KEYS[1], 1, 'NX', 'EX', 3600) then
          return redis.call('INCRBYFLOAT', KEYS[2], ARGV[1])
        end
        return redis.call('GET', KEYS[2])
        """
    )
    prefix = settings.redis.key_prefix
    keys = [f"{prefix}seen:txn-1", f"{prefix}card:sum"]
    assert float(apply_once(keys=keys, args=[10])) == 10
    assert float(apply_once(keys=keys, args=[10])) == 10
    assert float(client.get(keys[1]) or 0) == 10
