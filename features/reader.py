"""Reading a batch back from the store, for the whole batch at once: every transaction's state after it, from its
entities' bases and records.

:func:`read_compiled` replays the records in C (``features/_replay.c``, built at install when a C compiler is there:
:data:`COMPILED`), the fastest at every batch size; :func:`read_batch` computes the same values with numpy, for an
install without the C reader.

:func:`features.blobs.replay` is the definition (the twin's steps, record by record); :func:`read_batch` computes the
same values column-wise, and a test holds the two equal. A transaction's card state is the card's base plus its
first ``p`` records (``p`` from the script's head); a record counts in a ring when its bucket was above the ring's
newest - kept when it came (a running maximum over the card's records), and a bucket counts in a window when it is
in the window and above the state's newest - kept. Recent items are the base's with the records' uses (latest time
per id); a card whose items of a kind overflow RECENT_ITEMS in the batch (something is forgotten) is read with
:func:`~features.blobs.replay` instead, which forgets exactly as the store does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from features.blobs import CARD_ENTRY, CARD_HEAD, DAY, HEAD, PAIR, PLACE_FOLD, PLACE_HEAD, replay
from features.plan import KINDS, RECORD
from features.snapshot import CARD_WIDTH, PLACE_WIDTH, REPLY_WIDTH, StoreReply

try:
    from features import _replay
except ImportError:  # installed without a C compiler: read_batch reads instead
    _replay = None  # type: ignore[assignment]

COMPILED = _replay is not None
"""Whether the C reader was built (``pip install`` builds it when a C compiler is there)."""

__all__ = [
    "CARD_HEADS",
    "COMPILED",
    "NO_BUCKET",
    "PLACE_HEADS",
    "RECORDS",
    "PlaceParts",
    "Values",
    "card_parts",
    "layout_vector",
    "place_parts",
    "read_batch",
    "read_compiled",
]

RECORDS = np.dtype(
    {
        "names": ["t", "amount", "square", "geo", "lat", "lon", "mask", *KINDS],
        "formats": ["<i8", "<i8", "<i8", "u1", "<f8", "<f8", "u1", "<i8", "<i8", "<i8", "<i8"],
        "offsets": [0, 8, 16, 24, 25, 33, 41, 42, 50, 58, 66],
        "itemsize": RECORD.size,
    }
)
""":data:`features.plan.RECORD` as a numpy dtype."""
CARD_HEADS = np.dtype(
    [("flags", "<u2"), ("m5", "<u2"), ("h", "<u2"), ("d", "<u2"), ("f", "<u2")]
    + [(kind, "<u2") for kind in KINDS]
    + [("pt", "<i8"), ("pcp_t", "<i8"), ("lat", "<f8"), ("lon", "<f8")]
)
PLACE_HEADS = np.dtype([("d", "<u2"), ("f", "<u2")])
_ITEM = np.dtype("<i8")
NO_BUCKET = np.iinfo(np.int64).min // 4  # "no bucket": below every real one, and safe to subtract from
_STRIDE = np.int64(1) << 32  # entity << 32 | bucket: sorts entity by entity, then by bucket
_ID_SHIFT = np.int64(1) << 48  # card << 48 | item id (ids are 48-bit): sorts card by card, then by id
_MISSING_CARD = bytes(CARD_HEAD.size)
_MISSING_PLACE = bytes(PLACE_HEAD.size)


def _expand(counts: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(owner, position within its owner) of ``sum(counts)`` items laid out owner by owner."""
    owner = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return owner, np.arange(len(owner)) - starts[owner]


class Values:
    """Values of entities of one kind concatenated, and what their heads say."""

    def __init__(self, blobs: list[bytes], head: np.dtype[Any]) -> None:
        lengths = np.array([len(b) for b in blobs], dtype=np.int64)
        self.buffer = np.frombuffer(b"".join(blobs), np.uint8)
        self.starts = np.cumsum(lengths) - lengths
        self.lengths = lengths
        self._rows: dict[int, NDArray[np.uint8]] = {}
        self.head = self._windows(head.itemsize)[self.starts].view(head).reshape(len(blobs))

    def gather(self, offsets: NDArray[np.int64], counts: NDArray[np.int64], dtype: np.dtype[Any]) -> tuple[
            NDArray[Any], NDArray[np.int64], NDArray[np.int64]]:  # fmt: skip
        """Entries of ``dtype`` at byte ``offsets`` of each value (``counts`` of them): the entries, their owner
        value, and their position within it."""
        owner, position = _expand(counts)
        first = self.starts[owner] + offsets[owner] + position * dtype.itemsize
        return self._windows(dtype.itemsize)[first].view(dtype).reshape(len(owner)), owner, position

    def _windows(self, width: int) -> NDArray[np.uint8]:
        """The buffer seen through a window of ``width`` bytes starting at every byte: a view, no copy."""
        rows = self._rows.get(width)
        if rows is None:
            shape = (max(len(self.buffer) - width + 1, 0), width)
            rows = self._rows[width] = np.lib.stride_tricks.as_strided(self.buffer, shape, (1, 1), writeable=False)
        return rows


class _Log:
    """Records of several entities, laid out entity by entity, in the order they were appended."""

    def __init__(self, owner: NDArray[np.int64], position: NDArray[np.int64], counts: NDArray[np.int64]) -> None:
        self.owner, self.position, self.counts = owner, position, counts
        self.first = np.cumsum(counts) - counts

    def running_max(self, values: NDArray[np.int64], base: NDArray[np.int64]) -> NDArray[np.int64]:
        """Per record: the maximum of its entity's ``base`` and of ``values`` of its records up to it."""
        if not len(values):
            return values.copy()
        current = np.maximum(values, base[self.owner])
        real = current != NO_BUCKET
        if not real.any():
            return current
        low = current[real].min() - 1  # stands for NO_BUCKET while accumulating
        current = np.where(real, current, low) - low
        step = current.max() + 1  # a later entity's values always compare higher: one accumulate for all
        if step * (len(self.counts) + 1) >= 1 << 62:  # too wide to stack: by rank instead
            levels, current = np.unique(current, return_inverse=True)
            step = len(levels)
            stacked = np.maximum.accumulate(current.ravel() + self.owner * step) - self.owner * step
            out = levels[stacked] + low
        else:
            out = np.maximum.accumulate(current + self.owner * step) - self.owner * step + low
        return np.where(out == low, NO_BUCKET, out)

    def before(self, through: NDArray[np.int64], base: NDArray[np.int64]) -> NDArray[np.int64]:
        """Per record: ``through`` of the record before it (its entity's ``base`` for the first)."""
        out = base[self.owner].copy()
        later = self.position > 0
        out[later] = through[np.flatnonzero(later) - 1]
        return out

    def at(self, count: NDArray[np.int64], entity: NDArray[np.int64], through: NDArray[np.int64],
           base: NDArray[np.int64]) -> NDArray[np.int64]:  # fmt: skip
        """Per transaction: ``through`` of its entity's record number ``count`` (1-based; ``base`` when 0)."""
        out = base[entity].copy()
        has = count > 0
        out[has] = through[self.first[entity[has]] + count[has] - 1]
        return out

    def pairs(self, count: NDArray[np.int64], entity: NDArray[np.int64]) -> tuple[NDArray[np.int64],
                                                                                  NDArray[np.int64]]:  # fmt: skip
        """(transaction, record) for each transaction's entity's first ``count`` records."""
        tx, position = _expand(count)
        return tx, self.first[entity[tx]] + position


def _window_sums(base: tuple[NDArray[Any], NDArray[np.int64]], entity: NDArray[np.int64],
                 records: tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]],
                 windows: list[tuple[NDArray[np.int64], NDArray[np.int64]]], fields: Sequence[str],
                 record_values: Sequence[NDArray[np.int64]]) -> NDArray[np.int64]:  # fmt: skip
    """(n, windows, fields): per transaction, ``fields`` of its entity's base entries plus ``record_values`` of the
    records in its state, summed over buckets in each window ``[low, high]``. ``base`` is (entries, entries per
    entity): sorted by bucket within an entity, so a window is a range of them (a difference of cumulative sums);
    ``records`` is (transaction, record, record bucket) for the counted records in each state."""
    n, w, f = len(entity), len(windows), len(fields)
    out = np.zeros((n, w, f), dtype=np.int64)
    entries, counts = base
    owner = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    key = owner * _STRIDE + entries["idx"]
    sums = [np.concatenate([[0], np.cumsum(entries[name], dtype=np.int64)]) for name in fields]
    rec_tx, rec_index, rec_bucket = records
    values = [v[rec_index] for v in record_values]
    for k, (low, high) in enumerate(windows):
        low, high = np.minimum(np.maximum(low, 0), _STRIDE - 1), np.minimum(np.maximum(high, -1), _STRIDE - 1)
        first = np.searchsorted(key, entity * _STRIDE + low, side="left")
        last = np.maximum(np.searchsorted(key, entity * _STRIDE + high, side="right"), first)
        inside = (rec_bucket >= low[rec_tx]) & (rec_bucket <= high[rec_tx])
        for j in range(f):
            out[:, k, j] = sums[j][last] - sums[j][first]
            if len(rec_tx):  # sums stay below 2^53: exact in a float bincount
                out[:, k, j] += np.bincount(rec_tx[inside], weights=values[j][inside], minlength=n).astype(np.int64)
    return out


def _among_latest(pairs: tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]], own: NDArray[np.int64],
                  cap: int, full: NDArray[np.bool_]) -> NDArray[np.bool_]:  # fmt: skip
    """Per transaction: whether ``own`` is among the ``cap`` latest (by last use, then id) of its (transaction, id,
    time) ``pairs``; only transactions marked ``full`` can have more than ``cap`` ids."""
    tx, ident, when = pairs
    n = len(own)
    hit = np.zeros(n, dtype=bool)
    mine = ident == own[tx]
    hit[tx[mine]] = True
    crowded = full & hit
    if crowded.any():
        keep = crowded[tx]
        tx, ident, when = tx[keep], ident[keep], when[keep]
        key = tx * _ID_SHIFT + ident
        order = np.lexsort((when, key))
        last = np.r_[key[order][1:] != key[order][:-1], True]  # each id once, at its latest use
        tx, ident, when = tx[order[last]], ident[order[last]], when[order[last]]
        own_time = np.full(n, NO_BUCKET)
        mine = ident == own[tx]
        own_time[tx[mine]] = when[mine]
        ahead = (when > own_time[tx]) | ((when == own_time[tx]) & (ident > own[tx]))
        hit &= ~crowded | (np.bincount(tx[ahead], minlength=n) < cap)
    return hit


def _per_transaction(entity: NDArray[np.int64], owner: NDArray[np.int64], entities: int,
                     rows: NDArray[np.bool_] | None = None) -> tuple[NDArray[np.int64], NDArray[np.int64]]:  # fmt: skip
    """(transaction, item) for each transaction's entity's items (``owner``: each item's entity, items laid out entity
    by entity); with ``rows``, only for the transactions it marks."""
    counts = np.bincount(owner, minlength=entities)
    per_tx = counts[entity] if rows is None else np.where(rows, counts[entity], 0)
    tx, position = _expand(per_tx)
    return tx, (np.cumsum(counts) - counts)[entity[tx]] + position


def _member(keys: NDArray[np.int64], wanted: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Whether each of ``wanted`` is in the sorted ``keys``."""
    if not len(keys):
        return np.zeros(len(wanted), dtype=bool)
    found: NDArray[np.bool_] = keys[np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)] == wanted
    return found


def _seen(items: tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]], keys: NDArray[np.int64], cards: _Cards,
          before: tuple[NDArray[np.int64], NDArray[np.int64]], kind: str, uses: NDArray[np.bool_],
          own: NDArray[np.int64], cap: int, full: NDArray[np.bool_]) -> NDArray[np.bool_]:  # fmt: skip
    """Per transaction: whether its ``own`` item of ``kind`` was among its card's recent items before it. ``items``:
    the bases' (ids, owner card, last-seen times), ``keys`` their (card << 48 | id), sorted; the records before each
    transaction (``before``: (transaction, record) pairs) that use the kind (``uses``, per record) add theirs. Only
    transactions marked ``full`` can have more than ``cap`` items: for those, by rank (:func:`_among_latest`)."""
    ids, owner, times = items
    hit = _member(keys, cards.entity * _ID_SHIFT + own)
    records = cards.records
    before_tx, before_record = before
    used = uses[before_record]
    by_tx, by_record = before_tx[used], before_record[used]
    hit[by_tx[records[kind][by_record] == own[by_tx]]] = True
    crowded = full & hit
    if crowded.any():
        item_tx, item = _per_transaction(cards.entity, owner, len(cards.names), crowded)
        mine = crowded[by_tx]
        pairs = (
            np.concatenate([item_tx, by_tx[mine]]),
            np.concatenate([ids[item], records[kind][by_record[mine]]]),
            np.concatenate([times[item], records["t"][by_record[mine]]]),
        )
        hit[crowded] = _among_latest(pairs, own, cap, full)[crowded]
    return hit


def _tops(entries: NDArray[Any], counts: NDArray[np.int64]) -> NDArray[np.int64]:
    """Each entity's newest bucket (its last entry: rings are sorted), NO_BUCKET if it has none."""
    top = np.full(len(counts), NO_BUCKET)
    has = counts > 0
    top[has] = entries["idx"][np.cumsum(counts)[has] - 1]
    return top


def _index(names: Sequence[str]) -> tuple[list[str], NDArray[np.int64]]:
    """Distinct names in order, and each name's position among them."""
    distinct = {name: k for k, name in enumerate(dict.fromkeys(names))}
    return list(distinct), np.array([distinct[name] for name in names], dtype=np.int64)


def _place_blocks(plans: Sequence[tuple[str, str, str, str, bytes]], head: NDArray[Any], day: NDArray[np.int64],
                  values: Mapping[str, bytes | None], prefix: str, layout: dict[str, Any],
                  fold_after: int) -> tuple[NDArray[np.int64], dict[str, int]]:  # fmt: skip
    """Each transaction's terminal PLACE_WIDTH values then its merchant's (-1 where it has no such place), both kinds
    read at once; and the places with ``fold_after`` records or more, with how many times that many they hold."""
    n = len(plans)
    blocks = np.full((n, 2, PLACE_WIDTH), -1, dtype=np.int64)
    rows: list[int] = []
    sides: list[int] = []
    keys: list[str] = []
    for kind, ids in (("terminal", [one[2] for one in plans]), ("merchant", [one[3] for one in plans])):
        for i, ident in enumerate(ids):
            if ident:
                rows.append(i)
                sides.append(kind == "merchant")
                keys.append(f"{kind}:{ident}")
    if not rows:
        return blocks.reshape(n, 2 * PLACE_WIDTH), {}
    row, side = np.array(rows, dtype=np.int64), np.array(sides, dtype=np.int64)
    names, entity = _index(keys)
    places = place_parts(Values([values.get(prefix + name) or _MISSING_PLACE for name in names], PLACE_HEADS))
    nd, nf, base_len, n_records = places.nd, places.nf, places.base_len, places.n_records
    d_entries, f_entries, days = places.days[0], places.frauds[0], places.records[0]
    log = _Log(*places.records[1:], n_records)
    kept = layout["place_kept"]
    base_top = _tops(d_entries, nd)
    through = log.running_max(days, base_top)
    counted = days > log.before(through, base_top) - kept
    lengths = np.where(side == 0, head["terminal"][row], head["merchant"][row]).astype(np.int64)
    count = np.maximum((lengths - base_len[entity]) // DAY.size, 0)
    top = log.at(count, entity, through, base_top)
    floor = top - kept + 1
    today = day[row]
    last = today - layout["label_delay"]
    current = [(np.maximum(today - length + 1, floor), today) for length in layout["place_windows"]]
    rated = [(np.maximum(last - length + 1, floor), last) for length in layout["fraud_windows"]]
    tx, record = log.pairs(count, entity)
    keep = counted[record]
    ones = np.ones(len(days), dtype=np.int64)
    paid = _window_sums((d_entries, nd), entity, (tx[keep], record[keep], days[record[keep]]), current + rated,
                        ("count",), [ones])[:, :, 0]  # fmt: skip
    none = (np.empty(0, dtype=np.int64),) * 3
    known = _window_sums((f_entries, nf), entity, none, rated, ("count",), [ones])[:, :, 0]
    out = np.empty((len(row), PLACE_WIDTH), dtype=np.int64)
    out[:, : len(current)] = paid[:, : len(current)]
    out[:, len(current) :: 2] = known
    out[:, len(current) + 1 :: 2] = paid[:, len(current) :]
    out[top == NO_BUCKET] = 0  # no payment kept: nothing counts (frauds of a place without payments neither)
    blocks[row, side] = out
    return blocks.reshape(n, 2 * PLACE_WIDTH), _owed(names, n_records, fold_after)


class PlaceParts(NamedTuple):
    """Terminals' or merchants' values parsed: entries per ring, base length and records, each gathered part as
    (entries, owner, position) (:meth:`Values.gather`); the records are days, as int64."""

    nd: NDArray[np.int64]
    nf: NDArray[np.int64]
    base_len: NDArray[np.int64]
    n_records: NDArray[np.int64]
    days: tuple[NDArray[Any], NDArray[np.int64], NDArray[np.int64]]
    frauds: tuple[NDArray[Any], NDArray[np.int64], NDArray[np.int64]]
    records: tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]


def place_parts(values: Values) -> PlaceParts:
    """Places' values (heads :data:`PLACE_HEADS`) parsed into their rings d and f and their records."""
    nd, nf = values.head["d"].astype(np.int64), values.head["f"].astype(np.int64)
    base_len = PLACE_HEAD.size + (nd + nf) * PAIR.itemsize
    n_records = (values.lengths - base_len) // DAY.size
    days, owner, position = values.gather(base_len, n_records, np.dtype("<i4"))
    return PlaceParts(
        nd, nf, base_len, n_records,
        values.gather(np.full(len(nd), PLACE_HEAD.size), nd, PAIR),
        values.gather(PLACE_HEAD.size + nd * PAIR.itemsize, nf, PAIR),
        (days.astype(np.int64), owner, position),
    )  # fmt: skip


def _owed(names: Sequence[str], n_records: NDArray[np.int64], threshold: int) -> dict[str, int]:
    """The entities holding ``threshold`` records or more, with how many times that many they hold."""
    return {names[k]: int(n_records[k] // threshold) for k in np.flatnonzero(n_records >= threshold).tolist()}


def card_parts(head: NDArray[Any]) -> tuple[dict[str, NDArray[np.int64]], dict[str, NDArray[np.int64]],
                                           NDArray[np.int64]]:  # fmt: skip
    """From cards' heads (:data:`CARD_HEADS`): the entries of each ring and item part, their byte offsets in each
    value, and where each value's records start (the base's length)."""
    counts = {part: head[part].astype(np.int64) for part in ("m5", "h", "d", "f", *KINDS)}
    offsets, at = {}, np.full(len(head), CARD_HEAD.size, dtype=np.int64)
    for part, width in (("m5", CARD_ENTRY.itemsize), ("h", CARD_ENTRY.itemsize), ("d", CARD_ENTRY.itemsize),
                        ("f", PAIR.itemsize)):  # fmt: skip
        offsets[part], at = at, at + counts[part] * width
    for kind in KINDS:
        offsets[kind], at = at, at + counts[kind] * 16
    return counts, offsets, at


class _Cards:
    """The batch's cards: their values parsed (base and records), and where each transaction stands in its card's
    records: ``count`` records in its state after it, ``before`` of them applied before its own."""

    def __init__(self, plans: Sequence[tuple[str, str, str, str, bytes]], applied: NDArray[np.int64],
                 lengths: NDArray[np.int64], values: Mapping[str, bytes | None], prefix: str) -> None:  # fmt: skip
        self.names, self.entity = _index([one[1] for one in plans])
        self.values = Values([values.get(f"{prefix}card:{name}") or _MISSING_CARD for name in self.names],
                              CARD_HEADS)  # fmt: skip
        head = self.values.head
        self.counts, self.offsets, at = card_parts(head)
        self.n_records = (self.values.lengths - at) // RECORD.size
        self.records, self.owner, position = self.values.gather(at, self.n_records, RECORDS)
        self.log = _Log(self.owner, position, self.n_records)
        self.count = np.maximum((lengths - at[self.entity]) // RECORD.size, 0)
        self.before = self.count - applied
        self.tx, self.record = self.log.pairs(self.count, self.entity)  # (transaction, record) in its state
        flags = head["flags"]
        self.pt = np.where(flags & 1, head["pt"], NO_BUCKET)
        self.pcp = np.where(flags & 2, head["pcp_t"], NO_BUCKET)
        self.latest = self.log.running_max(self.records["t"], self.pt)  # the card's latest time, per record

    def part(self, name: str, dtype: np.dtype[Any]) -> NDArray[Any]:
        """Every card's entries of ring or item part ``name``, card by card."""
        return self.values.gather(self.offsets[name], self.counts[name], dtype)[0]


def _card_windows(cards: _Cards, out: NDArray[np.int64], t: NDArray[np.int64], layout: dict[str, Any]) -> None:
    """Columns 1-14: (count, cents, cents²) per card window, whether the payment's day is kept, frauds in 30 days.

    The three rings are read at once: each (card, ring) is an entity of its own, card by card and ring by ring within
    a card (the order the base stores them in), and each card's records are counted once per ring."""
    size, kept, names = layout["size"], layout["kept"], layout["card_rings"]  # rings in the base's order
    n, rings = len(t), len(names)
    stacked = np.stack([cards.counts[res] for res in names], axis=1)
    per_ring = stacked.ravel()  # entries per (card, ring)
    entries = cards.values.gather(cards.offsets[names[0]], stacked.sum(axis=1), CARD_ENTRY)[0]
    bucket_size = np.array([size[res] for res in names], dtype=np.int64)
    ring_kept = np.array([kept[res] for res in names], dtype=np.int64)
    records_per = np.repeat(cards.n_records, rings)  # each card's records, once per ring
    owner, position = _expand(records_per)
    record = cards.log.first[owner // rings] + position
    ring = owner % rings
    log = _Log(owner, position, records_per)
    buckets = cards.records["t"][record] // bucket_size[ring]
    base_top = _tops(entries, per_ring)
    through = log.running_max(buckets, base_top)
    counted = buckets > log.before(through, base_top) - ring_kept[ring]
    entity = (cards.entity * rings + np.arange(rings)[:, None]).ravel()  # queries: ring by ring, then transaction
    query_ring = np.repeat(np.arange(rings), n)
    count = np.tile(cards.count, rings)
    top = log.at(count, entity, through, base_top)
    last = np.tile(t, rings) // bucket_size[query_ring]
    floor = top - ring_kept[query_ring] + 1
    most = max(sum(1 for res, _ in layout["card_windows"] if res == name) for name in names)
    lengths = np.zeros((most, rings), dtype=np.int64)  # each ring's window lengths (0: none, an empty window)
    columns: list[tuple[int, int]] = []  # (ring, window) of each card window, in reply order
    for res, length in layout["card_windows"]:
        r = names.index(res)
        k = sum(1 for ring_of, _ in columns if ring_of == r)
        lengths[k, r] = length
        columns.append((r, k))
    windows = [(np.maximum(last - lengths[k][query_ring] + 1, floor), last) for k in range(most)]
    tx, state = log.pairs(count, entity)
    keep = counted[state]
    amounts = cards.records["amount"][record], cards.records["square"][record]
    sums = _window_sums((entries, per_ring), entity, (tx[keep], state[keep], buckets[state[keep]]), windows,
                        ("count", "cents", "squares"), [np.ones(len(record), dtype=np.int64), *amounts])  # fmt: skip
    for column, (r, k) in enumerate(columns):
        out[:, 1 + 3 * column : 4 + 3 * column] = sums[r * n : (r + 1) * n, k, :]
    column = 1 + 3 * len(columns)
    top = top[(rings - 1) * n :]  # the d ring's
    day = t // size["d"]
    out[:, column] = (top != NO_BUCKET) & (day > top - kept["d"])
    none = (np.empty(0, dtype=np.int64),) * 3
    frauds = _window_sums((cards.part("f", PAIR), cards.counts["f"]), cards.entity, none,
                          [(np.maximum(day - layout["card_frauds"] + 1, top - kept["d"] + 1), day)], ("count",),
                          [none[0]])  # fmt: skip
    out[:, column + 1] = np.where(top == NO_BUCKET, 0, frauds[:, 0, 0])


def _card_items(cards: _Cards, out: NDArray[np.int64], txn: NDArray[Any], layout: dict[str, Any]) -> NDArray[np.bool_]:
    """Columns 15-19: distinct terminals, merchants and countries in 24h, device and terminal seen before. Returns
    the cards to read by replay instead: items forgotten with records out of time order."""
    n, cap = len(txn), layout["recent_items"]
    since = txn["t"] - layout["size"]["d"]
    records, owner, rt = cards.records, cards.owner, cards.records["t"]
    tx, record = cards.tx, cards.record
    late = rt < cards.log.before(cards.latest, cards.pt)  # older than the card's latest payment when it came
    out_of_order = np.bincount(owner[late], minlength=len(cards.names)) > 0
    exact = np.zeros(len(cards.names), dtype=bool)
    before = cards.log.pairs(cards.before, cards.entity)
    card_since = np.full(len(cards.names), np.iinfo(np.int64).max)  # per card: its batch's earliest 24h bound
    np.minimum.at(card_since, cards.entity, since)
    for k, kind in enumerate(KINDS):
        counts = cards.counts[kind]
        ids, item_owner, _ = cards.values.gather(cards.offsets[kind], counts, _ITEM)
        times = cards.values.gather(cards.offsets[kind] + 8 * counts, counts, _ITEM)[0]
        keys = np.sort(item_owner * _ID_SHIFT + ids)  # (card, item): the bases' items, to look up
        uses = ((records["mask"] >> k) & 1).astype(bool)
        overflow = counts + np.bincount(owner[uses], minlength=len(cards.names)) > cap  # possibly
        if overflow.any():  # exactly: the base's items and the distinct new ones
            used = uses & overflow[owner]
            use_keys = owner[used] * _ID_SHIFT + records[kind][used]
            fresh = np.unique(use_keys[~_member(keys, use_keys)])
            overflow = counts + np.bincount(fresh // _ID_SHIFT, minlength=len(cards.names)) > cap
        exact |= overflow & out_of_order
        # In time order, a card's items are the `cap` latest (by time, then id) of its base's and its records'.
        present = ((txn["mask"] >> k) & 1).astype(bool)
        if kind != "device":  # distinct items used in the 24h before, this payment included
            live = np.flatnonzero(times > card_since[item_owner])  # used within 24h of one of its card's payments
            live_tx, item = _per_transaction(cards.entity, item_owner[live], len(cards.names))
            item = live[item]
            recent = np.concatenate([
                (live_tx * _ID_SHIFT + ids[item])[times[item] > since[live_tx]],
                (tx * _ID_SHIFT + records[kind][record])[uses[record] & (rt[record] > since[tx])],
            ])  # fmt: skip
            distinct = np.minimum(np.bincount(np.unique(recent) // _ID_SHIFT, minlength=n), cap)
            out[:, 15 + ("terminal", "merchant", "country").index(kind)] = np.where(present, distinct, -1)
        if kind in ("device", "terminal"):  # among the recent items before this payment
            hit = _seen((ids, item_owner, times), keys, cards, before, kind, uses, txn[kind], cap,
                        overflow[cards.entity])  # fmt: skip
            out[:, 18 if kind == "device" else 19] = np.where(present, hit, -1)
    return exact


def _previous(cards: _Cards) -> NDArray[np.float64]:
    """Per transaction: the card's previous payment time and card-present payment (µs, lat, lon), NaN if none."""
    n, log, entity, before = len(cards.entity), cards.log, cards.entity, cards.before
    head, records, rt = cards.values.head, cards.records, cards.records["t"]
    previous = np.full((n, 4), np.nan)
    pt = log.at(before, entity, cards.latest, cards.pt)
    previous[pt != NO_BUCKET, 0] = pt[pt != NO_BUCKET]
    geo = records["geo"] == 1
    best = log.running_max(np.where(geo, rt, NO_BUCKET), cards.pcp)
    takes = geo & (rt >= log.before(best, cards.pcp))  # a card-present payment as late as the latest replaces it
    latest = np.maximum.accumulate(np.where(takes, np.arange(len(rt)), -1)) if len(rt) else np.empty(0, np.int64)
    chosen = np.full(n, -1)
    has = before > 0
    where = log.first[entity[has]] + before[has] - 1
    chosen[has] = np.where(latest[where] >= log.first[entity[has]], latest[where], -1)  # within its own card
    by_record = chosen >= 0
    previous[by_record, 1:] = np.stack([rt, records["lat"], records["lon"]], axis=1)[chosen[by_record]]
    by_base = ~by_record & (cards.pcp[entity] != NO_BUCKET)
    base = entity[by_base]
    previous[by_base, 1:] = np.stack([head["pcp_t"][base], head["lat"][base], head["lon"][base]], axis=1)
    return previous


def read_batch(heads: bytes, plans: Sequence[tuple[str, str, str, str, bytes]],
               values: Mapping[str, bytes | None], prefix: str, layout: dict[str, Any],
               fold_after: int) -> tuple[StoreReply, dict[str, int]]:  # fmt: skip
    """The batch's :class:`StoreReply` from the script's heads and the entities' values at the end of the batch
    (equal to :func:`features.blobs.replay`, computed for the whole batch at once), and the entities holding
    ``fold_after`` records or more (a place 4 times as many: its records are 4 bytes)."""
    head = np.frombuffer(heads, HEAD)
    n = len(plans)
    if len(head) != n:
        raise ValueError(f"store reply has {len(head)} heads for {n} transactions")
    if n == 0:
        return StoreReply.from_rows([], []), {}
    txn = np.frombuffer(b"".join(one[4] for one in plans), RECORDS)
    applied = head["applied"].astype(np.int64)
    out = np.zeros((n, REPLY_WIDTH), dtype=np.int64)
    out[:, 0] = applied
    cards = _Cards(plans, applied, head["card"].astype(np.int64), values, prefix)
    _card_windows(cards, out, txn["t"], layout)
    exact = _card_items(cards, out, txn, layout)
    previous = _previous(cards)
    due = _owed([f"card:{name}" for name in cards.names], cards.n_records, fold_after)
    day = txn["t"] // layout["size"]["d"]
    out[:, CARD_WIDTH:], places = _place_blocks(plans, head, day, values, prefix, layout, PLACE_FOLD * fold_after)
    due.update(places)
    if exact.any():
        rows = np.flatnonzero(exact[cards.entity])
        again, _ = replay(head[rows].tobytes(), [plans[i] for i in rows.tolist()], values, prefix, layout)
        out[rows], previous[rows] = again.values, again.previous
    return StoreReply(out, previous), due


def layout_vector(layout: dict[str, Any]) -> tuple[int, ...]:
    """The layout as the C reader takes it: ring sizes and kept buckets (m5, h, d), card windows (ring, length),
    card fraud days, place windows, fraud windows, label delay, place days kept, recent items."""
    rings = layout["card_rings"]
    if list(rings) != ["m5", "h", "d"]:
        raise ValueError(f"the C reader reads rings m5, h, d (the base's order), not {rings}")
    windows = layout["card_windows"]
    return (
        *(layout["size"][res] for res in rings), *(layout["kept"][res] for res in rings),
        len(windows), *(v for res, length in windows for v in (rings.index(res), length)),
        layout["card_frauds"],
        len(layout["place_windows"]), *layout["place_windows"],
        len(layout["fraud_windows"]), *layout["fraud_windows"],
        layout["label_delay"], layout["place_kept"], layout["recent_items"],
    )  # fmt: skip


def read_compiled(heads: bytes, plans: Sequence[tuple[str, str, str, str, bytes]],
                  values: Mapping[str, bytes | None], prefix: str, layout: dict[str, Any],
                  fold_after: int) -> tuple[StoreReply, dict[str, int]]:  # fmt: skip
    """:func:`read_batch`, by the C reader: the records replayed with :func:`features.blobs.replay`'s steps, the
    whole batch in one call (this side only names the entities); and the entities holding ``fold_after`` records
    or more (a place PLACE_FOLD times as many), as :func:`~features.blobs.replay` gives them (none for 0).

    Raises:
        RuntimeError: the C reader is not built (:data:`COMPILED` is false).
    """
    if _replay is None:
        raise RuntimeError("the C reader (features._replay) is not built: reinstall fraudpipe with a C compiler")
    cards: dict[str, int] = {}
    places: dict[str, int] = {}
    card_of = [cards.setdefault(one[1], len(cards)) for one in plans]
    terminal_of = [places.setdefault(f"terminal:{one[2]}", len(places)) if one[2] else -1 for one in plans]
    merchant_of = [places.setdefault(f"merchant:{one[3]}", len(places)) if one[3] else -1 for one in plans]
    out, before, card_records, place_records = _replay.read(
        heads, b"".join(one[4] for one in plans), card_of, terminal_of, merchant_of,
        [values.get(f"{prefix}card:{name}") for name in cards], [values.get(prefix + name) for name in places],
        layout_vector(layout),
    )  # fmt: skip
    n = len(plans)
    reply = StoreReply(np.frombuffer(out, np.int64).reshape(n, REPLY_WIDTH), np.frombuffer(before).reshape(n, 4))
    if not fold_after:
        return reply, {}
    due = _owed([f"card:{name}" for name in cards], np.array(card_records, dtype=np.int64), fold_after)
    due.update(_owed(list(places), np.array(place_records, dtype=np.int64), PLACE_FOLD * fold_after))
    return reply, due
