"""Intake: records become events or dead letters; nothing is dropped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fraudpipe.contracts import Reason, Transaction
from streams.intake import RawRecord, intake
from tests.factories import VISA_TEST_PAN, transaction_json

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
