"""The API's scoring, off the event loop: scoring threads, each with its own pipeline, draining one bounded queue.

A request hands its validated transaction to :meth:`ScoringPool.score` and awaits the outcome; the event loop
never runs Redis, LightGBM or SHAP, so ``/healthz`` and ``/metrics`` answer while every thread is busy.

- **One pipeline per thread.** A :class:`~streams.pipeline.Pipeline` is not thread-safe (its model swaps between
  calls, its Redis client is its own), so each thread owns one and calls it once at a time: ``api.scoring_threads``
  threads, as many models in memory. One shared pipeline behind a lock would serialise the threads; with one each,
  their Redis round trips and model calls (which release the interpreter lock) overlap. Threads share the Kafka
  producer (thread-safe). Two threads may decide one id at once; the decision memory settles it (the first
  decision stays, :meth:`streams.pipeline.DecisionMemory.remember`).
- **Micro-batches.** A free thread takes up to ``batch_max`` waiting transactions, oldest first, and decides them
  in one pipeline call (one Redis round trip, one model call), as the stream worker does. It does not wait for a
  batch to fill: alone, a request is a batch of one. Two waiting requests with the same ``txn_id`` never share a
  batch: the later one waits for the next, where the decision memory answers it.
- **Bounded.** At most ``max_pending`` transactions are waiting or being decided; past that :meth:`score` raises
  :class:`PoolFullError` at once (the API answers 503), so a flood costs neither memory nor latency to the others.
- **The event loop first.** After answering a batch, a thread waits (at most :data:`YIELD_S`) until the event loop
  has nothing left to do — the answers written, the clients' next requests read — before it takes the next one:
  scoring and the loop share one interpreter lock, and without that pause a busy thread stretched each loop pass
  to tens of ms under 200 clients, with ``/healthz`` queued behind them. Throughput follows what the loop can
  answer; requests beyond it wait in the queue, where they cost the loop nothing.
- **Published by the thread.** Each batch is handed to ``publish`` (the audit records, alerts and repairs) by the
  thread that decided it, before any of its requests is answered: a client that hangs up mid-request does not
  leave features applied without their audit record.

Shapes: :meth:`score` returns :class:`Scored` (the transaction's decision, or ``None`` when its id was decided for
another payment: :attr:`streams.pipeline.Batch.conflicts`). A request's arrival is the clock's monotonic seconds
(the decision's latency counts from it); the loop probe uses the process's own monotonic clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fraudpipe.clock import Clock
from fraudpipe.contracts import Decision, ModelEvent, Transaction
from streams import metrics
from streams.pipeline import Batch, Pipeline

__all__ = ["QUIET_S", "YIELD_S", "PoolClosedError", "PoolFullError", "Scored", "ScoringFailedError", "ScoringPool"]

log = logging.getLogger(__name__)

YIELD_S = 0.05
"""Longest a thread waits for the event loop to go quiet between batches (so scoring never stalls for good)."""
QUIET_S = 0.003
"""The loop is quiet when a 1 ms timer fires less than this late."""


class PoolFullError(Exception):
    """``max_pending`` transactions are already waiting or being decided."""


class PoolClosedError(Exception):
    """The pool is shutting down."""


class ScoringFailedError(Exception):
    """The batch holding the transaction failed (the error is logged by the pool)."""


@dataclass(frozen=True, slots=True)
class Scored:
    """The outcome of one transaction: its decision, or ``None`` when its id was already decided for another
    payment (refused as ``txn_id_conflict``: nothing was decided or published for it)."""

    decision: Decision | None


@dataclass(slots=True)
class _Waiting:
    txn: Transaction
    received: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Scored]


class ScoringPool:
    """See the module docstring. Threads start with the first request; :meth:`close` stops them."""

    def __init__(self, pipelines: Sequence[Pipeline], publish: Callable[[Batch], None], clock: Clock, *,
                 max_pending: int, batch_max: int) -> None:  # fmt: skip
        if not pipelines:
            raise ValueError("a scoring pool needs at least one pipeline")
        self.pipelines, self.publish, self.clock = list(pipelines), publish, clock
        self.max_pending, self.batch_max = max_pending, batch_max
        self._ready = threading.Condition()
        self._queue: deque[_Waiting] = deque()
        self._pending = 0
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._refresh: set[int] = set()  # threads whose model is to be read again before their next batch

    @property
    def pending(self) -> int:
        """Transactions waiting or being decided."""
        return self._pending

    @property
    def full(self) -> bool:
        """:meth:`score` would raise :class:`PoolFullError` now (a hint: the count may change before it is called)."""
        return self._pending >= self.max_pending

    async def score(self, txn: Transaction) -> Scored:
        """Decide ``txn`` on a scoring thread.

        Raises:
            PoolFullError: ``max_pending`` reached (answered at once, nothing queued).
            PoolClosedError: the pool is closing.
            ScoringFailedError: the pipeline or the publication failed for its batch.
        """
        loop = asyncio.get_running_loop()
        waiting = _Waiting(txn, self.clock.monotonic(), loop, loop.create_future())
        with self._ready:
            if self._closed:
                raise PoolClosedError("the API is shutting down")
            if self._pending >= self.max_pending:
                raise PoolFullError(f"{self._pending} transactions already waiting")
            if not self._threads:
                self._start()
            self._pending += 1
            self._queue.append(waiting)
            self._ready.notify()
        return await waiting.future

    def model_changed(self, event: ModelEvent) -> None:
        """A registry alias changed (:mod:`streams.model_events`; any thread): each scoring thread serving that
        alias reads it again now, between two batches."""
        chosen = [n for n, p in enumerate(self.pipelines) if p.models.alias == event.alias]
        for number in chosen:
            self.pipelines[number].models.wake()
        with self._ready:
            if self._closed or not chosen:
                return
            if not self._threads:
                self._start()
            self._refresh.update(chosen)
            self._ready.notify_all()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop taking requests, let the threads finish their batches, and fail what still waits."""
        with self._ready:
            self._closed = True
            left, self._queue = list(self._queue), deque()
            self._pending -= len(left)
            self._ready.notify_all()
        for waiting in left:
            _settle(waiting, PoolClosedError("the API is shutting down"))
        for thread in self._threads:
            thread.join(timeout_s)

    def _start(self) -> None:
        for number in range(len(self.pipelines)):
            thread = threading.Thread(target=self._run, args=(number,), name=f"api-scoring-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self, number: int) -> None:
        pipeline = self.pipelines[number]
        while True:
            with self._ready:
                while not self._queue and not self._closed and number not in self._refresh:
                    self._ready.wait()
                refresh = number in self._refresh
                self._refresh.discard(number)
                if not refresh and not self._queue:
                    return
                taken = self._take() if self._queue else []
            if refresh:
                try:
                    _refresh_model(pipeline)
                except Exception:  # the thread must live on: the next batch's refresh tries again
                    log.exception("reading the model alias failed")
            if not taken:
                continue
            outcomes = self._decide(pipeline, taken)
            with self._ready:
                self._pending -= len(taken)
            for waiting, outcome in zip(taken, outcomes, strict=True):
                _settle(waiting, outcome)
            _quiet(taken[0].loop, YIELD_S)

    def _take(self) -> list[_Waiting]:
        """Up to ``batch_max`` waiting transactions, oldest first, no two with the same id (under the lock)."""
        taken: list[_Waiting] = []
        later: list[_Waiting] = []
        ids: set[str] = set()
        while self._queue and len(taken) < self.batch_max:
            waiting = self._queue.popleft()
            if waiting.txn.txn_id in ids:
                later.append(waiting)
                continue
            ids.add(waiting.txn.txn_id)
            taken.append(waiting)
        self._queue.extendleft(reversed(later))
        return taken

    def _decide(self, pipeline: Pipeline, taken: list[_Waiting]) -> list[Scored | Exception]:
        """One pipeline call and its publication; one outcome per transaction, in order. The answers are the
        published decisions read back with the contract (``Decision``)."""
        try:
            _refresh_model(pipeline)
            batch = pipeline.score([w.txn for w in taken], [w.received for w in taken])
            self.publish(batch)
            decided = dict(zip(batch.txn_ids, batch.decisions(), strict=True))
        except Exception:
            log.exception("scoring a batch of %d failed", len(taken))
            return [ScoringFailedError("scoring failed") for _ in taken]
        refused = {txn.txn_id for txn in batch.conflicts}
        outcomes: list[Scored | Exception] = []
        for waiting in taken:
            decision = decided.get(waiting.txn.txn_id)
            if decision is None and waiting.txn.txn_id not in refused:
                log.error("the pipeline returned no outcome for a transaction of the batch")
                outcomes.append(ScoringFailedError("no outcome"))
                continue
            outcomes.append(Scored(decision))
        return outcomes


def _refresh_model(pipeline: Pipeline) -> None:
    """Swap in the alias's version if it changed (:meth:`streams.pipeline.Models.refresh`), counted."""
    if pipeline.models.refresh():
        metrics.MODEL_SWAPS.inc()


def _quiet(loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
    """Block until ``loop`` runs a 1 ms timer less than :data:`QUIET_S` late (nothing else was waiting to run), or
    ``timeout_s``. The probe re-arms itself on the loop until then, and stops once this returns."""
    done = threading.Event()

    def probe() -> None:
        if not done.is_set():
            loop.call_later(0.001, check, time.monotonic() + 0.001)

    def check(due: float) -> None:
        if time.monotonic() - due < QUIET_S:
            done.set()
        else:
            loop.call_soon(probe)

    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(probe)
    done.wait(timeout_s)
    done.set()


def _settle(waiting: _Waiting, outcome: Scored | Exception) -> None:
    """Hand ``outcome`` to the request's event loop (it may have gone: a client that hung up, a closed loop)."""

    def deliver() -> None:
        if waiting.future.done():  # cancelled: the client hung up
            return
        if isinstance(outcome, Exception):
            waiting.future.set_exception(outcome)
        else:
            waiting.future.set_result(outcome)

    with contextlib.suppress(RuntimeError):  # the loop is closed
        waiting.loop.call_soon_threadsafe(deliver)
