"""The erasure list as workers apply it, and retention of the file copies."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from fraudpipe.clock import FixedClock, micros_of
from fraudpipe.logstore import Logs
from fraudpipe.privacy import ErasureList, retain, subject_digest
from tests import factories

KEY = b"unit-test-audit-key-0123456789abcdef"
ERASED_AT = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def test_events_of_an_erased_card_up_to_its_erasure_are_dropped() -> None:
    clock = FixedClock(ERASED_AT)
    listed = {subject_digest(KEY, "tok_gone").encode(): str(micros_of(ERASED_AT)).encode()}
    reads: list[int] = []

    def read() -> dict[bytes, bytes]:
        reads.append(1)
        return listed

    erasures = ErasureList(read, KEY, poll_s=5.0, clock=clock)
    erasures.refresh()
    erasures.refresh()  # within the poll interval: not read again
    assert len(reads) == 1
    before = factories.transaction(txn_id="old", card_token="tok_gone", event_time="2024-03-01T12:00:00Z")
    after = factories.transaction(txn_id="new", card_token="tok_gone", event_time="2024-03-01T12:00:01Z")
    other = factories.transaction(txn_id="other", card_token="tok_kept", event_time="2024-02-01T00:00:00Z")
    kept, dropped = erasures.split([before, after, other], lambda t: t.card_token, lambda t: t.event_time)
    assert [t.txn_id for t in kept] == ["new", "other"] and dropped == 1
    assert subject_digest(KEY, "tok_gone") != subject_digest(b"another-key-000000000000000000000", "tok_gone")


def test_a_failed_read_keeps_the_list_known() -> None:
    import redis

    clock = FixedClock(ERASED_AT)
    answers: list[dict[bytes, bytes] | None] = [{b"d": b"1"}, None]

    def read() -> dict[bytes, bytes]:
        answer = answers.pop(0)
        if answer is None:
            raise redis.ConnectionError("down")
        return answer

    erasures = ErasureList(read, KEY, poll_s=1.0, clock=clock)
    erasures.refresh()
    clock.advance(2.0)
    erasures.refresh()
    assert erasures.erased == {"d": 1}


def test_retention_drops_old_days_and_old_alert_lines(tmp_path: Path) -> None:
    logs = Logs.under(tmp_path / "data", KEY)
    old, recent = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)
    for log in logs.all().values():
        log.append(pl.DataFrame({"txn_id": ["a", "b"], "event_time": [old, recent]}))
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_text("".join(json.dumps({"raised_at": t.isoformat(), "card_token": "x"}) + "\n"
                              for t in (old, recent)) + "torn line\n")  # fmt: skip
    keep = {"decisions": 30, "labels": 0, "deliveries": 30, "shadow": 30, "conflicts": 30}
    removed = retain(logs, keep, as_of=datetime(2024, 3, 2, tzinfo=UTC), client=None, alert_stream="unused",
                     alert_file=alerts, alert_days=30)  # fmt: skip
    assert removed == {"decisions": 1, "deliveries": 1, "shadow": 1, "conflicts": 1, "alert_file_lines": 1}
    assert logs.decisions.read()["txn_id"].to_list() == ["b"]
    assert logs.labels.read().height == 2  # 0 keeps forever
    assert alerts.read_text().count("\n") == 2 and "torn line" in alerts.read_text()
