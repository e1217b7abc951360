"""The day-partitioned Parquet log: partitions by UTC day, whole files only, de-duplication on read; compaction of a
day's files into one (``fraudpipe logs compact``)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest

from fraudpipe.logstore import Compacted, DayLog, Logs


def _rows(items: list[tuple[str, int, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "txn_id": [t for t, _, _ in items],
            "version": [v for _, v, _ in items],
            "event_time": [datetime(2024, 3, day, 23, 59, tzinfo=UTC) for _, _, day in items],
        }
    )


@pytest.mark.parametrize(
    "days",
    [[1, 1, 2, 2, 2, 3], [1, 2, 1, 3, 2], [2, 2, 1], [5], [1, 2, 3, 1]],
    ids=["runs", "interleaved", "late-day-first", "one-day", "day-again-at-the-end"],
)
def test_rows_by_day_keep_their_order_whether_runs_or_interleaved(tmp_path: Path, days: list[int]) -> None:
    """Days in order of first appearance, each with its rows in order: slices of the frame when each day is one run
    (rows in time order, the usual flush), a partition otherwise."""
    frame = pl.concat([_rows([(f"t{i}", 1, day)]) for i, day in enumerate(days)], rechunk=False)
    parts = DayLog(tmp_path / "x", "event_time").by_day(frame)
    expected: dict[date, list[str]] = {}
    for i, day in enumerate(days):
        expected.setdefault(date(2024, 3, day), []).append(f"t{i}")
    assert list(parts) == list(expected)
    assert {d: p.get_column("txn_id").to_list() for d, p in parts.items()} == expected
    assert all(p.columns == frame.columns for p in parts.values())


def test_rows_without_a_day_are_kept_as_a_day_of_their_own(tmp_path: Path) -> None:
    days = [None, None, datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 2, tzinfo=UTC)]
    frame = pl.DataFrame({"txn_id": ["a", "b", "c", "d"], "event_time": days})
    parts = DayLog(tmp_path / "x", "event_time").by_day(frame)
    assert {d: p.get_column("txn_id").to_list() for d, p in parts.items()} == {
        None: ["a", "b"], date(2024, 3, 1): ["c"], date(2024, 3, 2): ["d"]}  # fmt: skip


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


# --- compaction ------------------------------------------------------------------------------------------------------

KEY = b"unit-test-audit-key-0123456789abcdef"


def _sealed_day(root: Path, batches: int = 3) -> tuple[DayLog, list[Path]]:
    """A sealed log whose 2024-03-01 has ``batches`` files (a redelivery of ``a`` among them) and 03-02 one."""
    log = DayLog(root, "event_time", key=KEY)
    written = []
    for n in range(batches):
        written += log.append(_rows([(f"t{n}", 1, 1), ("a", n, 1)]))
    log.append(_rows([("b", 1, 2)]))
    return log, written


def test_compaction_merges_a_day_into_one_sealed_file_in_write_order(tmp_path: Path) -> None:
    log, written = _sealed_day(tmp_path)
    leftover = tmp_path / "day=2024-03-01" / ".part-crashed.parquet.tmp"
    leftover.write_bytes(b"half a file")
    before = log.read()
    done = log.compact(date(2024, 3, 1))
    assert (done.files, done.rows, done.into, done.broken) == (3, 6, written[-1], ())
    assert log.files((date(2024, 3, 1), date(2024, 3, 2))) == [written[-1]]  # it keeps the newest name
    assert leftover.read_bytes() == b"half a file"  # never touched
    assert log.read().equals(before)  # same rows, same order, redeliveries included
    assert log.verify() == (7, [])
    assert log.compact(date(2024, 3, 1)) == Compacted(date(2024, 3, 1), 1)  # one file: nothing to do
    assert log.compact(date(2024, 3, 9)) == Compacted(date(2024, 3, 9), 0)


def test_compaction_refuses_to_launder_an_altered_file(tmp_path: Path) -> None:
    log, written = _sealed_day(tmp_path)
    altered = pl.read_parquet(written[1]).with_columns(version=pl.lit(99, dtype=pl.Int64))
    altered.write_parquet(written[1])
    contents = {path: path.read_bytes() for path in written}
    done = log.compact(date(2024, 3, 1))
    assert done.into is None and done.rows == 0
    assert [(path, problem.row) for path, problem in done.broken] == [(written[1], 0)]
    assert {path: path.read_bytes() for path in written} == contents  # the day is left exactly as it was
    assert [path for path, _ in log.verify()[1]] == [written[1]]


def test_compaction_without_the_key_refuses_sealed_files_and_merges_plain_ones(tmp_path: Path) -> None:
    _sealed_day(tmp_path / "sealed")
    keyless = DayLog(tmp_path / "sealed", "event_time")
    assert "key" in keyless.compact(date(2024, 3, 1)).broken[0][1].why
    plain, _ = _sealed_day(tmp_path / "plain")
    plain = DayLog(tmp_path / "plain", "event_time")
    for path in plain.files():
        pl.read_parquet(path).drop("seal_seq", "seal_rows", "seal").write_parquet(path)
    before = plain.read()
    assert plain.compact(date(2024, 3, 1)).rows == 6
    assert plain.read().equals(before) and len(plain.files()) == 2


def test_a_crash_between_the_merged_file_and_the_deletions_leaves_duplicates_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, _ = _sealed_day(tmp_path)
    unique = log.read(unique_by=["txn_id", "version"])

    def crash(self: Path, missing_ok: bool = False) -> None:
        raise OSError("killed")

    monkeypatch.setattr(Path, "unlink", crash)
    with pytest.raises(OSError, match="killed"):
        log.compact(date(2024, 3, 1))
    monkeypatch.undo()
    assert log.verify() == (7 + 4, [])  # the first two files' rows twice, every file intact
    assert log.read(unique_by=["txn_id", "version"]).sort("txn_id", "version").equals(unique.sort("txn_id", "version"))


def test_compaction_leaves_files_written_meanwhile(tmp_path: Path) -> None:
    class Busy(DayLog):
        """A worker writes a new file of the day while the merged one is being written."""

        def _write(self, folder: Path, name: str, part: pl.DataFrame) -> Path:
            if part.height > 2:  # the merged file
                self.write(date(2024, 3, 1), _rows([("late", 1, 1)]))
            return super()._write(folder, name, part)

    _sealed_day(tmp_path)
    log = Busy(tmp_path, "event_time", key=KEY)
    assert log.compact(date(2024, 3, 1)).files == 3
    day = log.read((date(2024, 3, 1), date(2024, 3, 2)))
    assert len(log.files((date(2024, 3, 1), date(2024, 3, 2)))) == 2 and "late" in day["txn_id"].to_list()
    assert log.verify()[1] == []


def test_readers_wait_for_a_rewrite_in_progress(tmp_path: Path) -> None:
    log, _ = _sealed_day(tmp_path)
    result: list[int] = []
    with log._locked(exclusive=True):  # as compaction, erasure and retention hold it
        reader = threading.Thread(target=lambda: result.append(log.read().height))
        reader.start()
        reader.join(0.2)
        assert reader.is_alive() and result == []
    reader.join(10)
    assert result == [7]


# --- fraudpipe logs compact ------------------------------------------------------------------------------------------


@pytest.fixture
def cli_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    from fraudpipe.settings import get_settings

    data = tmp_path / "data"
    monkeypatch.chdir(tmp_path)  # no .env
    for name in [n for n in os.environ if n.startswith("FRAUD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FRAUD_PATHS__DATA_DIR", str(data))
    get_settings.cache_clear()
    yield data
    get_settings.cache_clear()


def test_the_command_compacts_the_days_before_a_date(cli_data: Path) -> None:
    from typer.testing import CliRunner

    from cli import app
    from fraudpipe.settings import DEV_AUDIT_KEY

    logs = Logs.under(cli_data, DEV_AUDIT_KEY.encode())
    for n in range(3):
        logs.decisions.append(_rows([(f"t{n}", 1, 1), (f"u{n}", 1, 2)]))
        logs.labels.append(_rows([(f"t{n}", 1, 1)]))
    result = CliRunner().invoke(app, ["logs", "compact", "--log", "decisions", "--before", "2024-03-02"])
    assert result.exit_code == 0, result.output
    assert len(logs.decisions.files((date(2024, 3, 1), date(2024, 3, 2)))) == 1
    assert len(logs.decisions.files((date(2024, 3, 2), date(2024, 3, 3)))) == 3  # not before 03-02
    assert len(logs.labels.files()) == 3  # another log
    result = CliRunner().invoke(app, ["logs", "compact"])
    assert result.exit_code == 0, result.output
    assert [len(day_log.files()) for day_log in (logs.decisions, logs.labels)] == [2, 1]
    assert logs.decisions.verify() == (6, []) and logs.labels.verify() == (3, [])


def test_the_command_reports_an_altered_file_and_exits_3(cli_data: Path) -> None:
    from typer.testing import CliRunner

    from cli import app
    from fraudpipe.settings import DEV_AUDIT_KEY

    logs = Logs.under(cli_data, DEV_AUDIT_KEY.encode())
    (first,) = logs.labels.append(_rows([("t0", 1, 1)]))
    logs.labels.append(_rows([("t1", 1, 1)]))
    pl.read_parquet(first).with_columns(txn_id=pl.lit("forged")).write_parquet(first)
    result = CliRunner().invoke(app, ["logs", "compact", "--log", "labels"])
    assert result.exit_code == 3
    assert "altered" in result.output and first.name in result.output.replace("\n", "")
    assert len(logs.labels.files()) == 2


def test_a_bad_date_is_one_line(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")}
    result = subprocess.run(
        [sys.executable, "-m", "fraudpipe", "logs", "compact", "--before", "yesterday"],
        env={**clean, "FRAUD_PATHS__DATA_DIR": str(tmp_path)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --before expects a date YYYY-MM-DD; got 'yesterday'"
