"""Append-only logs as Parquet files partitioned by UTC day — the label store and the decision log.

Layout: ``<root>/day=YYYY-MM-DD/part-<unix ms>-<random>.parquet``, the layout DuckDB, polars and pandas read as a
hive-partitioned dataset (``pl.scan_parquet(root / "**" / "*.parquet")``). Each file is written under a temporary
name in its day folder and renamed into place, so a reader never sees a partial file and a crash leaves at most a
``.tmp`` file behind (ignored). Rows are appended as they come: de-duplicating (by transaction id and label
version, say) is the reader's job, and :meth:`DayLog.read` does it when given the key.

Given a key, a log seals every file it writes (:mod:`fraudpipe.seal`): :meth:`DayLog.verify` finds what was altered.
Only :meth:`DayLog.compact` (merging a day's files), :meth:`DayLog.remove` (erasure) and :meth:`DayLog.drop_before`
(retention) change files once written; the files ``compact`` and ``remove`` write are sealed again.

Appends take no lock: a new file appears whole, by rename. The three that rewrite or delete files hold the log's
lock exclusively and the readers (``read``, ``find``, ``verify``) hold it shared, so a reader never sees a file
vanish under it, nor a compaction half done; the lock is an ``flock`` on ``root``, shared by every process on this
host (containers sharing the volume included). The worker buffers its rows and appends them in groups
(:class:`fraudpipe.groupcommit.GroupWriter`).
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl

from fraudpipe.seal import SEAL_COLUMNS, Broken, seal, unsealed, verify_frame

__all__ = ["Compacted", "DayLog", "Logs"]


@dataclass(frozen=True, slots=True)
class Compacted:
    """What :meth:`DayLog.compact` did to one day: the ``files`` it found; ``into``, the one file now holding their
    ``rows`` (``None``: the day was left as it was, with ``rows`` 0); ``broken``, the files whose seals do not check
    (any of them: the day is left as it was, nothing laundered into a freshly sealed file)."""

    day: date
    files: int
    rows: int = 0
    into: Path | None = None
    broken: tuple[tuple[Path, Broken], ...] = ()


def _fsync_dir(folder: Path) -> None:
    """Make the names in ``folder`` (a rename, a new entry) survive a crash."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


class DayLog:
    """A day-partitioned Parquet log under ``root``; ``day_column`` (a UTC datetime) decides the partition; with
    ``key``, every file is sealed."""

    def __init__(self, root: Path, day_column: str, *, key: bytes | None = None) -> None:
        self.root, self.day_column, self.key = root, day_column, key

    def _write(self, folder: Path, name: str, part: pl.DataFrame) -> Path:
        """``part`` as ``folder/name``, sealed if the log has a key, atomically (replacing a file of that name), the
        file and its name fsynced."""
        temporary = folder / f".{name}.tmp"
        try:
            (seal(part, self.key) if self.key is not None else part).write_parquet(temporary, compression="zstd")
            with temporary.open("rb") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, folder / name)
        except BaseException:
            temporary.unlink(missing_ok=True)  # a full disk is not filled further by retries
            raise
        _fsync_dir(folder)
        return folder / name

    @contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[None]:
        """Hold the log's lock (module docstring); a log without a folder yet has nothing to guard."""
        try:
            handle = os.open(self.root, os.O_RDONLY)
        except FileNotFoundError:
            handle = None
        if handle is None:
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(handle)  # releases the lock

    def by_day(self, frame: pl.DataFrame) -> dict[date, pl.DataFrame]:
        """``frame``'s rows by the UTC day of ``day_column``: days in order of first appearance, rows in their order."""
        if frame.height == 0:
            return {}
        day = frame.get_column(self.day_column).dt.date()
        first = day.ne_missing(day.shift(1))  # the first row of each run of one day
        first[0] = True  # a leading null day starts a run too
        runs = day.filter(first)
        if runs.n_unique() == runs.len():  # each day one run (rows in time order): slices, no copy of the rows
            starts = [*first.arg_true().to_list(), frame.height]
            return {d: frame.slice(a, b - a) for d, a, b in zip(runs.to_list(), starts, starts[1:], strict=False)}
        days = frame.with_columns(_day=day)
        parts = days.partition_by("_day", as_dict=True, maintain_order=True)
        return {day: part.drop("_day") for (day,), part in parts.items()}

    def write(self, day: date, rows: pl.DataFrame) -> Path:
        """``rows`` (all of event day ``day``) as one new file of that day, sealed if the log has a key, fsynced and
        renamed into place (``part-<unix ms>-<random>.parquet``); returns it."""
        folder = self.root / f"day={day}"
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            _fsync_dir(folder.parent)
        return self._write(folder, f"part-{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}.parquet", rows)

    def append(self, frame: pl.DataFrame) -> list[Path]:
        """Write ``frame``'s rows, one new file per day they fall on (:meth:`write`); returns the files."""
        return [self.write(day, part) for day, part in self.by_day(frame).items()]

    def days(self) -> list[date]:
        """Days holding at least one file, in order."""
        if not self.root.is_dir():
            return []
        found = [p.name[4:] for p in self.root.glob("day=*") if any(p.glob("part-*.parquet"))]
        return sorted(date.fromisoformat(d) for d in found)

    def files(self, days: tuple[date, date] | None = None) -> list[Path]:
        """The files of the days in ``[days[0], days[1])`` (all without ``days``), in write order within a day."""
        wanted = [d for d in self.days() if days is None or days[0] <= d < days[1]]
        return sorted(f for d in wanted for f in (self.root / f"day={d}").glob("part-*.parquet"))

    def read(self, days: tuple[date, date] | None = None, *, unique_by: list[str] | None = None) -> pl.DataFrame:
        """Rows of the days in ``[days[0], days[1])`` (all without ``days``), seal columns dropped; with
        ``unique_by``, one row per key (the last written)."""
        with self._locked(exclusive=False):
            files = self.files(days)
            if not files:
                return pl.DataFrame()
            frame = pl.concat([unsealed(pl.read_parquet(f)) for f in files], how="diagonal_relaxed")
        return frame.unique(subset=unique_by, keep="last", maintain_order=True) if unique_by else frame

    def find(self, column: str, values: list[str], days: tuple[date, date] | None = None) -> pl.DataFrame:
        """Every row (redeliveries included, seal columns dropped, plus ``file``) whose ``column`` is in
        ``values``: one pass over the files, reading only that column of files holding no match."""
        found = []
        with self._locked(exclusive=False):
            for path in self.files(days):
                if column not in pl.read_parquet_schema(path):
                    continue
                rows = pl.scan_parquet(path).filter(pl.col(column).is_in(values)).collect()
                if rows.height:
                    found.append(unsealed(rows).with_columns(file=pl.lit(str(path))))
        return pl.concat(found, how="diagonal_relaxed") if found else pl.DataFrame()

    def remove(self, column: str, values: list[str]) -> int:
        """Rewrite every file holding rows whose ``column`` is in ``values`` without them (sealed again; a file
        left empty is deleted). Returns the rows removed."""
        removed = 0
        with self._locked(exclusive=True):
            for path in self.files():
                frame = pl.read_parquet(path)
                if column not in frame.columns:
                    continue
                keep = frame.filter(~pl.col(column).is_in(values))
                if keep.height == frame.height:
                    continue
                removed += frame.height - keep.height
                if keep.height:
                    self._write(path.parent, path.name, unsealed(keep))
                else:
                    path.unlink()
        return removed

    def drop_before(self, day: date) -> list[date]:
        """Delete the partitions of days before ``day`` (retention). Returns the days deleted."""
        with self._locked(exclusive=True):
            dropped = [d for d in self.days() if d < day]
            for d in dropped:
                for path in (self.root / f"day={d}").iterdir():
                    path.unlink()
                (self.root / f"day={d}").rmdir()
        return dropped

    def compact(self, day: date) -> Compacted:
        """Merge the files of ``day`` into one, sealed again: the rows in write order (file by file), so readers
        see what they saw before, redeliveries included.

        Every file is checked first (its seals with the log's key; without a key, sealed files are refused too: their
        seals would be dropped). If any does not check, nothing is written or deleted and the broken files are in the
        result: an altered file is never laundered into a freshly sealed one. Only the files there when compaction
        began are touched (never a ``.tmp`` file, never one a worker writes meanwhile). The merged file replaces the
        newest of them by rename (atomic, so it keeps its place in write order), then the others are deleted: a crash
        in between leaves their rows twice, each file intact (``verify`` passes) and readers de-duplicate. Holds the
        log's lock throughout; reads the whole day into memory (about 700 bytes a decision-log row)."""
        with self._locked(exclusive=True):
            files = sorted((self.root / f"day={day}").glob("part-*.parquet"))
            if len(files) < 2:
                return Compacted(day, len(files))
            frames, broken = [], []
            for path in files:
                try:
                    frame = pl.read_parquet(path)
                except (OSError, pl.exceptions.PolarsError) as error:
                    broken.append((path, Broken(-1, f"unreadable: {(str(error) or repr(error)).splitlines()[0]}")))
                    continue
                if self.key is not None:
                    problem = verify_frame(frame, self.key)
                elif set(SEAL_COLUMNS) & set(frame.columns):
                    problem = Broken(-1, "sealed: compacting it needs the log's key")
                else:
                    problem = None
                if problem is not None:
                    broken.append((path, problem))
                frames.append(unsealed(frame))
            if broken:
                return Compacted(day, len(files), broken=tuple(broken))
            merged = pl.concat(frames, how="diagonal_relaxed")
            into = self._write(files[-1].parent, files[-1].name, merged)
            for path in files[:-1]:
                path.unlink(missing_ok=True)
            _fsync_dir(into.parent)
            return Compacted(day, len(files), merged.height, into)

    def verify(self) -> tuple[int, list[tuple[Path, Broken]]]:
        """Check every file's seals (needs the key): the rows checked and each broken file with its problem."""
        if self.key is None:
            raise ValueError("verifying needs the log's key")
        rows, broken = 0, []
        with self._locked(exclusive=False):
            for path in self.files():
                frame = pl.read_parquet(path)
                rows += frame.height
                if (problem := verify_frame(frame, self.key)) is not None:
                    broken.append((path, problem))
        return rows, broken


@dataclass(frozen=True, slots=True)
class Logs:
    """fraudpipe's logs under ``data_dir``, each partitioned by the event day of its transaction:

    decisions   every decision as served (``streams.agents.decision_rows``): the audit record, training source
    labels      every label received (all versions)
    deliveries  every alert handed to a sink, and the sinks that gave up on one
    shadow      the challenger's would-be decisions (shadow mode)
    conflicts   payments refused because their transaction id was already decided for other content
                (``streams.agents.conflict_rows``)
    """

    decisions: DayLog
    labels: DayLog
    deliveries: DayLog
    shadow: DayLog
    conflicts: DayLog

    @classmethod
    def under(cls, data_dir: Path, key: bytes | None = None) -> Logs:
        """The logs under ``data_dir``; with ``key`` (``privacy.audit_key``) their writes are sealed."""
        names = ("decisions", "labels", "deliveries", "shadow", "conflicts")
        return cls(*(DayLog(data_dir / name, "event_time", key=key) for name in names))

    def all(self) -> dict[str, DayLog]:
        """Each log by name."""
        return {"decisions": self.decisions, "labels": self.labels, "deliveries": self.deliveries,
                "shadow": self.shadow, "conflicts": self.conflicts}  # fmt: skip
