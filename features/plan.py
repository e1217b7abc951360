"""What applying a transaction means for the online state: pure, shared by the Redis store and its in-memory twin.

A :class:`Plan` lists, for one transaction, the bucket increments to apply (once: guarded by a marker keyed by the
transaction id) and the reads that make its snapshot. Keys (``P`` = ``settings.redis.key_prefix``, ``fp:v1:``)::

    P seen:<txn_id>               marker: the transaction's increments were applied (TTL = replay horizon)
    P label:<txn_id>              hash v (label version), f (1 fraud / 0 genuine) of the last label applied
    P card:<token>                hash: rings m5, h, d (bucket, count, cents, cents²) and f (day, frauds),
                                  pt latest event time (µs), pcp "µs,lat,lon"
    P card:<token>:<kind>         sorted set, kind in terminal|merchant|country|device: item -> last seen (µs),
                                  RECENT_ITEMS newest kept
    P terminal:<id>, P merchant:<id>   hash: rings d (day, payments) and f (day, frauds)

A ring is one hash field holding a MessagePack array (see ``features/apply.lua``): one field read and written per
resolution instead of one per bucket. Bucket indexes are those of :mod:`features.windows`. Times travel as integer
microseconds in decimal strings: exact in Redis' Lua doubles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from features.formulas import CARD_WINDOWS, PLACE_WINDOWS, cents, square
from features.windows import KEPT, Resolution, bucket_of, window
from fraudpipe.contracts import Label, Transaction

__all__ = ["Keys", "Plan", "label_plan", "plan"]

_DAY_US = 86_400_000_000


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under a prefix."""

    prefix: str

    def seen(self, txn_id: str) -> str:
        return f"{self.prefix}seen:{txn_id}"

    def label(self, txn_id: str) -> str:
        return f"{self.prefix}label:{txn_id}"

    def card(self, token: str) -> str:
        return f"{self.prefix}card:{token}"

    def recent(self, token: str, kind: str) -> str:
        return f"{self.prefix}card:{token}:{kind}"

    def place(self, kind: str, ident: str) -> str:
        return f"{self.prefix}{kind}:{ident}"


@dataclass(frozen=True, slots=True)
class Plan:
    """One transaction's operations, as the JSON-ready list the Lua script reads (see ``features/apply.lua``)."""

    payload: list[Any]


def _range(epoch_s: float, name: str) -> list[Any]:
    resolution, first, last = window(epoch_s, name)
    return [resolution, first, last, KEPT[resolution]]


def plan(txn: Transaction, keys: Keys) -> Plan:
    """The operations that apply ``txn`` and read its snapshot."""
    epoch_s = txn.event_time.timestamp()
    micros = round(epoch_s * 1_000_000)
    amount = cents(txn.amount)
    resolutions: tuple[Resolution, ...] = ("m5", "h", "d")
    day = bucket_of(epoch_s, "d")
    geo = (
        f"{txn.lat!r},{txn.lon!r}"
        if txn.channel == "card_present" and txn.lat is not None and txn.lon is not None
        else ""
    )
    recents = [
        [keys.recent(txn.card_token, kind), item, int(kind != "device"), int(kind in {"device", "terminal"})]
        for kind, item in (
            ("terminal", txn.terminal_id),
            ("merchant", txn.merchant_id),
            ("country", txn.country),
            ("device", txn.device_id),
        )
        if item is not None
    ]
    places = [
        [
            keys.place(kind, ident),
            day,
            KEPT["d"],
            [_range(epoch_s, w)[1:3] for w in PLACE_WINDOWS],
            [_range(epoch_s, w)[1:3] for w in ("7d", "30d")],
        ]
        if ident is not None
        else ""
        for kind, ident in (("terminal", txn.terminal_id), ("merchant", txn.merchant_id))
    ]
    return Plan(
        [
            keys.seen(txn.txn_id),
            keys.card(txn.card_token),
            str(micros),
            str(micros - _DAY_US),
            [[r, bucket_of(epoch_s, r), KEPT[r]] for r in resolutions],
            amount,
            square(amount),
            [_range(epoch_s, w) for w in CARD_WINDOWS],
            [day, KEPT["d"]],
            _range(epoch_s, "30d")[1:3],
            geo,
            recents,
            places,
        ]
    )


def label_plan(label: Label, keys: Keys) -> list[Any]:
    """The operations that apply ``label`` (fraud counters of its card, terminal and merchant, by payment day)."""
    day = bucket_of(label.event_time.timestamp(), "d")
    entities = [[keys.card(label.card_token), 4]] + [
        [keys.place(kind, ident), 2]
        for kind, ident in (("terminal", label.terminal_id), ("merchant", label.merchant_id))
        if ident is not None
    ]
    return [keys.label(label.txn_id), label.label_version, int(label.is_fraud), day, KEPT["d"], entities]
