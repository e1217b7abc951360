"""Vectorized pre-validation of a frame of events against a contract — a fast path, never a second contract.

Per-row pydantic validation costs ~5-10 µs; a replay of millions of rows needs less. :func:`certainly_valid` marks
the rows of a polars frame that the contract *certainly* accepts, in one pass of Rust expressions; every other row
goes through the contract itself (which also names the reason). The rules are compiled from the contract's own
JSON schema (types, required fields, lengths, patterns, bounds, enums), so they cannot drift from it; the few
checks pydantic runs in Python (time range, PAN checks, cross-field rules, the amount's cap and decimals) are
restated here and, where a vectorized answer would be a guess (a digit run that may be a PAN), the row is simply
sent to the slow path. Decimals: ``round(amount * 10^units) / 10^units == amount`` holds only for the float nearest
to a number with ``units`` decimals, for which the contract's ``round(amount, units) == amount`` holds too.

A property test (tests/unit/test_fastcheck.py) holds the promise: no row the fast path accepts is refused by the
contract.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import polars as pl

from fraudpipe.contracts import EARLIEST_EVENT_TIME, LATEST_EVENT_TIME, Event, Transaction
from fraudpipe.currencies import CURRENCIES, DEFAULT_CAPS, minor_units
from fraudpipe.pan import PAN_CANDIDATE

__all__ = ["certainly_valid", "schema_rules"]

_TEXT_FIELDS = ("txn_id", "card_token", "terminal_id", "merchant_id", "customer_id", "device_id", "merchant_name")
"""The fields ``Transaction`` scans for PANs: a row where one holds ``PAN_CANDIDATE`` takes the slow path."""


_MINOR_UNITS = {code: minor_units(code) for code in CURRENCIES}


def _string_rules(column: pl.Expr, schema: dict[str, Any]) -> list[pl.Expr]:
    rules = []
    if "minLength" in schema:
        rules.append(column.str.len_chars() >= schema["minLength"])
    if "maxLength" in schema:
        rules.append(column.str.len_chars() <= schema["maxLength"])
    if "pattern" in schema:
        rules.append(column.str.contains(schema["pattern"]))
    if "enum" in schema:
        rules.append(column.is_in(list(schema["enum"])))
    return rules


def _number_rules(column: pl.Expr, schema: dict[str, Any]) -> list[pl.Expr]:
    rules = [column.is_finite()]
    if "minimum" in schema:
        rules.append(column >= schema["minimum"])
    if "exclusiveMinimum" in schema:
        rules.append(column > schema["exclusiveMinimum"])
    if "maximum" in schema:
        rules.append(column <= schema["maximum"])
    if "exclusiveMaximum" in schema:
        rules.append(column < schema["exclusiveMaximum"])
    return rules


def _value_rules(column: pl.Expr, schema: dict[str, Any], dtype: pl.DataType) -> pl.Expr:
    """True where a non-null value satisfies ``schema``; False for anything this compiler does not understand."""
    kind = schema.get("type")
    if schema.get("format") == "date-time":
        if not isinstance(dtype, pl.Datetime) or dtype.time_zone is None:
            return pl.lit(False)
        return column.is_between(pl.lit(EARLIEST_EVENT_TIME), pl.lit(LATEST_EVENT_TIME), closed="left")
    if kind == "string" and dtype == pl.String:
        return pl.all_horizontal(_string_rules(column, schema) or [pl.lit(True)])
    if kind == "number" and dtype.is_float():
        return pl.all_horizontal(_number_rules(column, schema))
    if "enum" in schema and dtype == pl.String:
        return column.is_in(list(schema["enum"]))
    return pl.lit(False)


@cache
def _schema(kind: type[Event]) -> dict[str, Any]:
    return kind.model_json_schema()


def schema_rules(kind: type[Event], frame_schema: pl.Schema) -> pl.Expr:
    """One boolean expression: every field of ``kind`` present in the frame obeys the contract's JSON schema."""
    schema = _schema(kind)
    required = set(schema.get("required", []))
    checks = []
    for name, field_schema in schema["properties"].items():
        if name == "schema_version":
            continue
        if name not in frame_schema:
            checks.append(pl.lit(name not in required))
            continue
        column, dtype = pl.col(name), frame_schema[name]
        options = [s for s in field_schema.get("anyOf", [field_schema]) if s.get("type") != "null"]
        nullable = len(options) < len(field_schema.get("anyOf", [field_schema])) and name not in required
        valid = pl.any_horizontal([_value_rules(column, option, dtype) for option in options])
        checks.append(pl.when(column.is_null()).then(pl.lit(nullable)).otherwise(valid.fill_null(False)))
    return pl.all_horizontal(checks)


def _transaction_python_rules() -> pl.Expr:
    """The checks ``Transaction`` runs in Python, restated; doubtful PAN cases are left to the slow path."""
    may_hold_pan = pl.any_horizontal([pl.col(name).str.contains(PAN_CANDIDATE).fill_null(False)
                                      for name in _TEXT_FIELDS])  # fmt: skip
    where = pl.col("terminal_id").is_not_null() | pl.col("merchant_id").is_not_null()
    geo = pl.col("lat").is_null() == pl.col("lon").is_null()
    currency, amount = pl.col("currency"), pl.col("amount")
    cap = currency.replace_strict(DEFAULT_CAPS, default=None, return_dtype=pl.Float64)
    scale = pl.lit(10.0).pow(currency.replace_strict(_MINOR_UNITS, default=None, return_dtype=pl.Int64))
    precise = (amount * scale).round(0) / scale == amount  # implies round(amount, units) == amount (module doc)
    fits = (amount <= cap) & precise
    return ~may_hold_pan & where & geo & fits.fill_null(False)


def certainly_valid(frame: pl.DataFrame) -> pl.Series:
    """Boolean per row: True only where ``Transaction`` certainly accepts the row (False means "ask the contract").

    ``frame`` holds the contract's fields as columns (missing optional ones may be absent); times as timezone-aware
    datetimes, numbers as floats, everything else as strings.
    """
    needed = ("lat", "lon", *_TEXT_FIELDS)
    missing = [
        pl.lit(None, dtype=pl.Float64 if n in {"lat", "lon"} else pl.String).alias(n)
        for n in needed
        if n not in frame.columns
    ]
    frame = frame.with_columns(missing) if missing else frame
    return frame.select(
        (schema_rules(Transaction, frame.schema) & _transaction_python_rules())
        .fill_null(False)
        .alias("certainly_valid")
    ).to_series()
