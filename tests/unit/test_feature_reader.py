"""The three readers of a store reply (the C reader, numpy, record-by-record replay) agree on values built the way the
script builds them: bases folded part-way, records appended after, redeliveries, out-of-order times, items forgotten.
No Redis: the values are made here (the integration parity test runs the same readers against real Redis)."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.blobs import CARD_HEAD, DAY, HEAD, PLACE_HEAD, replay
from features.fold import fold
from features.plan import layout, plan
from features.reader import COMPILED, read_batch, read_compiled
from features.snapshot import StoreReply
from fraudpipe.contracts import Transaction

START = datetime(2024, 1, 1, tzinfo=UTC)
PREFIX = "fp:test:"


def _layout(recent_items: int) -> dict[str, Any]:
    return layout(recent_items=recent_items, marker_ttl_s=1, entity_ttl_s=1, label_ttl_s=1)


def _txn(i: int, minutes: int, card: int, terminal: int | None, merchant: int | None, kind: int) -> Transaction:
    extra: dict[str, Any] = [
        {},
        {"channel": "card_present", "lat": 48.0 + i % 5, "lon": 2.0 + i % 3, "country": ["DE", "FR", "IT"][i % 3]},
        {"channel": "ecommerce", "device_id": f"d{i % 4}"},
    ][kind]
    return Transaction(
        txn_id=f"t{i}", event_time=START + timedelta(minutes=minutes), card_token=f"card-{card}",
        amount=round(1.0 + (i * 7.31) % 500, 2), currency="EUR",
        terminal_id=None if terminal is None else f"T{terminal}",
        merchant_id=None if merchant is None and terminal is not None else f"M{merchant or 0}", **extra,
    )  # fmt: skip


def _append(values: dict[str, bytes], one: tuple[str, str, str, str, bytes], day_us: int) -> None:
    """Append a transaction's records to its entities' values, as the script does when it applies it."""
    day = DAY.pack(struct.unpack_from("<q", one[4])[0] // day_us)
    for name, head_size, record in ((f"card:{one[1]}", CARD_HEAD.size, one[4]),
                                    (f"terminal:{one[2]}", PLACE_HEAD.size, day),
                                    (f"merchant:{one[3]}", PLACE_HEAD.size, day)):  # fmt: skip
        if not name.endswith(":"):
            values[name] = values.get(name, bytes(head_size)) + record


def _batch(history: list[Transaction], folded: int, txns: list[Transaction], applied: list[bool],
           lay: dict[str, Any]) -> tuple[bytes, list[tuple[str, str, str, str, bytes]], dict[str, bytes]]:  # fmt: skip
    """What the script answers for ``txns`` (heads) and the values at the end of the batch, after ``history`` was
    applied in earlier batches and its first ``folded`` transactions folded into the entities' bases."""
    day_us = lay["size"]["d"]
    values: dict[str, bytes] = {}
    for i, txn in enumerate(history):
        if i == folded:
            values.update(fold(values, lay))
        _append(values, plan(txn), day_us)
    if folded >= len(history):
        values.update(fold(values, lay))
    plans = [plan(txn) for txn in txns]
    heads = np.zeros(len(plans), HEAD)
    for i, (one, fresh) in enumerate(zip(plans, applied, strict=True)):
        if fresh:
            _append(values, one, day_us)
        heads[i] = (fresh, *(len(values[name]) if not name.endswith(":") else 0
                             for name in (f"card:{one[1]}", f"terminal:{one[2]}", f"merchant:{one[3]}")))  # fmt: skip
    return heads.tobytes(), plans, {PREFIX + name: value for name, value in values.items()}


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


@pytest.mark.skipif(not COMPILED, reason="unreachable in CI: test_the_c_reader_is_built fails first")
@settings(max_examples=300, deadline=None)
@given(events=events, split=st.integers(0, 40), folded=st.integers(0, 40), recent_items=st.sampled_from([1, 2, 64]),
       fold_after=st.integers(1, 3))  # fmt: skip
def test_the_c_reader_numpy_and_replay_read_the_same(events: list[tuple[int, int, int | None, int | None, int, bool]],
                                                     split: int, folded: int, recent_items: int,
                                                     fold_after: int) -> None:  # fmt: skip
    lay = _layout(recent_items)
    everything = [_txn(i, *event[:5]) for i, event in enumerate(events)]
    history, txns = everything[:split], everything[split:]
    applied = [True] * len(txns)
    for txn, event in zip(everything, events, strict=True):
        if event[5]:  # delivered again in this batch: read, not applied
            txns.append(txn)
            applied.append(False)
    heads, plans, values = _batch(history, folded, txns, applied, lay)
    expected, due = replay(heads, plans, values, PREFIX, lay, fold_after)
    compiled, compiled_due = read_compiled(heads, plans, values, PREFIX, lay, fold_after)
    _equal(compiled, expected)
    assert compiled_due == due
    numpy_reply, numpy_due = read_batch(heads, plans, values, PREFIX, lay, fold_after)
    _equal(numpy_reply, expected)
    assert numpy_due == due


@pytest.mark.skipif(not COMPILED, reason="unreachable in CI: test_the_c_reader_is_built fails first")
@settings(max_examples=300, deadline=None)
@given(events=events, split=st.integers(0, 40), folded=st.integers(0, 40), recent_items=st.sampled_from([1, 2, 64]))
def test_the_c_fold_writes_the_same_bytes_as_numpy(events: list[tuple[int, int, int | None, int | None, int, bool]],
                                                   split: int, folded: int, recent_items: int) -> None:  # fmt: skip
    lay = _layout(recent_items)
    everything = [_txn(i, *event[:5]) for i, event in enumerate(events)]
    _, _, values = _batch(everything[:split], folded, everything[split:], [True] * (len(everything) - split), lay)
    named = {name[len(PREFIX) :]: value for name, value in values.items()}
    assert fold(named, lay, compiled=True) == fold(named, lay, compiled=False)


def test_the_c_reader_is_built() -> None:
    """fraudpipe ships with its C reader: an install without a C compiler reads with numpy, several times slower."""
    assert COMPILED, "features._replay is not built: install a C compiler (gcc) and reinstall fraudpipe"


def test_a_malformed_value_is_a_clear_error_not_a_crash() -> None:
    lay = _layout(64)
    heads, plans, values = _batch([], 0, [_txn(0, 0, 0, 1, 0, 1), _txn(1, 9, 0, 1, 0, 2)], [True, True], lay)
    card = f"{PREFIX}card:card-0"
    with pytest.raises(ValueError, match="shorter than its head"):
        read_compiled(heads, plans, {**values, card: values[card][:20]}, PREFIX, lay, 0)
    with pytest.raises(ValueError, match="past its value"):
        read_compiled(heads, plans, {**values, card: values[card][:-10]}, PREFIX, lay, 0)
    with pytest.raises(ValueError, match="heads for"):
        read_compiled(heads[:-1], plans, values, PREFIX, lay, 0)
    with pytest.raises(ValueError, match="past its value"):
        read_compiled(heads, plans, {**values, f"{PREFIX}terminal:T1": None}, PREFIX, lay, 0)
    with pytest.raises(ValueError, match="ends inside a record"):
        fold({"card:card-0": values[card][:-10]}, lay)
