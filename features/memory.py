"""The in-memory twin of the Redis feature store: the same operations, in Python, on dicts.

It mirrors ``features/apply.lua`` step by step (and returns the same 32 values per transaction), so unit tests can
run without Redis and the parity test can hold the two equal on generated sequences. It is also the sequential
reference the offline builder is checked against. Key expiry (wall-clock housekeeping in Redis) is not modelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from features.plan import Keys, label_plan, plan
from features.snapshot import Snapshot, decode_reply
from fraudpipe.contracts import Label, Transaction

__all__ = ["InMemoryFeatureStore"]


class InMemoryFeatureStore:
    """Feature state in process memory. Same interface as :class:`features.store.RedisFeatureStore`."""

    def __init__(self, prefix: str = "fp:v1:", *, recent_items: int = 64) -> None:
        self.keys = Keys(prefix)
        self.recent_items = recent_items
        self.strings: dict[str, str] = {}
        self.hashes: dict[str, dict[str, Any]] = {}  # rings as lists of ints, other fields as strings
        self.zsets: dict[str, dict[str, float]] = {}

    # --- the script's building blocks, on plain lists ----------------------------------------------------

    def _hget(self, key: str, field: str) -> Any:
        return self.hashes.get(key, {}).get(field)

    def _load(self, key: str, field: str) -> list[int]:
        return list(self._hget(key, field) or [])

    def _save(self, key: str, field: str, ring: list[int]) -> None:
        self.hashes.setdefault(key, {})[field] = ring

    @staticmethod
    def _newest(ring: list[int], width: int) -> int | None:
        return ring[-width] if ring else None

    @classmethod
    def _add(cls, ring: list[int], width: int, idx: int, kept: int, deltas: list[int], advances: bool,
             limit: int | None) -> tuple[list[int], bool]:  # fmt: skip
        top = cls._newest(ring, width) if advances else limit
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
        if advances and (top is None or idx > top):
            entries = [entry for entry in entries if entry[0] > idx - kept]
        return [value for entry in entries for value in entry], True

    @staticmethod
    def _prune(ring: list[int], width: int, top: int | None, kept: int) -> tuple[list[int], bool]:
        if top is None or not ring or ring[0] > top - kept:
            return ring, False
        kept_entries = [ring[i : i + width] for i in range(0, len(ring), width) if ring[i] > top - kept]
        return [value for entry in kept_entries for value in entry], True

    @staticmethod
    def _sum(ring: list[int], width: int, first: int, last: int, kept: int, top: int | None) -> list[int]:
        sums = [0] * (width - 1)
        if top is None:
            return sums
        low = max(first, top - kept + 1)
        for i in range(0, len(ring), width):
            if low <= ring[i] <= last:
                for d in range(1, width):
                    sums[d - 1] += ring[i + d]
        return sums

    def _zadd_gt(self, key: str, score: float, member: str) -> None:
        members = self.zsets.setdefault(key, {})
        if member not in members or score > members[member]:
            members[member] = score
        if len(members) > self.recent_items:
            ordered = sorted(members.items(), key=lambda item: (item[1], item[0]))
            for name, _ in ordered[: len(members) - self.recent_items]:
                del members[name]

    # --- the two operations ---------------------------------------------------------------------------------

    def raw(self, txns: Sequence[Transaction]) -> list[Any]:
        """The flat reply the Lua script would give for ``txns`` (REPLY_WIDTH values each)."""
        out: list[Any] = []
        for txn in txns:
            p = plan(txn, self.keys).payload
            marker, card, micros, since, buckets, amount, square, windows, own, frauds30, geo, recents, places = p
            t = int(micros)
            applied = marker not in self.strings
            if applied:
                self.strings[marker] = "1"
            previous_time = self._hget(card, "pt") or ""
            previous_present = self._hget(card, "pcp") or ""
            seen = [int(r[1] in self.zsets.get(r[0], {})) for r in recents]
            rings = {res: self._load(card, res) for res, _, _ in buckets}
            table = self.hashes.setdefault(card, {})
            if applied:
                for res, idx, kept in buckets:
                    rings[res], changed = self._add(rings[res], 4, idx, kept, [1, amount, square], True, None)
                    if changed:
                        self._save(card, res, rings[res])
                if previous_time == "" or t > int(previous_time):
                    table["pt"] = micros
                if geo:
                    stored = int(previous_present.split(",")[0]) if previous_present else None
                    if stored is None or t >= stored:
                        table["pcp"] = f"{micros},{geo}"
                for key, item, _, _ in recents:
                    self._zadd_gt(key, t, item)
            out.append(int(applied))
            for res, first, last, kept in windows:
                out += self._sum(rings[res], 4, first, last, kept, self._newest(rings[res], 4))
            top = self._newest(rings["d"], 4)
            out.append(int(top is not None and own[0] > top - own[1]))
            card_frauds, pruned = self._prune(self._load(card, "f"), 2, top, own[1])
            if pruned:
                self._save(card, "f", card_frauds)
            out.append(self._sum(card_frauds, 2, frauds30[0], frauds30[1], own[1], top)[0])
            out += [previous_time, previous_present]
            distinct = {"terminal": -1, "merchant": -1, "country": -1}
            flags = {"device": -1, "terminal": -1}
            for i, (key, _, wants_distinct, wants_flag) in enumerate(recents):
                kind = key.rsplit(":", 1)[1]
                if wants_distinct:
                    distinct[kind] = sum(1 for score in self.zsets.get(key, {}).values() if score > int(since))
                if wants_flag:
                    flags[kind] = seen[i]
            out += [distinct["terminal"], distinct["merchant"], distinct["country"], flags["device"], flags["terminal"]]
            for place in places:
                if not place:
                    out += [-1] * 5
                    continue
                key, day, kept, count_ranges, fraud_ranges = place
                ring = self._load(key, "d")
                if applied:
                    ring, changed = self._add(ring, 2, day, kept, [1], True, None)
                    if changed:
                        self._save(key, "d", ring)
                place_top = self._newest(ring, 2)
                out += [self._sum(ring, 2, first, last, kept, place_top)[0] for first, last in count_ranges]
                frauds, dropped = self._prune(self._load(key, "f"), 2, place_top, kept)
                if dropped:
                    self._save(key, "f", frauds)
                out += [self._sum(frauds, 2, first, last, kept, place_top)[0] for first, last in fraud_ranges]
        return out

    def apply(self, txns: Sequence[Transaction]) -> list[Snapshot]:
        """Apply each transaction once (a redelivery is read, not re-applied) and return the snapshots, in order."""
        return decode_reply(self.raw(txns), txns)

    def apply_labels(self, labels: Sequence[Label]) -> int:
        """Apply each label newer (by version) than the last applied for its transaction; return how many."""
        applied = 0
        for label in labels:
            state, version, fraud, day, kept, entities = label_plan(label, self.keys)
            current = self.hashes.get(state, {})
            if version <= int(current.get("v", "0")):
                continue
            delta = fraud - int(current.get("f", "0"))
            if delta:
                for key, width in entities:
                    top = self._newest(self._load(key, "d"), width)
                    ring, changed = self._add(self._load(key, "f"), 2, day, kept, [delta], False, top)
                    if changed:
                        self._save(key, "f", ring)
            self.hashes[state] = {"v": str(version), "f": str(fraud)}
            applied += 1
        return applied
