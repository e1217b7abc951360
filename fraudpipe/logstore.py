"""Append-only logs as Parquet files partitioned by UTC day — the label store and the decision log.

Layout: ``<root>/day=YYYY-MM-DD/part-<unix ms>-<random>.parquet``, the layout DuckDB, polars and pandas read as a
hive-partitioned dataset (``pl.scan_parquet(root / "**" / "*.parquet")``). Each file is written under a temporary
name in its day folder and renamed into place, so a reader never sees a partial file and a crash leaves at most a
``.tmp`` file behind (ignored). Rows are appended as they come: de-duplicating (by transaction id and label
version, say) is the reader's job, and :meth:`DayLog.read` does it when given the key.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import date
from pathlib import Path

import polars as pl

__all__ = ["DayLog"]


class DayLog:
    """A day-partitioned Parquet log under ``root``; ``day_column`` (a UTC datetime) decides the partition."""

    def __init__(self, root: Path, day_column: str) -> None:
        self.root, self.day_column = root, day_column

    def append(self, frame: pl.DataFrame) -> list[Path]:
        """Write ``frame``'s rows, one new file per day they fall on; returns the files."""
        if frame.height == 0:
            return []
        written = []
        days = frame.with_columns(_day=pl.col(self.day_column).dt.date())
        for (day,), part in days.partition_by("_day", as_dict=True, maintain_order=True).items():
            folder = self.root / f"day={day}"
            folder.mkdir(parents=True, exist_ok=True)
            name = f"part-{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}.parquet"
            temporary = folder / f".{name}.tmp"
            part.drop("_day").write_parquet(temporary, compression="zstd")
            with temporary.open("rb") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, folder / name)
            written.append(folder / name)
        return written

    def days(self) -> list[date]:
        """Days holding at least one file, in order."""
        if not self.root.is_dir():
            return []
        found = [p.name[4:] for p in self.root.glob("day=*") if any(p.glob("part-*.parquet"))]
        return sorted(date.fromisoformat(d) for d in found)

    def read(self, days: tuple[date, date] | None = None, *, unique_by: list[str] | None = None) -> pl.DataFrame:
        """Rows of the days in ``[days[0], days[1])`` (all without ``days``); with ``unique_by``, one row per key
        (the last written)."""
        wanted = [d for d in self.days() if days is None or days[0] <= d < days[1]]
        files = sorted(f for d in wanted for f in (self.root / f"day={d}").glob("part-*.parquet"))
        if not files:
            return pl.DataFrame()
        frame = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
        return frame.unique(subset=unique_by, keep="last", maintain_order=True) if unique_by else frame
