"""The decision memory on a real Redis: the first decision of an id stays, reads and writes find it across
generations, erasure forgets it, its hashes expire, and it stays in Redis' compact encoding."""

from __future__ import annotations

import time

import redis

from fraudpipe.settings import Settings
from streams.pipeline import DecisionMemory, Recalled

DIGEST = "ab" * 16


def _value(level: int, score: float = 0.5, version: str = "v0001") -> bytes:
    return Recalled.pack(level, score, version, DIGEST)


def test_the_first_decision_of_an_id_stays(store_client: redis.Redis, settings: Settings) -> None:
    memory = DecisionMemory(store_client, settings.redis.key_prefix, ttl_s=3_600, slots=8)
    assert memory.recall(["TX1", "TX2"]) == {}
    first = memory.remember(["TX1", "TX2", "TX1"], [_value(0), _value(2), _value(1)])
    assert first == {"TX1": Recalled.loads(_value(0))}  # the second TX1 of the batch finds the first
    again = memory.remember(["TX2", "TX3"], [_value(0), _value(1, version="v0002")])
    assert list(again) == ["TX2"] and again["TX2"].outcome == "decline"  # the first decision, not the new one
    recalled = memory.recall(["TX3", "TX1", "TX9", "TX3"])
    assert sorted(recalled) == ["TX1", "TX3"]
    assert recalled["TX1"].outcome == "approve" and recalled["TX3"].version == "v0002"
    assert recalled["TX3"].digest == DIGEST and recalled["TX3"].score == 0.5


def test_one_call_remembers_a_batch_then_recalls_the_next(store_client: redis.Redis, settings: Settings) -> None:
    memory = DecisionMemory(store_client, settings.redis.key_prefix, ttl_s=3_600, slots=8)
    memory.remember(["TX0"], [_value(2)])
    raced, known = memory.remember_then_recall(["TX1", "TX0"], [_value(1), _value(0)], ["TX2", "TX1", "TX0", "TX1"])
    assert raced == {"TX0": Recalled.loads(_value(2))}  # already there: kept, and said
    assert known == {"TX1": Recalled.loads(_value(1)), "TX0": Recalled.loads(_value(2))}  # read after the writes
    assert memory.remember_then_recall([], [], []) == ({}, {})
    assert memory.remember_then_recall(["TX3"], [_value(0)], []) == ({}, {})
    assert memory.recall(["TX3"])["TX3"].outcome == "approve"


def test_ids_share_small_hashes_that_expire(store_client: redis.Redis, settings: Settings) -> None:
    prefix, ttl = settings.redis.key_prefix, 3_600
    memory = DecisionMemory(store_client, prefix, ttl_s=ttl, slots=4)
    ids = [f"TX{i:08d}" for i in range(200)]
    memory.remember(ids, [_value(i % 3) for i in range(len(ids))])
    keys = list(store_client.scan_iter(match=f"{prefix}decision:*", count=1000))
    assert 1 < len(keys) <= 4  # one generation, at most one hash per slot
    now = int(store_client.time()[0])
    for key in keys:
        assert store_client.object("encoding", key) == b"listpack"
        # expires when the second generation after its own begins: between 1 and 2 times the memory's length
        assert ttl <= store_client.ttl(key) + (now % ttl) <= 2 * ttl
    assert sum(store_client.hlen(key) for key in keys) == len(ids)
    assert len(memory.recall(ids)) == len(ids)


def test_a_decision_is_found_in_the_generation_after_its_own(store_client: redis.Redis, settings: Settings) -> None:
    """Generations of one second (a memory of one): a decision is read and kept first in the next generation too,
    then its hash expires."""
    memory = DecisionMemory(store_client, settings.redis.key_prefix, ttl_s=1, slots=2)
    while store_client.time()[1] > 500_000:  # early in a second, so the write below is of the same one
        time.sleep(0.05)
    born = int(store_client.time()[0])
    memory.remember(["TX1"], [_value(2)])
    while int(store_client.time()[0]) < born + 2:  # the next generation still reads it, and keeps it first
        assert memory.recall(["TX1"])["TX1"].outcome == "decline"
        assert memory.remember(["TX1"], [_value(0)])["TX1"].outcome == "decline"
        time.sleep(0.1)
    memory.remember(["TX2"], [_value(0)])
    assert memory.recall(["TX1"]) == {}  # its generation's hash expired
    assert memory.recall(["TX2"])["TX2"].outcome == "approve"


def test_erasure_forgets_every_generation(store_client: redis.Redis, settings: Settings) -> None:
    memory = DecisionMemory(store_client, settings.redis.key_prefix, ttl_s=3_600, slots=4)
    memory.remember(["TX1", "TX2", "TX3"], [_value(0), _value(1), _value(2)])
    assert memory.forget(["TX1", "TX3", "TX1", "TX7"]) == 2
    assert memory.recall(["TX1", "TX2", "TX3"]).keys() == {"TX2"}
    assert memory.forget([]) == 0
