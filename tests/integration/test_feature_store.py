"""The Redis feature store against real Redis: equal to its in-memory twin on generated sequences (duplicates,
out-of-order and late events, late and revised labels), idempotent under replay and under two concurrent clients,
bounded in memory, with the expiry and the key layout it documents."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.blobs import EMPTY_CARD, LOG_HEAD, Journal, decode_card, decode_place
from features.fold import fold
from features.memory import InMemoryFeatureStore
from features.plan import COMPILED, MARKER_DAYS, marker_key
from features.store import RedisFeatureStore, StoreUnavailableError, redis_client
from fraudpipe.clock import FixedClock
from fraudpipe.contracts import Label, Transaction
from fraudpipe.settings import RedisSettings, Settings

START = datetime(2024, 1, 1, tzinfo=UTC)
LAYOUT = InMemoryFeatureStore().layout


def _txn(i: int, minutes: int, card: int, terminal: int | None, amount: float, extra: dict[str, Any]) -> Transaction:
    return Transaction(
        txn_id=f"t{i}",
        event_time=START + timedelta(minutes=minutes),
        card_token=f"card-{card}",
        amount=amount,
        currency="EUR",
        terminal_id=None if terminal is None else f"T{terminal}",
        merchant_id=f"M{(terminal or 0) % 2}",
        **extra,
    )


extras = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {
            "channel": st.just("card_present"),
            "lat": st.floats(45, 55),
            "lon": st.floats(2, 16),
            "country": st.sampled_from(["DE", "FR"]),
        }
    ),
    st.fixed_dictionaries({"channel": st.just("ecommerce"), "device_id": st.sampled_from(["d1", "d2", "d3"])}),
)
events = st.lists(
    st.tuples(
        st.one_of(  # minutes: bucket-aligned often, so events meet exactly at window and retention edges
            st.sampled_from([0, 5, 55, 60, 65, 1_435, 1_440, 1_445, 2_880, 43_200, 43_205, 44_640, 47_520]),
            st.integers(0, 40).map(lambda k: 5 * k),
            st.integers(0, 60).map(lambda k: 60 * k),
            st.integers(0, 45).map(lambda k: 1_440 * k),
            st.integers(0, 60 * 24 * 45),
        ),
        st.integers(0, 1),
        st.one_of(st.none(), st.integers(0, 4)),
        st.floats(0.01, 25_000, allow_nan=False).map(lambda a: round(a, 2)),
        extras,
    ),
    min_size=1,
    max_size=60,
)


@st.composite
def sequences(draw: st.DrawFn) -> list[list[Transaction] | list[Label]]:
    """Batches in arrival order: transactions (some redelivered, out of order) and labels (late, revised, twice)."""
    raw = draw(events)
    for minutes, card, _, amount, extra in list(raw):  # echoes exactly one window or retention span later
        if draw(st.booleans()):
            offset = draw(st.sampled_from([5, 55, 60, 1_380, 1_440, 10_080, 43_200, 43_200 - 1_440]))
            raw.append((minutes + offset, card, draw(st.one_of(st.none(), st.integers(0, 4))), amount, extra))
    txns = [_txn(i, *event) for i, event in enumerate(raw)]
    arrival = draw(st.permutations(txns)) if draw(st.booleans()) else sorted(txns, key=lambda t: t.event_time)
    stream: list[Transaction | Label] = []
    for txn in arrival:
        stream.append(txn)
        if draw(st.integers(0, 9)) == 0:
            stream.append(draw(st.sampled_from(txns)))  # a redelivery
        if draw(st.integers(0, 4)) == 0:
            target = draw(st.sampled_from(txns))
            label = Label(
                txn_id=target.txn_id,
                card_token=target.card_token,
                event_time=target.event_time,
                known_at=target.event_time + timedelta(days=draw(st.integers(0, 40))),
                is_fraud=draw(st.booleans()),
                source="chargeback",
                label_version=draw(st.integers(1, 3)),
                terminal_id=target.terminal_id,
                merchant_id=target.merchant_id,
            )
            stream += [label] * draw(st.integers(1, 2))
    batches: list[list[Transaction] | list[Label]] = []
    for item in stream:  # consecutive items of one kind form a batch, cut at random sizes
        if batches and type(batches[-1][0]) is type(item) and len(batches[-1]) < draw(st.integers(1, 8)):
            batches[-1].append(item)  # type: ignore[arg-type]
        else:
            batches.append([item])  # type: ignore[list-item]
    return batches


def _run(
    store: RedisFeatureStore | InMemoryFeatureStore,
    batches: list[list[Transaction] | list[Label]],
    *,
    pipelined: bool = False,
) -> list[Any]:
    """One reply per batch: the transactions' StoreReply, or the number of labels applied. ``pipelined``: each run
    of transaction batches between labels goes through ``store.stream``."""
    replies: list[Any] = []
    for payments, run in itertools.groupby(batches, key=lambda batch: isinstance(batch[0], Transaction)):
        if not payments:
            replies += [store.apply_labels(labels) for labels in run]  # type: ignore[arg-type]
        elif pipelined:
            replies += store.stream(run)  # type: ignore[arg-type]
        else:
            replies += [store.raw(txns) for txns in run]  # type: ignore[arg-type]
    return replies


def _dump(store_client: redis.Redis, prefix: str) -> dict[str, object]:
    """Every key under ``prefix``, decoded into the twin's shape (a card's base and log as one state)."""
    return RedisFeatureStore(store_client, prefix).state()


def _twin_dump(twin: InMemoryFeatureStore) -> dict[str, object]:
    return dict(twin.values)


STORES: dict[str, dict[str, int]] = {  # the default (planned, read and folded in C); the Python definitions instead;
    # every entity with a record folded after every batch, items forgotten all the time (also in Python); folds that
    # wait for a group (values read batches earlier, written back over newer ones); records never folded (each batch
    # is read from a long log) with a few items
    "default": {},
    "default-uncompiled": {"compiled": False},
    "fold-always": {"fold_after": 1, "place_fold_after": 1, "fold_group": 1, "recent_items": 2},
    "fold-always-uncompiled": {
        "fold_after": 1,
        "place_fold_after": 1,
        "fold_group": 1,
        "recent_items": 2,
        "compiled": False,
    },
    "fold-grouped": {"fold_after": 2, "place_fold_after": 3, "fold_group": 4, "fold_wait": 3, "recent_items": 3},
    "fold-never": {"fold_after": 10_000, "place_fold_after": 10_000, "recent_items": 3},
}


PIPELINED = ("default", "fold-always", "fold-grouped")  # also run through stream(): a fold written back 2 batches on


@pytest.mark.parametrize("config", [*STORES, *(f"{name} pipelined" for name in PIPELINED)])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=sequences())
def test_redis_equals_its_twin_and_a_second_replay_changes_nothing(
    store_client: redis.Redis, settings: Settings, config: str, batches: list[list[Transaction] | list[Label]]
) -> None:
    prefix = f"{settings.redis.key_prefix}{id(batches)}:"
    name, _, mode = config.partition(" ")
    pipelined = mode == "pipelined"
    online = RedisFeatureStore(store_client, prefix, **STORES[name])
    recent_items = STORES[name].get("recent_items", online.layout["recent_items"])
    twin = InMemoryFeatureStore(prefix, recent_items=recent_items)
    assert _run(online, batches, pipelined=pipelined) == _run(twin, batches)
    before = online.state()
    assert before == _twin_dump(twin)  # the same state, field by field, not just the same answers

    again = _run(online, batches, pipelined=pipelined)
    assert online.state() == before  # duplicates change nothing
    assert not any(
        flag for reply in again if not isinstance(reply, int) for flag in reply.applied
    )  # nothing re-applied
    assert all(reply == 0 for reply in again if isinstance(reply, int))  # no label re-applied
    for key in store_client.scan_iter(match=f"{prefix}*", count=1000):
        store_client.delete(key)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=sequences(), recent_items=st.sampled_from([1, 2, 64]))
def test_a_fold_in_c_writes_the_bytes_of_the_definition_and_keeps_the_state(
    store_client: redis.Redis, settings: Settings, batches: list[list[Transaction] | list[Label]], recent_items: int
) -> None:
    """Every entity's value as the script left it, folded by the C extension and in Python: the same canonical bytes,
    a base that decodes to the state of its base and records, and nothing for an entity without records."""
    prefix = f"{settings.redis.key_prefix}{id(batches)}:"
    store = RedisFeatureStore(store_client, prefix, fold_after=10_000, place_fold_after=10_000,
                              recent_items=recent_items)  # fmt: skip
    _run(store, batches)
    names = [key.decode()[len(prefix) :] for key in store_client.scan_iter(match=f"{prefix}*", count=1000)]
    tokens = [name[5:] for name in names if name.startswith("card:")]
    places = [name for name in names if name.split(":")[0] in {"terminal", "merchant"}]
    cards = {f"card:{token}": tuple(store_client.mget([f"{prefix}card:{token}", f"{prefix}cardlog:{token}"]))
             for token in tokens}  # fmt: skip
    values = dict(zip(places, store_client.mget([prefix + name for name in places]), strict=True))
    python = fold(cards, values, store.layout, compiled=False)
    if COMPILED:
        assert fold(cards, values, store.layout) == python
    for name, (base, log) in cards.items():
        assert (name in python[0]) == bool(log)
        if name in python[0]:
            assert decode_card(python[0][name], None, store.layout) == decode_card(base, log, store.layout)
    for name, value in values.items():
        assert value is not None
        if name in python[1]:
            assert decode_place(python[1][name], store.layout) == decode_place(value, store.layout)
    for key in store_client.scan_iter(match=f"{prefix}*", count=1000):
        store_client.delete(key)


def test_a_fold_is_written_back_only_over_the_bytes_it_folded(store_client: redis.Redis, settings: Settings) -> None:
    """A fold is written back in the next transaction: records another client appended meanwhile (payments, labels)
    are kept after the new base. Either way the state equals applying everything once."""
    prefix = settings.redis.key_prefix
    txns = [_txn(i, 7 * i, 0, i % 3, 5.0 + i, {"channel": "ecommerce", "device_id": f"d{i % 2}"}) for i in range(30)]
    folding = RedisFeatureStore(store_client, prefix, fold_after=4, fold_group=1)
    other = RedisFeatureStore(store_client, prefix, fold_after=10_000)
    twin = InMemoryFeatureStore(prefix)
    label = Label(
        txn_id="t3", card_token="card-0", event_time=txns[3].event_time, known_at=txns[9].event_time, is_fraud=True,
        source="chargeback", label_version=1, terminal_id=txns[3].terminal_id, merchant_id=txns[3].merchant_id,
    )  # fmt: skip
    steps: list[tuple[RedisFeatureStore, list[Transaction] | list[Label]]] = [
        (folding, txns[:8]),  # card-0 due (8 records; a place needs 16): folded by the client, written back next
        (other, txns[8:12]),  # appended before the write-back: kept after the folded base
        (folding, txns[12:20]),  # the write-back applies; more folds due
        (other, [label]),  # a label is a record appended too: the pending fold still applies, before it
        (folding, txns[20:30]),
    ]
    records = []
    for store, batch in steps:
        _run(store, [batch])
        _run(twin, [batch])
        records.append(Journal.of_card(None, store_client.get(f"{prefix}cardlog:card-0"), store.layout).to_end())
    # The first 8 folded, written back over the other client's 4 appended meanwhile (kept), then 8 more; the other's
    # label record; the 12 before it folded, written back with the next batch: the label's record and 10 more left.
    assert records == [8, 12, 4 + 8, 4 + 8 + 1, 1 + 10]
    assert _dump(store_client, prefix) == _twin_dump(twin)


def test_a_fold_written_back_after_another_clients_fold_is_dropped(
    store_client: redis.Redis, settings: Settings
) -> None:
    """Two clients fold the same card (a rebalance): the first write-back bumps the log's fold generation, so the
    other's, folded from the generation before, no longer matches and is dropped, even when the records after the
    first write-back are the very bytes the other folded (payments alike in everything but their ids)."""
    prefix = settings.redis.key_prefix
    txns = [_txn(i, 0, 0, 1, 5.0, {"channel": "ecommerce", "device_id": "d1"}) for i in range(14)]  # alike records
    first, second = (RedisFeatureStore(store_client, prefix, fold_after=2, fold_group=1) for _ in range(2))
    twin = InMemoryFeatureStore(prefix)
    # first folds 4 records (written back with its next batch); second folds 8 and writes them back first, then
    # appends 4 more records: the log reads as the 4 records first folded, but under generation 1
    for store, batch in ((first, txns[:4]), (second, txns[4:8]), (second, txns[8:12]), (first, txns[12:14])):
        assert store.raw(batch) == twin.raw(batch)
    log = store_client.get(f"{prefix}cardlog:card-0")
    assert isinstance(log, bytes)
    assert LOG_HEAD.unpack_from(log)[0] == 1  # the second client's fold only
    assert _dump(store_client, prefix) == _twin_dump(twin)


def test_a_script_lost_mid_stream_is_loaded_again_and_nothing_is_lost(
    store_client: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis forgets scripts (restart, flush, failover): the transactions sent since ran nothing, and are sent again
    in order (both in flight, or the newest only) once the script is loaded. An empty batch sends nothing."""
    prefix = settings.redis.key_prefix
    txns = [_txn(i, 7 * i, i % 3, i % 4, 5.0 + i % 11, {"channel": "ecommerce", "device_id": "d1"}) for i in range(60)]
    batches = [txns[i : i + 10] for i in range(0, len(txns), 10)]
    batches.insert(3, [])
    store = RedisFeatureStore(store_client, prefix, fold_after=2, place_fold_after=2, fold_group=1)
    store.raw(batches[0])  # the script is loaded, and folds are pending
    loads = []
    load = store_client.script_load
    monkeypatch.setattr(store_client, "script_load", lambda script: loads.append(1) or load(script))

    def arriving() -> Iterator[list[Transaction]]:
        for k, batch in enumerate(batches[1:]):
            if k in (0, 3):  # before two batches are sent (both fail); before one is sent behind another
                store_client.script_flush()
            yield batch

    replies = list(store.stream(arriving()))
    assert len(loads) >= 2
    twin = InMemoryFeatureStore(prefix)
    twin.raw(batches[0])
    assert replies == list(twin.stream(batches[1:]))
    assert _dump(store_client, prefix) == _twin_dump(twin)


def _noscript_errors(client: redis.Redis) -> int:
    return int(client.info("errorstats").get("errorstat_NOSCRIPT", {}).get("count", 0))


def test_a_batch_that_ran_behind_one_that_met_a_lost_script_keeps_its_reply(
    store_client: redis.Redis, settings: Settings
) -> None:
    """Another client loads the script between two batches in flight: the first, which met its absence, is sent
    again; the second ran and is not (sent again, it would read as a redelivery: applied False)."""
    prefix = settings.redis.key_prefix
    first = [_txn(i, 3 * i, i % 2, 0, 2.0 + i, {}) for i in range(8)]  # cards 0-1, terminal T0, merchant M0
    second = [_txn(100 + i, 3 * i + 1, 2 + i % 2, 1, 4.0 + i, {}) for i in range(8)]  # cards 2-3, T1, M1: disjoint
    store = RedisFeatureStore(store_client, prefix)
    store.raw([_txn(99, 0, 9, 9, 1.0, {})])  # the script is loaded

    def arriving() -> Iterator[list[Transaction]]:
        errors = _noscript_errors(store_client)
        store_client.script_flush()
        yield first
        deadline = time.monotonic() + 10
        while _noscript_errors(store_client) == errors and time.monotonic() < deadline:
            time.sleep(0.005)  # until Redis has refused the first batch
        store_client.script_load(store._script.script)  # another client
        yield second

    replies = list(store.stream(arriving()))
    assert [all(reply.applied) for reply in replies] == [True, True]
    twin = InMemoryFeatureStore(prefix)
    for batch in ([_txn(99, 0, 9, 9, 1.0, {})], first, second):
        twin.raw(batch)
    assert _dump(store_client, prefix) == _twin_dump(twin)


def test_a_quiet_stream_sends_no_health_check_between_replies(settings: Settings) -> None:
    """redis-py PINGs a connection idle past its health-check interval before the next command: with a reply in
    flight, that PING would read the reply instead. The stream checks once, before anything is in flight."""
    client = redis.Redis.from_url(settings.redis.url, health_check_interval=1)
    txns = [_txn(i, 5 * i, i % 2, i % 3, 1.0 + i, {}) for i in range(30)]
    batches = [txns[:10], txns[10:20], txns[20:]]

    def arriving() -> Iterator[list[Transaction]]:
        yield batches[0]
        time.sleep(1.2)  # quiet: past the interval, with batch 0's reply unread
        yield from batches[1:]

    replies = list(RedisFeatureStore(client, settings.redis.key_prefix).stream(arriving()))
    assert replies == list(InMemoryFeatureStore(settings.redis.key_prefix).stream(batches))
    client.close()


def test_a_stream_left_early_loses_nothing(store_client: redis.Redis, settings: Settings) -> None:
    """The batch in flight when the caller stops reading may be applied without its reply being read; delivered
    again, nothing is lost or applied twice, and the stream's connection is closed, not left with a reply unread."""
    prefix = settings.redis.key_prefix
    txns = [_txn(i, 11 * i, i % 2, i % 3, 3.0 + i, {}) for i in range(30)]
    batches = [txns[:10], txns[10:20], txns[20:]]
    store = RedisFeatureStore(store_client, prefix)
    twin = InMemoryFeatureStore(prefix)
    for reply in store.stream(batches):
        assert reply == twin.raw(batches[0])
        break
    released = store_client.connection_pool._available_connections[-1]  # type: ignore[attr-defined]
    assert released._sock is None  # the stream's connection, back in the pool closed
    for batch in batches[1:]:
        store.raw(batch)
        twin.raw(batch)
    assert _dump(store_client, prefix) == _twin_dump(twin)


def test_a_batch_begun_is_read_when_ended_and_given_up_loses_nothing(store_client: redis.Redis,
                                                                     settings: Settings) -> None:  # fmt: skip
    """begin/end: the reply raw gives, read after other work (another batch ended in between on its own
    connection); a batch given up (cancel) may be applied with its reply unread: its connection goes back closed,
    and delivered again it is read, not applied twice."""
    prefix = settings.redis.key_prefix
    txns = [_txn(i, 7 * i, i % 3, i % 2, 2.0 + i, {}) for i in range(30)]
    batches = [txns[:10], txns[10:20], txns[20:]]
    store = RedisFeatureStore(store_client, prefix, fold_after=2, place_fold_after=2, fold_group=1)
    twin = InMemoryFeatureStore(prefix)
    first = store.begin(batches[0])
    assert store.end(first) == twin.raw(batches[0])
    second = store.begin(batches[1])
    assert store.end(store.begin([])).applied == []  # an empty batch holds no connection
    assert store.end(second) == twin.raw(batches[1])
    given_up = store.begin(batches[2])
    store.cancel(given_up)
    store.cancel(given_up)  # once is enough: nothing left to give up
    released = store_client.connection_pool._available_connections[-1]  # type: ignore[attr-defined]
    assert released._sock is None
    again, expected = store.raw(batches[2]), twin.raw(batches[2])
    assert again == expected or not any(again.applied)  # applied then or now, never twice
    assert _dump(store_client, prefix) == _twin_dump(twin)


def test_features_from_both_stores_are_identical(store_client: redis.Redis, settings: Settings) -> None:
    txns = [
        _txn(i, 13 * i, i % 2, i % 3, 10.0 + i, {"channel": "card_present", "lat": 48.0 + i / 10, "lon": 8.0})
        for i in range(200)
    ]
    online = RedisFeatureStore(store_client, settings.redis.key_prefix).apply(txns)
    offline = InMemoryFeatureStore(settings.redis.key_prefix).apply(txns)
    for a, b in zip(online, offline, strict=True):
        assert a.features() == b.features()
    assert online[-1].features()[5] == 0 or online[-1].applied  # velocity of the last payment is populated
    assert online[-1].card.windows["30d"][0] > 0


def test_two_clients_delivering_the_same_batches_apply_each_transaction_once(
    store_client: redis.Redis, settings: Settings
) -> None:
    txns = [_txn(i, 5 * i, i % 5, i % 4, 1.0 + i % 7, {}) for i in range(400)]
    batches = [txns[i : i + 25] for i in range(0, len(txns), 25)]
    applied = [0, 0]

    def deliver(slot: int) -> None:
        with redis_client(settings.redis) as client:
            store = RedisFeatureStore(client, settings.redis.key_prefix)
            for batch in batches:
                applied[slot] += sum(s.applied for s in store.apply(batch))

    threads = [threading.Thread(target=deliver, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(applied) == len(txns)
    twin = InMemoryFeatureStore(settings.redis.key_prefix)
    twin.apply(txns)
    probe = [_txn(10_000, 5 * 400, card, None, 1.0, {}) for card in range(5)]
    online = RedisFeatureStore(store_client, settings.redis.key_prefix)
    for card_probe in probe:  # each card's counters equal a single, sequential application
        assert online.apply([card_probe])[0].card == twin.apply([card_probe])[0].card


def test_memory_per_card_is_bounded(store_client: redis.Redis, settings: Settings) -> None:
    """A busy card (16 payments a day for 60 days, 100 a batch): fixed bucket counts and folds keep it small (its log
    holds at most a batch's records and the few before them)."""
    store = RedisFeatureStore(store_client, settings.redis.key_prefix)
    txns = [
        _txn(i, 90 * i, 0, i % 40, 12.5 + i % 30, {"channel": "ecommerce", "device_id": f"d{i % 3}", "country": "DE"})
        for i in range(60 * 16)
    ]
    for i in range(0, len(txns), 100):
        store.apply(txns[i : i + 100])
    prefix = settings.redis.key_prefix
    card_bytes = sum(store_client.memory_usage(f"{prefix}{kind}:card-0") or 0 for kind in ("card", "cardlog"))
    terminal_bytes = store_client.memory_usage(f"{prefix}terminal:T0") or 0
    print(f"\nbytes per card: {card_bytes}, per terminal: {terminal_bytes}")
    assert card_bytes < 8_192 and terminal_bytes < 512
    assert store_client.ttl(f"{prefix}card:card-0") > 0


def test_every_key_expires_and_the_layout_is_the_documented_one(store_client: redis.Redis, settings: Settings) -> None:
    """Keys are those features.plan documents (a card's base, log and marker hashes per MARKER_DAYS of event days;
    places; labels), each with its TTL: entities' from their creation, markers' a block longer than marker_ttl_s."""
    prefix = settings.redis.key_prefix
    store = RedisFeatureStore(store_client, prefix, entity_ttl_s=3_000, marker_ttl_s=2_000, label_ttl_s=1_000)
    txns = [_txn(i, 60 * 24 * i, 0, 1, 5.0, {}) for i in range(MARKER_DAYS + 1)]  # two blocks of event days
    store.apply(txns)
    store.apply_labels([Label(txn_id="t0", card_token="card-0", event_time=txns[0].event_time,
                              known_at=txns[1].event_time, is_fraud=True, source="chargeback", label_version=1,
                              terminal_id="T1", merchant_id="M1")])  # fmt: skip
    day = txns[0].event_time.timestamp() // 86_400
    expected = {"card:card-0": 3_000, "cardlog:card-0": 3_000, "terminal:T1": 3_000, "merchant:M1": 3_000,
                "label:t0": 1_000, "blocked:card-0": 1_000,
                **{f"applied:card-0:{int(day // MARKER_DAYS) + k}": 2_000 + MARKER_DAYS * 86_400
                   for k in (0, 1)}}  # fmt: skip
    keys = {key.decode()[len(prefix) :]: store_client.ttl(key) for key in store_client.scan_iter(match=f"{prefix}*")}
    assert set(keys) == set(expected)
    assert all(expected[name] - 5 <= ttl <= expected[name] for name, ttl in keys.items()), keys
    assert {marker_key(prefix, txn) for txn in txns} == {prefix + name for name in keys if name.startswith("applied")}
    assert store_client.get(f"{prefix}card:card-0") == EMPTY_CARD  # records in the log, not folded yet


def test_expiry_is_renewed_once_per_period_of_the_clients_clock(store_client: redis.Redis, settings: Settings) -> None:
    """The store renews the expiry of the keys a batch touches at most once per ``renew_s`` of its clock: not again
    within the period, again after it."""
    prefix = settings.redis.key_prefix
    clock = FixedClock(START)
    store = RedisFeatureStore(store_client, prefix, entity_ttl_s=3_000, renew_s=60, clock=clock)
    store.apply([_txn(0, 0, 0, 1, 5.0, {})])
    for key in ("card:card-0", "cardlog:card-0", "terminal:T1", "merchant:M1"):
        store_client.expire(prefix + key, 100)
    store.apply([_txn(1, 1, 0, 1, 5.0, {})])
    assert store_client.ttl(f"{prefix}card:card-0") <= 100  # renewed in this period already
    clock.advance(60)
    store.apply([_txn(2, 2, 0, 1, 5.0, {})])
    assert all(store_client.ttl(prefix + key) > 2_900 for key in ("card:card-0", "cardlog:card-0", "terminal:T1",
                                                                   "merchant:M1"))  # fmt: skip


def test_an_unreachable_redis_is_a_quick_clear_error() -> None:
    dead = redis_client(RedisSettings(url="redis://127.0.0.1:1/0", socket_timeout_ms=100, connect_timeout_ms=100))
    started = datetime.now(UTC)
    with pytest.raises(StoreUnavailableError, match="Redis unavailable"):
        RedisFeatureStore(dead).apply([_txn(0, 0, 0, 0, 1.0, {})])
    assert datetime.now(UTC) - started < timedelta(seconds=5)
