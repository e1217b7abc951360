"""Reading external transaction files: column mapping, conversions, PAN tokenization at the edge, rejects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fraudpipe.codec import decode
from fraudpipe.contracts import Label, Reason, Transaction
from fraudpipe.files import MappingError, SourceError, open_source, parse_mapping
from fraudpipe.pan import tokenize_pan
from tests.factories import MASTERCARD_TEST_PAN, VISA_TEST_PAN

KEY = b"unit-test-key-unit-test-key-0123"
HANDBOOK_MAP = (
    "txn_id=TRANSACTION_ID,event_time=TX_DATETIME,card_id=CUSTOMER_ID,terminal_id=TERMINAL_ID,"
    "amount=TX_AMOUNT,label=TX_FRAUD"
)


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tx.csv"
    path.write_text(text)
    return path


def test_parse_mapping() -> None:
    assert parse_mapping("txn_id=ID, amount = AMT") == {"txn_id": "ID", "amount": "AMT"}
    assert parse_mapping(None) == {}


@pytest.mark.parametrize("text", ["txn_id", "txn_id=", "colour=C", "txn_id=A,txn_id=B"])
def test_bad_mappings_are_refused(text: str) -> None:
    with pytest.raises(MappingError):
        parse_mapping(text)


def test_a_minimal_handbook_style_csv(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD\n"
        "0,2018-04-01 00:00:31,596,3156,57.16,0\n"
        "1,2018-04-01 00:02:10,4961,3412,81.51,1\n"
        "2,2018-04-01 00:01:00,2,1365,146.00,0\n",
    )
    source = open_source(path, parse_mapping(HANDBOOK_MAP), key=KEY, label_delay=timedelta(days=7))
    assert source.total_rows == 3
    (chunk,) = list(source.chunks())
    events = [decode(value, Transaction) for value in chunk.values]
    assert [e.txn_id for e in events] == ["0", "2", "1"]  # sorted by event time
    assert events[0].event_time == datetime(2018, 4, 1, 0, 0, 31, tzinfo=UTC)
    assert (events[0].card_token, events[0].terminal_id, events[0].amount, events[0].currency) == (
        "596",
        "3156",
        57.16,
        "EUR",
    )
    assert chunk.keys == [b"596", b"2", b"4961"]
    assert not chunk.rejects
    assert not source.labels().values  # an external file's labels come with its chunks
    batch = chunk.labels
    assert batch is not None
    values, keys, known_us, rejects = batch.values, batch.keys, batch.known_us, batch.rejects
    (label,) = [decode(v, Label) for v in values]
    assert (label.txn_id, label.is_fraud, label.source) == ("1", True, "chargeback")
    assert label.known_at - label.event_time == timedelta(days=7)
    assert keys == [b"4961"] and not rejects
    assert known_us[0] == int(label.known_at.timestamp() * 1_000_000)


def test_naive_times_are_read_in_the_given_time_zone(tmp_path: Path) -> None:
    path = _csv(tmp_path, "id,t,card,term,amt\na,2024-07-01 12:00:00,c1,t1,5\n")
    source = open_source(
        path,
        parse_mapping("txn_id=id,event_time=t,card_id=card,terminal_id=term,amount=amt"),
        key=KEY,
        timezone="Europe/Zurich",
    )
    (chunk,) = list(source.chunks())
    assert decode(chunk.values[0], Transaction).event_time == datetime(2024, 7, 1, 10, 0, tzinfo=UTC)


def test_pans_are_tokenized_at_the_edge(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "id,t,card,merchant,amt\n"
        f"a,2024-01-01T10:00:00Z,{VISA_TEST_PAN},m1,10\n"
        f"b,2024-01-01T10:01:00Z,5555 5555 5555 4444,m1,11\n"
        "c,2024-01-01T10:02:00Z,customer-17,m1,12\n",
    )
    mapping = parse_mapping("txn_id=id,event_time=t,card_id=card,merchant_id=merchant,amount=amt")
    (chunk,) = list(open_source(path, mapping, key=KEY).chunks())
    events = [decode(v, Transaction) for v in chunk.values]
    visa, mastercard = tokenize_pan(VISA_TEST_PAN, KEY), tokenize_pan(MASTERCARD_TEST_PAN, KEY)
    assert [(e.card_token, e.card_bin, e.card_last4) for e in events] == [
        (visa.token, "411111", "1111"),
        (mastercard.token, "555555", "4444"),
        ("customer-17", None, None),
    ]
    assert all(VISA_TEST_PAN.encode() not in v and b"5555" not in v[:60] for v in chunk.values)


def test_bad_rows_are_rejected_with_their_line_and_the_rest_goes_on(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "id,t,card,term,amt,label\n"
        "ok1,2024-01-01T10:00:00Z,c1,t1,10.5,0\n"  # line 2
        "bad-amount,2024-01-01T10:00:01Z,c1,t1,ten,0\n"  # line 3
        "bad-time,yesterday,c1,t1,10,0\n"  # line 4
        "negative,2024-01-01T10:00:02Z,c1,t1,-4,0\n"  # line 5
        ",2024-01-01T10:00:03Z,c1,t1,4,0\n"  # line 6: no id
        "pan-name,2024-01-01T10:00:04Z,c1,t1,4,maybe\n"  # line 7: bad label
        "ok2,2024-01-01T10:00:05Z,c2,t2,3,1\n",  # line 8
    )
    mapping = parse_mapping("txn_id=id,event_time=t,card_id=card,terminal_id=term,amount=amt,label=label")
    (chunk,) = list(open_source(path, mapping, key=KEY).chunks())
    assert [decode(v, Transaction).txn_id for v in chunk.values] == ["ok1", "ok2"]
    assert [(r.line, r.reason) for r in chunk.rejects] == [
        (3, Reason.WRONG_TYPE),
        (4, Reason.INVALID_VALUE),
        (5, Reason.AMOUNT_NEGATIVE),
        (6, Reason.WRONG_TYPE),
        (7, Reason.INVALID_VALUE),
    ]
    assert '"id": "bad-amount"' in chunk.rejects[0].row


def test_a_pan_in_free_text_is_rejected_and_masked_in_the_rejects(tmp_path: Path) -> None:
    path = _csv(tmp_path, f"id,t,card,term,amt,name\nx,2024-01-01T10:00:00Z,c1,t1,1,refund {VISA_TEST_PAN}\n")
    mapping = parse_mapping("txn_id=id,event_time=t,card_id=card,terminal_id=term,amount=amt,merchant_name=name")
    (chunk,) = list(open_source(path, mapping, key=KEY).chunks())
    (reject,) = chunk.rejects
    assert reject.reason is Reason.PAN_DETECTED
    assert VISA_TEST_PAN not in reject.to_json() and "411111******1111" in reject.row


def test_missing_columns_and_unknown_formats_are_clear_errors(tmp_path: Path) -> None:
    path = _csv(tmp_path, "id,t\n1,2024-01-01T00:00:00Z\n")
    with pytest.raises(SourceError, match="no column for card_id, amount"):
        list(open_source(path, parse_mapping("txn_id=id,event_time=t"), key=KEY).chunks())
    with pytest.raises(SourceError, match="mapped column 'nope'"):
        list(open_source(path, parse_mapping("txn_id=nope"), key=KEY).chunks())
    with pytest.raises(SourceError, match="unknown format"):
        open_source(tmp_path / "x.xlsx", {}, key=KEY) if (tmp_path / "x.xlsx").write_text("") == 0 else None
    with pytest.raises(SourceError, match="no such file"):
        open_source(tmp_path / "missing.csv", {}, key=KEY)


def test_parquet_and_jsonl_sources(tmp_path: Path) -> None:
    import polars as pl

    frame = pl.DataFrame(
        {
            "txn_id": ["a", "b"],
            "event_time": [datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)],
            "card_token": ["c1", "c2"],
            "terminal_id": ["t1", "t2"],
            "amount": [1.0, 2.0],
        }
    )
    frame.write_parquet(tmp_path / "tx.parquet")
    frame.write_ndjson(tmp_path / "tx.jsonl")
    for name in ("tx.parquet", "tx.jsonl"):
        (chunk,) = list(open_source(tmp_path / name, {}, key=KEY).chunks())
        assert [decode(v, Transaction).txn_id for v in chunk.values] == ["a", "b"], name


def _three_days(tmp_path: Path) -> Path:
    return _csv(
        tmp_path,
        "id,t,card,term,amt,label\n"
        "d1,2024-01-01T10:00:00Z,c1,t1,10,1\n"  # line 2: before the window
        "d1-bad,2024-01-01T11:00:00Z,c1,t1,ten,0\n"  # line 3: bad, but outside: not the slice's business
        "d2a,2024-01-02T00:00:00Z,c1,t1,11,1\n"  # line 4: the window's first instant
        "d2-bad,2024-01-02T09:00:00Z,c2,t1,-1,0\n"  # line 5: bad, inside
        "no-time,whenever,c2,t1,3,0\n"  # line 6: no time: reported wherever it would fall
        "d2b,2024-01-02T23:59:59Z,c2,t2,12,0\n"  # line 7
        "d3,2024-01-03T00:00:00Z,c2,t2,13,1\n",  # line 8: the window's end, left out
    )


def test_a_window_keeps_its_payments_their_labels_and_its_own_rejects(tmp_path: Path) -> None:
    mapping = parse_mapping("txn_id=id,event_time=t,card_id=card,terminal_id=term,amount=amt,label=label")
    since, until = datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 1, 3, tzinfo=UTC)
    source = open_source(_three_days(tmp_path), mapping, key=KEY, since=since, until=until)
    assert source.total_rows is None and source.window == "2024-01-02T00:00:00+00:00/2024-01-03T00:00:00+00:00"
    (chunk,) = list(source.chunks())
    assert [decode(v, Transaction).txn_id for v in chunk.values] == ["d2a", "d2b"]
    assert [(r.line, r.reason) for r in chunk.rejects] == [(5, Reason.AMOUNT_NEGATIVE), (6, Reason.INVALID_VALUE)]
    assert chunk.labels is not None
    assert [decode(v, Label).txn_id for v in chunk.labels.values] == ["d2a"]
    (after,) = list(open_source(source.path, mapping, key=KEY, since=since).chunks())
    assert [decode(v, Transaction).txn_id for v in after.values] == ["d2a", "d2b", "d3"]
    with pytest.raises(SourceError, match="must be before"):
        open_source(source.path, mapping, key=KEY, since=until, until=since)


def test_parse_time_reads_dates_and_zones() -> None:
    from fraudpipe.files import parse_time

    assert parse_time("2018-08-01", "--since") == datetime(2018, 8, 1, tzinfo=UTC)
    assert parse_time("2018-08-01T02:00+02:00", "--until") == datetime(2018, 8, 1, tzinfo=UTC)
    with pytest.raises(SourceError, match="--since expects an ISO date"):
        parse_time("last tuesday", "--since")


def test_a_window_of_a_simulation_reads_only_its_days(tmp_path: Path) -> None:
    import polars as pl

    from fraudpipe.simulator.config import default
    from fraudpipe.simulator.generate import simulate
    from fraudpipe.simulator.output import write_simulation
    from models.dataset import load_history

    config = default(days=6, customers=200, terminals=400, seed=3)
    write_simulation(tmp_path, config, *simulate(config, KEY))
    days = sorted(p.name for p in (tmp_path / "transactions").iterdir())
    for part in (tmp_path / "transactions" / days[0]).glob("*.parquet"):
        part.write_bytes(b"not parquet")  # a day outside the window is never opened
    first = datetime.fromisoformat(days[2].removeprefix("day=")).replace(tzinfo=UTC)
    since, until = first + timedelta(hours=12), first + timedelta(days=1, hours=12)
    source = open_source(tmp_path, {}, key=KEY, since=since, until=until)
    payments = [decode(value, Transaction) for chunk in source.chunks() for value in chunk.values]
    expected = (
        pl.scan_parquet(tmp_path / "transactions" / f"{days[2]}" / "*.parquet")
        .collect()
        .vstack(pl.read_parquet(tmp_path / "transactions" / f"{days[3]}" / "*.parquet"))
    )
    times = expected.get_column("event_time")
    assert len(payments) == int(((times >= since) & (times < until)).sum()) > 0
    assert all(since <= p.event_time < until for p in payments)
    labels = source.label_frame()
    assert labels.height > 0
    assert set(labels.get_column("txn_id").to_list()) <= {p.txn_id for p in payments}
    history = load_history(tmp_path, {}, key=KEY, since=since, until=until)  # what train reads with the window
    assert sorted(history.transactions.get_column("txn_id").to_list()) == sorted(p.txn_id for p in payments)
    assert history.labels.height == labels.height
    with pytest.raises(SourceError, match="no valid payment in"):
        load_history(tmp_path, {}, key=KEY, since=until + timedelta(days=30))
