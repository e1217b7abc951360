"""Labelled histories for training and evaluation: whatever `fraudpipe replay` reads, as one frame.

A history is every valid transaction of a source (simulator folder or CSV / Parquet / JSONL file with ``--map``), in
event-time order, with its ground truth ``is_fraud`` (and ``fraud_scenario`` when the source has one: the
simulator's), plus the label events the online system would have received (a simulator's label files; for a file,
one label per fraud, known ``label_delay`` after the payment). Rows that do not validate are counted and left out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl

from fraudpipe.files import SourceError, derived_labels, open_source

__all__ = ["History", "load_history"]


@dataclass(frozen=True, slots=True)
class History:
    """Valid transactions (contract columns, ``is_fraud``, ``fraud_scenario`` or null), labels, rejected rows."""

    transactions: pl.DataFrame
    labels: pl.DataFrame
    rejected: int

    @property
    def days(self) -> tuple[date, date]:
        """First and last UTC day with a transaction."""
        day = self.transactions.get_column("event_time").dt.date()
        return day.min(), day.max()  # type: ignore[return-value]

    def truth_labels(self, delay: timedelta, *, aligned: bool = True) -> pl.DataFrame:
        """One label per fraud, as the evaluation protocol assumes them: ``aligned``, known from the start of the day
        after the payment's day plus ``delay`` — the day the protocol counts its card as known compromised
        (:func:`models.protocol.known_compromised`), so no test payment of a card still counted as a target sees
        the label; else known exactly ``delay`` after the payment."""
        frauds = self.transactions.filter(pl.col("is_fraud"))
        if not aligned:
            return derived_labels(frauds, delay)
        day_after = pl.col("event_time").dt.truncate("1d") + pl.duration(days=1)
        return derived_labels(frauds, delay).with_columns(known_at=day_after + pl.duration(days=delay.days))

    def blocked(self, rows: pl.DataFrame) -> pl.Series:
        """For each of ``rows`` (``card_token``, ``event_time``), whether its card was blocked by then: a fraud label
        on the card known before the payment (the label agent blocks a card on its first one; a later revision that
        would lift the block is not followed here)."""
        first = (
            self.labels.filter(pl.col("is_fraud"))
            .join(self.transactions.select("txn_id", "card_token"), on="txn_id")
            .group_by("card_token")
            .agg(pl.col("known_at").min().alias("blocked_at"))
        )
        known = rows.select("card_token", "event_time").join(first, on="card_token", how="left", maintain_order="left")
        return known.select((pl.col("blocked_at") < pl.col("event_time")).fill_null(False)).to_series().alias("blocked")

    def fingerprint(self) -> str:
        """Which data a model was trained on: :func:`fingerprint` of the transactions."""
        return fingerprint(self.transactions)


def fingerprint(rows: pl.DataFrame) -> str:
    """SHA-256 over the transaction ids and truths (``txn_id``, ``is_fraud``), in order."""
    digest = hashlib.sha256()
    for batch in rows.select("txn_id", "is_fraud").iter_slices(200_000):
        digest.update("\n".join(batch.get_column("txn_id").to_list()).encode())
        digest.update(batch.get_column("is_fraud").cast(pl.UInt8).to_numpy().tobytes())
    return digest.hexdigest()


def load_history(
    path: Path,
    mapping: dict[str, str],
    *,
    key: bytes,
    label_delay: timedelta = timedelta(days=7),
    timezone: str = "UTC",
    currency: str = "EUR",
    since: datetime | None = None,
    until: datetime | None = None,
) -> History:
    """Read ``path`` whole (see the module docstring), or only its payments from ``since`` and before ``until``.

    Raises:
        SourceError: unreadable source, a mapping naming a missing column, or an empty window.
    """
    source = open_source(path, mapping, key=key, label_delay=label_delay, timezone=timezone, currency=currency,
                         chunk_rows=500_000, since=since, until=until)  # fmt: skip
    frames, rejected = [], 0
    for chunk in source.chunks():
        frames.append(chunk.frame.drop("_value", "_line").rename({"_fraud": "is_fraud"}))
        rejected += len(chunk.rejects)
    if not frames or not sum(frame.height for frame in frames):
        raise SourceError(f"{path}: no valid payment" + (f" in {source.window}" if source.window else ""))
    transactions = pl.concat(frames).sort("event_time", maintain_order=True)
    if source.kind == "simulation":
        scenarios = pl.scan_parquet(source.parts()).select("txn_id", "fraud_scenario")
        transactions = transactions.join(scenarios.collect(), on="txn_id", how="left", maintain_order="left")
        labels = source.label_frame()
    else:
        transactions = transactions.with_columns(fraud_scenario=pl.lit(None, dtype=pl.String))
        labels = derived_labels(transactions.filter(pl.col("is_fraud")), label_delay)
    return History(transactions, labels, rejected)
