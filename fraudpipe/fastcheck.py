"""Vectorized pre-validation of a frame of events against a contract — a fast path, never a second contract.

Per-row pydantic validation costs ~5-10 µs; a replay of millions of rows needs less. :func:`certainly_valid` marks
the rows of a polars frame that the contract *certainly* accepts, in one pass of Rust expressions; every other row
goes through the contract itself (which also names the reason). The rules are compiled from the contract's own
JSON schema (types, required fields, lengths, patterns, bounds, enums), so they cannot drift from it; the few
checks pydantic runs in Python (time range, PAN checks, cross-field rules, the amount's cap and decimals) are
restated here and, where a vectorized answer would be a guess (a digit run that may be a PAN), the row is simply
sent to the slow path. Decimals: ``round(amount * 10^units) / 10^units == amount`` holds only for the float nearest
to a number with ``units`` decimals, for which the contract's ``round(amount, units) == amount`` holds too.

:func:`transactions` is the stream's fast intake: raw JSON values in, a ``Transaction`` for each value the contract
certainly accepts (parsed by pydantic-core's JSON parser, checked by :func:`certainly_valid` for the whole batch,
built without validating it again), ``None`` for every other one — the caller asks the contract
(:func:`fraudpipe.codec.decode`), which also names the reason of a refusal. Anything unusual takes that slow path:
escapes, whitespace after a quote, a key that may repeat, a JSON type the contract would not take, an event time
not in plain ISO 8601 form.

A property test (tests/unit/test_fastcheck.py) holds the promise: no row the fast path accepts is refused by the
contract, and a transaction it builds equals (digest included) the one the contract builds.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import polars as pl
from pydantic_core import from_json

from fraudpipe.contracts import EARLIEST_EVENT_TIME, LATEST_EVENT_TIME, SCHEMA_VERSION, Event, Transaction
from fraudpipe.currencies import CURRENCIES, DEFAULT_CAPS, minor_units
from fraudpipe.pan import PAN_CANDIDATE

__all__ = ["certainly_valid", "schema_rules", "transactions"]

_TEXT_FIELDS = ("txn_id", "card_token", "terminal_id", "merchant_id", "customer_id", "device_id", "merchant_name")
"""The fields ``Transaction`` scans for PANs: a row where one holds ``PAN_CANDIDATE`` takes the slow path."""


_CODES = sorted(CURRENCIES)
_SCALES = pl.Series([10.0 ** minor_units(code) for code in _CODES], dtype=pl.Float64)


def _string_rules(column: pl.Expr, schema: dict[str, Any]) -> list[pl.Expr]:
    rules = []
    if "minLength" in schema and "maxLength" in schema:
        rules.append(column.str.len_chars().is_between(schema["minLength"], schema["maxLength"]))
    elif "minLength" in schema:
        rules.append(column.str.len_chars() >= schema["minLength"])
    elif "maxLength" in schema:
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
        return _all(_string_rules(column, schema) or [pl.lit(True)])
    if kind == "number" and dtype.is_float():
        return _all(_number_rules(column, schema))
    if "enum" in schema and dtype == pl.String:
        return column.is_in(list(schema["enum"]))
    return pl.lit(False)


def _all(rules: list[pl.Expr]) -> pl.Expr:
    """The rules and-ed (a chain, not ``all_horizontal``: fewer nodes to plan, null where a value is null)."""
    return functools.reduce(operator.and_, rules)


@cache
def _schema(kind: type[Event]) -> dict[str, Any]:
    return kind.model_json_schema()


def schema_rules(kind: type[Event], frame_schema: pl.Schema) -> pl.Expr:
    """One boolean expression: every field of ``kind`` present in the frame obeys the contract's JSON schema."""
    return pl.all_horizontal(_field_rules(kind, tuple(frame_schema.items())))


@cache
def _field_rules(kind: type[Event], frame_schema: tuple[tuple[str, pl.DataType], ...]) -> tuple[pl.Expr, ...]:
    """One boolean expression per field of ``kind`` (:func:`schema_rules`), built once per frame schema: building
    them costs more than running them on a batch."""
    schema, columns = _schema(kind), dict(frame_schema)
    required = set(schema.get("required", []))
    checks = []
    for name, field_schema in schema["properties"].items():
        if name == "schema_version":
            continue
        if name not in columns:
            checks.append(pl.lit(name not in required).alias(name))
            continue
        column, dtype = pl.col(name), columns[name]
        options = [s for s in field_schema.get("anyOf", [field_schema]) if s.get("type") != "null"]
        nullable = len(options) < len(field_schema.get("anyOf", [field_schema])) and name not in required
        valid = functools.reduce(operator.or_, [_value_rules(column, option, dtype) for option in options])
        # every rule is null on a null value (and False on anything it does not understand): null means "absent"
        checks.append(((column.is_null() & pl.lit(nullable)) | valid.fill_null(False)).alias(name))
    return tuple(checks)


@cache
def _may_hold_pan() -> pl.Expr:
    return pl.any_horizontal([pl.col(name).str.contains(PAN_CANDIDATE).fill_null(False) for name in _TEXT_FIELDS])


@cache
def _python_rules(caps: tuple[float, ...]) -> pl.Expr:
    """The checks ``Transaction`` runs in Python, restated (but the time bound), for caps by currency (in
    ``_CODES`` order); doubtful PAN cases are left to the slow path. Built once per caps."""
    where = pl.col("terminal_id").is_not_null() | pl.col("merchant_id").is_not_null()
    geo = pl.col("lat").is_null() == pl.col("lon").is_null()
    currency, amount = pl.col("currency"), pl.col("amount")
    codes = pl.Series(_CODES, dtype=pl.String)
    cap = currency.replace_strict(codes, pl.Series(caps, dtype=pl.Float64), default=None)
    scale = currency.replace_strict(codes, _SCALES, default=None)
    precise = (amount * scale).round(0) / scale == amount  # implies round(amount, units) == amount (module doc)
    fits = (amount <= cap) & precise
    return ~_may_hold_pan() & where & geo & fits.fill_null(False)


def _transaction_python_rules(latest: datetime | None, caps: Mapping[str, float]) -> pl.Expr:
    """:func:`_python_rules` for ``caps``, and event times before ``latest`` when given."""
    rules = _python_rules(tuple(caps[code] for code in _CODES))
    if latest is not None:
        rules = rules & (pl.col("event_time") < pl.lit(latest)).fill_null(False)
    return rules.alias("python_rules")


def certainly_valid(frame: pl.DataFrame, *, latest_event_time: datetime | None = None,
                    amount_caps: Mapping[str, float] | None = None) -> pl.Series:  # fmt: skip
    """Boolean per row: True only where ``Transaction`` certainly accepts the row (False means "ask the contract").

    ``frame`` holds the contract's fields as columns (missing optional ones may be absent); times as timezone-aware
    datetimes, numbers as floats, everything else as strings. ``latest_event_time`` and ``amount_caps``: the
    bounds the contract is given (:func:`fraudpipe.codec.decode`); without them, the fixed range and
    :data:`fraudpipe.currencies.DEFAULT_CAPS`.
    """
    needed = ("lat", "lon", *_TEXT_FIELDS)
    missing = [
        pl.lit(None, dtype=pl.Float64 if n in {"lat", "lon"} else pl.String).alias(n)
        for n in needed
        if n not in frame.columns
    ]
    frame = frame.with_columns(missing) if missing else frame
    python = _transaction_python_rules(latest_event_time, DEFAULT_CAPS if amount_caps is None else amount_caps)
    checks = frame.select(*_field_rules(Transaction, tuple(frame.schema.items())), python.fill_null(False))
    return pl.Series("certainly_valid", checks.to_numpy().all(axis=1), dtype=pl.Boolean)  # flat: cheaper to plan


# --- the stream's fast intake -------------------------------------------------------------------------------

_FIELDS = tuple(Transaction.model_fields)
_KNOWN = frozenset(_FIELDS)
_EMPTY: dict[str, Any] = dict.fromkeys(_FIELDS)
"""Every field, in contract order: the start of a transaction's values (absent optional fields are ``None``)."""
_NUMBERS = ("amount", "lat", "lon")
_STRINGS = tuple(name for name in _FIELDS if name not in {"schema_version", "event_time", *_NUMBERS})
_PLAIN_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})", re.ASCII)
"""The event times taken on the fast path: ISO 8601 as producers write it, which ``datetime.fromisoformat`` and
the contract's parser read alike; anything else goes to the contract."""
_BLANKS = bytes.maketrans(b"\t\n\r", b"   ")
"""JSON whitespace as spaces: after a quote, any of it could hide a key from the key count (``"amount" :``). An
escape cannot: every key must be a field name, written or escaped, and a key counts once either way."""
_EXACT_INTEGERS = 2**53
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _parsed(value: bytes | None, max_bytes: int) -> dict[str, Any] | None:
    """``value`` as a JSON object of the contract's keys, each once; ``None`` when that is not certain."""
    if not value or len(value) > max_bytes or not value.startswith(b"{") or b'" ' in value.translate(_BLANKS):
        return None
    try:
        parsed = from_json(value, allow_inf_nan=False, cache_strings="keys")
    except ValueError:
        return None
    if type(parsed) is not dict or not parsed.keys() <= _KNOWN:
        return None
    if value.count(b'":') - value.count(b'\\":') != len(parsed):  # a key repeated: the dict kept one
        return None
    version = parsed.get("schema_version", SCHEMA_VERSION)
    return parsed if type(version) is int and version == SCHEMA_VERSION else None


def _time(text: Any) -> datetime | None:
    """``text`` as a UTC datetime, when it is a plain ISO 8601 time (:data:`_PLAIN_TIME`) that exists."""
    if type(text) is not str or not _PLAIN_TIME.fullmatch(text):
        return None
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:  # 2024-02-30, 25:00, an offset of 24 h or more
        return None


def _typed(values: list[Any], dtype: type[pl.DataType], ok: list[bool]) -> pl.Series:
    """``values`` as a column of ``dtype``; a value of another JSON type clears its row in ``ok`` (and is nulled).
    JSON ``true`` is no number to the contract, nor is an integer too large to be a float exactly."""
    if dtype is pl.Float64 and any(type(v) is bool or (type(v) is int and abs(v) > _EXACT_INTEGERS) for v in values):
        for row, value in enumerate(values):
            if type(value) is bool or (type(value) is int and abs(value) > _EXACT_INTEGERS):
                ok[row], values[row] = False, None
    try:
        return pl.Series(values, dtype=dtype, strict=True)
    except (TypeError, ValueError, OverflowError):  # another JSON type somewhere (rare): find its rows
        allowed = (str,) if dtype is pl.String else (float, int)
        for row, value in enumerate(values):
            if value is not None and type(value) not in allowed:
                ok[row], values[row] = False, None
        return pl.Series(values, dtype=dtype, strict=True)


def _trusted(values: dict[str, Any], fields_set: set[str]) -> Transaction:
    """A ``Transaction`` of ``values`` (every field, in contract order, as validation would leave them), not
    validated again: :func:`certainly_valid` said the contract accepts them (what ``model_construct`` does, without
    its per-field defaults: 4x cheaper)."""
    event = Transaction.__new__(Transaction)
    object.__setattr__(event, "__dict__", values)
    object.__setattr__(event, "__pydantic_fields_set__", fields_set)
    object.__setattr__(event, "__pydantic_extra__", None)
    object.__setattr__(event, "__pydantic_private__", None)
    return event


def transactions(values: Sequence[bytes | None], *, max_bytes: int, latest_event_time: datetime | None = None,
                 amount_caps: Mapping[str, float] | None = None) -> list[Transaction | None]:  # fmt: skip
    """The transaction of each of ``values`` (raw JSON) that the contract certainly accepts, in order; ``None``
    where that is not certain (module docstring: ask the contract). ``max_bytes``: the codec's size limit;
    ``latest_event_time`` and ``amount_caps`` as for :func:`fraudpipe.codec.decode`."""
    out: list[Transaction | None] = [None] * len(values)
    parsed = [(row, found) for row, value in enumerate(values) if (found := _parsed(value, max_bytes)) is not None]
    if not parsed:
        return out
    rows, objects = [row for row, _ in parsed], [found for _, found in parsed]
    ok = [True] * len(rows)
    columns: dict[str, pl.Series] = {}
    for name in _STRINGS:
        columns[name] = _typed([found.get(name) for found in objects], pl.String, ok)
    for name in _NUMBERS:
        columns[name] = _typed([found.get(name) for found in objects], pl.Float64, ok)
    times = [_time(found.get("event_time")) for found in objects]
    for row, time in enumerate(times):
        ok[row] = ok[row] and time is not None
    micros = [None if t is None else (t - _EPOCH) // _MICROSECOND for t in times]
    columns["event_time"] = pl.Series(micros, dtype=pl.Int64).cast(pl.Datetime("us", "UTC"))
    frame = pl.DataFrame(columns)
    valid = certainly_valid(frame, latest_event_time=latest_event_time, amount_caps=amount_caps).to_list()
    amounts, lats, lons = (columns[name].to_list() for name in _NUMBERS)
    for n, (row, found) in enumerate(parsed):
        if ok[n] and valid[n]:
            fields = _EMPTY.copy()
            fields.update(found)
            fields.update(schema_version=SCHEMA_VERSION, event_time=times[n], amount=amounts[n], lat=lats[n],
                          lon=lons[n])  # fmt: skip
            out[row] = _trusted(fields, set(found))
    return out
