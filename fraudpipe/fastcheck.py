"""Fast paths in front of a contract — never a second contract: each leaves every row it is not certain of to the
contract itself, which also names the reason of a refusal.

Per-row pydantic validation costs ~5-10 µs; a replay of millions of rows needs less. :func:`certainly_valid` marks
the rows of a polars frame that the contract *certainly* accepts, in one pass of Rust expressions; every other row
goes through the contract itself. The rules are compiled from the contract's own JSON schema (types, required
fields, lengths, patterns, bounds, enums), so they cannot drift from it; the few checks pydantic runs in Python
(time range, PAN checks, cross-field rules, the amount's cap and decimals) are restated here and, where a vectorized
answer would be a guess (a digit run that may be a PAN), the row is simply sent to the slow path. Decimals:
``round(amount * 10^units) / 10^units == amount`` holds only for the float nearest to a number with ``units``
decimals, for which the contract's ``round(amount, units) == amount`` holds too.

:func:`transactions` is the stream's fast intake: raw JSON values in, a ``Transaction`` for each value the contract
certainly accepts, ``None`` for every other one — the caller asks the contract (:func:`fraudpipe.codec.decode`).
msgspec decodes each value and checks, in C, what it and the contract say alike: JSON syntax and UTF-8, JSON types
(strict), lengths, bounds, currency and channel. The rest is checked for the whole batch at once, a few C calls per
check over joined columns: each key known and once (a count of quotes), identifiers' characters, event times in
plain ISO 8601 form (read by ``datetime.fromisoformat``) and in range, amounts' decimals and cap, the cross-field
rules, and PANs — a value with 13 digits in a row once separators are dropped is asked
:func:`~fraudpipe.pan.contains_pan`, the contract's own check, and no other value can hold one. Only when a batch
check fails are its rows checked one by one, to find which. The transaction is then built without validating it
again. Anything unusual takes the slow path: in a value with escapes, an escaped quote before a colon or whitespace
after a quote; an event time in another form; an amount too large to be an exact float.

Measured through :func:`streams.intake.intake` (ordinary transactions as tests.factories.transaction_json writes
them, varied; CPU time on a shared 2-vCPU VM): ~5.5-6 µs a record at batches of 100-2,000 and ~8.5 at 10 (fixed
cost ~15 µs a batch), against ~14-16 through the contract alone; ~5 at 100-500 for records as the replayer writes
them. Of that, msgspec's decode is ~1.5 µs, building the transaction ~0.5 and the rest of intake ~0.3: the batch
checks are most of the remainder, in Python.

A property test (tests/unit/test_fastcheck.py) holds the promise: no row the fast path accepts is refused by the
contract, and a transaction it builds equals (digest included) the one the contract builds.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from itertools import chain, repeat
from typing import Annotated, Any, Literal, NoReturn, NotRequired, TypedDict, cast

import msgspec
import numpy as np
import polars as pl
from pydantic import BaseModel

from fraudpipe.contracts import (
    EARLIEST_EVENT_TIME,
    LATEST_EVENT_TIME,
    SCHEMA_VERSION,
    Channel,
    Currency,
    Event,
    Transaction,
)
from fraudpipe.currencies import CURRENCIES, DEFAULT_CAPS, minor_units
from fraudpipe.pan import PAN_CANDIDATE, contains_pan

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

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_Digits4 = Annotated[str, msgspec.Meta(min_length=4, max_length=4)]


class _Decoded(TypedDict):
    """A transaction as msgspec decodes and checks it, in C: JSON syntax, UTF-8, JSON types as strict as the
    contract's (an integer is a float, ``true`` is not), lengths, bounds, currency and channel. An unknown key is
    skipped here and caught by the quote count (:func:`_keys_once`); the rest of the contract is checked per batch.
    Their lengths also keep codes and identifiers non-empty: the batch checks drop absent ones with ``filter(None,
    ...)`` and count what is left."""

    txn_id: _Id
    event_time: Annotated[str, msgspec.Meta(max_length=40)]
    card_token: _Id
    amount: Annotated[float, msgspec.Meta(ge=0.0)]
    currency: Currency
    schema_version: NotRequired[Literal[1]]
    card_bin: NotRequired[Annotated[str, msgspec.Meta(min_length=6, max_length=8)] | None]
    card_last4: NotRequired[_Digits4 | None]
    terminal_id: NotRequired[_Id | None]
    merchant_id: NotRequired[_Id | None]
    merchant_name: NotRequired[Annotated[str, msgspec.Meta(max_length=256)] | None]
    mcc: NotRequired[_Digits4 | None]
    customer_id: NotRequired[_Id | None]
    device_id: NotRequired[_Id | None]
    channel: NotRequired[Channel | None]
    country: NotRequired[Annotated[str, msgspec.Meta(min_length=2, max_length=2)] | None]
    lat: NotRequired[Annotated[float, msgspec.Meta(ge=-90.0, le=90.0)] | None]
    lon: NotRequired[Annotated[float, msgspec.Meta(ge=-180.0, le=180.0)] | None]


class _SharedFieldsSet(set[str]):
    """The ``model_fields_set`` of every transaction built here from input that set the same fields: one object for
    them all (a set per transaction costs ~0.2 µs and a collection of it more). It reads like any set; ``copy`` (as
    ``model_copy`` does before adding to it) gives a plain one; changing it in place raises instead of changing
    every such transaction."""

    def __copy__(self) -> set[str]:
        return set(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> set[str]:
        return set(self)

    def _shared(self, *_: object) -> NoReturn:
        raise TypeError("this model_fields_set is shared by many transactions: change a copy of it")

    add = discard = remove = pop = clear = update = _shared
    difference_update = intersection_update = symmetric_difference_update = _shared
    __ior__ = __iand__ = __isub__ = __ixor__ = _shared


_DECODE = msgspec.json.Decoder(_Decoded).decode
_ORDER = list(Transaction.model_fields)
_ALL_SET = _SharedFieldsSet(_ORDER)
_ALL_BUT_VERSION_SET = _SharedFieldsSet(_ORDER[1:])
_START: dict[str, Any] = {**dict.fromkeys(_ORDER), "schema_version": SCHEMA_VERSION}
"""Every field in contract order, absent ones at their default: the start of a transaction's values."""
_COLUMNS = ("txn_id", "card_token", "terminal_id", "merchant_id", "customer_id", "device_id", "merchant_name",
            "card_bin", "card_last4", "mcc", "country", "channel", "event_time", "amount", "currency", "lat",
            "lon")  # fmt: skip
_columns = operator.itemgetter(*_COLUMNS)
_MINOR_SCALES = {code: 10.0 ** minor_units(code) for code in CURRENCIES}
_EXACT_MINOR = 2**52


def _classes(groups: dict[bytes, bytes], other: bytes) -> bytes:
    """A ``bytes.translate`` table: each byte of ``groups[to]`` becomes ``to``, any other byte ``other``."""
    table = bytearray(other * 256)
    for to, members in groups.items():
        for byte in members:
            table[byte] = to[0]
    return bytes(table)


_DIGITS, _LETTERS = b"0123456789", b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ID_CLASSES = _classes({b"a": _DIGITS + _LETTERS, b"p": b"._:@/+=-", b"\n": b"\n"}, b"!")
"""Identifier bytes as ``a`` (may start one), ``p`` (may follow) or ``!`` (never in one); line breaks kept."""
_DIGIT_CLASSES = _classes({b"0": _DIGITS, b"\n": b"\n"}, b"x")
_PAN_SEPARATORS = b" ./_-\xc2\xa0"
"""The separators :mod:`fraudpipe.pan` allows between a PAN's digit groups, as UTF-8 bytes (the no-break space is
two), dropped before looking for 13 digits in a row."""
_DIGIT_RUN = b"0" * 13
_TIME_CLASSES = _classes({b"0": _DIGITS, b"-": b"+-", b"T": b"T", b":": b":", b".": b".", b"Z": b"Z", b"\n": b"\n"},
                         b"!")  # fmt: skip
_PLAIN_TIMES = frozenset(
    f"0000-00-00T00:00:00{fraction}{offset}".encode()
    for fraction in ["", *("." + "0" * digits for digits in range(1, 7))]
    for offset in ("Z", "-00:00")
)
"""Event times taken on the fast path, as :data:`_TIME_CLASSES` writes them: ISO 8601 as producers write it
(``2024-03-01T12:00:00.5Z``, ``...+05:30``), which ``datetime.fromisoformat`` and the contract's parser read alike;
anything else goes to the contract."""
_UTC_TIMES = frozenset(shape for shape in _PLAIN_TIMES if shape.endswith(b"Z"))
_WHITESPACE_AFTER_QUOTE = re.compile(rb'"[\t\n\r ]')
_set_values = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def _decoded(values: Sequence[bytes | None], max_bytes: int) -> tuple[list[int], list[_Decoded]]:
    """The rows of ``values`` msgspec accepts (none larger than ``max_bytes``), and what it decoded of them."""
    try:
        if max(map(len, values)) <= max_bytes:  # type: ignore[arg-type]  # a None: TypeError
            return list(range(len(values))), list(map(_DECODE, values))  # type: ignore[arg-type]
    except (TypeError, msgspec.DecodeError):  # DecodeError and its subclass ValidationError
        pass
    rows, found = [], []
    for row, value in enumerate(values):
        if value and len(value) <= max_bytes:
            try:
                found.append(_DECODE(value))
            except msgspec.DecodeError:
                continue
            rows.append(row)
    return rows, found


def _keys_once(values: Sequence[bytes], keys: int, strings: int) -> bool:
    """True when ``values``, with ``keys`` keys and ``strings`` string values decoded in all, have no other key (an
    unknown or repeated one). Without escapes a quote only delimits a string, so a value has two quotes per key and
    string value: any other key shows as two more. Counted for the whole batch at once (by numpy past a few KB:
    a C pass at memory speed, ~4x ``bytes.count``)."""
    joined = b"".join(values)
    if b"\\" in joined:
        return False
    if len(joined) < 16_384:
        return joined.count(b'"') == 2 * (keys + strings)
    quotes = int(np.count_nonzero(np.frombuffer(joined, np.uint8) == ord('"')))
    return quotes == 2 * (keys + strings)


def _key_once(value: bytes, fields: _Decoded) -> bool:
    """:func:`_keys_once` for one value. With escapes, a key is counted by the ``":`` that ends it instead (inside a
    string a quote is escaped, so ``":`` elsewhere only appears as ``\\":``): a value holding that, or whitespace
    after a quote (which could hide a key from the count), is left to the contract."""
    if b"\\" not in value:
        return value.count(b'"') == 2 * (len(fields) + sum(map(isinstance, fields.values(), repeat(str))))
    return (value.count(b'":') == len(fields) and b'\\":' not in value
            and _WHITESPACE_AFTER_QUOTE.search(value) is None)  # fmt: skip


def _identifiers_valid(text: bytes, count: int) -> bool:
    """True when ``text``, ``count`` values (non-empty: msgspec checked) joined by line breaks, are all identifiers by
    the contract's pattern, ``^[A-Za-z0-9][A-Za-z0-9._:@/+=-]*$``."""
    classes = text.translate(_ID_CLASSES)
    return (b"!" not in classes and b"\np" not in classes and not classes.startswith(b"p")
            and classes.count(b"\n") == count - 1)  # fmt: skip


def _may_hold_pans(text: bytes, texts: list[str]) -> list[str]:
    """The values of ``texts`` (``text``: them joined by line breaks) that may hold a PAN: 13 digits in a row once the
    separators are dropped. Every value :func:`~fraudpipe.pan.contains_pan` refuses is among them (its PAN is 13-19
    digits in groups split by single separators); most values, with no such run, are not."""
    runs = text.translate(_DIGIT_CLASSES, _PAN_SEPARATORS)
    at = runs.find(_DIGIT_RUN)
    if at < 0:
        return []
    if runs.count(b"\n") != len(texts) - 1:  # a value holds a line break: which one the run is in is unknown
        return texts
    found, index, counted = [], 0, 0
    while at >= 0:
        index, counted = index + runs.count(b"\n", counted, at), at
        found.append(texts[index])
        end = runs.find(b"\n", at)
        at = -1 if end < 0 else runs.find(_DIGIT_RUN, end)
    return found


def _plain_times(stamps: Sequence[str]) -> list[datetime] | None:
    """``stamps`` as UTC datetimes when each is a plain ISO 8601 time that exists (:data:`_PLAIN_TIMES`), else
    ``None``."""
    text = "\n".join(stamps)
    shapes = set(text.encode().translate(_TIME_CLASSES).split(b"\n"))
    if not shapes <= _PLAIN_TIMES or text.count("\n") != len(stamps) - 1:
        return None
    try:
        times = list(map(datetime.fromisoformat, stamps))
    except ValueError:  # 2024-02-30, 25:00, an offset of 24 h or more
        return None
    if not shapes <= _UTC_TIMES:
        times = [time if time.tzinfo is UTC else time.astimezone(UTC) for time in times]
    return times


def _amounts_fit(amounts: Sequence[float], currencies: Sequence[str], caps: Mapping[str, float]) -> bool:
    """True when each amount (major units) fits its currency as the contract checks it: at most its cap, and no more
    decimals than its minor unit. Decimals: ``round(amount * 10^units) / 10^units == amount`` (~3x cheaper than
    ``round(amount, units)``) holds only for the float nearest to a number with ``units`` decimals, for which the
    contract's ``round(amount, units) == amount`` holds too while that number times 10^units is below 2^52 (so an
    integer too large to be an exact float, which the two parsers might round differently, is left out too)."""
    if not all(map(operator.le, amounts, map(caps.__getitem__, currencies))) or max(amounts) >= _EXACT_MINOR:
        return False
    scales = [*map(_MINOR_SCALES.__getitem__, currencies)]
    minor = [*map(round, map(operator.mul, amounts, scales))]
    return max(minor) < _EXACT_MINOR and tuple(map(operator.truediv, minor, scales)) == tuple(amounts)


def _fields_set(found: _Decoded) -> set[str]:
    """The fields ``found`` set, as validation records them: shared (:class:`_SharedFieldsSet`) when it set all, or
    all but ``schema_version`` (as the replayer writes them)."""
    if len(found) == len(_ORDER):
        return _ALL_SET
    return _ALL_BUT_VERSION_SET if len(found) == len(_ORDER) - 1 and "schema_version" not in found else set(found)


def _ascii_digits(text: str) -> bool:
    return not text or (text.isascii() and text.isdigit())


def _ascii_capitals(text: str) -> bool:
    return not text or (text.isascii() and text.isalpha() and text.isupper())


def _per_row(ok: list[bool], good: Callable[[int], bool]) -> list[bool]:
    """``ok`` with each row still ok asked ``good(row)``: where a check of the whole batch failed, which rows did."""
    return [fine and good(row) for row, fine in enumerate(ok)]


def transactions(values: Sequence[bytes | None], *, max_bytes: int, latest_event_time: datetime | None = None,
                 amount_caps: Mapping[str, float] | None = None) -> list[Transaction | None]:  # fmt: skip
    """The transaction of each of ``values`` (raw JSON) that the contract certainly accepts, in order; ``None``
    where that is not certain (module docstring: ask the contract). ``max_bytes``: the codec's size limit;
    ``latest_event_time`` and ``amount_caps`` as for :func:`fraudpipe.codec.decode`."""
    out: list[Transaction | None] = [None] * len(values)
    rows, found = _decoded(values, max_bytes) if values else ([], [])
    if not rows:
        return out
    fields: list[dict[str, Any]] = [cast(dict[str, Any], p) if len(p) == len(_ORDER) and [*p] == _ORDER
                                    else {**_START, **p} for p in found]  # fmt: skip
    columns: list[tuple[Any, ...]] = list(zip(*map(_columns, fields), strict=True))
    latest = LATEST_EVENT_TIME if latest_event_time is None else min(LATEST_EVENT_TIME, latest_event_time)
    caps = DEFAULT_CAPS if amount_caps is None else amount_caps
    ok, times = _checked([cast(bytes, values[row]) for row in rows], found, columns, latest, caps)
    new, set_values, set_fields_set, set_extra, set_private = (object.__new__, _set_values, _set_fields_set,
                                                               _set_extra, _set_private)  # fmt: skip
    for i, row in enumerate(rows):
        if ok[i]:  # built as validation would leave it, not validated again: what model_construct does, cheaper
            event_values = fields[i]
            event_values["event_time"] = times[i]
            event = new(Transaction)
            set_values(event, event_values)
            set_fields_set(event, _ALL_SET if event_values is found[i] else _fields_set(found[i]))
            set_extra(event, None)
            set_private(event, None)
            out[row] = event
    return out


def _checked(values: list[bytes], found: list[_Decoded], columns: list[tuple[Any, ...]], latest: datetime,
             caps: Mapping[str, float]) -> tuple[list[bool], list[datetime | None]]:  # fmt: skip
    """Whether each decoded value is certainly valid by the rest of the contract, and its event time (UTC). Each
    check runs on the whole batch, and row by row only where the batch fails it. ``columns``: :data:`_COLUMNS`."""
    n, ok = len(values), [True] * len(values)
    identifiers = [*filter(None, chain.from_iterable(columns[:6]))]  # none empty: msgspec checked their lengths
    names, codes = [*filter(None, columns[6])], [*filter(None, chain.from_iterable(columns[7:10]))]
    countries = [*filter(None, columns[10])]
    names_set, channels_set = n - columns[6].count(None), n - columns[11].count(None)
    strings = len(identifiers) + len(codes) + len(countries) + names_set + channels_set + 2 * n  # event_time, currency
    if not _keys_once(values, sum(map(len, found)), strings):
        ok = _per_row(ok, lambda i: _key_once(values[i], found[i]))
    text = "\n".join(identifiers).encode()
    if not _identifiers_valid(text, len(identifiers)):
        ok = _per_row(ok, lambda i: _identifiers_valid("\n".join(own := [c[i] for c in columns[:6] if c[i]]).encode(),
                                                      len(own)))  # fmt: skip
    suspects = _may_hold_pans(text + b"\n" + "\n".join(names).encode(), identifiers + names)
    if pans := {suspect for suspect in set(suspects) if contains_pan(suspect)}:  # the contract's own check
        ok = _per_row(ok, lambda i: pans.isdisjoint(c[i] for c in columns[:7]))
    if not (_ascii_digits("".join(codes)) and _ascii_capitals("".join(countries))):  # card_bin, card_last4, mcc
        ok = _per_row(ok, lambda i: _ascii_digits("".join(filter(None, (c[i] for c in columns[7:10]))))
                      and _ascii_capitals(columns[10][i] or ""))  # fmt: skip

    plain = _plain_times(columns[12])
    times: list[datetime | None]
    if plain is not None and min(plain) >= EARLIEST_EVENT_TIME and max(plain) < latest:
        times = list(plain)
    else:
        times = [None if (one := _plain_times([stamp])) is None else one[0] for stamp in columns[12]]
        ok = _per_row(ok, lambda i: (time := times[i]) is not None and EARLIEST_EVENT_TIME <= time < latest)
    amounts, currencies = columns[13], columns[14]
    if not _amounts_fit(amounts, currencies, caps):
        ok = _per_row(ok, lambda i: _amounts_fit(amounts[i : i + 1], currencies[i : i + 1], caps))
    terminals, merchants, lats, lons = columns[2], columns[3], columns[15], columns[16]
    if None in terminals and None in merchants:
        ok = _per_row(ok, lambda i: terminals[i] is not None or merchants[i] is not None)
    if lats.count(None) not in (0, n) or lons.count(None) != lats.count(None):
        ok = _per_row(ok, lambda i: (lats[i] is None) == (lons[i] is None))
    return ok, times
