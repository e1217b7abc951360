"""The online feature store on Redis: one atomic script call per micro-batch.

:meth:`RedisFeatureStore.raw` sends the plans of a whole batch (:mod:`features.plan`) to ``features/apply.lua``
in one ``EVALSHA``: for each transaction, in order, the script applies its increments exactly once (a marker keyed
by the transaction id, set in the same atomic step) and returns the entity state as it stood after it, in binary
(:mod:`features.blobs`); the window sums are then taken with numpy for the whole batch. A redelivered transaction
is read, never re-applied; labels go through the same script, de-duplicated by (transaction id, label version).
Key layout: :mod:`features.plan`.

The script names keys inside its arguments, so it needs a standalone Redis (or a primary with replicas), not a
Redis Cluster: sharding one card's keys together would need hash tags, which a later change can add.

Budgets are short on purpose (settings: ``socket_timeout_ms``): a slow or absent Redis raises
:class:`StoreUnavailableError` quickly, and the caller decides (the streaming worker degrades its decisions).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

import numpy as np
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from features.blobs import decode_card, store_reply
from features.formulas import RECENT_ITEMS
from features.plan import RECORD, label_plan, layout, plan
from features.snapshot import Snapshot, StoreReply, decode_reply
from fraudpipe.contracts import Label, Transaction
from fraudpipe.settings import RedisSettings

__all__ = ["RedisFeatureStore", "StoreUnavailableError", "redis_client"]

_SCRIPT = files("features").joinpath("apply.lua").read_text()
DAY_S = 86_400


class StoreUnavailableError(RuntimeError):
    """Redis did not answer within the budget, or the connection failed."""


def redis_client(settings: RedisSettings) -> redis.Redis:
    """A client with the hot path's budgets: short timeouts, no retries (the caller decides what to do)."""
    return redis.Redis.from_url(
        settings.url,
        username=settings.username,
        password=settings.password.get_secret_value() if settings.password else None,
        socket_timeout=settings.socket_timeout_ms / 1000,
        socket_connect_timeout=settings.connect_timeout_ms / 1000,
        retry_on_timeout=False,
        health_check_interval=30,
    )


class RedisFeatureStore:
    """Online feature state in Redis. Same interface as :class:`features.memory.InMemoryFeatureStore`.

    ``marker_ttl_s`` must cover the longest replay or redelivery horizon (default 40 days); ``entity_ttl_s`` ends
    the state of cards, terminals and merchants inactive that long (default 32 days: past every window).
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "fp:v2:",
        *,
        marker_ttl_s: int = 40 * DAY_S,
        entity_ttl_s: int = 32 * DAY_S,
        label_ttl_s: int = 180 * DAY_S,
        recent_items: int = RECENT_ITEMS,
    ) -> None:
        if not 0 < recent_items < 0xFFFF:
            raise ValueError("recent_items must be between 1 and 65534")
        self.client = client
        self.prefix = prefix
        self.layout = layout(
            recent_items=recent_items, marker_ttl_s=marker_ttl_s, entity_ttl_s=entity_ttl_s, label_ttl_s=label_ttl_s
        )
        self._layout = json.dumps(self.layout)
        self._script = client.register_script(_SCRIPT)

    def _call(self, mode: str, args: list[Any]) -> Any:
        try:
            return self._script(keys=[], args=[mode, self._layout, self.prefix, *args])
        except (RedisConnectionError, RedisTimeoutError) as error:
            raise StoreUnavailableError(f"Redis unavailable: {error}") from None

    def raw(self, txns: Sequence[Transaction]) -> StoreReply:
        """Apply ``txns`` (each once) and return their state after it, for the formulas.

        Raises:
            StoreUnavailableError: Redis did not answer within the budget.
        """
        plans = [plan(txn) for txn in txns]
        parts = self._call("txns", [value for one in plans for value in one]) if txns else [b""] * 12
        micros = np.array([RECORD.unpack_from(one[4])[0] for one in plans], dtype=np.int64)  # the record's time
        return store_reply(parts, micros, self.layout)

    def apply(self, txns: Sequence[Transaction]) -> list[Snapshot]:
        """Apply each transaction once (a redelivery is read, not re-applied) and return the snapshots, in order.

        Raises:
            StoreUnavailableError: Redis did not answer within the budget.
        """
        return decode_reply(self.raw(txns), txns)

    def card_state(self, card_token: str) -> dict[str, Any] | None:
        """The card's stored state as plain values (:func:`features.blobs.decode_card`); ``None`` if it has none."""
        blob = self._call("show", [card_token])
        return None if blob is None else decode_card(blob)

    def apply_labels(self, labels: Sequence[Label]) -> int:
        """Apply each label newer (by version) than the last applied for its transaction; return how many.

        Raises:
            StoreUnavailableError: Redis did not answer within the budget.
        """
        if not labels:
            return 0
        day_us = self.layout["size"]["d"]
        return int(self._call("labels", [value for label in labels for value in label_plan(label, day_us)]))
