"""Event contracts through the codec: valid events round-trip, every kind of bad input gets its reason code."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from fraudpipe.codec import MAX_PAYLOAD_BYTES, DecodeError, dead_letter, decode, encode
from fraudpipe.contracts import (
    Alert,
    Contribution,
    DeadLetter,
    Decision,
    Event,
    Label,
    ModelEvent,
    Reason,
    RuleReason,
    Transaction,
)
from fraudpipe.currencies import CURRENCIES, EUR_RATES, minor_units
from fraudpipe.settings import ScoringSettings
from tests import factories
from tests.factories import VISA_TEST_PAN, transaction_fields, transaction_json

# --- valid events -------------------------------------------------------------------------------------------

VALID_EVENTS: list[Event] = [
    factories.transaction(),
    Transaction(
        txn_id="min-1",
        event_time=factories.T0,
        card_token="card-17",
        amount=1.0,
        currency="JPY",
        terminal_id="T1",
    ),
    factories.label(),
    factories.label(source="analyst", is_fraud=False, label_version=2, note="customer confirmed the purchase"),
    factories.decision(),
    factories.decision(model=None, score=None, decision="review", reason_codes=[], degraded=True),
    factories.alert(),
    dead_letter(
        b'{"pan": "4111 1111 1111 1111"}',
        reason=Reason.PAN_DETECTED,
        detail="free text contains a PAN",
        source_topic="transactions.v1",
        source_partition=3,
        source_offset=17,
        failed_at=factories.T0,
    ),
    ModelEvent(
        action="promote",
        alias="champion",
        version="v0002",
        previous="v0001",
        by="alice",
        why="better AP",
        at=factories.T0,
    ),
    ModelEvent(
        action="refuse",
        alias="champion",
        version="v0003",
        previous="v0002",
        by="fraudpipe retrain",
        why="refused by the promotion gates",
        at=factories.T0,
        refusals=["ap fell 0.03"],
    ),
]


@pytest.mark.parametrize("event", VALID_EVENTS, ids=lambda e: type(e).__name__)
def test_valid_events_round_trip(event: Event) -> None:
    raw = encode(event)
    assert decode(raw, type(event)) == event
    assert encode(decode(raw, type(event))) == raw


def test_times_are_normalised_to_utc() -> None:
    event = decode(transaction_json(event_time="2024-03-01T14:00:00+02:00"), Transaction)
    assert event.event_time == factories.T0
    assert event.event_time.utcoffset() == timedelta(0)


def test_optional_fields_may_be_absent() -> None:
    fields = transaction_fields()
    for name in (
        "merchant_id",
        "merchant_name",
        "mcc",
        "customer_id",
        "device_id",
        "channel",
        "country",
        "lat",
        "lon",
    ):
        del fields[name]
    event = decode(json.dumps(fields).encode(), Transaction)
    assert event.device_id is None
    assert event.lat is None
    assert event.channel is None


def test_unicode_merchant_names_are_valid() -> None:
    event = decode(transaction_json(merchant_name="Ünïcødé 商店 🛒"), Transaction)
    assert event.merchant_name == "Ünïcødé 商店 🛒"


def test_events_are_frozen() -> None:
    event = factories.transaction()
    with pytest.raises(ValueError, match="frozen"):
        event.amount = 1.0  # type: ignore[misc]


def test_alert_id_is_stable_per_transaction() -> None:
    assert Alert.id_for("txn-1") == Alert.id_for("txn-1") != Alert.id_for("txn-2")


# --- the invalid corpus -------------------------------------------------------------------------------------


def _without(*names: str) -> bytes:
    fields = transaction_fields()
    for name in names:
        del fields[name]
    return json.dumps(fields).encode()


def _raw_amount(literal: str) -> bytes:
    return transaction_json(amount=123456.789).replace(b"123456.789", literal.encode())


INVALID_TRANSACTIONS: dict[str, tuple[bytes | None, Reason]] = {
    "none": (None, Reason.EMPTY_PAYLOAD),
    "empty": (b"", Reason.EMPTY_PAYLOAD),
    "too large": (b'{"txn_id": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}', Reason.PAYLOAD_TOO_LARGE),
    "NaN": (_raw_amount("NaN"), Reason.INVALID_NUMBER),
    "Infinity": (_raw_amount("Infinity"), Reason.INVALID_NUMBER),
    "-Infinity": (_raw_amount("-Infinity"), Reason.INVALID_NUMBER),
    "1e400": (_raw_amount("1e400"), Reason.INVALID_NUMBER),
    "5000 digits": (_raw_amount("9" * 5000), Reason.INVALID_NUMBER),
    "negative amount": (transaction_json(amount=-5.0), Reason.AMOUNT_NEGATIVE),
    "amount above bound": (transaction_json(amount=2_000_000.0), Reason.AMOUNT_TOO_LARGE),
    "amount above the currency's cap": (
        transaction_json(amount=40_000_000_000.0, currency="VND"),
        Reason.AMOUNT_TOO_LARGE,
    ),
    "half a yen": (transaction_json(amount=0.5, currency="JPY"), Reason.AMOUNT_PRECISION),
    "a thousandth of a euro": (transaction_json(amount=12.345, currency="EUR"), Reason.AMOUNT_PRECISION),
    "a ten-thousandth of a dinar": (transaction_json(amount=1.2345, currency="BHD"), Reason.AMOUNT_PRECISION),
    "string amount": (transaction_json(amount="42.50"), Reason.WRONG_TYPE),
    "string lat": (transaction_json(lat="47.3"), Reason.WRONG_TYPE),
    "bool amount": (transaction_json(amount=True), Reason.WRONG_TYPE),
    "number txn_id": (transaction_json(txn_id=12345), Reason.WRONG_TYPE),
    "missing amount": (_without("amount"), Reason.MISSING_FIELD),
    "missing txn_id": (_without("txn_id"), Reason.MISSING_FIELD),
    "no terminal nor merchant": (_without("terminal_id", "merchant_id"), Reason.MISSING_FIELD),
    "lat without lon": (_without("lon"), Reason.MISSING_FIELD),
    "extra field": (transaction_json(cvv="123"), Reason.EXTRA_FIELD),
    "naive datetime": (transaction_json(event_time="2024-03-01T12:00:00"), Reason.NAIVE_DATETIME),
    "far-future datetime": (transaction_json(event_time="2999-01-01T00:00:00Z"), Reason.TIME_OUT_OF_RANGE),
    "far-past datetime": (transaction_json(event_time="1970-01-01T00:00:00Z"), Reason.TIME_OUT_OF_RANGE),
    "epoch number datetime": (transaction_json(event_time=1709294400), Reason.WRONG_TYPE),
    "unparseable datetime": (transaction_json(event_time="yesterday"), Reason.INVALID_VALUE),
    "unknown currency": (transaction_json(currency="XYZ"), Reason.INVALID_CURRENCY),
    "lowercase currency": (transaction_json(currency="eur"), Reason.INVALID_CURRENCY),
    "over-long merchant name": (transaction_json(merchant_name="m" * 257), Reason.STRING_TOO_LONG),
    "over-long txn_id": (transaction_json(txn_id="t" * 65), Reason.STRING_TOO_LONG),
    "bad channel": (transaction_json(channel="telepathy"), Reason.INVALID_VALUE),
    "latitude out of range": (transaction_json(lat=91.0), Reason.INVALID_VALUE),
    "non-UTF-8 bytes": (transaction_json(merchant_name="AB").replace(b"AB", b"\xff\xfe"), Reason.NOT_UTF8),
    "truncated JSON": (transaction_json()[:-7], Reason.INVALID_JSON),
    "malformed JSON": (b"{txn_id: 1}", Reason.INVALID_JSON),
    "lone surrogate": (transaction_json(merchant_name="AB").replace(b"AB", b"\\ud800"), Reason.INVALID_JSON),
    "array": (b"[1, 2, 3]", Reason.NOT_AN_OBJECT),
    "string": (b'"hello"', Reason.NOT_AN_OBJECT),
    "null": (b"null", Reason.NOT_AN_OBJECT),
    "duplicate key": (transaction_json()[:-1] + b', "amount": 99999.0}', Reason.DUPLICATE_KEY),
    "PAN in merchant name": (transaction_json(merchant_name=f"refund {VISA_TEST_PAN}"), Reason.PAN_DETECTED),
    "spaced PAN in name": (
        transaction_json(merchant_name="card 4111 1111 1111 1111 ok"),
        Reason.PAN_DETECTED,
    ),
    "PAN as card token": (transaction_json(card_token=VISA_TEST_PAN), Reason.PAN_DETECTED),
    "schema version 2": (transaction_json(schema_version=2), Reason.UNSUPPORTED_SCHEMA_VERSION),
}


@pytest.mark.parametrize(("raw", "reason"), INVALID_TRANSACTIONS.values(), ids=INVALID_TRANSACTIONS.keys())
def test_invalid_transactions_get_their_reason(raw: bytes | None, reason: Reason) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(raw, Transaction)
    assert caught.value.reason is reason, caught.value.detail
    assert VISA_TEST_PAN not in caught.value.detail


def test_event_time_after_the_latest_allowed_is_refused() -> None:
    now = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
    raw = transaction_json(event_time="2024-03-01T13:00:00Z")
    with pytest.raises(DecodeError) as caught:
        decode(raw, Transaction, latest_event_time=now + timedelta(minutes=5))
    assert caught.value.reason is Reason.TIME_OUT_OF_RANGE
    assert decode(raw, Transaction, latest_event_time=now + timedelta(hours=2)).txn_id == "txn-000001"


def test_a_field_name_inside_a_value_is_not_a_duplicate_key() -> None:
    assert decode(transaction_json(merchant_name="amount"), Transaction).merchant_name == "amount"


def test_duplicate_key_hidden_behind_an_escape_is_found() -> None:
    raw = transaction_json()[:-1] + b', "\\u0061mount": 1.0}'
    with pytest.raises(DecodeError) as caught:
        decode(raw, Transaction)
    assert caught.value.reason is Reason.DUPLICATE_KEY


def test_label_known_before_the_event_is_refused() -> None:
    raw = encode(factories.label()).replace(b'"known_at":"2024-03-09T08:30:00Z"', b'"known_at":"2024-02-01T00:00:00Z"')
    with pytest.raises(DecodeError) as caught:
        decode(raw, Label)
    assert caught.value.reason is Reason.TIME_OUT_OF_RANGE


def test_label_with_a_pan_in_its_note_is_refused() -> None:
    raw = encode(factories.label(note="n/a")).replace(b'"n/a"', f'"card {VISA_TEST_PAN}"'.encode())
    with pytest.raises(DecodeError) as caught:
        decode(raw, Label)
    assert caught.value.reason is Reason.PAN_DETECTED


def test_decision_scores_are_probabilities() -> None:
    raw = encode(factories.decision()).replace(b'"score":0.93', b'"score":1.5')
    with pytest.raises(DecodeError) as caught:
        decode(raw, Decision)
    assert caught.value.reason is Reason.INVALID_VALUE


# --- dead letters -------------------------------------------------------------------------------------------


def _letter(raw: bytes | None) -> DeadLetter:
    return dead_letter(
        raw,
        reason=Reason.INVALID_JSON,
        detail=f"near {VISA_TEST_PAN}",
        source_topic="transactions.v1",
        source_partition=2,
        source_offset=41,
        failed_at=factories.T0,
    )


def test_dead_letter_masks_pans_in_payload_and_detail() -> None:
    letter = _letter(b'{"card_number": "4111111111111111", "also": "5555-5555-5555-4444"}')
    assert VISA_TEST_PAN not in letter.payload
    assert "5555555555554444" not in letter.payload
    assert "411111******1111" in letter.payload
    assert "555555******4444" in letter.payload
    assert VISA_TEST_PAN not in letter.detail
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("transactions.v1", 2, 41)


def test_dead_letter_keeps_undecodable_bytes_visible() -> None:
    raw = b'{"a": "\xff"}'
    letter = _letter(raw)
    assert "\\xff" in letter.payload
    assert letter.payload_bytes == len(raw)


def test_dead_letter_of_a_huge_payload_is_truncated_and_says_so() -> None:
    letter = _letter(b"x" * (2 * 1024 * 1024))
    assert letter.payload_truncated
    assert len(letter.payload) == DeadLetter.MAX_PAYLOAD_CHARS
    assert letter.payload_bytes == 2 * 1024 * 1024
    assert decode(encode(letter), DeadLetter) == letter


def test_dead_letter_of_nothing() -> None:
    letter = _letter(None)
    assert (letter.payload, letter.payload_bytes, letter.payload_truncated) == ("", 0, False)


def test_every_currency_has_its_minor_units_and_a_cap() -> None:
    assert set(EUR_RATES) == CURRENCIES
    assert {code: minor_units(code) for code in ("EUR", "USD", "JPY", "VND", "KRW", "BHD", "KWD", "HRK")} == {
        "EUR": 2, "USD": 2, "JPY": 0, "VND": 0, "KRW": 0, "BHD": 3, "KWD": 3, "HRK": 2}  # fmt: skip
    caps = ScoringSettings(amount_limit_eur=1_000.0, amount_caps_by_currency={"USD": 5.0}).amount_caps()
    assert caps["EUR"] == 1_000.0 and caps["USD"] == 5.0 and caps["VND"] == 31_000_000.0
    assert decode(transaction_json(amount=6.0, currency="USD"), Transaction).amount == 6.0  # default caps
    with pytest.raises(DecodeError) as refused:
        decode(transaction_json(amount=6.0, currency="USD"), Transaction, amount_caps=caps)
    assert refused.value.reason == Reason.AMOUNT_TOO_LARGE and refused.value.detail.startswith("amount:")
    with pytest.raises(ValueError, match="not ISO 4217"):
        ScoringSettings(amount_caps_by_currency={"XYZ": 1.0})


# --- reason codes: a rule or a feature contribution ----------------------------------------------------------


RULED = factories.decision(reason_codes=[RuleReason(rule="known_fraud_30d", value=2.0, threshold=1.0),
                                         *factories.REASONS])  # fmt: skip


def test_a_reason_code_is_a_rule_or_a_contribution() -> None:
    raw = encode(RULED)
    back = decode(raw, Decision)
    assert back == RULED and [type(c) for c in back.reason_codes] == [RuleReason, Contribution, Contribution]
    assert [c["kind"] for c in json.loads(raw)["reason_codes"]] == ["rule", "feature", "feature"]
    alert = factories.alert(reason_codes=[RuleReason(rule="large_amount", value=900.0, threshold=500.0)])
    assert decode(encode(alert), Alert) == alert


def test_messages_from_before_rules_decode_their_reasons_as_contributions() -> None:
    fields = json.loads(encode(factories.decision()))
    for code in fields["reason_codes"]:
        del code["kind"]  # what the topics carried before this change
    old = decode(json.dumps(fields).encode(), Decision)
    assert old.reason_codes == factories.REASONS and all(c.kind == "feature" for c in old.reason_codes)


@pytest.mark.parametrize(
    "code",
    [
        {"kind": "4111111111111111", "rule": "x"},
        {"kind": 3},
        {"kind": "rule"},
        {"kind": "rule", "rule": "Known Fraud"},
        {"kind": "rule", "rule": "x", "feature": "y"},
    ],
)
def test_a_malformed_reason_code_is_refused_without_echoing_it(code: dict[str, object]) -> None:
    fields = json.loads(encode(factories.decision()))
    fields["reason_codes"] = [code]
    with pytest.raises(DecodeError) as refused:
        decode(json.dumps(fields).encode(), Decision)
    assert refused.value.reason in (Reason.INVALID_VALUE, Reason.MISSING_FIELD, Reason.EXTRA_FIELD)
    assert "4111" not in refused.value.detail and "Known" not in refused.value.detail
