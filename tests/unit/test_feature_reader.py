"""The C extension against the Python definitions, without Redis: the planner writes the same bytes as
:func:`features.plan.plan`, the reader answers what :func:`features.reader.replay` and the twin answer on values built
the way the script builds them (bases folded part-way, records appended after, redeliveries, out-of-order times,
items forgotten), the fold writes the same canonical bytes, and bad input is a clear error. (The integration parity
tests run the same code against real Redis.)"""

from __future__ import annotations

import itertools
import struct
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.batch import columns
from features.blobs import EMPTY_PLACE, LOG_HEAD
from features.fold import fold
from features.memory import InMemoryFeatureStore
from features.plan import COMPILED, MARKER_DAYS, PLACE_DAY, Planned, layout, plan, plan_batch
from features.reader import read, replay
from features.snapshot import StoreReply
from fraudpipe.contracts import Transaction

START = datetime(2024, 1, 1, tzinfo=UTC)
compiled_only = pytest.mark.skipif(not COMPILED, reason="unreachable in CI: test_the_c_extension_is_built fails first")


def _layout(recent_items: int) -> dict[str, Any]:
    return layout(recent_items=recent_items, marker_ttl_s=1, entity_ttl_s=1, label_ttl_s=1)


def _txn(i: int, minutes: int, card: int, terminal: int | None, merchant: int | None, kind: int) -> Transaction:
    extra: dict[str, Any] = [
        {},
        {"channel": "card_present", "lat": 48.0 + i % 5, "lon": 2.0 + i % 3, "country": ["DE", "FR", "IT"][i % 3]},
        {"channel": "ecommerce", "device_id": f"d{i % 4}", "country": "DE"},
    ][kind]
    return Transaction(
        txn_id=f"t{i}", event_time=START + timedelta(minutes=minutes), card_token=f"card-{card}",
        amount=round(1.0 + (i * 7.31) % 500, 2), currency="EUR",
        terminal_id=None if terminal is None else f"T{terminal}",
        merchant_id=None if merchant is None and terminal is not None else f"M{merchant or 0}", **extra,
    )  # fmt: skip


class _Script:
    """The script's 'txns' and the client's folds, on a dict of values: what Redis would hold."""

    def __init__(self, lay: dict[str, Any]) -> None:
        self.lay = lay
        self.values: dict[str, bytes] = {}
        self.markers: dict[str, set[str]] = {}

    def txns(self, txns: list[Transaction], planned: Planned) -> bytes:
        applied = []
        appended: dict[str, bytes] = {}
        for txn, (card, terminal, merchant, record) in zip(txns, planned.rows(), strict=True):
            one = plan(txn)
            marks = self.markers.setdefault(f"{one.card}:{one.day // MARKER_DAYS}", set())
            applied.append(one.txn_id not in marks)
            marks.add(one.txn_id)
            if applied[-1]:
                log = "cardlog:" + planned.cards[card]
                appended[log] = appended.get(log, b"") + record
                for place in (terminal, merchant):
                    if place >= 0:
                        name = planned.places[place]
                        appended[name] = appended.get(name, b"") + PLACE_DAY.pack(one.day)
        before = []
        for name in ["cardlog:" + card for card in planned.cards] + planned.places:
            value = self.values.get(name, b"")
            if not value and name in appended:  # created: a log's head, or a place's empty base
                value = LOG_HEAD.pack(0) if name.startswith("cardlog:") else EMPTY_PLACE
            before.append(len(value))
            if name in appended:
                self.values[name] = value + appended[name]
        return bytes(applied) + struct.pack(f"<{len(before)}I", *before)

    def entities(self, planned: Planned) -> tuple[list[bytes | None], list[bytes | None], list[bytes | None]]:
        get = self.values.get
        return ([get("card:" + c) for c in planned.cards], [get("cardlog:" + c) for c in planned.cards],
                [get(p) for p in planned.places])  # fmt: skip

    def fold_all(self) -> None:
        cards = _cards(self.values)
        places = {name: value for name, value in self.values.items() if name.split(":")[0] in ("terminal", "merchant")}
        folded_cards, folded_places = fold(cards, places, self.lay)
        for name, base in folded_cards.items():
            self.values[f"card:{name}"] = base
            generation = LOG_HEAD.unpack_from(self.values[f"cardlog:{name}"])[0]
            self.values[f"cardlog:{name}"] = LOG_HEAD.pack(generation + 1)
        self.values.update(folded_places)


def _cards(values: dict[str, bytes]) -> dict[str, tuple[bytes | None, bytes | None]]:
    """Each card with records: its base and log."""
    return {
        name[8:]: (values.get("card:" + name[8:]), log) for name, log in values.items() if name.startswith("cardlog:")
    }


def _equal(a: StoreReply, b: StoreReply) -> None:
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.previous, b.previous)


events = st.lists(
    st.tuples(
        st.one_of(st.sampled_from([0, 5, 60, 1_440, 1_445, 10_080, 43_200, 44_640, 54_720]), st.integers(0, 60_000)),
        st.integers(0, 2),  # card
        st.one_of(st.none(), st.integers(0, 3)),  # terminal
        st.one_of(st.none(), st.integers(0, 1)),  # merchant
        st.integers(0, 2),  # none / card-present / e-commerce
        st.booleans(),  # sent again later in the batch
    ),
    min_size=1,
    max_size=40,
)


@compiled_only
@settings(max_examples=300, deadline=None)
@given(events=events, cuts=st.lists(st.integers(1, 40), max_size=3), recent_items=st.sampled_from([1, 2, 64]),
       folds=st.lists(st.booleans(), min_size=4, max_size=4))  # fmt: skip
def test_the_c_reader_the_replay_and_the_twin_read_the_same(
    events: list[tuple[int, int, int | None, int | None, int, bool]], cuts: list[int], recent_items: int,
    folds: list[bool],
) -> None:  # fmt: skip
    lay = _layout(recent_items)
    everything = [_txn(i, *event[:5]) for i, event in enumerate(events)]
    again = [txn for txn, event in zip(everything, events, strict=True) if event[5]]
    bounds = sorted({0, *(c for c in cuts if c < len(everything)), len(everything)})
    batches = [everything[a:b] for a, b in itertools.pairwise(bounds)]
    batches[-1] = batches[-1] + again  # delivered again: read, not applied
    script, twin = _Script(lay), InMemoryFeatureStore(recent_items=recent_items)
    for batch, folded in zip(batches, folds, strict=False):
        planned = plan_batch(batch)
        answer = script.txns(batch, planned)
        bases, logs, places = script.entities(planned)
        expected = replay(answer, planned, bases, logs, places, lay)
        got = read(answer, planned, bases, logs, places, lay)
        _equal(got[0], expected[0])
        assert got[1:] == expected[1:]
        _equal(got[0], twin.raw(batch))
        if folded:
            script.fold_all()


@compiled_only
@settings(max_examples=300, deadline=None)
@given(events=events, cut=st.integers(0, 40), recent_items=st.sampled_from([1, 2, 64]))
def test_the_c_fold_writes_the_bytes_of_the_python_fold(
    events: list[tuple[int, int, int | None, int | None, int, bool]], cut: int, recent_items: int
) -> None:
    lay = _layout(recent_items)
    everything = [_txn(i, *event[:5]) for i, event in enumerate(events)]
    script = _Script(lay)
    for batch in (everything[:cut], everything[cut:]):
        script.txns(batch, plan_batch(batch))
        cards = _cards(script.values)
        places = {n: v for n, v in script.values.items() if n.split(":")[0] in ("terminal", "merchant")}
        assert fold(cards, places, lay) == fold(cards, places, lay, compiled=False)
        script.fold_all()


texts = st.one_of(st.none(), st.text(alphabet="abcXYZ019.-", min_size=0, max_size=12))


@compiled_only
@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10**6), st.floats(0.01, 99_999.99), texts, texts,
                               texts, texts, st.sampled_from([None, "card_present", "ecommerce", "moto", "atm"]),
                               st.one_of(st.none(), st.tuples(st.floats(-90, 90), st.floats(-180, 180))),
                               st.sampled_from([UTC, ZoneInfo("UTC"), ZoneInfo("Europe/Paris")])),
                     min_size=0, max_size=30))  # fmt: skip
def test_the_c_planner_writes_the_bytes_of_the_definition(rows: list[tuple[Any, ...]]) -> None:
    """Any transactions (model_construct: what backfill and the offline builder pass, unvalidated)."""
    txns = [
        Transaction.model_construct(
            txn_id=f"t{i}", card_token=f"card-{card}", event_time=(START + timedelta(seconds=second)).astimezone(tz),
            amount=amount, terminal_id=terminal, merchant_id=merchant, country=country, device_id=device,
            channel=channel, lat=None if geo is None else geo[0], lon=None if geo is None else geo[1],
        )
        for i, (card, second, amount, terminal, merchant, country, device, channel, geo, tz) in enumerate(rows)
    ]  # fmt: skip
    assert plan_batch(txns) == plan_batch(txns, compiled=False)
    for c, python in zip(columns(txns), columns(txns, compiled=False), strict=True):
        np.testing.assert_array_equal(c, python)


def test_the_c_extension_is_built() -> None:
    """fraudpipe ships with its C extension: an install without a C compiler runs the Python definitions, ~20 times
    slower per batch."""
    assert COMPILED, "features._replay is not built: install a C compiler (gcc) and reinstall fraudpipe"


@compiled_only
def test_a_malformed_value_is_a_clear_error_not_a_crash() -> None:
    lay = _layout(64)
    txns = [_txn(0, 0, 0, 1, 0, 1), _txn(1, 9, 0, 1, 0, 2)]
    script = _Script(lay)
    script.txns(txns[:1], plan_batch(txns[:1]))
    script.fold_all()
    planned = plan_batch(txns[1:])
    answer = script.txns(txns[1:], planned)
    bases, logs, places = script.entities(planned)
    assert bases[0] is not None and logs[0] is not None
    with pytest.raises(ValueError, match="card base is malformed"):
        read(answer, planned, [bases[0][:20]], logs, places, lay)
    with pytest.raises(ValueError, match="past its value"):
        read(answer, planned, bases, [logs[0][:-10]], places, lay)
    with pytest.raises(ValueError, match="store reply of"):
        read(answer[:-1], planned, bases, logs, places, lay)
    with pytest.raises(ValueError, match="past its value"):
        read(answer, planned, bases, logs, [None, places[1]], lay)
    with pytest.raises(ValueError, match="ends inside a record"):
        fold({"card-0": (bases[0], logs[0][:-10])}, {}, lay)
    with pytest.raises(TypeError, match="must be a str"):
        plan_batch([Transaction.model_construct(**{**txns[0].__dict__, "terminal_id": 7})])
