"""The group-commit writer: appends buffered without I/O, one sealed file per event day and flush, ``durable`` only
behind files in place, failed flushes keep their rows, the thread flushes on time and on size."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest

from fraudpipe.groupcommit import GroupWriter
from fraudpipe.logstore import DayLog

KEY = b"unit-test-audit-key-0123456789abcdef"


def _rows(ids: list[str], day: int = 1) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "txn_id": ids,
            "event_time": [datetime(2024, 3, day, 12, 0, tzinfo=UTC)] * len(ids),
            "score": [0.5] * len(ids),
        }
    )


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("part-*.parquet"))


def _eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


class _GatedLog(DayLog):
    """A DayLog whose writes wait for ``gate`` (and tell ``entered`` they started): a flush held mid-way."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, "event_time", key=KEY)
        self.entered, self.gate = threading.Event(), threading.Event()

    def write(self, day: date, rows: pl.DataFrame) -> Path:
        self.entered.set()
        assert self.gate.wait(10)
        return super().write(day, rows)


def test_appends_from_many_threads_land_once_in_one_file_per_day(tmp_path: Path) -> None:
    log = DayLog(tmp_path, "event_time", key=KEY)
    writer = GroupWriter(log, interval_s=60, max_rows=1_000_000)
    numbers: list[int] = []

    def worker(name: str) -> None:
        for i in range(50):
            numbers.append(writer.append(_rows([f"{name}-{i}"], day=1 + i % 2)))

    threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(numbers) == list(range(1, 201))
    assert _files(tmp_path) == [] and writer.durable == 0 and writer.buffered == 200  # no I/O before a flush
    assert writer.flush() == 200
    assert [p.parent.name for p in _files(tmp_path)] == ["day=2024-03-01", "day=2024-03-02"]
    assert log.read()["txn_id"].sort().to_list() == sorted(f"w{n}-{i}" for n in range(4) for i in range(50))
    assert log.verify() == (200, [])
    assert writer.flush() == 200 and len(_files(tmp_path)) == 2  # nothing new: no file
    # Each thread's rows keep their order in the file of their day.
    day1 = log.read((date(2024, 3, 1), date(2024, 3, 2)))["txn_id"].to_list()
    mine = [t for t in day1 if t.startswith("w0-")]
    assert mine == [f"w0-{i}" for i in range(0, 50, 2)]


def test_durable_moves_only_once_the_file_is_in_place_and_later_appends_wait(tmp_path: Path) -> None:
    log = _GatedLog(tmp_path)
    seen: list[int] = []
    writer = GroupWriter(log, interval_s=60, max_rows=1_000_000, on_durable=seen.append)
    first = writer.append(_rows(["a", "b"]))
    flushing = threading.Thread(target=writer.flush)
    flushing.start()
    assert log.entered.wait(10)
    later = writer.append(_rows(["c"]))  # during the flush: goes to the next one
    assert writer.durable == 0 and _files(tmp_path) == []
    log.gate.set()
    flushing.join(10)
    assert writer.durable == first == 1 and seen == [1]
    assert log.read()["txn_id"].to_list() == ["a", "b"] and writer.buffered == 1
    assert writer.flush() == later == 2 and seen == [1, 2]
    assert log.read()["txn_id"].to_list() == ["a", "b", "c"]


def test_a_failed_flush_marks_nothing_durable_and_the_next_one_writes_the_rest(tmp_path: Path) -> None:
    log = DayLog(tmp_path, "event_time", key=KEY)
    writer = GroupWriter(log, interval_s=60, max_rows=1_000_000)
    writer.append(_rows(["a1"], day=1))
    writer.append(_rows(["b1"], day=2))
    writer.append(_rows(["a2"], day=1))
    (tmp_path / "day=2024-03-02").write_bytes(b"")  # a file where day 2's folder should go: writing it fails
    with pytest.raises(FileExistsError):
        writer.flush()
    assert writer.durable == 0 and writer.buffered == 1  # day 1 was written; day 2's row is still buffered
    assert log.read()["txn_id"].to_list() == ["a1", "a2"]
    later = writer.append(_rows(["b2"], day=2))
    with pytest.raises(FileExistsError):
        writer.flush()
    assert writer.durable == 0 and writer.buffered == 2
    (tmp_path / "day=2024-03-02").unlink()
    assert writer.flush() == later == 4
    assert log.read(unique_by=None)["txn_id"].to_list() == ["a1", "a2", "b1", "b2"]  # each row once, in order
    assert not list(tmp_path.rglob("*.tmp")) and log.verify() == (4, [])


class _Ids:
    """Rows kept as a list until the flush (what ``combine`` is for): ``height`` and ids of one day."""

    def __init__(self, ids: list[str], day: int) -> None:
        self.ids, self.day = ids, day

    @property
    def height(self) -> int:
        return len(self.ids)


def _combine(items: list[_Ids]) -> pl.DataFrame:
    return pl.concat([_rows(item.ids, item.day) for item in items])


def test_combined_rows_are_built_per_flush_and_a_failed_one_keeps_them_in_order(tmp_path: Path) -> None:
    log = DayLog(tmp_path, "event_time", key=KEY)
    combined: list[int] = []
    writer = GroupWriter(log, interval_s=60, max_rows=1_000_000,
                         combine=lambda items: combined.append(len(items)) or _combine(items))  # fmt: skip
    writer.append(_Ids(["a1"], day=1))
    writer.append(_Ids(["b1"], day=2))
    writer.append(_rows(["a2"], day=1))  # a frame is taken as it is
    assert writer.buffered == 3 and combined == []  # nothing built before the flush
    (tmp_path / "day=2024-03-02").write_bytes(b"")
    with pytest.raises(FileExistsError):
        writer.flush()
    assert combined == [2] and writer.buffered == 1  # one build for both items; day 2's row kept
    writer.append(_Ids(["b2"], day=2))
    (tmp_path / "day=2024-03-02").unlink()
    assert writer.flush() == 4 and combined == [2, 1]
    assert log.read(unique_by=None)["txn_id"].to_list() == ["a2", "a1", "b1", "b2"]  # day 1: frames, then built
    with pytest.raises(TypeError, match="takes frames"):
        GroupWriter(log, interval_s=60, max_rows=10).append(_Ids(["c"], day=1))  # type: ignore[arg-type]


def test_the_thread_compacts_what_waits_into_a_frame_before_the_flush(tmp_path: Path) -> None:
    log = DayLog(tmp_path, "event_time", key=KEY)
    combined: list[int] = []
    writer = GroupWriter(log, interval_s=2.0, max_rows=1_000_000,
                         combine=lambda items: combined.append(len(items)) or _combine(items))  # fmt: skip
    writer.start()
    try:
        writer.append(_Ids(["a1", "a2"], day=1))
        writer.append(_Ids(["b1"], day=2))
        _eventually(lambda: combined == [2], timeout_s=1.5)  # within a tenth of the interval or so, not at 2 s
        assert writer.durable == 0 and writer.buffered == 3
        seq = writer.append(_Ids(["a3"], day=1))
        _eventually(lambda: writer.durable >= seq)
    finally:
        writer.close()
    assert log.read(unique_by=None)["txn_id"].to_list() == ["a1", "a2", "a3", "b1"]


def test_compaction_keeps_a_frame_a_day_and_interleaved_days_flush_in_order(tmp_path: Path) -> None:
    """Workers' partitions interleave two event days around midnight: compaction splits what it builds by day (so a
    flush joins each day's frames without copying the buffer) and each day's rows keep their order."""
    log = DayLog(tmp_path, "event_time", key=KEY)
    writer = GroupWriter(log, interval_s=60, max_rows=1_000_000, combine=_combine)
    for n, day in enumerate([1, 2, 1, 2, 2]):
        writer.append(_Ids([f"d{day}-{n}"], day=day))
    writer.compact()
    assert [frame["event_time"].dt.day().unique().to_list() for frame in writer._frames] == [[1], [2]]
    writer.append(_Ids(["d1-5"], day=1))
    writer.compact()
    assert writer.buffered == 6 and writer.flush() == 6 and len(_files(tmp_path)) == 2
    by_day = log.read(unique_by=None).group_by(pl.col("event_time").dt.day(), maintain_order=True).agg("txn_id")
    assert by_day["txn_id"].to_list() == [["d1-0", "d1-2", "d1-5"], ["d2-1", "d2-3", "d2-4"]]
    assert log.verify() == (6, [])


def test_rows_appended_while_the_thread_compacts_and_flushes_land_once(tmp_path: Path) -> None:
    log = DayLog(tmp_path, "event_time", key=KEY)
    writer = GroupWriter(log, interval_s=0.02, max_rows=1_000_000, combine=_combine)  # compacts every 2 ms

    def worker(name: str) -> None:
        for i in range(300):
            writer.append(_Ids([f"{name}-{i}"], day=1 + i % 2))
            if i % 50 == 0:
                time.sleep(0.001)

    writer.start()
    threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert writer.close() == 1_200
    rows = log.read(unique_by=None)["txn_id"].to_list()
    assert sorted(rows) == sorted(f"w{n}-{i}" for n in range(4) for i in range(300))  # each once


def test_an_empty_append_is_numbered_and_durable_with_the_next_flush(tmp_path: Path) -> None:
    writer = GroupWriter(DayLog(tmp_path, "event_time"), interval_s=60, max_rows=10)
    assert writer.append(_rows([])) == 1 and writer.durable == 0
    assert writer.flush() == 1 and _files(tmp_path) == []


def test_the_thread_flushes_on_its_interval_and_close_flushes_the_rest(tmp_path: Path) -> None:
    log = DayLog(tmp_path, "event_time", key=KEY)
    writer = GroupWriter(log, interval_s=0.05, max_rows=1_000_000)
    writer.start()
    first = writer.append(_rows(["a"]))
    _eventually(lambda: writer.durable >= first)
    assert log.read()["txn_id"].to_list() == ["a"]
    with pytest.raises(RuntimeError, match="started"):
        writer.start()
    last = writer.append(_rows(["b"]))
    assert writer.close() == last
    assert log.read()["txn_id"].to_list() == ["a", "b"]
    with pytest.raises(RuntimeError, match="closed"):
        writer.append(_rows(["c"]))


def test_the_thread_flushes_as_soon_as_max_rows_wait(tmp_path: Path) -> None:
    writer = GroupWriter(DayLog(tmp_path, "event_time"), interval_s=300, max_rows=3)
    writer.start()
    try:
        writer.append(_rows(["a", "b"]))
        seq = writer.append(_rows(["c"]))
        _eventually(lambda: writer.durable >= seq)  # long before the 300 s interval
    finally:
        writer.close()
    assert len(_files(tmp_path)) == 1


def test_the_thread_logs_a_failed_flush_and_retries(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = DayLog(tmp_path, "event_time")
    writer = GroupWriter(log, interval_s=0.05, max_rows=1)
    (tmp_path / "day=2024-03-01").write_bytes(b"")
    writer.start()
    try:
        with caplog.at_level(logging.ERROR, logger="fraudpipe.groupcommit"):
            seq = writer.append(_rows(["a"]))
            _eventually(lambda: any("flushing" in r.getMessage() for r in caplog.records))
        assert writer.durable == 0
        (tmp_path / "day=2024-03-01").unlink()
        _eventually(lambda: writer.durable >= seq)
    finally:
        writer.close()
    assert log.read()["txn_id"].to_list() == ["a"]


def test_coroutines_wait_for_durability_without_blocking_the_loop(tmp_path: Path) -> None:
    log = DayLog(tmp_path, "event_time", key=KEY)

    async def scenario() -> None:
        writer = GroupWriter(log, interval_s=0.05, max_rows=1_000_000)
        assert await writer.wait(0) == 0
        with pytest.raises(ValueError, match="no append number"):
            await writer.wait(1)
        writer.start()
        try:
            seq = writer.append(_rows(["a"]))
            assert await asyncio.wait_for(writer.wait(seq), 10) >= seq  # the thread's flush
            seq = writer.append(_rows(["b"]))
            assert await writer.flushed() == seq  # forced now
        finally:
            writer.close()

    asyncio.run(scenario())
    assert log.read()["txn_id"].to_list() == ["a", "b"]


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="interval_s"):
        GroupWriter(DayLog(tmp_path, "event_time"), interval_s=0, max_rows=10)


def test_a_close_that_cannot_write_fails_its_waiters(tmp_path: Path) -> None:
    (tmp_path / "day=2024-03-01").write_bytes(b"")

    async def scenario() -> None:
        writer = GroupWriter(DayLog(tmp_path, "event_time"), interval_s=60, max_rows=1_000_000)
        seq = writer.append(_rows(["a"]))
        waiting = asyncio.ensure_future(writer.wait(seq))
        await asyncio.sleep(0)  # now waiting
        with pytest.raises(FileExistsError):
            writer.close()
        with pytest.raises(FileExistsError):
            await waiting
        with pytest.raises(RuntimeError, match="without writing"):
            await writer.wait(seq)
        assert writer.durable == 0 and writer.buffered == 1

    asyncio.run(scenario())
