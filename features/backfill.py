"""Warming the online store from history, so a stream starts with its cards', terminals' and merchants' past.

History is applied exactly as the stream would have applied it (transactions by event time, each label once replay time
passes its ``known_at``: before the first transaction after it), in micro-batches, each one atomic transaction of the
store, pipelined (:meth:`features.store.RedisFeatureStore.stream`). Transactions already applied are skipped by the
store's markers, so a backfill can be re-run or resumed safely.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from features.store import RedisFeatureStore
from fraudpipe.codec import decode
from fraudpipe.contracts import Label, Transaction
from fraudpipe.files import LabelBatch, TransactionSource
from fraudpipe.privacy import ErasureList

__all__ = ["BackfillStats", "backfill"]


@dataclass(slots=True)
class BackfillStats:
    """Counts of a backfill: transactions and labels sent, how many the store newly applied, rows rejected, and
    labels left for the label stream (known only after the backfilled history ends), transactions and labels of
    erased cards skipped."""

    transactions: int = 0
    applied: int = 0
    labels: int = 0
    rejected: int = 0
    later_labels: int = 0
    erased: int = 0


class _Labels:
    def __init__(self) -> None:
        self.labels: list[Label] = []
        self.known_us = np.array([], dtype=np.int64)

    def add(self, batch: LabelBatch) -> None:
        labels = self.labels + [decode(value, Label) for value in batch.values]
        known = np.concatenate([self.known_us, batch.known_us]).astype(np.int64)
        order = np.argsort(known, kind="stable")
        self.labels, self.known_us = [labels[i] for i in order], known[order]

    def take_until(self, micros: int) -> list[Label]:
        """Labels known before ``micros`` (µs since the epoch), removed from the queue: a label known at a
        transaction's very time comes after it (a payment never sees a label as old as itself)."""
        count = int(np.searchsorted(self.known_us, micros, side="left"))
        taken, self.labels, self.known_us = self.labels[:count], self.labels[count:], self.known_us[count:]
        return taken


def _unerased(labels: list[Label], erasures: ErasureList | None, stats: BackfillStats) -> list[Label]:
    if erasures is None:
        return labels
    kept, dropped = erasures.split(labels, lambda x: x.card_token, lambda x: x.event_time)
    stats.erased += dropped
    return kept


def backfill(
    source: TransactionSource,
    store: RedisFeatureStore,
    *,
    until: datetime | None = None,
    batch_size: int = 500,
    on_progress: Callable[[BackfillStats], None] | None = None,
    erasures: ErasureList | None = None,
) -> BackfillStats:
    """Apply ``source``'s transactions (event time before ``until``, if given) and its labels known by then: by
    ``until``, else by the last transaction's time. Labels known later are not applied (``later_labels``): the
    stream that continues the history brings them on ``labels.v1`` when they become known; applying them now would
    give the first payments of that stream knowledge from their future. Events of cards on ``erasures``, dated up
    to their erasure, are skipped (:mod:`fraudpipe.privacy`)."""
    stats = BackfillStats()
    last_us: int | None = None
    queue = _Labels()
    queue.add(source.labels())
    limit_us = None if until is None else int(until.timestamp() * 1_000_000)
    for chunk in source.chunks():
        stats.rejected += len(chunk.rejects)
        if chunk.labels is not None:
            queue.add(chunk.labels)
        rows = chunk.frame.select([name for name in Transaction.model_fields if name != "schema_version"])
        txns = [Transaction.model_construct(**row) for row in rows.iter_rows(named=True)]
        times = chunk.event_us
        if limit_us is not None:
            keep = int(np.searchsorted(times, limit_us, side="left"))
            txns, times = txns[:keep], times[:keep]
        if erasures is not None and erasures.erased:
            pairs, dropped = erasures.split(list(zip(txns, times.tolist(), strict=True)), lambda p: p[0].card_token,
                                            lambda p: p[0].event_time)  # fmt: skip
            stats.erased += dropped
            txns, times = [txn for txn, _ in pairs], np.array([t for _, t in pairs], dtype=np.int64)
        if len(times):
            last_us = int(times[-1]) if last_us is None else max(last_us, int(times[-1]))
        start = 0
        while start < len(txns):
            due = _unerased(queue.take_until(int(times[start])), erasures, stats)
            stats.labels += store.apply_labels(due) if due else 0
            # Batches are pipelined up to the next transaction that a queued label must precede: a label is applied
            # between two streams, never while a batch is in flight.
            stop = len(txns)
            if len(queue.known_us):
                stop = max(start + 1, int(np.searchsorted(times, queue.known_us[0], side="right")))
            batches = (txns[i : min(i + batch_size, stop)] for i in range(start, stop, batch_size))
            for reply in store.stream(batches):
                stats.transactions += len(reply)
                stats.applied += sum(reply.applied)
                if on_progress is not None:
                    on_progress(stats)
            start = stop
    end = limit_us if limit_us is not None else None if last_us is None else last_us + 1
    rest = _unerased(queue.take_until(end), erasures, stats) if end is not None else []
    stats.labels += store.apply_labels(rest) if rest else 0
    stats.later_labels = len(queue.labels)
    return stats
