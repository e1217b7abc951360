"""The fast paths never accept what the contract refuses, and take ordinary valid input: the vectorized pre-check of
frames (files), and the stream's fast intake, which builds exactly the transaction the contract builds (field by
field, digest included) or leaves the value to it — whatever producers and attackers write (duplicate keys, escapes,
whitespace, PAN-looking digit runs, other time forms, numbers in any JSON spelling, wrong types, unknown fields).

hypothesis wants naive bounds for `datetimes(timezones=...)`, hence the DTZ001 exemption below.
"""
# ruff: noqa: DTZ001

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar, cast

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraudpipe.codec import DecodeError, decode, digest, encode
from fraudpipe.contracts import Reason, Transaction
from fraudpipe.currencies import CURRENCIES, DEFAULT_CAPS, minor_units
from fraudpipe.fastcheck import certainly_valid, transactions
from fraudpipe.files import encode_transactions
from fraudpipe.pan import contains_pan
from fraudpipe.simulator.config import default
from fraudpipe.simulator.generate import simulate
from tests.factories import VISA_TEST_PAN, transaction_fields, transaction_json

T = TypeVar("T")

SCHEMA = {
    "txn_id": pl.String,
    "event_time": pl.Datetime("us", "UTC"),
    "card_token": pl.String,
    "card_bin": pl.String,
    "card_last4": pl.String,
    "amount": pl.Float64,
    "currency": pl.String,
    "terminal_id": pl.String,
    "merchant_id": pl.String,
    "merchant_name": pl.String,
    "mcc": pl.String,
    "customer_id": pl.String,
    "device_id": pl.String,
    "channel": pl.String,
    "country": pl.String,
    "lat": pl.Float64,
    "lon": pl.Float64,
}

identifier_chars = st.sampled_from([*list("abcXYZ019._:@/+=-"), " ", "é", "٣", "\n", '"', "\\"])
identifiers = st.one_of(
    st.text(identifier_chars, min_size=0, max_size=70),
    st.sampled_from(["tok_" + "a1" * 16, "T-1", "x" * 64, "x" * 65, VISA_TEST_PAN, "4111-1111-1111-1111", "٤١١١"]),
    st.from_regex(r"\A[0-9]{12,20}\Z"),
)


def optional(strategy: st.SearchStrategy[T]) -> st.SearchStrategy[T | None]:
    return st.one_of(st.none(), strategy)


numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.01, -1.0, 1_000_000.0, 1_000_000.01, 90.0, 90.0001, -180.0, 180.5]),
)
texts = st.one_of(
    st.text(max_size=260),
    st.sampled_from([f"refund {VISA_TEST_PAN}", "4111 1111 1111 1111", "m" * 256, "m" * 257, "Café 東京"]),
)
wild_rows = st.fixed_dictionaries(
    {
        "txn_id": optional(identifiers),
        "event_time": optional(
            st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2110, 1, 1), timezones=st.just(UTC))
        ),
        "card_token": optional(identifiers),
        "card_bin": optional(st.sampled_from(["411111", "41111", "411111111", "abcdef", "٤١١١١١", "41111111"])),
        "card_last4": optional(st.sampled_from(["1111", "111", "11111", "٤١١١", "abcd"])),
        "amount": optional(numbers),
        "currency": optional(st.sampled_from([*sorted(CURRENCIES)[:20], "XYZ", "eur", "EURO", "XAU", ""])),
        "terminal_id": optional(identifiers),
        "merchant_id": optional(identifiers),
        "merchant_name": optional(texts),
        "mcc": optional(st.sampled_from(["5411", "541", "54111", "abcd", "٥٤١١"])),
        "customer_id": optional(identifiers),
        "device_id": optional(identifiers),
        "channel": optional(st.sampled_from(["card_present", "ecommerce", "moto", "atm", "telepathy", ""])),
        "country": optional(st.sampled_from(["DE", "de", "DEU", "D", "ÄÖ"])),
        "lat": optional(numbers),
        "lon": optional(numbers),
    }
)


valid_identifiers = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,30}\Z")
valid_rows = st.fixed_dictionaries(
    {
        "txn_id": valid_identifiers,
        "event_time": st.datetimes(
            min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
        ),
        "card_token": st.from_regex(r"\Atok_[0-9a-f]{32}\Z"),
        "card_bin": optional(st.from_regex(r"\A[0-9]{6}\Z")),
        "card_last4": optional(st.from_regex(r"\A[0-9]{4}\Z")),
        "amount": st.integers(1, 100_000_000).map(lambda cents: cents / 100),
        "currency": st.sampled_from([code for code in sorted(CURRENCIES) if minor_units(code) >= 2]),
        "terminal_id": valid_identifiers,
        "merchant_id": optional(valid_identifiers),
        "merchant_name": optional(st.text(max_size=40)),
        "mcc": optional(st.from_regex(r"\A[0-9]{4}\Z")),
        "customer_id": optional(valid_identifiers),
        "device_id": optional(valid_identifiers),
        "channel": optional(st.sampled_from(["card_present", "ecommerce", "moto", "atm"])),
        "country": optional(st.from_regex(r"\A[A-Z]{2}\Z")),
        "lat": st.just(None),
        "lon": st.just(None),
    }
)


def _mutate(valid: dict[str, Any], wild: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    """A valid row with a few fields replaced by wild values: most rows stay valid, the rest sit near the edges."""
    return {**valid, **{name: wild[name] for name in fields}}


rows = st.builds(_mutate, valid_rows, wild_rows, st.sets(st.sampled_from(sorted(SCHEMA)), max_size=2))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])
@given(st.lists(rows, min_size=1, max_size=40))
def test_the_fast_path_accepts_only_what_the_contract_accepts(batch: list[dict[str, Any]]) -> None:
    frame = pl.DataFrame(batch, schema=SCHEMA)
    accepted = certainly_valid(frame).to_list()
    encoded = encode_transactions(frame).to_list()
    for ok, value in zip(accepted, encoded, strict=True):
        if ok:
            Transaction.model_validate_json(value, strict=True)  # raises if the fast path was wrong


def test_ordinary_valid_rows_take_the_fast_path() -> None:
    _, days = simulate(default(days=3, customers=200, terminals=400), b"k" * 32)
    frame = pl.concat([day.transactions for day in days]).select(list(SCHEMA))
    assert certainly_valid(frame).all()


# --- the stream's fast intake: raw JSON values -------------------------------------------------------------------

LATEST = datetime(2099, 12, 31, tzinfo=UTC)
FIELDS = list(Transaction.model_fields)


def _json(row: dict[str, Any], *, style: str = "compact") -> bytes:
    """``row`` as producers write it: ``compact``; ``spaced`` (json.dumps' defaults); ``ascii`` (non-ASCII escaped);
    ``omitted`` (absent fields left out, not null); ``shuffled`` (keys in another order); ``unversioned``."""
    fields = {k: (v.isoformat().replace("+00:00", "Z") if isinstance(v, datetime) else v) for k, v in row.items()}
    fields = {"schema_version": 1, **fields}
    if style == "omitted":
        fields = {k: v for k, v in fields.items() if v is not None}
    if style == "shuffled":
        fields = dict(reversed(fields.items()))
    if style == "unversioned":
        del fields["schema_version"]
    separators = None if style == "spaced" else (",", ":")
    return json.dumps(fields, separators=separators, ensure_ascii=style == "ascii").encode()


def _bent(raw: bytes, how: str) -> bytes:
    """``raw`` written another way, or broken: what producers and attackers send."""
    edit = lambda **fields: json.dumps({**json.loads(raw), **fields}).encode()  # noqa: E731
    bends: dict[str, Any] = {
        "spaces": lambda: raw.replace(b'":', b'" :', 1),
        "pretty": lambda: json.dumps(json.loads(raw), indent=2).encode(),
        "duplicate": lambda: raw[:-1] + b',"txn_id":"other"}',
        "duplicate_same": lambda: (
            raw[:-1] + b',"currency":' + json.dumps(json.loads(raw).get("currency")).encode() + b"}"
        ),
        "duplicate_spaced": lambda: raw[:-1] + b',"txn_id" :"other"}',
        "duplicate_escaped": lambda: raw[:-1] + b',"\\u0074xn_id":"other"}',
        "duplicate_null": lambda: raw[:-1] + b',"device_id":null,"device_id":null}',
        "escaped_key": lambda: raw.replace(b'"txn_id"', b'"\\u0074xn_id"'),
        "escaped_value": lambda: json.dumps({**json.loads(raw), "merchant_name": 'caf\u00e9 "x": 1'}).encode(),
        "backslash_key": lambda: raw[:-1] + b',"ab\\\\":1}',
        "line_break": lambda: edit(merchant_name="a\n4111 1111 1111 1111"),
        "int_amount": lambda: edit(amount=12),
        "big_int_amount": lambda: edit(amount=10**17 + 1),
        "exponent_amount": lambda: re.sub(rb'"amount": ?[^,}]*', b'"amount":1.25e1', raw),
        "bool_amount": lambda: edit(amount=True),
        "text_amount": lambda: edit(amount="12.5"),
        "huge_amount": lambda: edit(amount=10**400),
        "sub_cent": lambda: edit(amount=0.001),
        "negative_zero": lambda: edit(lat=-0.0, lon=0.0),
        "extra": lambda: raw[:-1] + b',"pan":"x"}',
        "extra_object": lambda: raw[:-1] + b',"meta":{"a":1,"b":"c"}}',
        "extra_null": lambda: raw[:-1] + b',"note":null}',
        "offset_time": lambda: raw.replace(b'Z"', b'+05:30"', 1),
        "odd_time": lambda: raw.replace(b'Z"', b'.1234567Z"', 1),
        "lower_z": lambda: raw.replace(b'Z"', b'z"', 1),
        "space_time": lambda: re.sub(rb"([0-9])T([0-9])", rb"\1 \2", raw, count=1),
        "naive_time": lambda: raw.replace(b'Z"', b'"', 1),
        "short_offset": lambda: raw.replace(b'Z"', b'+0000"', 1),
        "feb_30": lambda: edit(event_time="2024-02-30T10:00:00Z"),
        "version": lambda: raw.replace(b'"schema_version":1', b'"schema_version":true'),
        "version_2": lambda: raw.replace(b'"schema_version":1', b'"schema_version":2'),
        "number_id": lambda: edit(terminal_id=42),
        "null_token": lambda: edit(card_token=None),
        "pan_in_id": lambda: edit(customer_id="ref_4111111111111111"),
        "glued_digits": lambda: edit(customer_id="CU4111111111111111"),
        "nbsp_pan": lambda: edit(merchant_name="card 4111\u00a01111\u00a01111\u00a01111"),
        "array": lambda: b"[" + raw + b"]",
        "truncated": lambda: raw[:-1],
    }
    return cast(bytes, bends[how]()) if how in bends else raw


BENDS = ["as is"] * 8 + [
    "spaces", "pretty", "duplicate", "duplicate_same", "duplicate_spaced", "duplicate_escaped", "duplicate_null",
    "escaped_key", "escaped_value", "backslash_key", "line_break", "int_amount", "big_int_amount", "exponent_amount",
    "bool_amount", "text_amount", "huge_amount", "sub_cent", "negative_zero", "extra", "extra_object", "extra_null",
    "offset_time", "odd_time", "lower_z", "space_time", "naive_time", "short_offset", "feb_30", "version",
    "version_2", "number_id", "null_token", "pan_in_id", "glued_digits", "nbsp_pan", "array", "truncated",
]  # fmt: skip
STYLES = st.sampled_from(["compact", "compact", "spaced", "ascii", "omitted", "shuffled", "unversioned"])
bounds = st.tuples(
    st.one_of(st.none(), st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                                      timezones=st.just(UTC))),
    st.one_of(st.none(), st.floats(0.01, 2e6).map(lambda cap: {**DEFAULT_CAPS, "EUR": cap, "USD": cap / 2})),
)  # fmt: skip


def _same(fast: Transaction, slow: Transaction) -> None:
    """``fast`` is the transaction the contract built, field by field (types and float signs included), in the same
    order, with the same fields set and the same canonical encoding."""
    assert fast == slow and digest(fast) == digest(slow) and encode(fast) == encode(slow) and repr(fast) == repr(slow)
    assert fast.model_fields_set == slow.model_fields_set
    for name in FIELDS:
        mine, theirs = getattr(fast, name), getattr(slow, name)
        assert type(mine) is type(theirs) and repr(mine) == repr(theirs), name


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])
@given(st.lists(st.tuples(rows, STYLES, st.sampled_from(BENDS)), min_size=1, max_size=30), bounds)
def test_a_fast_transaction_is_the_one_the_contract_builds(
    batch: list[tuple[dict[str, Any], str, str]], given_bounds: tuple[datetime | None, dict[str, float] | None]
) -> None:
    latest, caps = given_bounds
    values = [_bent(_json(row, style=style), how) for row, style, how in batch]
    fast = transactions(values, max_bytes=65_536, latest_event_time=latest, amount_caps=caps)
    for value, built in zip(values, fast, strict=True):
        if built is not None:  # decode raises if the fast path took what the contract refuses
            _same(built, decode(value, Transaction, latest_event_time=latest, amount_caps=caps))


ordinary_rows = st.fixed_dictionaries(
    {
        "txn_id": st.one_of(
            st.integers(0, 10**16 - 1).map(lambda i: f"TX{i:016d}"),
            st.integers(0, 10**8).map(lambda i: f"txn-{i:08d}"),
            st.uuids().map(str).filter(lambda text: not contains_pan(text)),
        ),
        "event_time": st.datetimes(
            min_value=datetime(2000, 1, 2),
            max_value=datetime(2099, 12, 31),
            timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]),
        ),
        "card_token": st.binary(min_size=16, max_size=16).map(lambda key: f"tok_{key.hex()}"),
        "card_bin": optional(st.from_regex(r"\A[0-9]{6,8}\Z")),
        "card_last4": optional(st.from_regex(r"\A[0-9]{4}\Z")),
        "amount": st.integers(1, 10**7),  # below every cap
        "currency": st.sampled_from(["EUR", "USD", "JPY", "BHD", "GBP", "CHF", "SEK", "INR"]),
        "terminal_id": optional(st.integers(0, 10**6).map(lambda i: f"T-{i:06d}")),
        "merchant_id": st.integers(0, 10**6).map(lambda i: f"M{i:07d}"),
        "merchant_name": optional(st.sampled_from(["Café Zürich — 東京", "ACME Hardware", "Shell 0042", "amazon.de"])),
        "mcc": optional(st.from_regex(r"\A[0-9]{4}\Z")),
        "customer_id": optional(st.integers(0, 10**7).map(lambda i: f"C{i:07d}")),
        "device_id": optional(st.uuids().map(lambda u: f"dev:{u.hex}")),
        "channel": optional(st.sampled_from(["card_present", "ecommerce", "moto", "atm"])),
        "country": optional(st.sampled_from(["DE", "CH", "US", "JP"])),
        "lat": st.floats(-90, 90),
        "lon": st.floats(-180, 180),
        "geo": st.booleans(),
    }
)


def _ordinary(row: dict[str, Any]) -> dict[str, Any]:
    """An ordinary valid transaction of ``row``: amounts in the currency's minor unit, geo in both or neither."""
    row = dict(row)
    row["amount"] = row["amount"] / 10 ** minor_units(row["currency"])
    if not row.pop("geo"):
        row["lat"] = row["lon"] = None
    row["event_time"] = row["event_time"].isoformat().replace("+00:00", "Z")
    return row


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ordinary_rows.map(_ordinary), min_size=1, max_size=40), st.lists(STYLES, min_size=40, max_size=40))
def test_ordinary_transactions_take_the_fast_path(batch: list[dict[str, Any]], styles: list[str]) -> None:
    values = [_json(row, style=style) for row, style in zip(batch, styles, strict=False)]
    fast = transactions(values, max_bytes=65_536, latest_event_time=LATEST)
    assert all(txn is not None for txn in fast), [v for v, txn in zip(values, fast, strict=True) if txn is None][:1]
    for built, value in zip(fast, values, strict=True):
        _same(cast(Transaction, built), decode(value, Transaction, latest_event_time=LATEST))


def test_the_simulators_and_the_factories_transactions_take_the_fast_path() -> None:
    _, days = simulate(default(days=2, customers=100, terminals=200), b"k" * 32)
    frame = pl.concat([day.transactions for day in days]).select(list(SCHEMA))
    values = [*encode_transactions(frame).to_list(), transaction_json(), transaction_json(lat=None, lon=None)]
    fast = transactions(values, max_bytes=65_536, latest_event_time=LATEST)
    assert all(txn is not None for txn in fast)
    for txn, value in zip(fast, values, strict=True):
        _same(cast(Transaction, txn), decode(value, Transaction))


HOSTILE: dict[str, tuple[bytes, Reason]] = {
    "duplicate": (b',"txn_id":"other"}', Reason.DUPLICATE_KEY),
    "duplicate of the same value": (b',"currency":"EUR"}', Reason.DUPLICATE_KEY),
    "duplicate behind whitespace": (b',"txn_id" :"other"}', Reason.DUPLICATE_KEY),
    "duplicate behind an escape": (b',"\\u0074xn_id":"other"}', Reason.DUPLICATE_KEY),
    "extra field": (b',"pan":"4111111111111111"}', Reason.EXTRA_FIELD),
    "extra object": (b',"meta":{"a":1}}', Reason.EXTRA_FIELD),
    "extra key ending in a backslash": (b',"ab\\\\":1}', Reason.EXTRA_FIELD),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_repeated_and_unknown_keys_never_slip_through(case: str) -> None:
    tail, reason = HOSTILE[case]
    base = json.dumps(transaction_fields(), separators=(",", ":"), ensure_ascii=False).encode()
    value = base[:-1] + tail
    assert transactions([base, value, base], max_bytes=65_536)[1] is None
    with pytest.raises(DecodeError) as refused:
        decode(value, Transaction)
    assert refused.value.reason == reason


REFUSED: dict[str, tuple[dict[str, Any], Reason | None]] = {
    "pan in free text": ({"merchant_name": f"refund {VISA_TEST_PAN}"}, Reason.PAN_DETECTED),
    "pan with no-break spaces": ({"merchant_name": "4111\u00a01111\u00a01111\u00a01111"}, Reason.PAN_DETECTED),
    "pan after an underscore": ({"customer_id": f"ref_{VISA_TEST_PAN}"}, Reason.PAN_DETECTED),
    "pan after a glued group": ({"device_id": f"D1-{VISA_TEST_PAN}"}, Reason.PAN_DETECTED),
    "pan as the token": ({"card_token": VISA_TEST_PAN}, Reason.PAN_DETECTED),
    "naive time": ({"event_time": "2024-03-01T12:00:00"}, Reason.NAIVE_DATETIME),
    "time before 2000": ({"event_time": "1999-12-31T23:59:59Z"}, Reason.TIME_OUT_OF_RANGE),
    "time that does not exist": ({"event_time": "2024-02-30T12:00:00Z"}, Reason.INVALID_VALUE),
    "amount as text": ({"amount": "12.5"}, Reason.WRONG_TYPE),
    "amount as a boolean": ({"amount": True}, Reason.WRONG_TYPE),
    "amount below zero": ({"amount": -0.01}, Reason.AMOUNT_NEGATIVE),
    "half a yen": ({"amount": 0.5, "currency": "JPY"}, Reason.AMOUNT_PRECISION),
    "a tenth of a cent": ({"amount": 12.345}, Reason.AMOUNT_PRECISION),
    "above the cap": ({"amount": 1e9}, Reason.AMOUNT_TOO_LARGE),
    "unknown currency": ({"currency": "XAU"}, Reason.INVALID_CURRENCY),
    "identifier as a number": ({"terminal_id": 42}, Reason.WRONG_TYPE),
    "identifier with a space": ({"terminal_id": "T 42"}, Reason.INVALID_VALUE),
    "identifier starting with a dot": ({"terminal_id": ".T42"}, Reason.INVALID_VALUE),
    "identifier too long": ({"terminal_id": "T" * 65}, Reason.STRING_TOO_LONG),
    "empty identifier": ({"terminal_id": ""}, Reason.INVALID_VALUE),
    "arabic digits in a bin": ({"card_bin": "٤١١١١١"}, None),
    "lower-case country": ({"country": "ch"}, Reason.INVALID_VALUE),
    "unknown channel": ({"channel": "telepathy"}, Reason.INVALID_VALUE),
    "latitude alone": ({"lon": None}, Reason.MISSING_FIELD),
    "no terminal nor merchant": ({"terminal_id": None, "merchant_id": None}, Reason.MISSING_FIELD),
    "latitude off the globe": ({"lat": 90.5}, Reason.INVALID_VALUE),
    "schema version 2": ({"schema_version": 2}, Reason.UNSUPPORTED_SCHEMA_VERSION),
    "schema version true": ({"schema_version": True}, None),
    "missing token": ({"card_token": None}, Reason.WRONG_TYPE),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_the_contract_refuses_never_takes_the_fast_path(case: str) -> None:
    """``None`` as the reason: the contract takes it (``\\d`` is any digit to it, ``true`` equals 1); the fast path
    leaves it to the contract all the same."""
    overrides, reason = REFUSED[case]
    value = transaction_json(**overrides)
    assert transactions([transaction_json(), value], max_bytes=65_536, latest_event_time=LATEST)[1] is None
    if reason is not None:
        with pytest.raises(DecodeError) as refused:
            decode(value, Transaction, latest_event_time=LATEST)
        assert refused.value.reason == reason


UNUSUAL = ["2024-03-01T12:00:00.1234567Z", "2024-03-01t12:00:00z", "2024-03-01 12:00:00Z", "2024-03-01T12:00:00+0000"]


@pytest.mark.parametrize("stamp", UNUSUAL)
def test_event_times_in_other_forms_are_left_to_the_contract(stamp: str) -> None:
    value = transaction_json(event_time=stamp)
    assert transactions([transaction_json(), value], max_bytes=65_536)[1] is None
    assert decode(value, Transaction).event_time == datetime(2024, 3, 1, 12, 0, 0, 123456 if "." in stamp else 0, UTC)


number_texts = st.from_regex(r"\A-?(0|[1-9][0-9]{0,18})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?\Z")


@settings(max_examples=300, deadline=None)
@given(number_texts, number_texts, st.sampled_from(["EUR", "JPY", "BHD"]))
def test_numbers_read_alike(amount: str, lat: str, currency: str) -> None:
    """msgspec and the contract read every number the fast path takes to the same float, bit for bit."""
    base = json.dumps(transaction_fields(currency=currency), separators=(",", ":"), ensure_ascii=False)
    value = re.sub(r'"lat":[^,]*', f'"lat":{lat}', re.sub(r'"amount":[^,]*', f'"amount":{amount}', base)).encode()
    fast = transactions([value, value], max_bytes=65_536)[0]
    if fast is not None:
        _same(fast, decode(value, Transaction))


times = st.from_regex(
    r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2})?(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)?\Z"
)


@settings(max_examples=300, deadline=None)
@given(times)
def test_event_times_read_alike(stamp: str) -> None:
    """Every event time the fast path takes is the instant the contract reads (UTC), or one it refuses too."""
    value = transaction_json(event_time=stamp)
    fast = transactions([value, value], max_bytes=65_536)[0]
    if fast is not None:
        _same(fast, decode(value, Transaction))


def test_the_bounds_the_contract_is_given_hold_on_the_fast_path() -> None:
    value = _json({"txn_id": "a", "event_time": datetime(2024, 3, 1, tzinfo=UTC), "card_token": "tok_a",
                   "amount": 6.0, "currency": "USD", "terminal_id": "T1"})  # fmt: skip
    assert transactions([value], max_bytes=65_536)[0] is not None
    assert transactions([value], max_bytes=65_536, latest_event_time=datetime(2024, 3, 1, tzinfo=UTC)) == [None]
    assert transactions([value], max_bytes=65_536, latest_event_time=datetime(2024, 3, 2, tzinfo=UTC))[0] is not None
    assert transactions([value], max_bytes=65_536, amount_caps={**DEFAULT_CAPS, "USD": 5.0}) == [None]
    assert transactions([value], max_bytes=65_536, amount_caps={**DEFAULT_CAPS, "USD": 6.0})[0] is not None
    assert transactions([value], max_bytes=len(value) - 1) == [None]
    assert transactions([None, b"", b"[1]", b"{", value[:-1], b"null"], max_bytes=65_536) == [None] * 6
    assert transactions([], max_bytes=65_536) == []


def test_a_refused_value_leaves_the_rest_of_its_batch_on_the_fast_path() -> None:
    good = [transaction_json(txn_id=f"t{i}") for i in range(5)]
    bad = [transaction_json(amount="1"), b"{", transaction_json(merchant_name=VISA_TEST_PAN)]
    fast = transactions(good[:2] + bad + good[2:], max_bytes=65_536)
    assert [txn is not None for txn in fast] == [True, True, False, False, False, True, True, True]


def test_the_fields_set_shared_by_fast_transactions_cannot_change_under_them() -> None:
    first, second = cast(list[Transaction], transactions([transaction_json(), transaction_json(txn_id="b")],
                                                         max_bytes=65_536))  # fmt: skip
    assert first.model_fields_set == second.model_fields_set == decode(transaction_json(), Transaction).model_fields_set
    with pytest.raises(TypeError):
        first.model_fields_set.add("note")
    copied = first.model_copy(update={"txn_id": "c"})
    assert copied.txn_id == "c" and copied.model_fields_set == first.model_fields_set
    copied.model_fields_set.add("note")  # a copy is a plain set
    assert "note" not in second.model_fields_set


def test_a_zero_amount_authorization_takes_the_fast_path_both_ways() -> None:
    """Amount 0.00 (an account verification) is valid for the contract, the stream's fast intake and the files'."""
    value = transaction_json(amount=0.0)
    fast = transactions([transaction_json(), value], max_bytes=65_536, latest_event_time=LATEST)[1]
    assert fast is not None
    _same(fast, decode(value, Transaction, latest_event_time=LATEST))
    row = {name: getattr(fast, name) for name in SCHEMA}
    frame = pl.DataFrame([{**row, "amount": a} for a in (0.0, -0.01)], schema=SCHEMA)
    assert certainly_valid(frame).to_list() == [True, False]
