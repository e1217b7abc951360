"""The binary formats of the online store, and reading a batch back from what Redis holds.

An entity's value is its *base* (its state when last folded) followed by the *records* appended since, oldest
first (all integers little-endian)::

    card      base: CARD_HEAD: flags (1 = has latest time, 2 = has card-present payment), entries of rings m5, h, d,
              f, items per kind (terminal, merchant, country, device), latest time µs, card-present µs, lat, lon;
              then rings m5, h, d as CARD_ENTRY (bucket, count, cents, cents²), f as PAIR (day, frauds), then per
              kind: ids (8 bytes each, 48-bit values), then last-seen times (µs, 8 bytes each)
              records: transaction records (:data:`features.plan.RECORD`)
    terminal  base: PLACE_HEAD: entries of rings d, f; then d as PAIR (day, payments), f as PAIR (day, frauds)
              records: the payment's day (:data:`DAY`)
    merchant  as terminal

The script answers a batch with one :data:`HEAD` per transaction: whether it applied it, and the byte length of its
card's, terminal's and merchant's values right after it. With the values read at the end of the batch (in the same
transaction), that is each transaction's state after it: the base plus the records up to that length.
:func:`replay` reads it by replaying those records with the twin's steps (:mod:`features.memory`), one at a time.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from features.memory import Record, apply_card, apply_place, card_row, place_row, previous_of
from features.plan import KINDS, RECORD
from features.snapshot import StoreReply

__all__ = ["DAY", "HEAD", "PLACE_FOLD", "card_base", "decode_card", "decode_place", "place_base", "replay"]

CARD_HEAD = struct.Struct("<HHHHHHHHHqqdd")
PLACE_HEAD = struct.Struct("<HH")
DAY = struct.Struct("<i")
"""A terminal's or merchant's record: the payment's day."""
HEAD = np.dtype([("applied", "u1"), ("card", "<u4"), ("terminal", "<u4"), ("merchant", "<u4")])
"""The script's answer per transaction: applied, and its entities' value lengths right after it (0: none)."""
CARD_ENTRY = np.dtype([("idx", "<i4"), ("count", "<i4"), ("cents", "<i8"), ("squares", "<i8")])
PAIR = np.dtype([("idx", "<i4"), ("count", "<i4")])
_RINGS = ("m5", "h", "d")
PLACE_FOLD = 4
"""A terminal or merchant is due for a fold after this many times a card's ``fold_after``: its records are 4 bytes."""


def _flat(entries: NDArray[Any]) -> list[int]:
    return [int(v) for entry in entries.tolist() for v in entry]


def card_base(blob: bytes) -> tuple[dict[str, Any], int]:
    """A card's base as plain values (the twin's shape), and its length: ``blob[length:]`` are its records. Rings
    are flat lists, ``pt``, ``pcp`` [µs, lat, lon], ``r`` {kind: {item id: last seen µs}}; parts the card does not
    have are left out."""
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
    return state, pos


def place_base(blob: bytes) -> tuple[dict[str, Any], int]:
    """A terminal's or merchant's base as plain values (rings ``d`` and ``f`` as flat lists, left out if empty), and
    its length."""
    nd, nf = PLACE_HEAD.unpack_from(blob)
    state: dict[str, Any] = {}
    if nd:
        state["d"] = _flat(np.frombuffer(blob, PAIR, nd, PLACE_HEAD.size))
    if nf:
        state["f"] = _flat(np.frombuffer(blob, PAIR, nf, PLACE_HEAD.size + nd * PAIR.itemsize))
    return state, PLACE_HEAD.size + (nd + nf) * PAIR.itemsize


def decode_card(blob: bytes, layout: dict[str, Any]) -> dict[str, Any]:
    """A card's value as plain values: its base with its records applied."""
    state, pos = card_base(blob)
    for offset in range(pos, len(blob), RECORD.size):
        apply_card(state, Record.unpack(blob, offset), layout)
    return state


def decode_place(blob: bytes, layout: dict[str, Any]) -> dict[str, Any]:
    """A terminal's or merchant's value as plain values: its base with its records applied."""
    state, pos = place_base(blob)
    for offset in range(pos, len(blob), DAY.size):
        apply_place(state, DAY.unpack_from(blob, offset)[0], layout)
    return state


class _Replay:
    """One entity's state, advanced record by record to a given length of its value."""

    def __init__(self, blob: bytes | None, card: bool, layout: dict[str, Any]) -> None:
        self.blob = blob or b""
        self.card = card
        self.layout = layout
        self.state, self.at = (card_base(self.blob) if card else place_base(self.blob)) if blob else ({}, 0)
        self.width = RECORD.size if card else DAY.size
        self.records = (len(self.blob) - self.at) // self.width

    def to(self, length: int) -> None:
        while self.at < length:
            if self.card:
                apply_card(self.state, Record.unpack(self.blob, self.at), self.layout)
            else:
                apply_place(self.state, DAY.unpack_from(self.blob, self.at)[0], self.layout)
            self.at += self.width


def replay(heads: bytes, plans: Sequence[tuple[str, str, str, str, bytes]], values: Mapping[str, bytes | None],
           prefix: str, layout: dict[str, Any], fold_after: int = 0) -> tuple[StoreReply, dict[str, int]]:  # fmt: skip
    """The batch's :class:`StoreReply` from the script's heads and the entities' values at the end of the batch,
    replaying each record with the twin's steps: exact, one transaction at a time (cheaper than numpy for a few).
    With ``fold_after``, also the entities holding that many records or more (a place PLACE_FOLD times as many), with
    how many times that many they hold."""
    head = np.frombuffer(heads, HEAD)
    if len(head) != len(plans):
        raise ValueError(f"store reply has {len(head)} heads for {len(plans)} transactions")
    entities: dict[str, _Replay] = {}
    rows: list[list[int]] = []
    previous: list[list[float]] = []
    day_us = layout["size"]["d"]
    for (_, card_id, terminal_id, merchant_id, record), (applied, *lengths) in zip(plans, head.tolist(), strict=True):
        rec = Record.unpack(record)
        card_key = f"{prefix}card:{card_id}"
        card = entities.get(card_key) or entities.setdefault(card_key, _Replay(values.get(card_key), True, layout))
        card.to(lengths[0] - RECORD.size if applied else lengths[0])
        before, seen = previous_of(card.state, rec)
        card.to(lengths[0])
        row = [applied, *card_row(card.state, rec, seen, layout)]
        for kind, ident, length in (("terminal", terminal_id, lengths[1]), ("merchant", merchant_id, lengths[2])):
            if not ident:
                row += place_row(None, rec.t // day_us, layout)
                continue
            key = f"{prefix}{kind}:{ident}"
            place = entities.get(key) or entities.setdefault(key, _Replay(values.get(key), False, layout))
            place.to(length)
            row += place_row(place.state, rec.t // day_us, layout)
        rows.append(row)
        previous.append(before)
    due: dict[str, int] = {}
    for key, entity in entities.items() if fold_after else ():
        owed = entity.records // (fold_after if entity.card else PLACE_FOLD * fold_after)
        if owed:
            due[key[len(prefix) :]] = owed
    return StoreReply.from_rows(rows, previous), due
