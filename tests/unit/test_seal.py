"""Sealed logs: every alteration a reader could make to a file is found, erasure rewrites stay sealed, and
retention drops whole days."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest

from fraudpipe.logstore import DayLog
from fraudpipe.seal import verify_frame

KEY = b"unit-test-audit-key-0123456789abcdef"


def _rows(n: int, day: int = 1) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "txn_id": [f"t{i}" for i in range(n)],
            "card_token": [f"tok_{i % 3}" for i in range(n)],
            "event_time": [datetime(2024, 3, day, 10, i, tzinfo=UTC) for i in range(n)],
            "score": [0.1 * i for i in range(n)],
            "note": [None if i % 2 else "ünïcode" for i in range(n)],
        }
    )


@pytest.fixture
def sealed(tmp_path: Path) -> tuple[DayLog, Path]:
    log = DayLog(tmp_path / "decisions", "event_time", key=KEY)
    (path,) = log.append(_rows(6))
    return log, path


def test_an_untouched_log_verifies_and_reads_without_its_seals(sealed: tuple[DayLog, Path]) -> None:
    log, _ = sealed
    assert log.verify() == (6, [])
    assert log.read().columns == _rows(1).columns


@pytest.mark.parametrize(
    ("change", "row"),
    [
        (lambda f: f.with_columns(score=pl.when(pl.col("seal_seq") == 2).then(0.99).otherwise("score")), 2),
        (lambda f: f.filter(pl.col("seal_seq") != 5), -1),  # the last row removed
        (lambda f: f.filter(pl.col("seal_seq") != 0), -1),  # the first row removed
        (lambda f: f.reverse(), -1),
        (lambda f: pl.concat([f, f.tail(1)]), -1),  # a row duplicated
        (lambda f: f.drop("note"), 0),  # a column dropped
    ],
    ids=["value", "last-row", "first-row", "order", "extra-row", "column"],
)
def test_every_alteration_is_found(sealed: tuple[DayLog, Path], change: object, row: int) -> None:
    log, path = sealed
    change(pl.read_parquet(path)).write_parquet(path)  # type: ignore[operator]
    _, broken = log.verify()
    assert [(p, b.row) for p, b in broken] == [(path, row)]


def test_a_row_resealed_without_the_key_is_found(sealed: tuple[DayLog, Path]) -> None:
    _, path = sealed
    from fraudpipe.seal import seal

    forged = seal(pl.read_parquet(path).with_columns(score=pl.lit(0.0)), b"the-attackers-own-key-000000000000")
    problem = verify_frame(forged, KEY)
    assert problem is not None and problem.row == 0


def test_remove_rewrites_sealed_and_find_sees_the_rest(sealed: tuple[DayLog, Path], tmp_path: Path) -> None:
    log, _ = sealed
    log.append(_rows(3, day=2).with_columns(card_token=pl.lit("tok_0")))
    assert log.find("card_token", ["tok_0"])["txn_id"].to_list() == ["t0", "t3", "t0", "t1", "t2"]
    assert log.remove("card_token", ["tok_0"]) == 5
    assert log.find("card_token", ["tok_0"]).height == 0
    assert log.days() == [date(2024, 3, 1)]  # day 2 held only tok_0: its file is gone
    assert log.verify() == (4, [])
    assert log.find("missing_column", ["x"]).height == 0


def test_drop_before_removes_whole_days(tmp_path: Path) -> None:
    log = DayLog(tmp_path / "labels", "event_time")
    for day in (1, 2, 3):
        log.append(_rows(2, day=day))
    assert log.drop_before(date(2024, 3, 3)) == [date(2024, 3, 1), date(2024, 3, 2)]
    assert log.days() == [date(2024, 3, 3)]
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == ["day=2024-03-03"]


def test_verify_needs_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="key"):
        DayLog(tmp_path, "event_time").verify()
