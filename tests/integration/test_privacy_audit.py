"""Audit trail and erasure on real Kafka, Redis and files, as users run them.

A simulated stream is replayed through a ``fraudpipe worker`` (scorer, alert sinks, label agent). For one card:
``audit show`` rebuilds a transaction's whole chain and ``audit verify`` finds the logs intact; ``privacy erase``
removes the card from Redis, the logs and the alert copies; a later replay of the same file brings nothing of it
back; the rewritten logs still verify, and a tampered file does not. Then ``--customer`` and ``--pan`` erasure and
retention against real Redis without a worker.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import redis as redis_lib

from features.definitions import FEATURE_NAMES
from fraudpipe.logstore import Logs
from fraudpipe.pan import tokenize_pan
from fraudpipe.privacy import subject_digest
from fraudpipe.settings import PrivacySettings, Settings, SinkSettings
from tests import factories
from tests.integration.conftest import run_cli, start_worker
from tests.integration.test_kafka import consume_all

SIM_KEY = b"privacy-audit-tokenization-key-0"


def _everything_in_redis(client: redis_lib.Redis, settings: Settings) -> bytes:
    """Every key name and value under the test's prefix, plus the alert stream's entries, as one blob."""
    blob = []
    for name in client.scan_iter(match=f"{settings.redis.key_prefix}*", count=1_000):
        blob.append(name)
        kind = client.type(name)
        if kind == b"string":
            blob.append(client.get(name) or b"")
        elif kind == b"hash":
            blob += [part for item in client.hgetall(name).items() for part in item]
    for _, fields in client.xrange(settings.sinks.redis_stream_key):
        blob += list(fields.values())
    return b"\n".join(blob)


def _everything_in_files(data_dir: Path, alerts: Path) -> str:
    """Every cell of every Parquet file and every other file under ``data_dir``, and the alert file, as text."""
    texts = [alerts.read_text() if alerts.exists() else ""]
    for path in data_dir.rglob("*"):
        if path.suffix == ".parquet":
            frame = pl.read_parquet(path)
            texts += [str(value) for column in frame.columns for value in frame[column].cast(pl.String).to_list()]
        elif path.is_file():
            texts.append(path.read_text(errors="replace"))
    return "\n".join(texts)


def _values(document: Any, key: str) -> set[Any]:
    """Every value of ``key`` anywhere in a JSON document."""
    if isinstance(document, dict):
        return ({document[key]} if key in document else set()) | {
            v for item in document.values() for v in _values(item, key)
        }
    if isinstance(document, list):
        return {v for item in document for v in _values(item, key)}
    return set()


def _wait_for(what: str, check: object, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_audit_then_erase_a_card_and_replay_without_resurrecting_it(
    topics: Settings, tmp_path: Path, stop: list[subprocess.Popen[bytes]], store_client: redis_lib.Redis
) -> None:
    settings = topics.model_copy(
        update={
            "sinks": SinkSettings(enabled=("log", "redis_stream", "jsonl"), jsonl_path=tmp_path / "alerts.jsonl",
                                  redis_stream_key=topics.sinks.redis_stream_key),
            "privacy": PrivacySettings(erasure_poll_s=0.5),
        }
    )  # fmt: skip
    sim = factories.simulated_folder(tmp_path / "sim", days=5, customers=300, terminals=600, seed=21, key=SIM_KEY)
    history = pl.read_parquet(sim / "transactions" / "**" / "*.parquet")
    n = history.height
    factories.register_champion(settings.paths.models_dir)
    worker, log = start_worker(settings, tmp_path, FRAUD_SCORING__BATCH_SIZE="200")
    stop.append(worker)
    replay = run_cli(settings, "replay", str(sim), "--rate", "5000", cwd=tmp_path, timeout=120)
    assert replay.returncode == 0, replay.stderr
    logs = Logs.under(settings.paths.data_dir)
    labels_sent = pl.read_parquet(sim / "labels" / "**" / "*.parquet").height
    _wait_for("every decision logged", lambda: logs.decisions.read(unique_by=["txn_id"]).height == n)
    _wait_for("every label logged", lambda: logs.labels.read().height >= labels_sent)
    decisions = logs.decisions.read(unique_by=["txn_id"])
    alerted = decisions.filter(pl.col("decision") != "approve")
    _wait_for("alert deliveries logged", lambda: logs.deliveries.read().height >= 2 * alerted.height)

    # The subject: the card with the most alerted transactions that have a label; one of those.
    labelled = alerted.filter(pl.col("txn_id").is_in(logs.labels.read()["txn_id"].implode()))
    card = labelled.group_by("card_token").len().sort("len", "card_token")["card_token"][-1]
    txn = labelled.filter(pl.col("card_token") == card)["txn_id"][0]
    customer = decisions.filter(pl.col("card_token") == card)["customer_id"][0]
    # the customer's other cards (a blocked card's replacement) are not the subject of a card's erasure
    only_card = decisions.filter((pl.col("customer_id") == customer) & (pl.col("card_token") != card)).height == 0

    shown = run_cli(settings, "audit", "show", txn, "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    chain = json.loads(shown.stdout)
    assert chain["event"]["card_token"] == card and chain["event"]["customer_id"] == customer
    assert set(chain["decision"]["features"]) == set(FEATURE_NAMES)
    assert chain["decision"]["model_version"] == "v0001"
    assert chain["decision"]["model_check"] == "matches the registry"
    assert chain["decision"]["reason_codes"] and chain["decision"]["decision"] in ("review", "decline")
    assert {(s["sink"], s["outcome"]) for s in chain["alert"]["sinks"]} >= {("redis_stream", "delivered"),
                                                                            ("jsonl", "delivered")}  # fmt: skip
    assert chain["labels"] and set(chain["seals"].values()) == {"intact"}
    readable = run_cli(settings, "audit", "show", txn, cwd=tmp_path)
    assert readable.returncode == 0 and "matches the registry" in readable.stdout
    assert run_cli(settings, "audit", "verify", cwd=tmp_path).returncode == 0
    assert card.encode() in _everything_in_redis(store_client, settings)

    # The right of access first: everything audit show finds for the card's transactions, and nothing of another.
    exported = run_cli(settings, "privacy", "export", "--card", card, "--out", str(tmp_path / "export"), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    document = json.loads((tmp_path / "export" / "subject-access.json").read_text())
    page = (tmp_path / "export" / "subject-access.html").read_text()
    subject_txns = set(decisions.filter(pl.col("card_token") == card)["txn_id"].to_list())
    assert {t["txn_id"] for t in document["transactions"]} == subject_txns
    assert next(t for t in document["transactions"] if t["txn_id"] == txn) == chain  # audit show's whole trail
    assert _values(document, "card_token") == {card}  # no other subject's card, anywhere in the export
    assert _values(document, "txn_id") <= subject_txns
    (state,) = document["cards"]
    assert state["online_state"] is not None and state["erased_at"] is None and txn in page and card in page
    (access_receipt,) = (settings.paths.data_dir / "privacy" / "access-receipts").glob("*.json")
    proof = json.loads(access_receipt.read_text())
    assert proof["subjects"] == [subject_digest(settings.privacy.audit_key.get_secret_value().encode(), card)]
    assert (
        proof["files"]["subject-access.json"]
        == hashlib.sha256((tmp_path / "export" / "subject-access.json").read_bytes()).hexdigest()
    )
    assert card not in access_receipt.read_text() and proof["sections"]["transactions"] == len(subject_txns)
    inside = run_cli(settings, "privacy", "export", "--card", card, "--out", str(settings.paths.data_dir / "x"),
                     cwd=tmp_path)  # fmt: skip
    assert inside.returncode == 1 and "inside data_dir" in inside.stderr and "Traceback" not in inside.stderr

    erased = run_cli(settings, "privacy", "erase", "--card", card, cwd=tmp_path)
    assert erased.returncode == 0, erased.stderr
    (receipt_path,) = (settings.paths.data_dir / "privacy" / "receipts").glob("*.json")
    receipt = json.loads(receipt_path.read_text())
    assert receipt["subjects"] == [subject_digest(settings.privacy.audit_key.get_secret_value().encode(), card)]
    assert receipt["log_rows"]["decisions"] >= 1 and receipt["log_rows"]["labels"] >= 1
    assert receipt["redis_keys"] >= 1 and receipt["alert_stream_entries"] >= 1 and receipt["alert_file_lines"] >= 1

    def nothing_left() -> None:
        everything = _everything_in_redis(store_client, settings)  # names, values and hash fields (markers)
        assert card.encode() not in everything and txn.encode() not in everything
        files = _everything_in_files(settings.paths.data_dir, settings.sinks.jsonl_path)
        assert card not in files and txn not in files and (customer not in files or not only_card)

    nothing_left()
    after = run_cli(settings, "privacy", "export", "--card", card, "--out", str(tmp_path / "after"), cwd=tmp_path)
    assert after.returncode == 0, after.stderr
    emptied = json.loads((tmp_path / "after" / "subject-access.json").read_text())
    assert emptied["transactions"] == [] and emptied["cards"][0]["erased_at"] is not None
    # A later replay of the same file: the others are answered again, the erased card's events are dropped.
    again = run_cli(settings, "replay", str(sim), "--rate", "5000", cwd=tmp_path, timeout=120)
    assert again.returncode == 0, again.stderr
    subject_events = history.filter(pl.col("card_token") == card).height
    scores = settings.topics.full(settings.topics.scores)
    expected = 2 * n - subject_events
    seen = consume_all(settings.kafka.bootstrap_servers, scores, expected, group="all-scores", timeout_s=120)
    assert len(seen) == expected, log.read_text()[-3000:]
    time.sleep(3)  # the label agent's batches of the second replay, and any stray decision
    everything = consume_all(settings.kafka.bootstrap_servers, scores, expected + 1, group="recount", timeout_s=5)
    assert len(everything) == expected
    nothing_left()

    verified = run_cli(settings, "audit", "verify", cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    target = logs.decisions.files()[0]
    frame = pl.read_parquet(target)
    frame.with_columns(score=pl.col("score") * 0.5).write_parquet(target)
    tampered = run_cli(settings, "audit", "verify", cwd=tmp_path)
    assert tampered.returncode == 3 and target.name in tampered.stderr


def test_erase_by_customer_and_by_pan_and_retention(settings: Settings, tmp_path: Path,
                                                    store_client: redis_lib.Redis) -> None:  # fmt: skip
    audit_key = settings.privacy.audit_key.get_secret_value().encode()
    pan = "4111 1111 1111 1111"
    pan_token = tokenize_pan(pan, settings.privacy.tokenization_key.get_secret_value().encode()).token
    digits = pan.replace(" ", "")  # the whole PAN: receipt ids hold timestamps, so short digit runs can occur
    logs = Logs.under(settings.paths.data_dir, audit_key)
    now = datetime.now(UTC)
    rows = pl.DataFrame(
        {
            "txn_id": ["a1", "a2", "b1", "p1", "old"],
            "card_token": ["tok_a1", "tok_a2", "tok_b", pan_token, "tok_b"],
            "customer_id": ["C-A", "C-A", "C-B", "C-P", "C-B"],
            "event_time": [now - timedelta(days=1)] * 4 + [now - timedelta(days=500)],
        }
    )
    decided = {"decided_at": pl.col("event_time"), "decision": pl.lit("approve"), "score": pl.lit(0.1),
               "model_version": pl.lit("v0001"), "model_sha256": pl.lit("0" * 64),
               "reason_codes": pl.lit("[]")}  # fmt: skip
    logs.decisions.append(rows.with_columns(**decided))
    logs.labels.append(rows.drop("customer_id").with_columns(label_version=pl.lit(1), is_fraud=pl.lit(False),
                                                             known_at=pl.col("event_time")))  # fmt: skip
    for token in ("tok_a1", "tok_a2", "tok_b"):
        store_client.set(f"{settings.redis.key_prefix}card:{token}", b"state")

    by_customer = run_cli(settings, "privacy", "erase", "--customer", "C-A", cwd=tmp_path)
    assert by_customer.returncode == 0, by_customer.stderr
    assert "erased 2 card(s), 2 transaction(s)" in by_customer.stdout
    assert sorted(logs.decisions.read()["txn_id"]) == ["b1", "old", "p1"]
    assert (
        store_client.exists(f"{settings.redis.key_prefix}card:tok_a1", f"{settings.redis.key_prefix}card:tok_a2") == 0
    )
    assert store_client.exists(f"{settings.redis.key_prefix}card:tok_b") == 1

    bad_pan = "4111 1111 1111 1112"
    refused = run_cli(settings, "privacy", "erase", "--pan", bad_pan, cwd=tmp_path)
    said = refused.stderr + refused.stdout
    assert refused.returncode == 1 and "Luhn" in refused.stderr
    assert bad_pan not in said and bad_pan.replace(" ", "") not in said
    for asked in (["--pan", pan], ["--customer", "C-P"]):  # the right of access, by card number or customer
        folder = tmp_path / "access" / asked[0].strip("-")
        exported = run_cli(settings, "privacy", "export", *asked, "--out", str(folder), cwd=tmp_path)
        assert exported.returncode == 0, exported.stderr
        text = (folder / "subject-access.json").read_text() + (folder / "subject-access.html").read_text()
        document = json.loads((folder / "subject-access.json").read_text())
        assert [t["txn_id"] for t in document["transactions"]] == ["p1"] and pan_token in text
        assert digits not in text and pan not in text  # tokenized as stored: never the card number
    (tmp_path / "a-file").write_text("")
    unwritable = run_cli(settings, "privacy", "export", "--pan", pan, "--out", str(tmp_path / "a-file"), cwd=tmp_path)
    assert unwritable.returncode == 1 and "cannot write the export" in unwritable.stderr
    assert "Traceback" not in unwritable.stderr
    by_pan = run_cli(settings, "privacy", "erase", "--pan", pan, cwd=tmp_path)
    assert by_pan.returncode == 0, by_pan.stderr
    assert "p1" not in logs.decisions.read()["txn_id"].to_list()
    listed = store_client.hgetall(f"{settings.redis.key_prefix}erased")
    assert subject_digest(audit_key, pan_token).encode() in listed
    receipts = "".join(p.read_text() for p in (settings.paths.data_dir / "privacy" / "receipts").glob("*.json"))
    assert pan_token not in receipts and digits not in receipts and pan not in receipts
    assert "C-A" not in receipts and "tok_a1" not in receipts
    both = run_cli(settings, "privacy", "erase", "--card", "tok_b", "--customer", "C-B", cwd=tmp_path)
    assert both.returncode == 1 and "exactly one" in both.stderr

    stream = settings.sinks.redis_stream_key
    store_client.xadd(stream, {"alert": b"{}"}, id="1000-0")  # 1970: past any retention
    store_client.xadd(stream, {"alert": b"{}"})
    retained = run_cli(settings, "privacy", "retain", cwd=tmp_path)
    assert retained.returncode == 0, retained.stderr
    assert "decisions 1" in retained.stdout and "alert_stream_entries 1" in retained.stdout
    assert sorted(logs.decisions.read()["txn_id"]) == ["b1"]
    assert store_client.xlen(stream) == 1
    assert run_cli(settings, "audit", "verify", cwd=tmp_path).returncode == 0
    store_client.delete(stream)
