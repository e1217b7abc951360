"""Folding entities' records into their bases in the client, for many entities at once, with numpy.

The reader tells the store which entities of a batch hold ``fold_after`` records or more; the store folds their
values as last read (base and records) here, a group at a time, and writes the new bases back with the next
transaction it sends (pipelined: the one after the next) by the script's ``rebase``: a compare-and-set that replaces
the bytes folded, only if the value still starts with exactly them, and keeps the records appended since. Another
worker's fold or a label's (both rewrite the base) wins; the entity is folded again when it is next read with many
records.

The result is the state of applying the records one at a time (:func:`features.memory.apply_card` /
:func:`~features.memory.apply_place`; the script's own fold, used by labels, is the same), computed per entity and
part at once:

* a ring keeps the buckets above its newest - kept, summed over the base's entries and every record (a record that
  came too late for its ring is below that bound anyway: the newest bucket only rises);
* the latest time is the largest; the card-present position is the record with the latest time (the later record
  on ties), unless the base's is later;
* recent items of a kind are the ``recent_items`` most recent by (last use, id) among the base's and the records'
  uses (what forgetting the least recent after each use keeps), stored by id: the script and the readers find items
  in any order.

When the C reader is built (:data:`features.reader.COMPILED`), :func:`fold` replays each value's records in C
instead (``features/_replay.c``: the twin's steps, then the base written in this module's format and order); a test
holds the two byte for byte equal.

Folding here keeps Redis' single thread for the appends and reads every transaction needs: the script's Lua fold of
a card with a month of state takes about 250 µs of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from features.blobs import CARD_ENTRY, PAIR
from features.plan import KINDS, RECORD
from features.reader import (
    CARD_HEADS,
    COMPILED,
    NO_BUCKET,
    PLACE_HEADS,
    RECORDS,
    Values,
    card_parts,
    layout_vector,
    place_parts,
)

__all__ = ["fold"]

_ITEM = np.dtype("<i8")


def fold(values: Mapping[str, bytes], layout: dict[str, Any], *, compiled: bool = True) -> dict[str, bytes]:
    """Each entity's value (name ``card:<token>``, ``terminal:<id>`` or ``merchant:<id>``) folded into a base
    with no records; entities that have no records are left out. By the C reader when it is built and ``compiled``
    is true, else with numpy: the same bytes."""
    cards = {name: blob for name, blob in values.items() if name.startswith("card:")}
    places = {name: blob for name, blob in values.items() if not name.startswith("card:")}
    if compiled and COMPILED:
        from features import _replay  # built: COMPILED says so

        bases = _replay.fold(list(cards.values()), list(places.values()), layout_vector(layout))
    else:
        bases = (_fold_cards(list(cards.values()), layout) if cards else [],
                 _fold_places(list(places.values()), layout) if places else [])  # fmt: skip
    return {
        name: base
        for group, folded in zip((cards, places), bases, strict=True)
        for name, base in zip(group, folded, strict=True)
        if base is not None
    }


_Ints = NDArray[np.int64]


def _merge(who: _Ints, idx: _Ints, columns: list[_Ints], kept: int, n: int) -> tuple[_Ints, _Ints, list[_Ints], _Ints]:
    """Ring entries (owner ``who``, bucket ``idx``, ``columns``) summed per owner and bucket, keeping the buckets
    above each owner's newest - ``kept``: (owner, bucket, sums) sorted by owner then bucket, and each owner's newest
    (NO_BUCKET: none)."""
    key = who << 32 | idx  # buckets are non-negative and below 2**32
    order = np.argsort(key, kind="stable")
    key = key[order]
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.empty(0, dtype=np.int64)
    owner, bucket = who[order][first], idx[order][first]
    sums = [np.add.reduceat(column[order], first) if len(first) else column[:0] for column in columns]
    top = np.full(n, NO_BUCKET)
    last = np.r_[owner[1:] != owner[:-1], True] if len(owner) else np.empty(0, dtype=bool)
    top[owner[last]] = bucket[last]
    keep = bucket > top[owner] - kept
    return owner[keep], bucket[keep], [s[keep] for s in sums], top


def _packed(dtype: np.dtype[Any], columns: Sequence[NDArray[Any]]) -> bytes:
    """``columns`` as one array of the structured ``dtype``, in bytes."""
    out = np.empty(len(columns[0]), dtype)
    for name, column in zip(dtype.names or (), columns, strict=True):
        out[name] = column
    return out.tobytes()


def _slices(blob: bytes, counts: NDArray[np.int64], width: int) -> list[bytes]:
    """``blob`` cut into consecutive pieces of ``counts`` entries of ``width`` bytes."""
    ends = (np.cumsum(counts) * width).tolist()
    starts = [0, *ends[:-1]]
    return [blob[a:b] for a, b in zip(starts, ends, strict=True)]


def _items(values: Values, offsets: NDArray[np.int64], counts: NDArray[np.int64], owner: NDArray[np.int64],
           ids: NDArray[np.int64], when: NDArray[np.int64], cap: int, n: int) -> tuple[
               NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:  # fmt: skip
    """One kind of recent item: the base's (ids then times at ``offsets``) with the records' uses (``owner``,
    ``ids``, ``when``); each card's ``cap`` most recent by (last use, id), as (owner, id, last use) by owner then
    id."""
    base_ids, base_owner, _ = values.gather(offsets, counts, _ITEM)
    base_times = values.gather(offsets + 8 * counts, counts, _ITEM)[0]
    who = np.concatenate([base_owner, owner])
    ident = np.concatenate([base_ids.astype(np.int64), ids])
    used = np.concatenate([base_times.astype(np.int64), when])
    key = who << 48 | ident  # ids are 48-bit
    order = np.lexsort((used, key))
    key = key[order]
    latest = order[np.r_[key[1:] != key[:-1], True]] if len(key) else order
    who, ident, used = who[latest], ident[latest], used[latest]
    ranked = np.lexsort((-ident, -used, who))  # each card's most recent first
    per_card = np.bincount(who, minlength=n)
    rank = np.arange(len(ranked)) - (np.cumsum(per_card) - per_card)[who[ranked]]
    keep = np.zeros(len(who), dtype=bool)
    keep[ranked[rank < cap]] = True
    return who[keep], ident[keep], used[keep]


def _fold_cards(blobs: list[bytes], layout: dict[str, Any]) -> list[bytes | None]:
    """Each card value folded into a base (None: it has no records)."""
    n = len(blobs)
    values = Values(blobs, CARD_HEADS)
    head = values.head
    counts, offsets, at = card_parts(head)
    n_records = (values.lengths - at) // RECORD.size
    records, owner, _ = values.gather(at, n_records, RECORDS)
    t = records["t"]
    ones = np.ones(len(t), dtype=np.int64)
    new = np.zeros(n, CARD_HEADS)
    parts: list[list[bytes]] = []
    top_day = np.full(n, NO_BUCKET)
    for res in layout["card_rings"]:
        base, base_owner, _ = values.gather(offsets[res], counts[res], CARD_ENTRY)
        who, bucket, sums, top = _merge(
            np.concatenate([base_owner, owner]),
            np.concatenate([base["idx"].astype(np.int64), t // layout["size"][res]]),
            [np.concatenate([base[name].astype(np.int64), column]) for name, column in
             (("count", ones), ("cents", records["amount"]), ("squares", records["square"]))],
            layout["kept"][res], n,
        )  # fmt: skip
        new[res] = entries = np.bincount(who, minlength=n)
        parts.append(_slices(_packed(CARD_ENTRY, [bucket, *sums]), entries, CARD_ENTRY.itemsize))
        if res == "d":
            top_day = top
    frauds, fraud_owner, _ = values.gather(offsets["f"], counts["f"], PAIR)
    kept = frauds["idx"] > top_day[fraud_owner] - layout["kept"]["d"]
    new["f"] = entries = np.bincount(fraud_owner[kept], minlength=n)
    parts.append(_slices(frauds[kept].tobytes(), entries, PAIR.itemsize))
    for bit, kind in enumerate(KINDS):
        used = (records["mask"] >> bit & 1).astype(bool)
        who, ident, when = _items(values, offsets[kind], counts[kind], owner[used], records[kind][used], t[used],
                                  layout["recent_items"], n)  # fmt: skip
        new[kind] = entries = np.bincount(who, minlength=n)
        parts.append(_slices(ident.astype("<i8").tobytes(), entries, 8))
        parts.append(_slices(when.astype("<i8").tobytes(), entries, 8))
    has_pt = (head["flags"] & 1).astype(bool)
    pt = np.where(has_pt, head["pt"], NO_BUCKET)
    np.maximum.at(pt, owner, t)
    has_pt |= n_records > 0
    has_pcp = (head["flags"] & 2).astype(bool)
    for name in ("pcp_t", "lat", "lon"):
        new[name] = np.where(has_pcp, head[name], 0)
    geo = np.flatnonzero(records["geo"] == 1)
    if len(geo):
        geo = geo[np.lexsort((geo, t[geo], owner[geo]))]  # by card, then time, then append order
        geo = geo[np.r_[owner[geo][1:] != owner[geo][:-1], True]]  # each card's latest, the later on ties
        card = owner[geo]
        later = ~has_pcp[card] | (t[geo] >= new["pcp_t"][card])
        geo, card = geo[later], card[later]
        new["pcp_t"][card], new["lat"][card], new["lon"][card] = t[geo], records["lat"][geo], records["lon"][geo]
        has_pcp[card] = True
    new["flags"] = has_pt.astype(np.uint16) | has_pcp.astype(np.uint16) << 1
    new["pt"] = np.where(has_pt, pt, 0)
    heads = new.tobytes()
    size = CARD_HEADS.itemsize
    return [
        b"".join([heads[k * size : (k + 1) * size], *(part[k] for part in parts)]) if n_records[k] else None
        for k in range(n)
    ]


def _fold_places(blobs: list[bytes], layout: dict[str, Any]) -> list[bytes | None]:
    """Each terminal or merchant value folded into a base (None: it has no records)."""
    n = len(blobs)
    places = place_parts(Values(blobs, PLACE_HEADS))
    (days_base, days_owner, _), (frauds, fraud_owner, _) = places.days, places.frauds
    days, owner, _ = places.records
    n_records = places.n_records
    kept = layout["place_kept"]
    who, day, (paid,), top = _merge(
        np.concatenate([days_owner, owner]),
        np.concatenate([days_base["idx"].astype(np.int64), days]),
        [np.concatenate([days_base["count"].astype(np.int64), np.ones(len(days), dtype=np.int64)])],
        kept, n,
    )  # fmt: skip
    new_d = np.bincount(who, minlength=n)
    fresh = frauds["idx"] > top[fraud_owner] - kept
    new_f = np.bincount(fraud_owner[fresh], minlength=n)
    heads = _packed(PLACE_HEADS, [new_d, new_f])
    d_parts = _slices(_packed(PAIR, [day, paid]), new_d, PAIR.itemsize)
    f_parts = _slices(frauds[fresh].tobytes(), new_f, PAIR.itemsize)
    size = PLACE_HEADS.itemsize
    return [heads[k * size : (k + 1) * size] + d_parts[k] + f_parts[k] if n_records[k] else None for k in range(n)]
