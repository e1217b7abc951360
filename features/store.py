"""The online feature store on Redis: one atomic script call per micro-batch.

:meth:`RedisFeatureStore.apply` sends the plans of a whole batch (:mod:`features.plan`) to ``features/apply.lua``
in one ``EVALSHA``: for each transaction, in order, the script applies its increments exactly once (a marker keyed
by the transaction id, set in the same atomic step) and returns the snapshot its features are computed from
(:mod:`features.snapshot`). A redelivered transaction is read, never re-applied; labels go through the same
script, de-duplicated by (transaction id, label version). Key layout: :mod:`features.plan`.

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

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from features.formulas import RECENT_ITEMS
from features.plan import label_plan, layout, plan
from features.snapshot import Snapshot, decode_reply
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
        prefix: str = "fp:v1:",
        *,
        marker_ttl_s: int = 40 * DAY_S,
        entity_ttl_s: int = 32 * DAY_S,
        label_ttl_s: int = 180 * DAY_S,
        recent_items: int = RECENT_ITEMS,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self._layout = json.dumps(
            layout(
                recent_items=recent_items, marker_ttl_s=marker_ttl_s, entity_ttl_s=entity_ttl_s, label_ttl_s=label_ttl_s
            )
        )
        self._script = client.register_script(_SCRIPT)

    def _call(self, *args: Any) -> Any:
        try:
            return self._script(keys=[], args=list(args))
        except (RedisConnectionError, RedisTimeoutError) as error:
            raise StoreUnavailableError(f"Redis unavailable: {error}") from None

    def raw(self, txns: Sequence[Transaction]) -> list[Any]:
        """The script's flat reply for ``txns`` (REPLY_WIDTH values each)."""
        if not txns:
            return []
        payload = json.dumps([plan(txn) for txn in txns], separators=(",", ":"))
        return list(self._call("txns", payload, self._layout, self.prefix))

    def apply(self, txns: Sequence[Transaction]) -> list[Snapshot]:
        """Apply each transaction once (a redelivery is read, not re-applied) and return the snapshots, in order.

        Raises:
            StoreUnavailableError: Redis did not answer within the budget.
        """
        return decode_reply(self.raw(txns), txns)

    def card_state(self, card_token: str) -> dict[str, Any] | None:
        """The card's stored state (rings, latest time, recent items) as plain values; ``None`` if it has none."""
        reply = self._call("show", json.dumps([card_token]), self._layout, self.prefix)
        return None if reply is None else dict(json.loads(reply))

    def apply_labels(self, labels: Sequence[Label]) -> int:
        """Apply each label newer (by version) than the last applied for its transaction; return how many.

        Raises:
            StoreUnavailableError: Redis did not answer within the budget.
        """
        if not labels:
            return 0
        payload = json.dumps([label_plan(label) for label in labels], separators=(",", ":"))
        return int(self._call("labels", payload, self._layout, self.prefix))
