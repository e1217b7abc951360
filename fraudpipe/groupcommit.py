"""Group commit for the day logs: rows buffered in memory, written as one sealed file per event day and flush.

A worker appends each micro-batch's rows (:meth:`GroupWriter.append`: no I/O, the frame is kept — or, with a
``combine`` function, whatever the worker keeps its rows in, made into one frame per flush: the decision log keeps
each batch's decisions column-wise and builds their frame once per flush, not per batch) and gets a sequence
number; a background thread writes everything buffered every ``interval_s`` seconds, or as soon as ``max_rows`` rows
wait, as one file per event day (:meth:`fraudpipe.logstore.DayLog.write`: sealed, fsynced, renamed into place) — so
sealing and fsync cost per flush, not per batch. :attr:`GroupWriter.durable` is the highest number whose rows, and
every earlier number's, are in such files. The offset-commit watermark (:mod:`streams.watermark`) commits a batch's
offsets only once its number is durable: a crash loses buffered rows but never skips their records, which are
redelivered and logged again (readers de-duplicate).

Files per log and worker: at most one per event day and flush, i.e. ``60 / interval_s`` a minute (4 at 15 s, the
default) while fewer than ``max_rows`` rows arrive per interval; above that rate the row cap sets the pace.

A flush that fails (a full disk, say) marks nothing durable and keeps its rows buffered (those of the days whose file
it did write excepted: they are on disk), and the next flush tries again; the background thread logs the error and
waits one interval before retrying. Nothing bounds the buffer while flushes fail: the watermark stops committing, so
the worker's lag shows it.

Threads: ``append`` comes from the event loop, flushes from the writer's thread and from any other (a consumer
thread draining on a revoke calls :meth:`GroupWriter.flush`). One lock guards the buffer and is never held while a
file is written (the buffer is swapped out under it, written outside it, ``durable`` published under it); a second
one makes flushes take turns, so ``durable`` only grows and ``on_durable`` sees increasing numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import date
from typing import Any, Protocol

import polars as pl

from fraudpipe.logstore import DayLog

__all__ = ["GroupWriter"]

log = logging.getLogger(__name__)


class Rows(Protocol):
    """What :meth:`GroupWriter.append` takes: a frame, or rows its ``combine`` makes into one."""

    @property
    def height(self) -> int: ...


class GroupWriter:
    """Buffers a :class:`~fraudpipe.logstore.DayLog`'s appends and writes them in groups (module docstring).

    ``combine(items)``, if given, makes the appended items that are not frames into one frame, in order (called on
    the flushing thread, once per flush); without it only frames may be appended.

    ``on_durable(n)``, if given, is called after each flush that made something durable, with the new
    :attr:`durable`, on the flushing thread (the writer's, or whichever called :meth:`flush`), after the files are in
    place; calls never overlap and their numbers increase. It must be quick and must not call :meth:`flush`.
    """

    def __init__(self, log: DayLog, *, interval_s: float, max_rows: int,
                 on_durable: Callable[[int], None] | None = None,
                 combine: Callable[[list[Any]], pl.DataFrame] | None = None) -> None:  # fmt: skip
        if interval_s <= 0 or max_rows < 1:
            raise ValueError(f"interval_s must be > 0 and max_rows >= 1; got {interval_s}, {max_rows}")
        self.log, self.interval_s, self.max_rows = log, interval_s, max_rows
        self._on_durable, self._combine = on_durable, combine
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._turn = threading.Lock()  # one flush at a time
        self._frames: list[Rows] = []
        self._rows = 0
        self._appended = 0  # the last sequence number handed out
        self._durable = 0
        self._waiters: list[tuple[int, asyncio.Future[int]]] = []
        self._closed = False
        self._lost = False  # closed, and its last flush failed
        self._thread: threading.Thread | None = None

    def append(self, frame: Rows) -> int:
        """Buffer ``frame``'s rows (kept as they are: do not change them afterwards; not a frame: for ``combine``);
        returns its sequence number (1, 2, ...). An empty frame gets a number too, durable with the next flush
        (which writes no file for it).

        Raises:
            RuntimeError: the writer is closed.
            TypeError: not a frame, and the writer has no ``combine``.
        """
        if self._combine is None and not isinstance(frame, pl.DataFrame):
            raise TypeError(f"the group writer of {self.log.root} takes frames, not {type(frame).__name__}")
        with self._lock:
            if self._closed:
                raise RuntimeError(f"appending to the closed group writer of {self.log.root}")
            self._appended += 1
            if frame.height:
                self._frames.append(frame)
                self._rows += frame.height
                if self._rows >= self.max_rows:
                    self._wake.notify()
            return self._appended

    @property
    def durable(self) -> int:
        """The highest sequence number whose rows and every earlier one's are in sealed, fsynced files (0: none)."""
        with self._lock:
            return self._durable

    @property
    def buffered(self) -> int:
        """Rows appended and not yet written."""
        with self._lock:
            return self._rows

    def flush(self) -> int:
        """Write everything appended so far, now, on this thread: one file per event day. Appends made meanwhile go
        to the next flush; a flush running on another thread is waited for first. Returns :attr:`durable`.

        Raises:
            Exception: what writing raised (``OSError`` for a full disk...): nothing more is durable and the rows not
                written stay buffered for the next flush.
        """
        with self._turn:
            with self._lock:
                frames, upto, durable = self._frames, self._appended, self._durable
                self._frames, self._rows = [], 0
            if upto == durable:
                return durable
            self._write(frames)
            with self._lock:
                self._durable = upto
                ready = [future for seq, future in self._waiters if seq <= upto]
                self._waiters = [(seq, future) for seq, future in self._waiters if seq > upto]
            for future in ready:
                _resolve(future, upto)
            if self._on_durable is not None:
                self._on_durable(upto)
            return upto

    def _by_day(self, items: list[Rows]) -> dict[date, pl.DataFrame]:
        """The buffered ``items``' rows by event day, in order: the frames as they are, the others made into one by
        ``combine`` (a failed flush puts frames back in front of the buffer: they come first). Each frame is split
        on its own (:meth:`DayLog.by_day`: slices when its days come in runs, as compacted frames' one day does) and
        each day's pieces joined without copying: a flush never holds a second copy of the whole buffer, as
        splitting it at once did when workers' partitions interleave two days (+148 MB for 100,000 decisions)."""
        frames = [item for item in items if isinstance(item, pl.DataFrame)]
        if len(frames) < len(items):
            assert self._combine is not None  # append() refuses anything else
            frames.append(self._combine([item for item in items if not isinstance(item, pl.DataFrame)]))
        pieces: dict[date, list[pl.DataFrame]] = {}
        for frame in frames:
            for day, part in self.log.by_day(frame).items():
                pieces.setdefault(day, []).append(part)
        return {day: pl.concat(part, how="diagonal_relaxed", rechunk=False) if len(part) > 1 else part[0]
                for day, part in pieces.items()}  # fmt: skip

    def _write(self, frames: list[Rows]) -> None:
        """Write ``frames`` as one file per event day; on failure put the rows of the days not written back in front
        of the buffer (they are older than anything appended since) and raise."""
        if not frames:
            return
        parts: dict[date, pl.DataFrame] = {}
        written: set[date] = set()
        try:
            parts = self._by_day(frames)
            for day, rows in parts.items():
                self.log.write(day, rows)
                written.add(day)
        except BaseException:
            left = [rows for day, rows in parts.items() if day not in written] if parts else frames
            with self._lock:
                self._frames[:0] = left
                self._rows += sum(rows.height for rows in left)
            raise

    async def wait(self, seq: int) -> int:
        """Wait until append number ``seq`` is durable, without forcing a flush (the writer's thread, or anyone's
        :meth:`flush`, makes it so within ``interval_s``); returns :attr:`durable`.

        Raises:
            ValueError: ``seq`` was never handed out.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            if seq <= self._durable:
                return self._durable
            if seq > self._appended:
                raise ValueError(f"no append number {seq} yet (the last is {self._appended})")
            if self._lost:
                raise RuntimeError(f"the group writer of {self.log.root} closed without writing append {seq}")
            future: asyncio.Future[int] = loop.create_future()
            self._waiters.append((seq, future))
        return await future

    async def flushed(self) -> int:
        """:meth:`flush` on a thread of the loop's default executor (the event loop keeps running); returns
        :attr:`durable`."""
        return await asyncio.get_running_loop().run_in_executor(None, self.flush)

    def start(self) -> None:
        """Start the writer's thread: a flush every ``interval_s`` seconds when anything was appended, or as soon as
        ``max_rows`` rows wait; after a failed flush it waits a whole interval."""
        with self._lock:
            if self._thread is not None or self._closed:
                raise RuntimeError("the group writer is already started, or closed")
            self._thread = threading.Thread(target=self._run, name=f"group-writer:{self.log.root.name}", daemon=True)
        self._thread.start()

    def close(self) -> int:
        """Stop the writer's thread, refuse further appends and flush what remains; returns :attr:`durable`.

        Raises:
            Exception: the last flush failed: the rows it could not write are lost with the process and their records
                redelivered (never committed); coroutines in :meth:`wait` get the error.
        """
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        try:
            return self.flush()
        except BaseException as error:
            with self._lock:
                waiting, self._waiters, self._lost = self._waiters, [], True
            for _, future in waiting:
                _resolve(future, error)
            raise

    def compact(self) -> None:
        """Make the items appended since the last compaction (those that are not frames) into a frame per event day
        now (``combine``; nothing without one), so that rows wait for their flush as a compact frame rather than as what
        they were appended as (the decision log's: ~1.5 kB a row as Python objects, ~0.6 kB as a frame). The frames
        built before are left as they are: each row is built once, and the buffer holds one copy of it. The writer's
        thread does it every tenth of ``interval_s`` between flushes; a flush waits for it (and it for a flush)."""
        if self._combine is None:
            return
        with self._turn:
            with self._lock:  # appends go on meanwhile, at the end of the buffer
                start = next((i for i, item in enumerate(self._frames) if not isinstance(item, pl.DataFrame)), None)
                if start is None:
                    return
                end = next((i for i in range(start, len(self._frames)) if isinstance(self._frames[i], pl.DataFrame)),
                           len(self._frames))  # fmt: skip
                pending = self._frames[start:end]
            built = list(self.log.by_day(self._combine(pending)).values())  # a frame a day: flushes need no copy
            with self._lock:
                self._frames[start:end] = built

    def _run(self) -> None:
        failed = False
        while True:
            deadline = time.monotonic() + self.interval_s
            while True:  # until a flush is due: the interval is up, or max_rows wait (not right after a failure)
                with self._lock:
                    remaining = deadline - time.monotonic()
                    if self._closed or remaining <= 0 or (not failed and self._rows >= self.max_rows):
                        break
                    self._wake.wait(min(remaining, self.interval_s / 10))
                    if self._closed:
                        break
                try:
                    self.compact()
                except Exception:  # the flush tries (and reports) the same
                    log.exception("compacting the rows buffered for %s failed", self.log.root)
            with self._lock:
                if self._closed:
                    return
                idle = self._appended == self._durable
            if idle:
                continue
            try:
                self.flush()
                failed = False
            except Exception:
                log.exception("flushing %s failed (%d rows buffered); next try in %.1f s", self.log.root,
                              self.buffered, self.interval_s)  # fmt: skip
                failed = True


def _resolve(future: asyncio.Future[int], outcome: int | BaseException) -> None:
    """Settle ``future`` from any thread, on its own loop (a loop already closed has no one waiting)."""

    def settle() -> None:
        if future.done():
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    with contextlib.suppress(RuntimeError):
        future.get_loop().call_soon_threadsafe(settle)
