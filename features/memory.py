"""The in-memory twin of the Redis feature store: the same operations, in Python, on dicts.

It defines what applying a transaction or a label means, one step at a time: the Redis store appends records and
folds them later (:mod:`features.fold`), and its readers (:mod:`features.reader`, the C extension) replay them with
these steps, so unit tests can run without Redis and the parity tests hold the two equal on generated sequences, in
replies and in state (the Redis values decoded by :mod:`features.blobs` into this module's plain values). It is also
the sequential reference the offline builder is checked against. Key expiry (wall-clock housekeeping in Redis) is
not modelled.

The steps are module functions on plain values so a reader can replay a stored base and its records exactly:
:func:`mark` (apply once), :func:`apply_card` / :func:`apply_place` (one applied payment), :func:`apply_fraud` (one
applied label), :func:`card_row` / :func:`place_row` (what a transaction reads, after it).

A card's plain state: rings ``m5``, ``h``, ``d`` as flat lists (bucket, count, cents, cents², ...), ``f`` (day,
frauds, ...), ``pt`` (latest event µs), ``pcp`` [µs, lat, lon] (latest card-present payment), ``r`` {kind: {item id:
last seen µs}}; a terminal's or merchant's: ``d`` (day, payments, ...) and ``f`` (day, frauds, ...). Parts it does
not have are left out.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from features.formulas import RECENT_ITEMS
from features.plan import CREATED, DAY_ITEMS, GEO, ITEM_SIZE, KINDS, PAYMENT, label_plan, layout, plan
from features.snapshot import Snapshot, StoreReply, decode_reply
from fraudpipe import keys
from fraudpipe.contracts import Label, Transaction

__all__ = [
    "InMemoryFeatureStore",
    "Record",
    "apply_card",
    "apply_fraud",
    "apply_place",
    "card_row",
    "mark",
    "place_row",
    "previous_of",
]

_DAY = "d"
_NAN = float("nan")
_LAT_LON = struct.Struct("<dd")


@dataclass(frozen=True, slots=True)
class Record:
    """A payment as the store applies it (a RECORD of :mod:`features.plan` unpacked): µs, cents, the card-present
    position if it has one, and its recent items by kind."""

    t: int
    amount: int
    geo: tuple[float, float] | None
    ids: dict[str, int]

    @classmethod
    def unpack(cls, record: bytes, offset: int = 0) -> tuple[Record, int]:
        """The record at ``offset`` and its length."""
        flags, t, amount = PAYMENT.unpack_from(record, offset)
        at = offset + PAYMENT.size
        geo = None
        if flags & GEO:
            geo = _LAT_LON.unpack_from(record, at)
            at += _LAT_LON.size
        ids = {}
        for k, kind in enumerate(KINDS):
            if flags >> k & 1:
                ids[kind] = int.from_bytes(record[at : at + ITEM_SIZE], "little")
                at += ITEM_SIZE
        return cls(t, amount, geo, ids), at - offset


def square(amount: int, cap: int) -> int:
    """The cents² a payment adds to a sum of squares (amount capped at ``cap``): :func:`features.formulas.square`."""
    capped = min(abs(amount), cap)
    return capped * capped


def mark(markers: dict[str, str], txn_id: str) -> bool:
    """Whether a card applies a transaction, recording it among the card's ``markers`` of its event day's block
    (:mod:`features.plan`: field txn id, and field CREATED, as Redis keeps them). False: a redelivery."""
    if txn_id in markers:
        return False
    markers.setdefault(CREATED, "")
    markers[txn_id] = ""
    return True


def _newest(ring: list[int] | None, width: int) -> int | None:
    return ring[-width] if ring else None


def _prune(ring: list[int], width: int, top: int | None, kept: int) -> list[int]:
    if top is None or not ring or ring[0] > top - kept:
        return ring
    return [v for i in range(0, len(ring), width) if ring[i] > top - kept for v in ring[i : i + width]]


def _add(ring: list[int], width: int, idx: int, kept: int, deltas: list[int], advances: bool,
         limit: int | None) -> tuple[list[int], bool]:  # fmt: skip
    top = _newest(ring, width) if advances else limit
    if top is not None and idx <= top - kept:
        return ring, False
    entries = [ring[i : i + width] for i in range(0, len(ring), width)]
    for entry in entries:
        if entry[0] == idx:
            for d in range(1, width):
                entry[d] += deltas[d - 1]
            break
    else:
        entries.append([idx, *deltas])
        entries.sort(key=lambda entry: entry[0])
    ring = [value for entry in entries for value in entry]
    if advances and (top is None or idx > top):
        ring = _prune(ring, width, idx, kept)
    return ring, True


def _sum(ring: list[int] | None, width: int, first: int, last: int, kept: int, top: int | None) -> list[int]:
    sums = [0] * (width - 1)
    if top is None or not ring:
        return sums
    low = max(first, top - kept + 1)
    for i in range(0, len(ring), width):
        if low <= ring[i] <= last:
            for d in range(1, width):
                sums[d - 1] += ring[i + d]
    return sums


def apply_card(card: dict[str, Any], rec: Record, lay: dict[str, Any]) -> None:
    """Apply one payment to a card's plain state, in place."""
    squared = square(rec.amount, lay["square_cap"])
    for res in lay["card_rings"]:
        bucket = rec.t // lay["size"][res]
        card[res], _ = _add(card.get(res, []), 4, bucket, lay["kept"][res], [1, rec.amount, squared], True, None)
    if "f" in card:
        card["f"] = _prune(card["f"], 2, _newest(card[_DAY], 4), lay["kept"][_DAY])
        if not card["f"]:
            del card["f"]
    recent: dict[str, dict[int, int]] = card.get("r", {})
    if "pt" in card:  # items read only within a day are forgotten a day after the latest payment before this one
        since = card["pt"] - lay["size"][_DAY]
        for kind in DAY_ITEMS:
            members = recent.get(kind)
            if members and min(members.values()) <= since:
                recent[kind] = {ident: when for ident, when in members.items() if when > since}
    if "pt" not in card or rec.t > card["pt"]:
        card["pt"] = rec.t
    if rec.geo is not None and ("pcp" not in card or rec.t >= card["pcp"][0]):
        card["pcp"] = [rec.t, *rec.geo]
    for kind, item in rec.ids.items():
        members = recent.setdefault(kind, {})
        if item not in members or rec.t > members[item]:
            members[item] = rec.t
        if len(members) > lay["recent_items"]:
            del members[min(members, key=lambda ident: (members[ident], ident))]
    recent = {kind: members for kind, members in recent.items() if members}
    if recent:
        card["r"] = recent
    else:
        card.pop("r", None)


def apply_place(place: dict[str, Any], day: int, lay: dict[str, Any]) -> None:
    """Apply one payment on ``day`` to a terminal's or merchant's plain state, in place."""
    kept = lay["place_kept"]
    place["d"], _ = _add(place.get("d", []), 2, day, kept, [1], True, None)
    if "f" in place:
        place["f"] = _prune(place["f"], 2, _newest(place["d"], 2), kept)
        if not place["f"]:
            del place["f"]


def apply_fraud(state: dict[str, Any], day: int, delta: int, card: bool, lay: dict[str, Any]) -> bool:
    """Apply one label's change of a payment's fraud flag (``delta`` +1 / -1, the payment's ``day``) to a card's or
    place's plain state, in place; False when its day is no longer kept (nothing changes)."""
    width, kept = (4, lay["kept"][_DAY]) if card else (2, lay["place_kept"])
    ring, changed = _add(state.get("f", []), 2, day, kept, [delta], False, _newest(state.get("d"), width))
    if changed:
        state["f"] = ring
    return changed


def previous_of(card: dict[str, Any], rec: Record) -> tuple[list[float], dict[str, int]]:
    """What a transaction reads of its card before it is applied: the previous payment's time and card-present
    (µs, lat, lon) (NaN: none), and whether its device and terminal were among the recent items (kinds it has)."""
    pcp = card.get("pcp")
    previous: list[float] = [float(card["pt"]) if "pt" in card else _NAN, *(map(float, pcp) if pcp else [_NAN] * 3)]
    recent = card.get("r", {})
    seen: dict[str, int] = {
        kind: int(rec.ids[kind] in recent.get(kind, {})) for kind in ("device", "terminal") if kind in rec.ids
    }
    return previous, seen


def card_row(card: dict[str, Any], rec: Record, seen: dict[str, int], lay: dict[str, Any]) -> list[int]:
    """A transaction's card values of the store reply (:mod:`features.snapshot`), from its card after it."""
    out: list[int] = []
    for res, length in lay["card_windows"]:
        last = rec.t // lay["size"][res]
        ring = card.get(res, [])
        out += _sum(ring, 4, last - length + 1, last, lay["kept"][res], _newest(ring, 4))
    kept_day = lay["kept"][_DAY]
    top = _newest(card.get(_DAY), 4)
    day = rec.t // lay["size"][_DAY]
    out.append(int(top is not None and day > top - kept_day))
    out.append(_sum(card.get("f"), 2, day - lay["card_frauds"] + 1, day, kept_day, top)[0])
    since = rec.t - lay["size"][_DAY]
    recent = card.get("r", {})
    for kind in ("terminal", "merchant", "country"):
        out.append(sum(1 for when in recent.get(kind, {}).values() if when > since) if kind in rec.ids else -1)
    return [*out, seen.get("device", -1), seen.get("terminal", -1)]


def place_row(place: dict[str, Any] | None, day: int, lay: dict[str, Any]) -> list[int]:
    """A transaction's terminal (or merchant) values of the store reply, from the place after it (None: the payment
    has no such place)."""
    if place is None:
        return [-1] * (len(lay["place_windows"]) + 2 * len(lay["fraud_windows"]))
    kept = lay["place_kept"]
    top = _newest(place.get("d"), 2)
    out = [_sum(place.get("d"), 2, day - n + 1, day, kept, top)[0] for n in lay["place_windows"]]
    last = day - lay["label_delay"]
    for n in lay["fraud_windows"]:
        out.append(_sum(place.get("f"), 2, last - n + 1, last, kept, top)[0])
        out.append(_sum(place.get("d"), 2, last - n + 1, last, kept, top)[0])
    return out


class InMemoryFeatureStore:
    """Feature state in process memory. Same interface as :class:`features.store.RedisFeatureStore`.

    ``values`` holds what Redis holds, decoded: ``applied:<token>:<block>`` {txn id: "", "~": ""}, ``label:<txn>``
    "version,fraud", ``blocked:<token>`` the fraud ids, and each entity's plain state under its base's key
    (``card:<token>``, ``terminal:<id>``, ``merchant:<id>``).
    """

    def __init__(self, prefix: str = "fp:v4:", *, recent_items: int = RECENT_ITEMS) -> None:
        self.prefix = prefix
        self.layout = layout(recent_items=recent_items, marker_ttl_s=1, entity_ttl_s=1, label_ttl_s=1)
        self.values: dict[str, Any] = {}

    def raw(self, txns: Sequence[Transaction]) -> StoreReply:
        """What the Redis store answers for ``txns``: their state after applying each once."""
        lay = self.layout
        rows: list[list[int]] = []
        previous: list[list[float]] = []
        blocked = {txn.card_token: tuple(self.values[key].split()) for txn in txns
                   if (key := keys.blocked(self.prefix, txn.card_token)) in self.values}  # fmt: skip
        for txn in txns:
            one = plan(txn)
            rec, _ = Record.unpack(one.record)
            block = one.day // lay["marker_days"]
            applied = mark(self.values.setdefault(keys.applied(self.prefix, one.card, block), {}), one.txn_id)
            card_key = keys.card(self.prefix, one.card)
            card: dict[str, Any] = self.values.get(card_key, {})
            before, seen = previous_of(card, rec)
            previous.append(before)
            if applied:
                apply_card(card, rec, lay)
                self.values[card_key] = card
            row = [int(applied), *card_row(card, rec, seen, lay)]
            for kind, ident in (("terminal", one.terminal), ("merchant", one.merchant)):
                place: dict[str, Any] | None = None
                if ident:
                    key = self.prefix + keys.entity(kind, ident)
                    place = self.values.get(key, {})
                    if applied:
                        apply_place(place, one.day, lay)
                        self.values[key] = place
                row += place_row(place, one.day, lay)
            rows.append(row)
        return StoreReply.from_rows(rows, previous, blocked)

    def begin(self, txns: Sequence[Transaction]) -> StoreReply:
        """:meth:`raw`, its reply kept for :meth:`end` (the Redis store returns before the reply is read)."""
        return self.raw(txns)

    def end(self, flight: StoreReply) -> StoreReply:
        """The reply of a batch :meth:`begin` applied."""
        return flight

    def cancel(self, flight: StoreReply) -> None:
        """Give up a batch :meth:`begin` applied (nothing to undo: delivering it again reads it)."""

    def stream(self, batches: Iterable[Sequence[Transaction]]) -> Iterator[StoreReply]:
        """:meth:`raw` for each batch in turn (the Redis store pipelines them and takes batch k+1 before it yields
        reply k; the replies are the same)."""
        return (self.raw(txns) for txns in batches)

    def apply(self, txns: Sequence[Transaction]) -> list[Snapshot]:
        """Apply each transaction once (a redelivery is read, not re-applied) and return the snapshots, in order."""
        return decode_reply(self.raw(txns), txns)

    def blocked(self, card_token: str) -> tuple[str, ...]:
        """The transactions whose confirmed fraud blocks the card (empty: not blocked)."""
        return tuple(self.values.get(keys.blocked(self.prefix, card_token), "").split())

    def _block(self, token: str, txn_id: str, fraud: bool) -> None:
        """Add (``fraud``) or remove ``txn_id`` in the card's block list; no list when empty (``apply.lua``)."""
        key = keys.blocked(self.prefix, token)
        kept = [i for i in self.values.get(key, "").split() if i != txn_id or fraud]
        if fraud and txn_id not in kept:
            kept.append(txn_id)
        if kept:
            self.values[key] = " ".join(kept)
        else:
            self.values.pop(key, None)

    def apply_labels(self, labels: Sequence[Label]) -> int:
        """Apply each label newer (by version) than the last applied for its transaction (and keep its card's
        block: :mod:`features.plan`); return how many."""
        applied = 0
        for label in labels:
            txn_id, version, fraud, day, *entities = label_plan(label, self.layout["size"][_DAY])
            state_key = keys.label(self.prefix, txn_id)
            last_version, last_fraud = (int(x) for x in self.values.get(state_key, "0,0").split(","))
            if version <= last_version:
                continue
            delta = fraud - last_fraud
            if delta:
                for entity in filter(None, entities):
                    key = f"{self.prefix}{entity}"
                    state = self.values.get(key, {})
                    if apply_fraud(state, day, delta, entity.startswith("card:"), self.layout):
                        self.values[key] = state
                self._block(label.card_token, txn_id, delta > 0)
            self.values[state_key] = f"{version},{fraud}"
            applied += 1
        return applied
