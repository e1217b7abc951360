"""The replayer against the real broker: exactly N events, keyed by token, per-card order, delayed labels, no PAN,
rejects with the good rows still delivered, resumable, non-zero exit when messages are not delivered."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message, TopicPartition

from fraudpipe.codec import decode
from fraudpipe.contracts import Label, Transaction
from fraudpipe.files import open_source, parse_mapping, parse_time
from fraudpipe.settings import Settings
from fraudpipe.simulator.config import default
from fraudpipe.simulator.generate import simulate
from fraudpipe.simulator.output import write_simulation
from streams.replay import ReplayOptions, read_checkpoint, replay
from tests.factories import MASTERCARD_TEST_PAN, VISA_TEST_PAN
from tests.integration.conftest import run_cli

KEY = b"integration-key-integration-key!"


def _consume(settings: Settings, topic: str, expected: int, timeout_s: float = 60) -> list[Message]:
    from tests.integration.test_kafka import consume_all

    return consume_all(
        settings.kafka.bootstrap_servers, topic, expected, group=f"{settings.kafka.app_id}-r", timeout_s=timeout_s
    )


def _on_topic(settings: Settings, topic: str) -> int:
    """How many messages ``topic`` holds: the sum over partitions of high minus low watermark."""
    probe = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "watermarks"})
    try:
        partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
        marks = [probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions]
    finally:
        probe.close()
    return sum(high - low for low, high in marks)


@pytest.fixture(scope="module")
def simulation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    config = default(days=12, customers=300, terminals=600, seed=7)
    population, days = simulate(config, KEY)
    write_simulation(out, config, population, days)
    return out


def _expected(simulation: Path) -> tuple[int, int]:
    manifest = json.loads((simulation / "manifest.json").read_text())
    return manifest["transactions"], manifest["labels"]


def test_replay_delivers_exactly_n_keyed_ordered_with_delayed_labels(
    topics: Settings, simulation: Path, tmp_path: Path
) -> None:
    n_tx, n_labels = _expected(simulation)
    source = open_source(simulation, {}, key=KEY)
    stats = replay(source, topics.kafka, topics.topics, ReplayOptions(rejects=tmp_path / "rejects.jsonl"))
    assert (stats.transactions, stats.labels, stats.rejected, stats.failed) == (n_tx, n_labels, 0, 0)
    assert stats.delivered == n_tx + n_labels

    tx_topic, label_topic = topics.topics.full(topics.topics.transactions), topics.topics.full(topics.topics.labels)
    assert (_on_topic(topics, tx_topic), _on_topic(topics, label_topic)) == (n_tx, n_labels)  # exactly N
    tx_messages = _consume(topics, tx_topic, n_tx)
    label_messages = _consume(topics, label_topic, n_labels)
    assert (len(tx_messages), len(label_messages)) == (n_tx, n_labels)

    transactions = [decode(m.value(), Transaction) for m in tx_messages]
    assert len({t.txn_id for t in transactions}) == n_tx
    assert all(m.key() == t.card_token.encode() for m, t in zip(tx_messages, transactions, strict=True))
    per_card: dict[str, list[tuple[int, int, object]]] = defaultdict(list)
    for message, event in zip(tx_messages, transactions, strict=True):
        per_card[event.card_token].append((message.partition(), message.offset(), event.event_time))
    for events in per_card.values():
        assert len({partition for partition, _, _ in events}) == 1
        in_offset_order = [time for _, _, time in sorted(events, key=lambda e: e[1])]
        assert in_offset_order == sorted(in_offset_order)

    # A label leaves after every transaction it is not later than, and before every later one (CreateTime, ms).
    tx_times = sorted((t.event_time, m.timestamp()[1]) for m, t in zip(tx_messages, transactions, strict=True))
    last_tx_ms = max(ms for _, ms in tx_times)
    for message in label_messages:
        label = decode(message.value(), Label)
        assert message.key() == label.card_token.encode()
        label_ms = message.timestamp()[1]
        before = [ms for time, ms in tx_times if time <= label.known_at]
        after = [ms for time, ms in tx_times if time > label.known_at]
        assert not before or max(before) <= label_ms
        assert not after or label_ms <= min(after)
        if not after:
            assert label_ms >= last_tx_ms  # drained at the end: still in the future when the stream ended


def test_a_file_of_pans_leaves_no_pan_on_any_topic(topics: Settings, tmp_path: Path) -> None:
    pans = [VISA_TEST_PAN, MASTERCARD_TEST_PAN, "4000 0566 5566 5556", "378282246310005"]
    rows = ["id,when,card,terminal,amount,fraud"] + [
        f"t{i},2024-05-01T10:{i // 60:02d}:{i % 60:02d}Z,{pans[i % 4]},T{i % 9},{5 + i % 50}.25,{int(i % 10 == 0)}"
        for i in range(240)
    ]
    path = tmp_path / "cards.csv"
    path.write_text("\n".join(rows) + "\n")
    mapping = parse_mapping("txn_id=id,event_time=when,card_id=card,terminal_id=terminal,amount=amount,label=fraud")
    stats = replay(open_source(path, mapping, key=KEY), topics.kafka, topics.topics, ReplayOptions())
    assert (stats.transactions, stats.labels, stats.failed) == (240, 24, 0)
    messages = _consume(topics, topics.topics.full(topics.topics.transactions), 240) + _consume(
        topics, topics.topics.full(topics.topics.labels), 24
    )
    digits = {re.sub(r"\D", "", pan) for pan in pans}
    for message in messages:
        flat = re.sub(rb"[^0-9]", b"", message.value() + (message.key() or b""))
        assert not any(pan.encode() in flat for pan in digits)
        assert message.key().startswith(b"tok_")


def test_bad_rows_go_to_the_rejects_file_and_the_good_rows_are_delivered(topics: Settings, tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text(
        "id,when,card,terminal,amount\n"
        "a,2024-05-01T10:00:00Z,c1,T1,10\n"
        "b,2024-05-01T10:00:01Z,c1,T1,NaN\n"
        "c,2024-05-01T10:00:02Z,c2,T1,12\n"
        "d,not-a-time,c2,T1,12\n"
        "e,2024-05-01T10:00:04Z,c3,T1,-0.5\n"
        "f,2024-05-01T10:00:05Z,c3,T1,13\n"
    )
    result = run_cli(
        topics, "replay", str(path),
        "--map", "txn_id=id,event_time=when,card_id=card,terminal_id=terminal,amount=amount",
        "--rejects", str(tmp_path / "rejects.jsonl"), "--checkpoint", str(tmp_path / "ck.json"), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "3 transactions" in result.stdout and "3 rows rejected" in result.stdout
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (3, "invalid_number"),
        (5, "invalid_value"),
        (6, "amount_negative"),
    ]
    assert _on_topic(topics, topics.topics.full(topics.topics.transactions)) == 3
    delivered = _consume(topics, topics.topics.full(topics.topics.transactions), 3)
    assert sorted(decode(m.value(), Transaction).txn_id for m in delivered) == ["a", "c", "f"]


def test_replay_resumes_from_its_checkpoint(topics: Settings, simulation: Path, tmp_path: Path) -> None:
    n_tx, n_labels = _expected(simulation)
    checkpoint = tmp_path / "ck.json"
    first = replay(
        open_source(simulation, {}, key=KEY), topics.kafka, topics.topics,
        ReplayOptions(checkpoint=checkpoint, checkpoint_every=500),
    )  # fmt: skip
    assert read_checkpoint(checkpoint, simulation) == n_tx + n_labels == first.position
    # A replay that stopped at 1,000 resumes there: only the rest is sent.
    second = replay(
        open_source(simulation, {}, key=KEY), topics.kafka, topics.topics, ReplayOptions(start_position=1_000)
    )
    assert second.skipped == 1_000
    assert second.transactions + second.labels == n_tx + n_labels - 1_000
    on_topics = _on_topic(topics, topics.topics.full(topics.topics.transactions)) + _on_topic(
        topics, topics.topics.full(topics.topics.labels)
    )
    assert on_topics == 2 * (n_tx + n_labels) - 1_000
    with pytest.raises(ValueError, match="checkpoint"):
        read_checkpoint(checkpoint, tmp_path)


def test_a_slice_of_a_simulation_is_replayed_with_its_labels(
    topics: Settings, simulation: Path, tmp_path: Path
) -> None:
    """``replay --since --until``: the slice's payments and the labels of those payments, nothing else; a checkpoint
    is for its slice, and resuming with another one is refused in one line."""
    since, until = "2018-04-04", "2018-04-06T12:00"
    sliced = open_source(
        simulation, {}, key=KEY, since=parse_time(since, "--since"), until=parse_time(until, "--until")
    )
    expected = [decode(v, Transaction) for chunk in sliced.chunks() for v in chunk.values]
    labels = sliced.label_frame()
    n_tx, n_all = len(expected), _expected(simulation)[0]
    assert 0 < n_tx < n_all and labels.height > 0
    checkpoint = tmp_path / "ck.json"
    result = run_cli(topics, "replay", str(simulation), "--since", since, "--until", until,
                     "--checkpoint", str(checkpoint), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"{n_tx:,} transactions and {labels.height:,} labels sent" in result.stdout
    assert f"(the slice {sliced.window})" in result.stdout
    delivered = _consume(topics, topics.topics.full(topics.topics.transactions), n_tx)
    assert sorted(decode(m.value(), Transaction).txn_id for m in delivered) == sorted(t.txn_id for t in expected)
    label_messages = _consume(topics, topics.topics.full(topics.topics.labels), labels.height)
    assert {decode(m.value(), Label).txn_id for m in label_messages} <= {t.txn_id for t in expected}
    assert read_checkpoint(checkpoint, simulation, sliced.window) == n_tx + labels.height
    refused = run_cli(topics, "replay", str(simulation), "--resume", "--checkpoint", str(checkpoint), cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"error: checkpoint {checkpoint} is for {sliced.window}, not the whole file: give the same --since / "
        "--until to resume"
    ]


def test_undelivered_messages_make_the_command_fail(settings: Settings, simulation: Path, tmp_path: Path) -> None:
    """The test's topics were never created (and the broker does not auto-create): nothing can be delivered."""
    result = run_cli(
        settings, "replay", str(simulation), "--delivery-timeout", "3", "--checkpoint", str(tmp_path / "ck.json"),
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert re.match(r"error: [\d,]+ messages were not delivered \(first error: ", line), result.stderr
    assert not (tmp_path / "ck.json").exists()


def test_pacing_never_runs_ahead_of_the_chosen_rate(topics: Settings, tmp_path: Path) -> None:
    """Lower bounds only: a slow machine may be slower than the pace, never faster."""
    rows = ["id,when,card,terminal,amount"] + [
        f"p{i},2024-05-01T10:00:{i // 10:02d}.{i % 10}Z,c{i % 7},T1,5" for i in range(300)
    ]
    path = tmp_path / "paced.csv"
    path.write_text("\n".join(rows) + "\n")
    mapping = parse_mapping("txn_id=id,event_time=when,card_id=card,terminal_id=terminal,amount=amount")
    by_rate = replay(open_source(path, mapping, key=KEY), topics.kafka, topics.topics, ReplayOptions(rate=1_000))
    assert by_rate.transactions == 300
    assert by_rate.elapsed_s >= 0.29  # 300 messages at 1,000/s
    # 29.9 s of event time at 30x: about a second.
    by_time = replay(open_source(path, mapping, key=KEY), topics.kafka, topics.topics, ReplayOptions(speedup=30))
    assert by_time.transactions == 300
    assert by_time.elapsed_s >= 0.95
