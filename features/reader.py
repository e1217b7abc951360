"""Reading a batch back from the store: every transaction's state after it, from its entities' bases and records.

:func:`replay` is the definition: each entity's records replayed with the twin's steps (:mod:`features.memory`), one
at a time: a transaction's card is advanced to its length before the transaction (what it read before it), then to
its length after it; its terminal and merchant to theirs. :func:`read` runs the same steps in C for the whole batch
(``features/_replay.c``, when it is built: the figure is the in-process "features" stage of ``fraudpipe bench``, where
it reads a batch of 500 in ~4 µs per transaction, :func:`replay` in ~370 µs), and a test holds the two equal.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from features.blobs import HEAD, Journal
from features.memory import Record, card_row, place_row, previous_of
from features.plan import INDEX, PLACE_DAY, Planned, native
from features.snapshot import REPLY_WIDTH, StoreReply

__all__ = ["Read", "heads", "layout_vector", "read", "replay"]

Read = tuple[StoreReply, list[int], list[int]]
"""A batch read back: its reply, and how many records each card's log and each place's value holds (for folding)."""


def heads(answer: bytes, planned: Planned) -> bytes:
    """The script's answer (:mod:`features.plan`: applied flags, then each card's log and each place's value length
    before the batch) as one :data:`features.blobs.HEAD` per transaction: applied, and its card's log, terminal's
    and merchant's value lengths right after it (0: no such place), as the script appended them, in batch order."""
    n, n_cards, n_places = len(planned), len(planned.cards), len(planned.places)
    if len(answer) != n + 4 * (n_cards + n_places):
        raise ValueError(f"store reply of {len(answer)} bytes for {n} transactions, {n_cards} cards, {n_places} places")
    lengths = list(struct.unpack_from(f"<{n_cards + n_places}I", answer, n))
    card_at, place_at = lengths[:n_cards], lengths[n_cards:]
    out = bytearray()
    for applied, (card, terminal, merchant, _, size) in zip(answer[:n], INDEX.iter_unpack(planned.index), strict=True):
        card_at[card] += size if applied else 0
        row = [applied, card_at[card]]
        for place in (terminal, merchant):
            if place >= 0:
                place_at[place] += PLACE_DAY.size if applied else 0
            row.append(place_at[place] if place >= 0 else 0)
        out += HEAD.pack(*row)
    return bytes(out)


def replay(answer: bytes, planned: Planned, card_bases: Sequence[bytes | None], card_logs: Sequence[bytes | None],
           places: Sequence[bytes | None], layout: dict[str, Any]) -> Read:  # fmt: skip
    """The batch's reply from the script's answer (:func:`heads`) and its entities' values at the end of the batch
    (``planned.cards``' bases and logs, ``planned.places``' values), record by record."""
    batch_heads = heads(answer, planned)
    cards = [Journal.of_card(base, log, layout) for base, log in zip(card_bases, card_logs, strict=True)]
    spots = [Journal.of_place(value, layout) for value in places]
    rows: list[list[int]] = []
    previous: list[list[float]] = []
    day_us = layout["size"]["d"]
    for (card_no, terminal_no, merchant_no, record), (applied, *lengths) in zip(
        planned.rows(), HEAD.iter_unpack(batch_heads), strict=True
    ):
        rec, size = Record.unpack(record)
        card = cards[card_no]
        card.to(lengths[0] - size if applied else lengths[0])
        before, seen = previous_of(card.state, rec)
        card.to(lengths[0])
        row = [applied, *card_row(card.state, rec, seen, layout)]
        day = rec.t // day_us
        for number, length in ((terminal_no, lengths[1]), (merchant_no, lengths[2])):
            place = spots[number] if number >= 0 else None
            if place is not None:
                place.to(length)
            row += place_row(None if place is None else place.state, day, layout)
        rows.append(row)
        previous.append(before)
    return StoreReply.from_rows(rows, previous), [c.to_end() for c in cards], [p.to_end() for p in spots]


def layout_vector(layout: dict[str, Any]) -> tuple[int, ...]:
    """The layout as the C reader takes it: ring sizes and kept buckets (m5, h, d), card windows (ring, length),
    card fraud days, place windows, fraud windows, label delay, place days kept, recent items, the kinds kept a day
    (bit mask), the square cap."""
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
        sum(1 << k for k in layout["day_items"]), layout["square_cap"],
    )  # fmt: skip


def read(answer: bytes, planned: Planned, card_bases: Sequence[bytes | None], card_logs: Sequence[bytes | None],
         places: Sequence[bytes | None], layout: dict[str, Any], *, compiled: bool = True) -> Read:  # fmt: skip
    """:func:`replay`, by the C reader when it is built and ``compiled`` is true: the whole batch in one call."""
    if not compiled or native is None:
        return replay(answer, planned, card_bases, card_logs, places, layout)
    values, before, card_records, place_records = native.read(
        answer, planned.records, planned.index, card_bases, card_logs, places, layout_vector(layout)
    )
    n = len(planned)
    reply = StoreReply(np.frombuffer(values, np.int64).reshape(n, REPLY_WIDTH), np.frombuffer(before).reshape(n, 4))
    return reply, card_records, place_records
