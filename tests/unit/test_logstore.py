"""The day-partitioned Parquet log: partitions by UTC day, whole files only, de-duplication on read."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl

from fraudpipe.logstore import DayLog


def _rows(items: list[tuple[str, int, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "txn_id": [t for t, _, _ in items],
            "version": [v for _, v, _ in items],
            "event_time": [datetime(2024, 3, day, 23, 59, tzinfo=UTC) for _, _, day in items],
        }
    )


def test_rows_land_in_their_day_and_read_back_deduplicated(tmp_path: Path) -> None:
    log = DayLog(tmp_path / "labels", "event_time")
    assert log.read().height == 0 and log.days() == []
    written = log.append(_rows([("a", 1, 1), ("b", 1, 2), ("a", 2, 1)]))
    log.append(_rows([("a", 2, 1)]))  # a redelivery
    assert sorted(p.parent.name for p in written) == ["day=2024-03-01", "day=2024-03-02"]
    assert log.days() == [date(2024, 3, 1), date(2024, 3, 2)]
    assert log.read().height == 4
    assert log.read(unique_by=["txn_id", "version"]).height == 3
    assert log.read((date(2024, 3, 2), date(2024, 3, 3))).get_column("txn_id").to_list() == ["b"]
    assert not list((tmp_path / "labels").rglob("*.tmp"))
    # Readers of the whole dataset (DuckDB, polars, pandas) see the same rows.
    assert pl.scan_parquet(tmp_path / "labels" / "**" / "*.parquet").collect().height == 4


def test_a_leftover_temporary_file_is_ignored(tmp_path: Path) -> None:
    log = DayLog(tmp_path, "event_time")
    log.append(_rows([("a", 1, 1)]))
    (tmp_path / "day=2024-03-01" / ".part-crashed.parquet.tmp").write_bytes(b"half a file")
    assert log.read().height == 1
