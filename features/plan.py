"""What applying a transaction means for the online state: pure, shared by the Redis store and its in-memory twin.

A plan is a transaction reduced to what the script needs (ids, time, cents, geo, items); the layout carries the
bucket sizes, retention and windows of :mod:`features.windows`, so the script holds no constant of its own.
Keys (``P`` = ``settings.redis.key_prefix``, ``fp:v1:``)::

    P seen:<txn_id>               marker: the transaction's increments were applied (TTL = replay horizon)
    P label:<txn_id>              "version,fraud" of the last label applied (fraud 1 / genuine 0)
    P card:<token>                MessagePack map: rings m5, h, d (bucket, count, cents, cents²), f (day, frauds),
                                  pt latest event time (µs), pcp [µs, lat, lon], r {kind: {item: last seen µs}}
                                  for kind in terminal, merchant, country, device (RECENT_ITEMS newest each)
    P terminal:<id>, P merchant:<id>   MessagePack map: rings d (day, payments) and f (day, frauds)

One key per entity, read and written once per transaction (see ``features/apply.lua``). Bucket indexes are those of
:mod:`features.windows`, computed by the script from integer microseconds, which travel as decimal text (exact in
Redis' Lua doubles).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from features.formulas import CARD_WINDOWS, FRAUD_WINDOWS, PLACE_WINDOWS, cents, square
from features.windows import KEPT, LABEL_DELAY_DAYS, PLACE_KEPT_DAYS, RESOLUTIONS, WINDOWS
from fraudpipe.contracts import Label, Transaction

__all__ = ["label_plan", "layout", "micros_of", "plan"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def layout(*, recent_items: int, marker_ttl_s: int, entity_ttl_s: int, label_ttl_s: int) -> dict[str, Any]:
    """Bucket sizes (µs), retention, windows and TTLs, as the script reads them: :mod:`features.windows` in JSON."""
    card_windows = [[WINDOWS[name].resolution, WINDOWS[name].buckets] for name in CARD_WINDOWS]
    return {
        "size": {res: seconds * 1_000_000 for res, seconds in RESOLUTIONS.items()},
        "kept": dict(KEPT),
        "card_rings": list(RESOLUTIONS),
        "card_windows": card_windows,
        "card_frauds": WINDOWS["30d"].buckets,
        "place_windows": [WINDOWS[name].buckets for name in PLACE_WINDOWS],
        "fraud_windows": [WINDOWS[name].buckets for name in FRAUD_WINDOWS],
        "label_delay": LABEL_DELAY_DAYS,
        "place_kept": PLACE_KEPT_DAYS,
        "recent_items": recent_items,
        "marker_ttl": marker_ttl_s,
        "entity_ttl": entity_ttl_s,
        "label_ttl": label_ttl_s,
    }


def micros_of(event_time: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch (exact)."""
    delta = event_time - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def plan(txn: Transaction) -> list[Any]:
    """One transaction as the script reads it: ids, time (µs, text), cents, cents², geo, recent items."""
    amount = cents(txn.amount)
    geo = [txn.lat, txn.lon] if txn.channel == "card_present" and txn.lat is not None and txn.lon is not None else []
    return [
        txn.txn_id,
        txn.card_token,
        str(micros_of(txn.event_time)),
        amount,
        square(amount),
        geo,
        txn.terminal_id or "",
        txn.merchant_id or "",
        txn.country or "",
        txn.device_id or "",
    ]


def label_plan(label: Label) -> list[Any]:
    """One label as the script reads it: the entities whose fraud counters it moves, with their ring widths."""
    entities = [[f"card:{label.card_token}", 4, KEPT["d"]]] + [
        [f"{kind}:{ident}", 2, PLACE_KEPT_DAYS]
        for kind, ident in (("terminal", label.terminal_id), ("merchant", label.merchant_id))
        if ident is not None
    ]
    return [label.txn_id, label.label_version, int(label.is_fraud), str(micros_of(label.event_time)), entities]
