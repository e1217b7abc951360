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
        self.hashes: dict[str, dict[str, str]] = {}
        self.zsets: dict[str, dict[str, float]] = {}

    # --- the Redis commands the script uses -----------------------------------------------------------------

    def _hget(self, key: str, field: str) -> str | None:
        return self.hashes.get(key, {}).get(field)

    def _hincrby(self, key: str, field: str, amount: int) -> None:
        table = self.hashes.setdefault(key, {})
        table[field] = str(int(table.get(field, "0")) + int(amount))

    def _newest(self, key: str, res: str) -> int | None:
        value = self._hget(key, f"{res}:new")
        return int(value) if value is not None else None

    def _bump(self, key: str, res: str, idx: int, kept: int, fields: dict[str, int]) -> None:
        top = self._newest(key, res)
        if top is not None and idx <= top - kept:
            return
        for suffix, amount in fields.items():
            self._hincrby(key, f"{res}{idx}:{suffix}", amount)
        if top is None or idx > top:
            self.hashes.setdefault(key, {})[f"{res}:new"] = str(idx)
            if top is not None:
                table = self.hashes[key]
                for j in range(top - kept + 1, min(top, idx - kept) + 1):
                    for suffix in ("n", "s", "q", "f"):
                        table.pop(f"{res}{j}:{suffix}", None)

    def _total(self, key: str, res: str, first: int, last: int, kept: int, suffixes: Sequence[str]) -> list[int]:
        sums = [0] * len(suffixes)
        top = self._newest(key, res)
        if top is None:
            return sums
        for j in range(max(first, top - kept + 1), last + 1):
            for i, suffix in enumerate(suffixes):
                if (value := self._hget(key, f"{res}{j}:{suffix}")) is not None:
                    sums[i] += int(value)
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
            if applied:
                for res, idx, kept in buckets:
                    self._bump(card, res, idx, kept, {"n": 1, "s": amount, "q": square})
                if previous_time == "" or t > int(previous_time):
                    self.hashes.setdefault(card, {})["pt"] = micros
                if geo:
                    stored = int(previous_present.split(",")[0]) if previous_present else None
                    if stored is None or t >= stored:
                        self.hashes.setdefault(card, {})["pcp"] = f"{micros},{geo}"
                for key, item, _, _ in recents:
                    self._zadd_gt(key, t, item)
                for place in places:
                    if place:
                        self._bump(place[0], "d", place[1], place[2], {"n": 1})
            out.append(int(applied))
            for res, first, last, kept in windows:
                out += self._total(card, res, first, last, kept, ("n", "s", "q"))
            top = self._newest(card, "d")
            out.append(int(top is not None and own[0] > top - own[1]))
            out.append(self._total(card, "d", frauds30[0], frauds30[1], own[1], ("f",))[0])
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
                out += [self._total(place[0], "d", f, last, place[2], ("n",))[0] for f, last in place[3]]
                out += [self._total(place[0], "d", f, last, place[2], ("f",))[0] for f, last in place[4]]
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
                for key in entities:
                    top = self._newest(key, "d")
                    if top is None or day > top - kept:
                        self._hincrby(key, f"d{day}:f", delta)
            self.hashes[state] = {"v": str(version), "f": str(fraud)}
            applied += 1
        return applied
