"""The in-memory twin of the Redis feature store: the same operations, in Python, on dicts.

It mirrors ``features/apply.lua`` step by step (and returns the same values per transaction), so unit tests can
run without Redis and the parity test can hold the two equal on generated sequences, in replies and in state (the
Redis blobs decoded by :mod:`features.blobs` into this module's plain values). It is
also the sequential reference the offline builder is checked against. Key expiry (wall-clock housekeeping in Redis)
is not modelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from features.formulas import RECENT_ITEMS
from features.plan import KINDS, RECORD, label_plan, layout, plan
from features.snapshot import Snapshot, StoreReply, decode_reply
from fraudpipe.contracts import Label, Transaction

__all__ = ["InMemoryFeatureStore"]

_DAY = "d"


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


class InMemoryFeatureStore:
    """Feature state in process memory. Same interface as :class:`features.store.RedisFeatureStore`."""

    def __init__(self, prefix: str = "fp:v2:", *, recent_items: int = RECENT_ITEMS) -> None:
        self.prefix = prefix
        self.layout = layout(recent_items=recent_items, marker_ttl_s=1, entity_ttl_s=1, label_ttl_s=1)
        self.values: dict[str, Any] = {}  # key -> marker "1", label state "v,f", or an entity's map

    def _bucket(self, micros: int, res: str) -> int:
        return micros // int(self.layout["size"][res])

    def raw(self, txns: Sequence[Transaction]) -> StoreReply:
        """What the Redis store answers for ``txns``: their state after applying each once."""
        lay = self.layout
        rows: list[list[int]] = []
        previous: list[list[float]] = []
        kept_day = lay["kept"][_DAY]
        nan = float("nan")
        for txn in txns:
            txn_id, card_id, terminal_id, merchant_id, record = plan(txn)
            t, amount, square, has_geo, lat, lon, mask, *raw_ids = RECORD.unpack(record)
            ids = {kind: int.from_bytes(raw_ids[i], "little") for i, kind in enumerate(KINDS) if mask >> i & 1}
            since = t - lay["size"][_DAY]
            card_key = f"{self.prefix}card:{card_id}"
            marker = f"{self.prefix}seen:{txn_id}"
            applied = marker not in self.values
            if applied:
                self.values[marker] = "1"
            card: dict[str, Any] = self.values.get(card_key, {})
            pcp = card.get("pcp")
            previous.append([float(card["pt"]) if "pt" in card else nan, *(map(float, pcp) if pcp else [nan] * 3)])
            recent: dict[str, dict[int, int]] = card.get("r", {})
            seen = {kind: int(ids[kind] in recent.get(kind, {})) for kind in ("device", "terminal") if kind in ids}
            if applied:
                for res in lay["card_rings"]:
                    card[res], _ = _add(card.get(res, []), 4, self._bucket(t, res), lay["kept"][res],
                                        [1, amount, square], True, None)  # fmt: skip
                if "f" in card:
                    card["f"] = _prune(card["f"], 2, _newest(card[_DAY], 4), kept_day)
                    if not card["f"]:
                        del card["f"]
                if "pt" not in card or t > card["pt"]:
                    card["pt"] = t
                if has_geo and ("pcp" not in card or t >= card["pcp"][0]):
                    card["pcp"] = [t, lat, lon]
                for kind, item in ids.items():
                    members = recent.setdefault(kind, {})
                    if item not in members or t > members[item]:
                        members[item] = t
                    if len(members) > lay["recent_items"]:
                        del members[min(members, key=lambda ident: (members[ident], ident))]
                if recent:
                    card["r"] = recent
                self.values[card_key] = card
            out = [int(applied)]
            for res, length in lay["card_windows"]:
                last = self._bucket(t, res)
                ring = card.get(res, [])
                out += _sum(ring, 4, last - length + 1, last, lay["kept"][res], _newest(ring, 4))
            top = _newest(card.get(_DAY), 4)
            day = self._bucket(t, _DAY)
            out.append(int(top is not None and day > top - kept_day))
            out.append(_sum(card.get("f"), 2, day - lay["card_frauds"] + 1, day, kept_day, top)[0])
            for kind in ("terminal", "merchant", "country"):
                out.append(sum(1 for when in recent.get(kind, {}).values() if when > since) if kind in ids else -1)
            out += [seen.get("device", -1), seen.get("terminal", -1)]
            for kind, ident in (("terminal", terminal_id), ("merchant", merchant_id)):
                if not ident:
                    out += [-1] * (len(lay["place_windows"]) + 2 * len(lay["fraud_windows"]))
                    continue
                key = f"{self.prefix}{kind}:{ident}"
                place: dict[str, Any] = self.values.get(key, {})
                kept = lay["place_kept"]
                if applied:
                    place["d"], _ = _add(place.get("d", []), 2, day, kept, [1], True, None)
                    if "f" in place:
                        place["f"] = _prune(place["f"], 2, _newest(place["d"], 2), kept)
                        if not place["f"]:
                            del place["f"]
                    self.values[key] = place
                place_top = _newest(place.get("d"), 2)
                out += [_sum(place.get("d"), 2, day - n + 1, day, kept, place_top)[0] for n in lay["place_windows"]]
                last = day - lay["label_delay"]
                for n in lay["fraud_windows"]:
                    out.append(_sum(place.get("f"), 2, last - n + 1, last, kept, place_top)[0])
                    out.append(_sum(place.get("d"), 2, last - n + 1, last, kept, place_top)[0])
            rows.append(out)
        return StoreReply.from_rows(rows, previous)

    def apply(self, txns: Sequence[Transaction]) -> list[Snapshot]:
        """Apply each transaction once (a redelivery is read, not re-applied) and return the snapshots, in order."""
        return decode_reply(self.raw(txns), txns)

    def apply_labels(self, labels: Sequence[Label]) -> int:
        """Apply each label newer (by version) than the last applied for its transaction; return how many."""
        applied = 0
        for label in labels:
            txn_id, version, fraud, day, *entities = label_plan(label, self.layout["size"][_DAY])
            state_key = f"{self.prefix}label:{txn_id}"
            last_version, last_fraud = (int(x) for x in self.values.get(state_key, "0,0").split(","))
            if version <= last_version:
                continue
            delta = fraud - last_fraud
            if delta:
                for entity in filter(None, entities):
                    key = f"{self.prefix}{entity}"
                    state = self.values.get(key, {})
                    width, kept = (
                        (4, self.layout["kept"][_DAY]) if entity.startswith("card:") else (2, self.layout["place_kept"])
                    )
                    ring, changed = _add(
                        state.get("f", []), 2, day, kept, [delta], False, _newest(state.get("d"), width)
                    )
                    if changed:
                        state["f"] = ring
                        self.values[key] = state
            self.values[state_key] = f"{version},{fraud}"
            applied += 1
        return applied
