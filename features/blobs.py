"""The binary formats of the online store's values, and reading them into the twin's plain values.

An entity is its *base* (its state when last folded) and the *records* appended since, oldest first. A card keeps
the two apart (``card:<token>`` is written whole by a fold, ``cardlog:<token>`` is appended to: Redis over-allocates
an appended string up to twice its length, so the large part is never appended to); a terminal or merchant keeps its
records after its base, in one value. Records are those of :mod:`features.plan`. Bases are written compactly
(*uvarint*: LEB128; *zvarint*: zigzag then LEB128; integers little-endian)::

    card log    LOG_HEAD: u32 fold generation (0 when created, +1 with each fold written back, so a write-back that
                finds the log it folded finds the base it folded too), then records

    card base   u8 flags (1: latest time, 2: card-present payment); [i64 latest time µs];
                [uvarint latest - card-present µs, f64 lat, f64 lon]; rings m5, h, d (count, cents z, cents²) and
                f (frauds z); then per kind of KINDS: uvarint n, n x (6-byte id, uvarint µs before the previous one
                (the first: before the latest time)), most recent first (ties: smaller id first)
    place base  rings d (payments) and f (frauds z)
    ring        uvarint n; if n: zvarint newest bucket, then per entry, oldest first: uvarint newest - bucket, then
                its values (uvarint, or zvarint where marked z)

The encoding is canonical (one state, one byte string): the C fold (``features/_replay.c``) writes the same bytes,
and a test holds it to :func:`encode_card` / :func:`encode_place`.
"""

from __future__ import annotations

import struct
from typing import Any

from features.memory import Record, apply_card, apply_fraud, apply_place
from features.plan import ITEM_SIZE, KINDS, LABEL, PLACE_DAY, PLACE_LABEL

__all__ = [
    "EMPTY_CARD",
    "EMPTY_PLACE",
    "HEAD",
    "LOG_HEAD",
    "Journal",
    "card_base",
    "decode_card",
    "decode_place",
    "encode_card",
    "encode_place",
    "place_base",
]

HEAD = struct.Struct("<BIII")
"""The script's answer per transaction: applied, and the byte length of its card's records, its terminal's value and
its merchant's value right after it (0: none)."""
LOG_HEAD = struct.Struct("<I")
_I64 = struct.Struct("<q")
_LAT_LON = struct.Struct("<dd")
_CARD_RINGS = (("m5", (False, True, False)), ("h", (False, True, False)), ("d", (False, True, False)),
               ("f", (True,)))  # fmt: skip
_PLACE_RINGS = (("d", (False,)), ("f", (True,)))


def _put(out: bytearray, value: int) -> None:
    if value < 0:
        raise ValueError(f"uvarint of a negative value: {value}")
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)


def _zig(value: int) -> int:
    return value * 2 if value >= 0 else -value * 2 - 1


def _get(blob: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = blob[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _unzig(value: int) -> int:
    return value >> 1 if not value & 1 else -(value >> 1) - 1


def _put_ring(out: bytearray, ring: list[int], signed: tuple[bool, ...]) -> None:
    width = len(signed) + 1
    _put(out, len(ring) // width)
    if not ring:
        return
    top = ring[-width]
    _put(out, _zig(top))
    for i in range(0, len(ring), width):
        _put(out, top - ring[i])
        for z, value in zip(signed, ring[i + 1 : i + width], strict=True):
            _put(out, _zig(value) if z else value)


def _get_ring(blob: bytes, at: int, signed: tuple[bool, ...]) -> tuple[list[int], int]:
    n, at = _get(blob, at)
    ring: list[int] = []
    if not n:
        return ring, at
    top, at = _get(blob, at)
    top = _unzig(top)
    for _ in range(n):
        age, at = _get(blob, at)
        ring.append(top - age)
        for z in signed:
            value, at = _get(blob, at)
            ring.append(_unzig(value) if z else value)
    return ring, at


def encode_card(state: dict[str, Any]) -> bytes:
    """A card's plain state (:mod:`features.memory`) as a base."""
    pt, pcp = state.get("pt"), state.get("pcp")
    out = bytearray([(pt is not None) | (pcp is not None) << 1])
    if pt is not None:
        out += _I64.pack(pt)
    if pcp is not None:
        _put(out, pt - pcp[0])
        out += _LAT_LON.pack(pcp[1], pcp[2])
    for name, signed in _CARD_RINGS:
        _put_ring(out, state.get(name, []), signed)
    recent = state.get("r", {})
    for kind in KINDS:
        members = sorted(recent.get(kind, {}).items(), key=lambda item: (-item[1], item[0]))
        _put(out, len(members))
        previous = pt
        for ident, when in members:
            out += ident.to_bytes(ITEM_SIZE, "little")
            _put(out, previous - when)
            previous = when
    return bytes(out)


def card_base(blob: bytes) -> dict[str, Any]:
    """A card's base as plain values."""
    flags = blob[0]
    at = 1
    state: dict[str, Any] = {}
    pt = None
    if flags & 1:
        pt = state["pt"] = _I64.unpack_from(blob, at)[0]
        at += _I64.size
    if flags & 2:
        before, at = _get(blob, at)
        lat, lon = _LAT_LON.unpack_from(blob, at)
        at += _LAT_LON.size
        state["pcp"] = [pt - before if pt is not None else -before, lat, lon]
    for name, signed in _CARD_RINGS:
        ring, at = _get_ring(blob, at, signed)
        if ring:
            state[name] = ring
    recent: dict[str, dict[int, int]] = {}
    for kind in KINDS:
        n, at = _get(blob, at)
        previous = pt or 0
        members: dict[int, int] = {}
        for _ in range(n):
            ident = int.from_bytes(blob[at : at + ITEM_SIZE], "little")
            before, at = _get(blob, at + ITEM_SIZE)
            previous = members[ident] = previous - before
        if members:
            recent[kind] = members
    if recent:
        state["r"] = recent
    if at != len(blob):
        raise ValueError(f"a card base has {len(blob) - at} bytes after its parts")
    return state


def encode_place(state: dict[str, Any]) -> bytes:
    """A terminal's or merchant's plain state as a base."""
    out = bytearray()
    for name, signed in _PLACE_RINGS:
        _put_ring(out, state.get(name, []), signed)
    return bytes(out)


def place_base(blob: bytes) -> tuple[dict[str, Any], int]:
    """A terminal's or merchant's base as plain values, and its length: ``blob[length:]`` are its records."""
    state: dict[str, Any] = {}
    at = 0
    for name, signed in _PLACE_RINGS:
        ring, at = _get_ring(blob, at, signed)
        if ring:
            state[name] = ring
    return state, at


EMPTY_CARD = encode_card({})
EMPTY_PLACE = encode_place({})


class Journal:
    """An entity's state, advanced record by record along its records (``blob[at:]``): the twin's steps."""

    def __init__(self, state: dict[str, Any], blob: bytes, at: int, card: bool, layout: dict[str, Any]) -> None:
        self.state, self.blob, self.at, self.card, self.layout = state, blob, at, card, layout
        self.applied = 0

    @classmethod
    def of_card(cls, base: bytes | None, log: bytes | None, layout: dict[str, Any]) -> Journal:
        if log and len(log) < LOG_HEAD.size:
            raise ValueError("a card log is shorter than its head")
        return cls(card_base(base) if base else {}, log or b"", LOG_HEAD.size if log else 0, True, layout)

    @classmethod
    def of_place(cls, value: bytes | None, layout: dict[str, Any]) -> Journal:
        state, at = place_base(value) if value else ({}, 0)
        return cls(state, value or b"", at, False, layout)

    def step(self) -> None:
        """Apply the record at ``at``."""
        blob, at = self.blob, self.at
        if self.card:
            if blob[at] & 0x80:
                tag, day = LABEL.unpack_from(blob, at)
                apply_fraud(self.state, day, -1 if tag & 1 else 1, True, self.layout)
                self.at += LABEL.size
            else:
                rec, size = Record.unpack(blob, at)
                apply_card(self.state, rec, self.layout)
                self.at += size
        else:
            (day,) = PLACE_DAY.unpack_from(blob, at)
            if day >= 0:
                apply_place(self.state, day, self.layout)
                self.at += PLACE_DAY.size
            else:
                _, delta = PLACE_LABEL.unpack_from(blob, at)
                apply_fraud(self.state, ~day, delta, False, self.layout)
                self.at += PLACE_LABEL.size
        self.applied += 1

    def to(self, length: int) -> None:
        """Apply the records up to byte ``length`` of the value."""
        if length > len(self.blob):
            raise ValueError(f"store reply names a {'card' if self.card else 'place'} length past its value")
        while self.at < length:
            self.step()
        if self.at != length:
            raise ValueError("store reply names a length inside a record")

    def to_end(self) -> int:
        """Apply every record left; the records applied in all."""
        self.to(len(self.blob))
        return self.applied


def decode_card(base: bytes | None, log: bytes | None, layout: dict[str, Any]) -> dict[str, Any]:
    """A card's state as plain values: its base (``card:<token>``) with its records (``cardlog:<token>``) applied."""
    journal = Journal.of_card(base, log, layout)
    journal.to_end()
    return journal.state


def decode_place(value: bytes, layout: dict[str, Any]) -> dict[str, Any]:
    """A terminal's or merchant's value as plain values: its base with its records applied."""
    journal = Journal.of_place(value, layout)
    journal.to_end()
    return journal.state
