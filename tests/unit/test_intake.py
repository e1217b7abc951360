"""Intake: records become events or dead letters; nothing is dropped; the fast path changes nothing but the cost."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fraudpipe.codec import decode
from fraudpipe.contracts import Label, Reason, Transaction
from streams.intake import RawRecord, intake
from tests.factories import VISA_TEST_PAN, label, transaction_fields, transaction_json

NOW = datetime(2024, 3, 1, 12, 5, tzinfo=UTC)


def _record(offset: int, value: bytes | None) -> RawRecord:
    return RawRecord("transactions.v1", 4, offset, b"tok", value)


def test_each_record_is_either_valid_or_dead_in_order() -> None:
    records = [
        _record(10, transaction_json(txn_id="a")),
        _record(11, b"{not json"),
        _record(12, transaction_json(txn_id="b")),
        _record(13, transaction_json(merchant_name=f"x {VISA_TEST_PAN}")),
        _record(14, None),
        _record(15, transaction_json(txn_id="c", event_time="2024-03-01T13:00:00Z")),
    ]
    result = intake(records, Transaction, latest_event_time=NOW + timedelta(minutes=5), failed_at=NOW)
    assert [event.txn_id for _, event in result.valid] == ["a", "b"]
    assert [(record.offset, letter.reason) for record, letter in result.dead] == [
        (11, Reason.INVALID_JSON),
        (13, Reason.PAN_DETECTED),
        (14, Reason.EMPTY_PAYLOAD),
        (15, Reason.TIME_OUT_OF_RANGE),
    ]
    assert len(result.valid) + len(result.dead) == len(records)
    pan_letter = result.dead[1][1]
    assert VISA_TEST_PAN not in pan_letter.payload
    assert (pan_letter.source_topic, pan_letter.source_partition, pan_letter.failed_at) == (
        "transactions.v1",
        4,
        NOW,
    )


def test_an_unexpected_codec_failure_becomes_a_processing_error() -> None:
    class Exploding(Transaction):
        @classmethod
        def model_validate_json(cls, *args: object, **kwargs: object) -> Transaction:  # type: ignore[override]
            raise RuntimeError("bug")

    result = intake([_record(1, b"{}")], Exploding, latest_event_time=NOW, failed_at=NOW)
    assert [letter.reason for _, letter in result.dead] == [Reason.PROCESSING_ERROR]


def test_transactions_the_fast_path_takes_are_the_contracts_and_the_rest_get_its_reasons(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[bytes | None] = []

    def contract(raw: bytes | None, kind: type[Transaction], **bounds: Any) -> Transaction:
        asked.append(raw)
        return decode(raw, kind, **bounds)

    monkeypatch.setattr("streams.intake.decode", contract)
    token = transaction_fields()["card_token"].encode()
    compact = [json.dumps(transaction_fields(txn_id=f"f{i}", amount=10.0 + i), separators=(",", ":")).encode()
               for i in range(6)]  # fmt: skip
    odd = [compact[0][:-1] + b',"txn_id" :"dup"}', b"[]", transaction_json(amount="12")]
    records = [RawRecord("transactions.v1", 4, i, token, value) for i, value in enumerate(compact + odd)]
    records += [
        RawRecord("transactions.v1", 4, 9, None, compact[1]),
        RawRecord("transactions.v1", 4, 10, b"t", compact[2]),
    ]
    result = intake(records, Transaction, latest_event_time=NOW + timedelta(days=1), failed_at=NOW,
                    key_of=lambda txn: txn.card_token)  # fmt: skip
    assert [event for _, event in result.valid] == [decode(value, Transaction) for value in compact]
    assert [(r.offset, letter.reason) for r, letter in result.dead] == [
        (6, Reason.DUPLICATE_KEY),
        (7, Reason.NOT_AN_OBJECT),
        (8, Reason.WRONG_TYPE),
        (9, Reason.MISSING_KEY),
        (10, Reason.KEY_MISMATCH),
    ]
    assert asked == odd  # the ordinary ones took the fast path (their keys checked all the same)


def test_other_kinds_go_through_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "streams.intake.transactions", lambda *_, **__: pytest.fail("the fast path is for transactions")
    )
    value = label().model_dump_json().encode()
    result = intake([_record(1, value), _record(2, value[:-1])], Label, latest_event_time=None, failed_at=NOW)
    assert [event for _, event in result.valid] == [label()]
    assert [letter.reason for _, letter in result.dead] == [Reason.INVALID_JSON]


def test_a_failing_fast_path_costs_speed_not_records(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the fast path")

    monkeypatch.setattr("streams.intake.transactions", broken)
    records = [_record(1, transaction_json()), _record(2, transaction_json(txn_id="b"))]
    result = intake(records, Transaction, latest_event_time=NOW, failed_at=NOW)
    assert [event.txn_id for _, event in result.valid] == ["txn-000001", "b"]


def test_small_batches_skip_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Below FAST_PATH_MIN_ROWS (a batch of one) its fixed cost exceeds what it saves: the contract alone decides."""
    called: list[int] = []
    monkeypatch.setattr(
        "streams.intake.transactions", lambda values, **_: called.append(len(values)) or [None] * len(values)
    )
    monkeypatch.setattr("streams.intake.FAST_PATH_MIN_ROWS", 3)
    intake([_record(1, transaction_json())] * 2, Transaction, latest_event_time=NOW, failed_at=NOW)
    assert called == []
    intake([_record(1, transaction_json())] * 3, Transaction, latest_event_time=NOW, failed_at=NOW)
    assert called == [3]
