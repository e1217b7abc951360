"""The binary formats of the online store, and turning a batch reply of ``features/apply.lua`` into a
:class:`features.snapshot.StoreReply` with numpy.

The script keeps every entity as one binary string (all integers little-endian)::

    card      CARD_HEAD: flags (1 = has latest time, 2 = has card-present payment), entries of rings m5, h, d, f,
              items per kind (terminal, merchant, country, device), latest time µs, card-present µs, lat, lon
              then rings m5, h, d as CARD_ENTRY (bucket, count, cents, cents²), f as PAIR (day, frauds),
              then per kind: ids (8 bytes each, 48-bit values), then last-seen times (µs, 8 bytes each)
    terminal  PLACE_HEAD: entries of rings d, f; then d as PAIR (day, payments), f as PAIR (day, frauds)
    merchant  as terminal

and answers a batch with twelve strings: one REPLY_HEAD per transaction, then the batch's card rings m5, h, d, f,
card last-seen times of terminals, merchants, countries, terminal rings d, f, merchant rings d, f — each the
concatenation, in transaction order, of that part as it stood after the transaction (absent parts add nothing;
their entry counts in the head say NONE). The window sums the formulas need are then one masked ``bincount`` per
window for the whole batch: no Python loop per transaction, and no summing in Lua.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from features.plan import KINDS
from features.snapshot import CARD_WIDTH, PLACE_WIDTH, REPLY_WIDTH, StoreReply

__all__ = ["decode_card", "decode_place", "store_reply"]

CARD_HEAD = struct.Struct("<HHHHHHHHHqqdd")
PLACE_HEAD = struct.Struct("<HH")
CARD_ENTRY = np.dtype([("idx", "<i4"), ("count", "<i4"), ("cents", "<i8"), ("squares", "<i8")])
PAIR = np.dtype([("idx", "<i4"), ("count", "<i4")])
REPLY_HEAD = np.dtype(
    [(name, "<u2") for name in ("applied", "seen_device", "seen_terminal", "flags", "m5", "h", "d", "f",
                                "items_terminal", "items_merchant", "items_country", "terminal_d", "terminal_f",
                                "merchant_d", "merchant_f")]
    + [("pt", "<i8"), ("pcp_t", "<i8"), ("lat", "<f8"), ("lon", "<f8")]
)  # fmt: skip
NONE = 0xFFFF
"""An entry count meaning: the payment has no such item or place."""
_RINGS = ("m5", "h", "d")


def _flat(entries: NDArray[Any]) -> list[int]:
    return [int(v) for entry in entries.tolist() for v in entry]


def decode_card(blob: bytes) -> dict[str, Any]:
    """A card's blob as plain values (the in-memory twin's shape): rings as flat lists, ``pt``, ``pcp`` [µs, lat,
    lon], ``r`` {kind: {item id: last seen µs}}; parts the card does not have are left out."""
    flags, *counts, pt, pcp_t, lat, lon = CARD_HEAD.unpack_from(blob)
    state: dict[str, Any] = {}
    pos = CARD_HEAD.size
    for ring, n in zip(_RINGS, counts[:3], strict=True):
        if n:
            state[ring] = _flat(np.frombuffer(blob, CARD_ENTRY, n, pos))
        pos += n * CARD_ENTRY.itemsize
    if counts[3]:
        state["f"] = _flat(np.frombuffer(blob, PAIR, counts[3], pos))
    pos += counts[3] * PAIR.itemsize
    recent: dict[str, dict[int, int]] = {}
    for kind, n in zip(KINDS, counts[4:], strict=True):
        ids = np.frombuffer(blob, "<i8", n, pos).tolist()
        times = np.frombuffer(blob, "<i8", n, pos + 8 * n).tolist()
        pos += 16 * n
        if n:
            recent[kind] = dict(zip(ids, times, strict=True))
    if flags & 1:
        state["pt"] = pt
    if flags & 2:
        state["pcp"] = [pcp_t, lat, lon]
    if recent:
        state["r"] = recent
    return state


def decode_place(blob: bytes) -> dict[str, Any]:
    """A terminal's or merchant's blob as plain values: rings ``d`` and ``f`` as flat lists (left out if empty)."""
    nd, nf = PLACE_HEAD.unpack_from(blob)
    state: dict[str, Any] = {}
    if nd:
        state["d"] = _flat(np.frombuffer(blob, PAIR, nd, PLACE_HEAD.size))
    if nf:
        state["f"] = _flat(np.frombuffer(blob, PAIR, nf, PLACE_HEAD.size + nd * PAIR.itemsize))
    return state


class _Segments:
    """Entries of one part for a whole batch, with the transaction each belongs to and each one's newest bucket."""

    def __init__(self, data: bytes, dtype: np.dtype[Any], counts: NDArray[np.int64], top_from: _Segments | None = None):
        self.entries = np.frombuffer(data, dtype)
        if len(self.entries) != int(counts.sum()):
            raise ValueError("store reply: entry counts do not match the data")
        self.owner = np.repeat(np.arange(len(counts)), counts)
        self.idx = self.entries["idx"].astype(np.int64)
        ends = np.cumsum(counts)
        has = counts > 0
        top = np.full(len(counts), np.iinfo(np.int64).min // 4)
        top[has] = self.idx[ends[has] - 1]  # rings are sorted: the last entry is the newest
        self.top: NDArray[np.int64] = top if top_from is None else top_from.top
        self.has: NDArray[np.bool_] = has if top_from is None else top_from.has
        self.size = len(counts)

    def sums(self, fields: Sequence[str], windows: Sequence[tuple[NDArray[np.int64], NDArray[np.int64]]],
             kept: int) -> NDArray[np.int64]:  # fmt: skip
        """(n, windows, fields): per transaction, each field summed over the kept entries with bucket in each
        window [first, last] — one ``bincount`` for all of them."""
        n, w, f = self.size, len(windows), len(fields)
        floor = self.top - kept + 1
        low = np.stack([np.maximum(first, floor) for first, _ in windows], axis=1)[self.owner]
        high = np.stack([last for _, last in windows], axis=1)[self.owner]
        inside = (self.idx[:, None] >= low) & (self.idx[:, None] <= high)  # (entries, windows)
        values = np.stack([self.entries[name] for name in fields], axis=1).astype(np.float64)  # (entries, fields)
        slots = self.owner[:, None, None] * (w * f) + np.arange(w * f).reshape(w, f)
        weights = inside[:, :, None] * values[:, None, :]  # sums stay below 2^53: exact
        totals = np.bincount(slots.ravel(), weights=weights.ravel(), minlength=n * w * f).reshape(n, w, f)
        return np.where(self.has[:, None, None], totals, 0).astype(np.int64)


def store_reply(parts: Sequence[bytes], micros: NDArray[np.int64], layout: dict[str, Any]) -> StoreReply:
    """The :class:`StoreReply` of a batch from the script's twelve strings and the transactions' times (µs)."""
    head = np.frombuffer(parts[0], REPLY_HEAD)
    n = len(micros)
    if len(head) != n:
        raise ValueError(f"store reply has {len(head)} heads for {n} transactions")
    values = np.zeros((n, REPLY_WIDTH), dtype=np.int64)
    values[:, 0] = head["applied"]
    size, kept = layout["size"], layout["kept"]
    rings = {name: _Segments(parts[1 + i], CARD_ENTRY, head[name].astype(np.int64)) for i, name in enumerate(_RINGS)}
    column = 1
    for res, length in layout["card_windows"]:
        last = micros // size[res]
        window = rings[res].sums(("count", "cents", "squares"), [(last - length + 1, last)], kept[res])
        values[:, column : column + 3] = window[:, 0, :]
        column += 3
    day = micros // size["d"]
    days = rings["d"]
    values[:, column] = days.has & (day > days.top - kept["d"])
    frauds = _Segments(parts[4], PAIR, head["f"].astype(np.int64), top_from=days)
    values[:, column + 1] = frauds.sums(("count",), [(day - layout["card_frauds"] + 1, day)], kept["d"])[:, 0, 0]
    column += 2
    since = micros - size["d"]
    for i, kind in enumerate(("terminal", "merchant", "country")):
        counts = head[f"items_{kind}"].astype(np.int64)
        present = counts != NONE
        times = np.frombuffer(parts[5 + i], "<i8")
        owner = np.repeat(np.flatnonzero(present), counts[present])
        recent = np.bincount(owner, weights=times > since[owner], minlength=n).astype(np.int64)
        values[:, column] = np.where(present, recent, -1)
        column += 1
    for name in ("seen_device", "seen_terminal"):
        seen = head[name].astype(np.int64)
        values[:, column] = np.where(seen == NONE, -1, seen)
        column += 1
    assert column == CARD_WIDTH
    for p, kind in enumerate(("terminal", "merchant")):
        base = CARD_WIDTH + p * PLACE_WIDTH
        d_counts = head[f"{kind}_d"].astype(np.int64)
        present = d_counts != NONE
        payments = _Segments(parts[8 + 2 * p], PAIR, np.where(present, d_counts, 0))
        frauds = _Segments(parts[9 + 2 * p], PAIR, head[f"{kind}_f"].astype(np.int64), top_from=payments)
        place_kept = layout["place_kept"]
        last = day - layout["label_delay"]
        current = [(day - length + 1, day) for length in layout["place_windows"]]
        rated = [(last - length + 1, last) for length in layout["fraud_windows"]]
        counted = payments.sums(("count",), [*current, *rated], place_kept)[:, :, 0]
        known = frauds.sums(("count",), rated, place_kept)[:, :, 0]
        block = np.empty((n, PLACE_WIDTH), dtype=np.int64)
        block[:, : len(current)] = counted[:, : len(current)]
        block[:, len(current) :: 2] = known
        block[:, len(current) + 1 :: 2] = counted[:, len(current) :]
        values[:, base : base + PLACE_WIDTH] = np.where(present[:, None], block, -1)
    previous = np.full((n, 4), np.nan)
    flags = head["flags"]
    has_time, has_present = (flags & 1) > 0, (flags & 2) > 0
    previous[has_time, 0] = head["pt"][has_time]
    previous[has_present, 1] = head["pcp_t"][has_present]
    previous[has_present, 2] = head["lat"][has_present]
    previous[has_present, 3] = head["lon"][has_present]
    return StoreReply(values, previous)
