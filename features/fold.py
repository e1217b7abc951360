"""Folding entities' records into their bases in the client, a group of entities at a time.

The reader tells the store how many records each entity of a batch holds; the store folds those holding
``fold_after`` or more here, from their values as last read, and writes the new bases back with the next transaction
it sends (pipelined: the one after the next) by the script's ``rebase``: a compare-and-set that replaces a card's base
only if its log still starts with exactly the log folded, head included (the head is a fold generation every
write-back bumps: the same head means no other fold since, hence the same base), keeping the records appended since;
and a terminal's or merchant's value only if it still starts with exactly the bytes folded. Another worker's fold wins;
the entity is folded again when it is next read with many records.

A fold is the base decoded, every record applied with the twin's steps (:mod:`features.memory`) and the state
encoded again (:mod:`features.blobs`): in C when the extension is built (``features/_replay.c``: the same steps, the
same canonical bytes, which a test holds equal), else in Python. Folding here keeps Redis' single thread for the
appends and reads every transaction needs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from features.blobs import Journal, encode_card, encode_place
from features.plan import native
from features.reader import layout_vector

__all__ = ["fold"]


def fold(cards: Mapping[str, tuple[bytes | None, bytes | None]], places: Mapping[str, bytes | None],
         layout: dict[str, Any], *, compiled: bool = True) -> tuple[dict[str, bytes], dict[str, bytes]]:  # fmt: skip
    """Each card's (base, log) and each place's value folded into a base with no records, by name (card token,
    ``terminal:<id>`` / ``merchant:<id>``); entities that hold no records are left out. By the C extension when it
    is built and ``compiled`` is true, else in Python: the same bytes."""
    if compiled and native is not None:
        card_bases, place_bases = native.fold([base for base, _ in cards.values()],
                                               [log for _, log in cards.values()], list(places.values()),
                                               layout_vector(layout))  # fmt: skip
    else:
        card_bases = [_fold(Journal.of_card(base, log, layout), encode_card) for base, log in cards.values()]
        place_bases = [_fold(Journal.of_place(value, layout), encode_place) for value in places.values()]
    return (
        {name: base for name, base in zip(cards, card_bases, strict=True) if base is not None},
        {name: base for name, base in zip(places, place_bases, strict=True) if base is not None},
    )


def _fold(journal: Journal, encode: Callable[[dict[str, Any]], bytes]) -> bytes | None:
    return encode(journal.state) if journal.to_end() else None
