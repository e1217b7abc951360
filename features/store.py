"""The online feature store on Redis: one atomic transaction per micro-batch, a few bytes written per payment.

:meth:`RedisFeatureStore.raw` sends a whole batch as one request (:mod:`features.plan`) to ``features/apply.lua``
and reads the entities back, in one ``MULTI``/``EXEC``: the script applies each transaction once (its id among its
card's markers, set in the same atomic step: :func:`features.memory.mark`) by appending its record to its card's
log and its day to its terminal and merchant, and answers with each transaction's applied flag and the length of
each entity's value before the batch; the ``MGET`` that follows returns the values. :mod:`features.reader` then
reads every transaction's state after it, exactly as if the records had been applied one at a time. A redelivered
transaction is read, never re-applied; labels go through the same script, de-duplicated by (transaction id, label
version), as records appended to the entities they move, and a confirmed fraud blocks its card (``blocked:<token>``,
read by a last ``MGET`` with the batch: :attr:`features.snapshot.StoreReply.blocked`). Key layout:
:mod:`features.plan`; value formats: :mod:`features.blobs`. :meth:`RedisFeatureStore.stream` pipelines such
transactions on one connection: Redis applies batch k+1 while this client reads batch k.

Cost, per payment: in Redis, one command per entity (a marker HSET, an APPEND to the card's log, one to its terminal
and one to its merchant: each command a script runs costs Redis ~2 µs, more than the work it does), a fold now and
then, and the values read back; here, planning, reading and folding in C. Appending instead of rewriting keeps the
work small (and the AOF and replication stream too). An entity's records are folded into its base once it has
``fold_after`` of them: by this client, from the value the batch read (:mod:`features.fold`), written back with the
next transaction it sends by the script's compare-and-set ``rebase`` (Redis' single thread only compares and copies
bytes).

Expiry: a key gets its TTL when it is created, and this client renews the keys of the entities a batch touches at
most once per period of ``renew_s`` of its clock (an ``EXPIRE`` per key and batch would cost Redis as much as the
appends): state lasts at least ``entity_ttl_s - 2 * renew_s`` after its entity's last payment. Marker hashes expire
``marker_ttl_s`` plus a block of days after their creation, never renewed.

The script names keys inside its arguments, so it needs a standalone Redis (or a primary with replicas), not a
Redis Cluster: sharding one card's keys together would need hash tags, which a later change can add.

Budgets are short on purpose (settings: ``socket_timeout_ms``): a slow or absent Redis raises
:class:`StoreUnavailableError` quickly, and the caller decides (the streaming worker degrades its decisions).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import hiredis
import redis
from redis.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ExecAbortError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from features.blobs import decode_card, decode_place
from features.fold import fold
from features.formulas import RECENT_ITEMS
from features.plan import COMPILED, Planned, label_plan, layout, native, plan_batch
from features.reader import read
from features.snapshot import Snapshot, StoreReply, decode_reply
from fraudpipe import keys
from fraudpipe.clock import Clock, SystemClock
from fraudpipe.contracts import Label, Transaction
from fraudpipe.settings import RedisSettings

__all__ = ["InFlight", "RedisFeatureStore", "StoreUnavailableError", "redis_client"]

_SCRIPT = files("features").joinpath("apply.lua").read_text()
DAY_S = 86_400
_RENEW_MEMORY = 1 << 18
"""Entities whose last renewal this client remembers; past that it forgets them all (and renews them again)."""


class StoreUnavailableError(RuntimeError):
    """Redis did not answer within the budget, or the connection failed."""


class CommandPacker:
    """Packs a command's arguments into the Redis protocol in C, with hiredis: redis-py's own packer encodes each
    argument in Python first (~2 µs each), and a batch's decision memory sends a thousand. Arguments are what
    hiredis takes (str as UTF-8, bytes, int, float); a command name given with its subcommand (``"CONFIG GET"``)
    is split, as redis-py does."""

    def pack(self, *args: Any) -> list[bytes]:
        name = args[0]
        if isinstance(name, str) and " " in name:
            args = (*name.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            pass
        try:  # buffers other than bytes are sent as their bytes
            whole = tuple(bytes(a) if isinstance(a, memoryview | bytearray) else a for a in args)
            return [hiredis.pack_command(whole)]  # type: ignore[arg-type]
        except TypeError as error:
            raise DataError(f"cannot send {args[0]!r} to Redis: {error}") from None


def redis_client(settings: RedisSettings) -> redis.Redis:
    """A client with the hot path's budgets: short timeouts, no retries (the caller decides what to do), commands
    packed in C (:class:`CommandPacker`)."""
    return redis.Redis.from_url(
        settings.url,
        username=settings.username,
        password=settings.password.get_secret_value() if settings.password else None,
        socket_timeout=settings.socket_timeout_ms / 1000,
        socket_connect_timeout=settings.connect_timeout_ms / 1000,
        retry_on_timeout=False,
        health_check_interval=30,
        command_packer=CommandPacker(),
    )


Values = dict[str, Any]
"""Entities as a batch read them: card token -> (base, log); ``terminal:<id>`` / ``merchant:<id>`` -> value."""


class RedisFeatureStore:
    """Online feature state in Redis. Same interface as :class:`features.memory.InMemoryFeatureStore`.

    ``marker_ttl_s`` must cover the longest replay or redelivery horizon (default 40 days: a transaction delivered
    again within it is read, not applied again; its markers last that long, and up to MARKER_DAYS more);
    ``entity_ttl_s`` ends the state of cards, terminals and merchants inactive that long (default 32 days: past every
    window; the expiry is renewed at most once per ``renew_s``, so at least ``entity_ttl_s - 2 * renew_s``);
    ``fold_after`` bounds the records a card (``place_fold_after``: a terminal or merchant) keeps before they are
    folded into its base; this client folds ``fold_group`` such entities together, or fewer when the first has
    waited ``fold_wait`` batches or one holds twice that many records. Plans, replies and folds run in C
    (``features/_replay.c``) when it is built and ``compiled`` is true, else in Python (the definitions): the same.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "fp:v4:",
        *,
        marker_ttl_s: int = 40 * DAY_S,
        entity_ttl_s: int = 32 * DAY_S,
        label_ttl_s: int = 180 * DAY_S,
        recent_items: int = RECENT_ITEMS,
        fold_after: int = 8,
        place_fold_after: int = 16,
        fold_group: int = 64,
        fold_wait: int = 16,
        renew_s: float = DAY_S,
        compiled: bool = True,
        clock: Clock | None = None,
    ) -> None:
        if not 0 < recent_items < 0xFFFF:
            raise ValueError("recent_items must be between 1 and 65534")
        if min(fold_after, place_fold_after, fold_group, fold_wait) < 1:
            raise ValueError("fold_after, place_fold_after, fold_group and fold_wait must be at least 1")
        self.client = client
        self.prefix = prefix
        self.layout = layout(
            recent_items=recent_items, marker_ttl_s=marker_ttl_s, entity_ttl_s=entity_ttl_s, label_ttl_s=label_ttl_s
        )
        self.fold_after, self.place_fold_after = fold_after, place_fold_after
        self.fold_group, self.fold_wait = fold_group, fold_wait
        self.renew_s = renew_s
        self.compiled = compiled and COMPILED
        self.clock = clock or SystemClock()
        lay = self.layout
        self._args = [prefix, *(str(lay[k]) for k in ("entity_ttl", "marker_ttl", "label_ttl", "marker_days"))]
        self._script = client.register_script(_SCRIPT)
        self._due: Values = {}  # entities waiting to be folded: their values as last read
        self._due_since = 0  # batches since the first of them became due
        self._rebase: list[tuple[str, bytes, bytes]] = []  # the next transaction's write-backs
        self._renewed: tuple[set[str], set[str]] = (set(), set())  # cards, places renewed in this period
        self._period = -1

    def _call(self, mode: str, args: list[Any]) -> Any:
        try:
            return self._script(keys=[], args=[mode, *self._args, *args])
        except (RedisConnectionError, RedisTimeoutError) as error:
            raise StoreUnavailableError(f"Redis unavailable: {error}") from None

    def raw(self, txns: Sequence[Transaction]) -> StoreReply:
        """Apply ``txns`` (each once) and return their state after it, for the formulas.

        Raises:
            StoreUnavailableError: Redis did not answer within the budget.
        """
        return self.end(self.begin(txns))

    def begin(self, txns: Sequence[Transaction]) -> InFlight:
        """Send the batch's transaction and return without waiting for its reply: Redis applies it while this
        process does other work. :meth:`end` reads the reply (what :meth:`raw` returns), :meth:`cancel` gives it
        up (the batch may have been applied: delivering it again is safe, it is read, not applied twice). The
        batch holds a connection of the pool until then. One batch in flight at a time: the folds read with one
        are written back with the next one begun.

        Raises:
            StoreUnavailableError: Redis did not answer within the budget.
        """
        if not txns:
            return InFlight(None, None)
        flight = InFlight(self._connection(), None)
        with self._giving_up(flight):
            flight.sent = self._send(flight.connection, txns)  # type: ignore[arg-type]  # just taken
        return flight

    def end(self, flight: InFlight) -> StoreReply:
        """The reply of a batch :meth:`begin` sent (its connection goes back to the pool).

        Raises:
            StoreUnavailableError: Redis did not answer within the budget.
        """
        connection, sent = flight.connection, flight.sent
        if connection is None or sent is None:
            return StoreReply.from_rows([], [])
        with self._giving_up(flight):
            reply = self._receive(connection, deque([sent]))
        flight.connection = None
        self.client.connection_pool.release(connection)
        return reply

    def cancel(self, flight: InFlight) -> None:
        """Give up a batch :meth:`begin` sent without reading its reply: its connection is closed (a reply may be
        left unread on it) and goes back to the pool."""
        if (connection := flight.connection) is not None:
            flight.connection = None
            connection.disconnect()  # type: ignore[no-untyped-call]
            self.client.connection_pool.release(connection)

    @contextmanager
    def _giving_up(self, flight: InFlight) -> Iterator[None]:
        """Whatever the block raises gives ``flight`` up first (:meth:`cancel`); Redis' connection and timeout
        errors are raised as :class:`StoreUnavailableError`."""
        try:
            yield
        except BaseException as error:
            self.cancel(flight)
            if isinstance(error, RedisConnectionError | RedisTimeoutError):
                raise StoreUnavailableError(f"Redis unavailable: {error}") from None
            raise

    def _connection(self) -> Connection:
        """A connection of the pool, checked before anything is in flight on it (sends skip the health check: a
        PING sent with a reply unread would misread).

        Raises:
            StoreUnavailableError: Redis did not answer within the budget.
        """
        pool = self.client.connection_pool
        try:
            connection = pool.get_connection()
        except (RedisConnectionError, RedisTimeoutError) as error:
            raise StoreUnavailableError(f"Redis unavailable: {error}") from None
        try:
            connection.check_health()  # type: ignore[no-untyped-call]
        except (RedisConnectionError, RedisTimeoutError) as error:
            connection.disconnect()  # type: ignore[no-untyped-call]
            pool.release(connection)
            raise StoreUnavailableError(f"Redis unavailable: {error}") from None
        return connection

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
        connection = self._connection()
        in_flight: deque[_Sent] = deque()
        try:
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

    def _renewals(self, planned: Planned) -> list[str]:
        """The entities of the batch whose keys' expiry this client has not renewed in this period of ``renew_s``
        (so a key is renewed at most once per period, at least once per two while its entity is active)."""
        period = int(self.clock.monotonic() // self.renew_s)
        cards, places = self._renewed
        if period != self._period or len(cards) + len(places) > _RENEW_MEMORY:
            cards.clear()
            places.clear()
            self._period = period
        due_cards, due_places = set(planned.cards) - cards, set(planned.places) - places
        cards |= due_cards
        places |= due_places
        return [*("card:" + card for card in due_cards), *due_places]

    def _send(self, connection: Connection, txns: Sequence[Transaction]) -> _Sent:
        """Send the batch's transaction (nothing for an empty batch) without waiting for its reply."""
        planned = plan_batch(txns, compiled=self.compiled)
        prefix = self.prefix
        sent = _Sent(planned)
        if txns:
            head = (self._script.sha, 0)
            if self._rebase:
                rebase = [part for entity in self._rebase for part in entity]
                sent.commands.append(("EVALSHA", *head, "rebase", *self._args, *rebase))
                sent.rebased = [name for name, *_ in self._rebase]
                self._rebase = []  # sent once: if its transaction fails, the entities are folded again later
            sent.commands.append(("EVALSHA", *head, "txns", *self._args, planned.request, *self._renewals(planned)))
            sent.commands.append(mget_command(prefix, planned))
            sent.commands.append(("MGET", *(keys.blocked(prefix, card) for card in planned.cards)))
            _send_transaction(connection, sent.commands)
        return sent

    def _receive(self, connection: Connection, in_flight: deque[_Sent]) -> StoreReply:
        """Read the oldest batch in flight: its transaction's reply, then its state after it.

        A Redis that lost the script (restarted, flushed, failed over) ran none of the transactions sent since that
        call it: the script is loaded and those are sent again, in order. A later one that did run (another client
        loaded the script in between) keeps its reply; the earlier one then runs after it, as a late arrival."""
        sent = in_flight.popleft()
        planned = sent.planned
        if not len(planned):
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
        *_, answer, values, blocks = replies
        n = len(planned.cards)
        bases, logs, places = values[:n], values[n : 2 * n], values[2 * n :]
        reply, card_records, place_records = read(answer, planned, bases, logs, places, self.layout,
                                                  compiled=self.compiled)  # fmt: skip
        if any(blocks):
            named = zip(planned.cards, blocks, strict=True)
            blocked = {card: tuple(ids.decode().split()) for card, ids in named if ids}
            reply = StoreReply(reply.values, reply.previous, blocked)
        pairs = zip(bases, logs, strict=True)
        cards_back: Values = {"card:" + card: pair for card, pair in zip(planned.cards, pairs, strict=True)}
        back: Values = {**cards_back, **dict(zip(planned.places, places, strict=True))}
        due = {
            "card:" + card: records // self.fold_after
            for card, records in zip(planned.cards, card_records, strict=True)
            if records >= self.fold_after
        }
        due.update((place, records // self.place_fold_after)
                   for place, records in zip(planned.places, place_records, strict=True)
                   if records >= self.place_fold_after)  # fmt: skip
        pending = {name for name, *_ in self._rebase} | {name for later in in_flight for name in later.rebased}
        self._rebase += self._fold({name: owed for name, owed in due.items() if name not in pending}, back)
        return reply

    def _fold(self, due: dict[str, int], back: Values) -> list[tuple[str, bytes, bytes]]:
        """The write-backs for the next transaction: entities due are folded ``fold_group`` at a time, or fewer once
        the first has waited ``fold_wait`` batches or one holds twice the records that make it due (a busy entity in
        a quiet stream)."""
        waiting = self._due
        for name in [name for name in waiting if name in back]:
            del waiting[name]  # read again: due again below, with its newer value, unless someone else folded it
        if not waiting:
            self._due_since = 0
        waiting.update((name, back[name]) for name in due)
        if waiting:
            self._due_since += 1
        overdue = any(owed >= 2 for owed in due.values())
        if len(waiting) < self.fold_group and self._due_since < self.fold_wait and not overdue:
            return []
        self._due, self._due_since = {}, 0  # first: a fold that raised must not be retried with every batch
        cards = {name: pair for name, pair in waiting.items() if name.startswith("card:")}
        places = {name: value for name, value in waiting.items() if not name.startswith("card:")}
        folded_cards, folded_places = fold(cards, places, self.layout, compiled=self.compiled)
        return [(name, cards[name][1] or b"", base) for name, base in folded_cards.items()] + [
            (name, places[name] or b"", base) for name, base in folded_places.items()
        ]

    def apply(self, txns: Sequence[Transaction]) -> list[Snapshot]:
        """Apply each transaction once (a redelivery is read, not re-applied) and return the snapshots, in order.

        Raises:
            StoreUnavailableError: Redis did not answer within the budget.
        """
        return decode_reply(self.raw(txns), txns)

    def card_state(self, card_token: str) -> dict[str, Any] | None:
        """The card's state as plain values (:func:`features.blobs.decode_card`); ``None`` if it has none."""
        try:
            base, log = self.client.mget([keys.card(self.prefix, card_token), keys.cardlog(self.prefix, card_token)])
        except (RedisConnectionError, RedisTimeoutError) as error:
            raise StoreUnavailableError(f"Redis unavailable: {error}") from None
        if base is None and log is None:
            return None
        return decode_card(_bytes(base), _bytes(log), self.layout)

    def blocked(self, card_token: str) -> tuple[str, ...]:
        """The transactions whose confirmed fraud blocks the card (empty: not blocked)."""
        try:
            ids = _bytes(self.client.get(keys.blocked(self.prefix, card_token)))
        except (RedisConnectionError, RedisTimeoutError) as error:
            raise StoreUnavailableError(f"Redis unavailable: {error}") from None
        return tuple(ids.decode().split()) if ids else ()

    def state(self) -> dict[str, Any]:
        """Everything this store keeps under its prefix, decoded into the twin's shape
        (:attr:`features.memory.InMemoryFeatureStore.values`): each card's base and log as one state under its
        ``card:`` key, places decoded, markers and label versions as strings. For tests and audits: it reads every
        key (``SCAN``)."""
        prefix, client = self.prefix, self.client
        state: dict[str, Any] = {}
        for key in client.scan_iter(match=f"{prefix}*", count=1_000):
            name = key.decode()
            kind, _, ident = name[len(prefix) :].partition(":")
            if kind == "applied":
                markers: dict[bytes, bytes] = client.hgetall(key)  # type: ignore[assignment]
                state[name] = {k.decode(): v.decode() for k, v in markers.items()}
            elif kind in ("card", "cardlog"):
                base, log = client.mget([keys.card(prefix, ident), keys.cardlog(prefix, ident)])
                state[keys.card(prefix, ident)] = decode_card(_bytes(base), _bytes(log), self.layout)
            elif kind in ("terminal", "merchant") and (value := _bytes(client.get(key))) is not None:
                state[name] = decode_place(value, self.layout)
            elif kind in ("label", "blocked") and (value := _bytes(client.get(key))) is not None:
                state[name] = value.decode()
        return state

    def apply_labels(self, labels: Sequence[Label]) -> int:
        """Apply each label newer (by version) than the last applied for its transaction; return how many.

        Raises:
            StoreUnavailableError: Redis did not answer within the budget.
        """
        if not labels:
            return 0
        day_us = self.layout["size"]["d"]
        return int(self._call("labels", [value for label in labels for value in label_plan(label, day_us)]))


@dataclass(slots=True)
class InFlight:
    """A batch :meth:`RedisFeatureStore.begin` sent whose reply is not read yet: the connection it holds (``None``
    once read or given up, or for an empty batch) and what was sent."""

    connection: Connection | None
    sent: _Sent | None


@dataclass(slots=True)
class _Sent:
    """A batch whose transaction is in flight: its plans, the commands (to send again), the entities it writes
    folds back for, and its replies when they were read ahead (a lost script)."""

    planned: Planned
    commands: list[tuple[Any, ...] | bytes] = field(default_factory=list)
    rebased: list[str] = field(default_factory=list)
    replies: list[Any] | None = None


def _bytes(value: Any) -> bytes | None:
    """A value as this store's client returns it (bytes; the client does not decode responses), or None."""
    if value is not None and not isinstance(value, bytes):
        raise TypeError(f"the store's Redis client must not decode responses (got {type(value).__name__})")
    return value


def mget_command(prefix: str, planned: Planned) -> bytes:
    """The packed MGET of a batch's values: each card's base, each card's log, each place's value (packed in C when
    it is built: a batch of 500 names ~1,500 keys)."""
    if native is not None:
        return native.mget(prefix, planned.cards, planned.places)
    return hiredis.pack_command(("MGET", *(keys.card(prefix, card) for card in planned.cards),
                                 *(keys.cardlog(prefix, card) for card in planned.cards),
                                 *(prefix + place for place in planned.places)))  # fmt: skip


def _lost_script(replies: list[Any] | None) -> bool:
    return replies is not None and any(isinstance(reply, NoScriptError) for reply in replies)


def _send_transaction(connection: Connection, commands: list[tuple[Any, ...] | bytes]) -> None:
    """Send MULTI, ``commands`` and EXEC in one write, packed by hiredis (redis-py's packing looks at every argument
    again in Python); a command given as bytes is packed already."""
    whole = [("MULTI",), *commands, ("EXEC",)]
    packed = b"".join(c if isinstance(c, bytes) else hiredis.pack_command(c) for c in whole)
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
