"""The vectorized fast path never accepts a row the contract refuses, and accepts ordinary valid rows; the stream's
fast intake builds exactly the transaction the contract builds (digest included), or leaves the value to it.

hypothesis wants naive bounds for `datetimes(timezones=...)`, hence the DTZ001 exemption below.
"""
# ruff: noqa: DTZ001

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraudpipe.codec import decode, digest, encode
from fraudpipe.contracts import Transaction
from fraudpipe.currencies import CURRENCIES, DEFAULT_CAPS, minor_units
from fraudpipe.fastcheck import certainly_valid, transactions
from fraudpipe.files import encode_transactions
from fraudpipe.simulator.config import default
from fraudpipe.simulator.generate import simulate
from tests.factories import VISA_TEST_PAN

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
optional = lambda strategy: st.one_of(st.none(), strategy)  # noqa: E731
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


def _json(row: dict[str, Any]) -> bytes:
    fields = {k: (v.isoformat().replace("+00:00", "Z") if isinstance(v, datetime) else v) for k, v in row.items()}
    return json.dumps({"schema_version": 1, **{k: v for k, v in fields.items() if v is not None}},
                      separators=(",", ":"), ensure_ascii=False).encode()  # fmt: skip


def _bent(raw: bytes, how: str) -> bytes:
    """``raw`` written another way, or broken: what producers and attackers send."""
    if how == "spaces":
        return raw.replace(b'":', b'" :', 1)
    if how == "duplicate":  # the first key again, hidden behind whitespace or an escape
        return raw[:-1] + b',"txn_id" :"other"}'
    if how == "escaped":
        return raw.replace(b'"txn_id"', b'"\\u0074xn_id"')
    if how == "escaped_twice":
        return raw[:-1] + b',"\\u0074xn_id":"other"}'
    if how == "int_amount":
        return json.dumps({**json.loads(raw), "amount": 12}).encode()
    if how == "bool_amount":
        return json.dumps({**json.loads(raw), "amount": True}).encode()
    if how == "text_amount":
        return json.dumps({**json.loads(raw), "amount": "12.5"}).encode()
    if how == "huge_amount":
        return json.dumps({**json.loads(raw), "amount": 10**400}).encode()
    if how == "extra":
        return raw[:-1] + b',"pan":"x"}'
    if how == "offset_time":
        return raw.replace(b'Z"', b'+05:30"', 1)
    if how == "odd_time":
        return raw.replace(b'Z"', b'.1234567Z"', 1)
    if how == "version":
        return raw.replace(b'"schema_version":1', b'"schema_version":true')
    if how == "number_id":
        return json.dumps({**json.loads(raw), "terminal_id": 42}).encode()
    return raw


HOW = st.sampled_from(
    ["as is"] * 6
    + [
        "spaces",
        "duplicate",
        "escaped",
        "escaped_twice",
        "int_amount",
        "bool_amount",
        "text_amount",
        "huge_amount",
        "extra",
        "offset_time",
        "odd_time",
        "version",
        "number_id",
    ]
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])
@given(st.lists(st.tuples(rows, HOW), min_size=1, max_size=30))
def test_a_fast_transaction_is_the_one_the_contract_builds(batch: list[tuple[dict[str, Any], str]]) -> None:
    values = [_bent(_json(row), how) for row, how in batch]
    for value, fast in zip(values, transactions(values, max_bytes=65_536, latest_event_time=LATEST), strict=True):
        if fast is None:
            continue
        slow = decode(value, Transaction, latest_event_time=LATEST)  # raises if the fast path was wrong
        assert fast == slow and digest(fast) == digest(slow) and encode(fast) == encode(slow)
        assert fast.model_fields_set == slow.model_fields_set


def test_ordinary_transactions_take_the_fast_path_and_digest_as_validated() -> None:
    _, days = simulate(default(days=2, customers=100, terminals=200), b"k" * 32)
    frame = pl.concat([day.transactions for day in days]).select(list(SCHEMA))
    values = encode_transactions(frame).to_list()
    fast = transactions(values, max_bytes=65_536, latest_event_time=LATEST)
    assert all(txn is not None for txn in fast)
    for txn, value in zip(fast, values, strict=True):
        assert txn is not None and digest(txn) == digest(decode(value, Transaction))


def test_the_bounds_the_contract_is_given_hold_on_the_fast_path() -> None:
    value = _json({"txn_id": "a", "event_time": datetime(2024, 3, 1, tzinfo=UTC), "card_token": "tok_a",
                   "amount": 6.0, "currency": "USD", "terminal_id": "T1"})  # fmt: skip
    assert transactions([value], max_bytes=65_536)[0] is not None
    assert transactions([value], max_bytes=65_536, latest_event_time=datetime(2024, 3, 1, tzinfo=UTC)) == [None]
    assert transactions([value], max_bytes=65_536, amount_caps={**DEFAULT_CAPS, "USD": 5.0}) == [None]
    assert transactions([value], max_bytes=10) == [None]
    assert transactions([None, b"", b"[1]", b"{", value[:-1]], max_bytes=65_536) == [None] * 5
