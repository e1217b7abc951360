"""The online feature store on Redis: one atomic transaction per micro-batch, a few bytes written per payment.

:meth:`RedisFeatureStore.raw` sends the plans of a whole batch (:mod:`features.plan`) to ``features/apply.lua``
and reads the entities back, in one ``MULTI``/``EXEC``: the script applies each transaction once (a marker per
transaction id, set in the same atomic step) by appending its record to its card, terminal and merchant, and
answers with each transaction's applied flag and where its entities' values stood right after it; the ``MGET``
that follows returns those values. :mod:`features.blobs` then reads every transaction's state after it, exactly as
if the records had been applied one at a time. A redelivered transaction is read, never re-applied; labels go
through the same script, de-duplicated by (transaction id, label version). Key layout: :mod:`features.plan`.
:meth:`RedisFeatureStore.stream` pipelines such transactions on one connection: Redis applies batch k+1 while
this client reads batch k.

Appending instead of rewriting keeps the work per payment small in Redis (and in its AOF and replication stream).
An entity's records are folded into its base once it has ``fold_after`` of them: by this client, from the value the
batch read (:mod:`features.fold`), written back with the next transaction it sends by the script's compare-and-set
``rebase`` (Redis' single thread only copies bytes); a label folds the entities it moves first, in the script.

The script names keys inside its arguments, so it needs a standalone Redis (or a primary with replicas), not a
Redis Cluster: sharding one card's keys together would need hash tags, which a later change can add.

Budgets are short on purpose (settings: ``socket_timeout_ms``): a slow or absent Redis raises
:class:`StoreUnavailableError` quickly, and the caller decides (the streaming worker degrades its decisions).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import hiredis
import redis
from redis.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ExecAbortError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from features.blobs import decode_card, replay
from features.fold import fold
from features.formulas import RECENT_ITEMS
from features.plan import label_plan, layout, plan
from features.reader import COMPILED, read_batch, read_compiled
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
    the state of cards, terminals and merchants inactive that long (default 32 days: past every window);
    ``fold_after`` bounds the records a card keeps before they are folded into its base (a terminal or merchant
    4 times as many: its records are 4 bytes); this client folds ``fold_group`` such entities together, or fewer
    when the first has waited ``fold_wait`` batches or one holds twice that many records. Replies are read by the C
    reader (:func:`features.reader.read_compiled`) when it is built and ``compiled`` is true; otherwise batches of
    ``vectorize_from`` transactions or more are read with numpy (:func:`features.reader.read_batch`), smaller ones
    record by record (:func:`features.blobs.replay`, cheaper for a few). All three are equal.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "fp:v3:",
        *,
        marker_ttl_s: int = 40 * DAY_S,
        entity_ttl_s: int = 32 * DAY_S,
        label_ttl_s: int = 180 * DAY_S,
        recent_items: int = RECENT_ITEMS,
        fold_after: int = 16,
        fold_group: int = 64,
        fold_wait: int = 16,
        vectorize_from: int = 24,
        compiled: bool = True,
    ) -> None:
        if not 0 < recent_items < 0xFFFF:
            raise ValueError("recent_items must be between 1 and 65534")
        if min(fold_after, fold_group, fold_wait) < 1:
            raise ValueError("fold_after, fold_group and fold_wait must be at least 1")
        self.client = client
        self.prefix = prefix
        self.layout = layout(
            recent_items=recent_items, marker_ttl_s=marker_ttl_s, entity_ttl_s=entity_ttl_s, label_ttl_s=label_ttl_s
        )
        self.fold_after, self.fold_group, self.fold_wait = fold_after, fold_group, fold_wait
        self.vectorize_from = vectorize_from
        self.compiled = compiled and COMPILED
        self._layout = json.dumps(self.layout)
        self._script = client.register_script(_SCRIPT)
        self._due: dict[str, bytes] = {}  # entities waiting to be folded: their value as last read
        self._due_since = 0  # batches since the first of them became due
        self._rebase: list[tuple[str, bytes, bytes]] = []  # (name, value folded, base) for the next transaction

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
        if not txns:
            return StoreReply.from_rows([], [])
        (reply,) = self.stream([txns])  # the stream run to its end: the connection goes back to the pool
        return reply

    def stream(self, batches: Iterable[Sequence[Transaction]]) -> Iterator[StoreReply]:
        """:meth:`raw` for each batch in turn, pipelined: batch k+1's transaction is sent before batch k's reply
        is read, so Redis applies k+1 while this process reads k (Redis pipelining, on one connection). Each batch
        is still one atomic transaction and they run in order, so every reply is the one :meth:`raw` would give;
        the folds found reading batch k are written back with batch k+2 (the write-back is a compare-and-set).

        Batch k+1 is taken from ``batches`` before reply k is yielded: it cannot depend on reply k. If the stream
        stops early (an error, or the caller leaves the loop), the batch in flight may have been applied without its
        reply being read; delivering it again is safe (it is read, not applied twice).

        Raises:
            StoreUnavailableError: Redis did not answer within the budget.
        """
        pool = self.client.connection_pool
        try:
            connection = pool.get_connection()
        except (RedisConnectionError, RedisTimeoutError) as error:
            raise StoreUnavailableError(f"Redis unavailable: {error}") from None
        in_flight: deque[_Sent] = deque()
        try:
            connection.check_health()  # type: ignore[no-untyped-call]  # here: sends skip it, a PING would misread
            for txns in batches:
                in_flight.append(self._send(connection, txns))
                if len(in_flight) == 2:
                    yield self._receive(connection, in_flight)
            while in_flight:
                yield self._receive(connection, in_flight)
        except (RedisConnectionError, RedisTimeoutError) as error:
            connection.disconnect()  # type: ignore[no-untyped-call]
            raise StoreUnavailableError(f"Redis unavailable: {error}") from None
        except GeneratorExit:  # the caller left at a yield: only the batch in flight is left unread
            if in_flight:
                connection.disconnect()  # type: ignore[no-untyped-call]
            raise
        except BaseException:
            connection.disconnect()  # type: ignore[no-untyped-call]  # replies may be left unread on it
            raise
        finally:
            pool.release(connection)

    def _send(self, connection: Connection, txns: Sequence[Transaction]) -> _Sent:
        """Send the batch's transaction (nothing for an empty batch) without waiting for its reply."""
        plans = [plan(txn) for txn in txns]
        names = list(dict.fromkeys(name for one in plans for name in _entities(one)))
        sent = _Sent(plans, [self.prefix + name for name in names])
        if plans:
            head = (self._script.sha, 0)
            if self._rebase:
                rebase = [part for entity in self._rebase for part in entity]
                sent.commands.append(("EVALSHA", *head, "rebase", self._layout, self.prefix, *rebase))
                sent.rebased = [name for name, _, _ in self._rebase]
                self._rebase = []  # sent once: if its transaction fails, the entities are folded again later
            txns_args = (v for one in plans for v in one)
            sent.commands.append(("EVALSHA", *head, "txns", self._layout, self.prefix, *txns_args))
            sent.commands.append(("MGET", *sent.keys))
            _send_transaction(connection, sent.commands)
        return sent

    def _receive(self, connection: Connection, in_flight: deque[_Sent]) -> StoreReply:
        """Read the oldest batch in flight: its transaction's reply, then its state after it.

        A Redis that lost the script (restarted, flushed, failed over) ran none of the transactions sent since that
        call it: the script is loaded and those are sent again, in order. A later one that did run (another client
        loaded the script in between) keeps its reply; the earlier one then runs after it, as a late arrival."""
        sent = in_flight.popleft()
        if not sent.plans:
            return StoreReply.from_rows([], [])
        replies = sent.replies if sent.replies is not None else _read_transaction(connection, len(sent.commands))
        if _lost_script(replies):
            for later in in_flight:
                if later.replies is None and later.commands:
                    later.replies = _read_transaction(connection, len(later.commands))
            self.client.script_load(_SCRIPT)
            again = [sent, *(later for later in in_flight if _lost_script(later.replies))]
            for one in again:
                one.replies = None
                _send_transaction(connection, one.commands)
            replies = _read_transaction(connection, len(sent.commands))
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        *_, heads, values = replies
        read = read_compiled if self.compiled else read_batch if len(sent.plans) >= self.vectorize_from else replay
        read_back = dict(zip(sent.keys, values, strict=True))
        reply, due = read(heads, sent.plans, read_back, self.prefix, self.layout, self.fold_after)
        pending = {name for name, _, _ in self._rebase} | {name for later in in_flight for name in later.rebased}
        self._rebase += self._fold({name: owed for name, owed in due.items() if name not in pending}, read_back)
        return reply

    def _fold(self, due: dict[str, int], read_back: dict[str, bytes]) -> list[tuple[str, bytes, bytes]]:
        """The write-backs for the next transaction: entities due are folded ``fold_group`` at a time (most of a
        small fold's cost is numpy's per call: ~1 ms), or fewer once the first has waited ``fold_wait`` batches or
        one holds twice the records that make it due (a busy card in a quiet stream)."""
        waiting = self._due
        for name in [name for name in waiting if self.prefix + name in read_back]:
            del waiting[name]  # read again: due again below, with its newer value, unless someone else folded it
        if not waiting:
            self._due_since = 0
        waiting.update((name, read_back[self.prefix + name]) for name in due)
        if waiting:
            self._due_since += 1
        overdue = any(owed >= 2 for owed in due.values())
        if len(waiting) < self.fold_group and self._due_since < self.fold_wait and not overdue:
            return []
        self._due, self._due_since = {}, 0  # first: a fold that raised must not be retried with every batch
        folded = fold(waiting, self.layout, compiled=self.compiled)
        return [(name, waiting[name], base) for name, base in folded.items()]

    def apply(self, txns: Sequence[Transaction]) -> list[Snapshot]:
        """Apply each transaction once (a redelivery is read, not re-applied) and return the snapshots, in order.

        Raises:
            StoreUnavailableError: Redis did not answer within the budget.
        """
        return decode_reply(self.raw(txns), txns)

    def card_state(self, card_token: str) -> dict[str, Any] | None:
        """The card's state as plain values (:func:`features.blobs.decode_card`); ``None`` if it has none."""
        blob = self._call("show", [f"card:{card_token}"])
        return None if blob is None else decode_card(blob, self.layout)

    def apply_labels(self, labels: Sequence[Label]) -> int:
        """Apply each label newer (by version) than the last applied for its transaction; return how many.

        Raises:
            StoreUnavailableError: Redis did not answer within the budget.
        """
        if not labels:
            return 0
        day_us = self.layout["size"]["d"]
        return int(self._call("labels", [value for label in labels for value in label_plan(label, day_us)]))


def _entities(one: tuple[str, str, str, str, bytes]) -> list[str]:
    _, card, terminal, merchant, _ = one
    names = [f"card:{card}"]
    if terminal:
        names.append(f"terminal:{terminal}")
    if merchant:
        names.append(f"merchant:{merchant}")
    return names


@dataclass(slots=True)
class _Sent:
    """A batch whose transaction is in flight: its plans, the keys its MGET reads, the commands (to send again), the
    entities it writes folds back for, and its replies when they were read ahead (a lost script)."""

    plans: list[tuple[str, str, str, str, bytes]]
    keys: list[str]
    commands: list[tuple[Any, ...]] = field(default_factory=list)
    rebased: list[str] = field(default_factory=list)
    replies: list[Any] | None = None


def _lost_script(replies: list[Any] | None) -> bool:
    return replies is not None and any(isinstance(reply, NoScriptError) for reply in replies)


def _send_transaction(connection: Connection, commands: list[tuple[Any, ...]]) -> None:
    """Send MULTI, ``commands`` and EXEC in one write, packed by hiredis (redis-py's packing looks at every argument
    again in Python: ~2 µs per transaction of a batch's script call)."""
    packed = b"".join(map(hiredis.pack_command, [("MULTI",), *commands, ("EXEC",)]))
    connection.send_packed_command([packed], check_health=False)  # type: ignore[no-untyped-call]


def _read_transaction(connection: Connection, commands: int) -> list[Any]:
    """EXEC's replies, errors among them as exception values (as redis-py's own transactions read them). A command
    Redis refused to queue aborts the transaction: its error is raised once every reply is read."""
    refused: ResponseError | None = None
    for _ in range(commands + 1):  # +OK for MULTI, +QUEUED for each command
        try:
            connection.read_response()
        except ResponseError as error:
            refused = refused or error
    try:
        replies = connection.read_response()
    except ExecAbortError:
        if refused:
            raise refused from None
        raise
    return list(replies)
