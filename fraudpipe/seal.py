"""Tamper evidence for the append-only logs: every row sealed with a keyed hash chained through its file.

A sealed file (:class:`fraudpipe.logstore.DayLog` with a key) carries three more columns:

    seal_seq    the row's position in its file (0, 1, ...)
    seal_rows   how many rows the file was written with
    seal        hex HMAC-SHA256 under ``privacy.audit_key`` of: the previous row's seal (empty for the first row),
                seal_seq, seal_rows, and the row's canonical form

The canonical form of a row covers every column but the seals, sorted by name: the column names, the row's null
mask, its integer, boolean and time values as int64, its floats as float64 bytes, and its text (length-prefixed).
It depends on values and types, not on how a library prints them. So:

- changing any value of any row breaks that row's seal;
- removing, adding or reordering rows inside a file breaks the chain or the row count;
- forging a row needs the key, which the readers of the log do not need and should not have.

What a seal cannot show: a whole file removed. Only retention and erasure remove or rewrite files, and both
say what they did (the erasure receipt, the retention summary); the rewritten files are sealed again.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl

__all__ = ["SEAL_COLUMNS", "Broken", "seal", "unsealed", "verify_frame"]

SEAL_COLUMNS = ("seal_seq", "seal_rows", "seal")


def _canonical(frame: pl.DataFrame) -> Iterator[bytes]:
    """Each row's canonical bytes, in row order (built column-wise in one pass, then joined per row)."""
    names = sorted(c for c in frame.columns if c not in SEAL_COLUMNS)
    schema = frame.schema
    exact = [c for c in names if schema[c].is_integer() or schema[c].is_temporal() or schema[c] == pl.Boolean]
    floats = [c for c in names if schema[c].is_float()]
    texts = [c for c in names if c not in exact and c not in floats]
    n = frame.height

    def block(exprs: list[pl.Expr], dtype: type) -> np.ndarray:
        return frame.select(exprs).to_numpy().astype(dtype, copy=False) if exprs else np.zeros((n, 0), dtype)

    header = json.dumps(names).encode()
    nulls = np.packbits(block([pl.col(c).is_null() for c in names], np.bool_), axis=1)
    whole = block([pl.col(c).to_physical().cast(pl.Int64).fill_null(0) for c in exact], np.int64)
    real = block([pl.col(c).cast(pl.Float64).fill_null(0.0) for c in floats], np.float64)
    values = [pl.col(c).cast(pl.String).fill_null("") for c in texts]
    prefixed = [pl.concat_str(v.str.len_bytes().cast(pl.String), pl.lit(":"), v) for v in values]
    strings = frame.select(pl.concat_str(prefixed, separator="\x1f")).to_series().to_list() if texts else [""] * n
    for i, text in enumerate(strings):
        yield b"|".join((header, nulls[i].tobytes(), whole[i].tobytes(), real[i].tobytes(), text.encode()))


def _chain(frame: pl.DataFrame, key: bytes) -> list[str]:
    total, previous, seals = frame.height, b"", []
    for seq, body in enumerate(_canonical(frame)):
        digest = hmac.digest(key, previous + f"|{seq}|{total}|".encode() + body, "sha256").hex()
        seals.append(digest)
        previous = digest.encode()
    return seals


def seal(frame: pl.DataFrame, key: bytes) -> pl.DataFrame:
    """``frame`` (one file's rows, in the order they are written) with its seal columns (replaced if present)."""
    rows = unsealed(frame)
    return rows.with_columns(
        seal_seq=pl.int_range(rows.height, dtype=pl.Int64),
        seal_rows=pl.lit(rows.height, dtype=pl.Int64),
        seal=pl.Series(_chain(rows, key), dtype=pl.String),
    )


def unsealed(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` without its seal columns."""
    return frame.drop([c for c in SEAL_COLUMNS if c in frame.columns])


@dataclass(frozen=True, slots=True)
class Broken:
    """Why a file fails verification: ``row`` is the first row that does not check (-1: the file as a whole)."""

    row: int
    why: str


def verify_frame(frame: pl.DataFrame, key: bytes) -> Broken | None:
    """``None`` when ``frame`` (a whole file as written) is intact, else the first problem found."""
    if not set(SEAL_COLUMNS) <= set(frame.columns):
        return Broken(-1, "not sealed (no seal columns)")
    if frame.height == 0:
        return None
    if frame["seal_rows"].n_unique() != 1 or frame["seal_rows"][0] != frame.height:
        return Broken(-1, f"written with {frame['seal_rows'][0]} rows, holds {frame.height}")
    if frame["seal_seq"].to_list() != list(range(frame.height)):
        return Broken(-1, "rows removed, added or reordered")
    expected = _chain(frame, key)
    for row, (found, wanted) in enumerate(zip(frame["seal"].to_list(), expected, strict=True)):
        if not (isinstance(found, str) and hmac.compare_digest(found, wanted)):
            return Broken(row, "seal does not match the row (altered, or sealed with another key)")
    return None
