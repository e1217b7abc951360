"""Retraining from the decision log: a stream where a new fraud campaign (card testing at new merchants) starts
mid-way is served by a champion trained on the published scenarios only, which never saw one; ``fraudpipe
retrain`` trains a challenger on the served features and matured labels, the gate promotes it, and the recall on
the campaign rises once it serves. The gate keeps the champion when the challenger is not better by the margin,
and the data-validation gate stops a run on broken data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from features.definitions import FEATURE_NAMES
from features.memory import InMemoryFeatureStore
from fraudpipe.clock import FixedClock
from fraudpipe.contracts import Transaction
from fraudpipe.logstore import DayLog
from fraudpipe.settings import RetrainSettings, ScoringSettings
from fraudpipe.simulator.config import handbook
from fraudpipe.simulator.generate import TRANSACTION_COLUMNS, simulate
from models.registry import Registry
from models.retrain import gate, served_rows, validate
from streams.pipeline import InMemoryDecisionMemory, Models, Pipeline
from tests import factories

CAMPAIGN = "campaign_card_testing"
DAYS, CAMPAIGN_DAY, SPLIT_DAY = 34, 12, 28
"""Simulated days; the day the campaign starts; the day retraining runs (decisions after it are served by the
model in force then)."""
RETRAIN = {"FRAUD_RETRAIN__TRAIN_DAYS": "12", "FRAUD_RETRAIN__VALID_DAYS": "3", "FRAUD_RETRAIN__HOLDOUT_DAYS": "6",
           "FRAUD_RETRAIN__MIN_ROWS": "2000", "FRAUD_RETRAIN__MIN_FRAUDS": "10", "FRAUD_MONITOR__MATURITY_DAYS": "3",
           "FRAUD_TRAINING__ROUNDS": "150", "FRAUD_TRAINING__LEARNING_RATE": "0.1",
           "FRAUD_TRAINING__MIN_DATA_IN_LEAF": "20"}  # fmt: skip


class Stream:
    """A simulated stream served day by day by a pipeline following the registry's champion."""

    def __init__(self, root: Path) -> None:
        self.root = root
        labels = {"fixed_days": 2.0, "unreported_share": 0.0, "false_chargeback_share": 0.0, "analyst_share": 0.0}
        config = handbook(days=DAYS, customers=700, terminals=1_400, seed=5, labels=labels,
                          drift={"start_day": CAMPAIGN_DAY, "cards_per_day": 12.0})  # fmt: skip
        _, days = simulate(config, b"retrain-test-key-retrain-test-00")
        run = list(days)
        self.truth = pl.concat([d.transactions for d in run])
        self.labels = pl.concat([d.labels for d in run])
        fields = [c for c in TRANSACTION_COLUMNS if c not in {"is_fraud", "fraud_scenario"}]
        self.txns = [Transaction(**row) for row in self.truth.select(fields).iter_rows(named=True)]
        clock = FixedClock(datetime(2026, 11, 1, tzinfo=UTC))
        self.models = Models(Registry(root / "models"), "champion", threads=1, poll_s=600, clock=clock)
        self.models.start()
        self.pipeline = Pipeline(
            InMemoryFeatureStore(), InMemoryDecisionMemory(), self.models, ScoringSettings(), clock
        )
        self.log = DayLog(root / "data" / "decisions", "event_time")
        self.served = 0

    def serve_until(self, end: datetime) -> None:
        """Score every transaction before ``end``; write decisions and the labels known by then."""
        todo = [t for t in self.txns[self.served :] if t.event_time < end]
        for i in range(0, len(todo), 500):
            batch = self.pipeline.score(todo[i : i + 500], [0.0] * len(todo[i : i + 500]))
            self.log.append(batch.log_rows)
        self.served += len(todo)
        labels_dir = self.root / "data" / "labels"
        for path in labels_dir.glob("**/*.parquet"):
            path.unlink()
        DayLog(labels_dir, "event_time").append(self.labels.filter(pl.col("known_at") < end))

    def campaign_recall(self, since: datetime, until: datetime, version: str) -> float:
        """Recall at 1 % false-positive rate on the campaign: the share of its frauds in [since, until) that
        ``version`` scored above the 99th percentile of the genuine payments' scores of the same days."""
        decisions = DayLog(self.root / "data" / "decisions", "event_time").read()
        scored = self.truth.filter(pl.col("event_time").is_between(since, until, closed="left")).join(
            decisions.filter(pl.col("model_version") == version).select("txn_id", "score"), on="txn_id"
        )
        genuine = scored.filter(~pl.col("is_fraud")).get_column("score").to_numpy()
        campaign = scored.filter(pl.col("fraud_scenario") == CAMPAIGN).get_column("score").to_numpy()
        assert len(campaign) > 20 and len(genuine) > 1_000
        return float((campaign > np.quantile(genuine, 0.99)).mean())


def _cli(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")}
    base |= {"FRAUD_PATHS__MODELS_DIR": str(root / "models"), "FRAUD_PATHS__DATA_DIR": str(root / "data"),
             "FRAUD_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1", **RETRAIN, **env}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "fraudpipe", *args], cwd=root, env=base, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Stream:
    root = tmp_path_factory.mktemp("retrain")
    factories.register_champion(root / "models", preset="handbook")  # it never saw card testing
    stream = Stream(root)
    start = stream.truth.get_column("event_time").min()
    assert isinstance(start, datetime)
    stream.serve_until(datetime.combine(start.date(), datetime.min.time(), UTC) + timedelta(days=SPLIT_DAY))
    return stream


def test_a_worse_challenger_is_refused_and_the_champion_stays(stream: Stream, tmp_path: Path) -> None:
    registry = Registry(stream.root / "models")
    before = registry.aliases()["champion"]
    result = _cli(stream.root, "retrain", "--json", str(tmp_path / "r.json"), FRAUD_RETRAIN__MARGIN_AP="1.0")
    assert result.returncode == 4, result.stdout + result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert not report["promoted"] and any(r.startswith("ap ") for r in report["refusals"])
    assert registry.aliases()["champion"] == before and registry.aliases()["challenger"] == report["challenger"]
    kept = sorted((stream.root / "models" / "retrain-runs").glob(f"*-{report['challenger']}.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["refusals"] == report["refusals"]  # why, on record
    assert "model event not published" in result.stderr  # no Kafka here: a warning, not a failure


def test_broken_training_data_stops_the_run_before_training(stream: Stream) -> None:
    versions = Registry(stream.root / "models").versions()
    result = _cli(stream.root, "retrain", FRAUD_RETRAIN__MIN_ROWS="10000000")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "failed validation" in result.stdout and "fewer than 10000000" in result.stdout
    assert Registry(stream.root / "models").versions() == versions


def test_retraining_promotes_a_challenger_that_catches_the_new_campaign(stream: Stream, tmp_path: Path) -> None:
    registry = Registry(stream.root / "models")
    first = registry.aliases()["champion"]
    result = _cli(stream.root, "retrain", "--json", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["promoted"] and registry.aliases()["champion"] == report["challenger"] != first
    old, new = report["metrics"]["champion"], report["metrics"]["challenger"]
    assert new["ap"] > old["ap"] and new["cp_at_k"] >= old["cp_at_k"]
    assert new["expected_cost"] <= old["expected_cost"] * 1.05  # the cost gate, each model with its own thresholds
    manifest = registry.manifest(report["challenger"])
    assert manifest.thresholds["chosen_by"] == "expected cost" and manifest.thresholds["cost"]["review_capacity"] == 100
    assert manifest.metrics["policy"]["expected_cost"] == new["expected_cost"]
    assert stream.models.refresh(force=True)  # the worker's hot swap
    first_day = stream.truth.get_column("event_time").min().date()  # type: ignore[union-attr]
    split = datetime.combine(first_day, datetime.min.time(), UTC) + timedelta(days=SPLIT_DAY)
    stream.serve_until(split + timedelta(days=DAYS))
    before = stream.campaign_recall(split - timedelta(days=8), split, first)
    after = stream.campaign_recall(split, split + timedelta(days=DAYS), report["challenger"])
    print(f"\ncampaign recall at 1 % FPR: {before:.3f} under {first}, {after:.3f} under {report['challenger']}")
    assert before < 0.5 and after >= before + 0.3


def test_gate_and_validation_rules() -> None:
    rules = RetrainSettings(margin_ap=0.01, margin_cp=0.0, max_drop=0.02, min_rows=3, min_frauds=1, max_fraud_rate=0.5)
    champion = {"ap": 0.50, "cp_at_k": 0.20, "auc": 0.90, "recall_at_1pct_fpr": 0.60}
    assert gate(champion, {**champion, "ap": 0.52, "cp_at_k": 0.21}, rules) == []
    assert gate(champion, {**champion, "ap": 0.505}, rules)[0].startswith("ap 0.5050 does not beat")
    assert any(r.startswith("auc collapses") for r in gate(champion, {**champion, "ap": 0.6, "auc": 0.85}, rules))
    assert gate(champion, {**champion, "ap": None}, rules) == ["ap not measurable on the holdout"]
    priced, better = {**champion, "expected_cost": 1_000.0}, {**champion, "ap": 0.52, "cp_at_k": 0.21}
    assert (
        gate(priced, {**better, "expected_cost": 1_049.0}, rules.model_copy(update={"max_cost_increase": 0.05})) == []
    )
    (refusal,) = gate(
        priced, {**better, "expected_cost": 1_100.0}, rules.model_copy(update={"max_cost_increase": 0.05})
    )
    assert refusal == "expected cost 1,100.00 exceeds the champion's 1,000.00 by more than 5%"
    assert gate(priced, {**better, "expected_cost": 9e9}, rules.model_copy(update={"max_cost_increase": None})) == []
    frame = pl.DataFrame({"txn_id": ["a", "b", "c", "d"], "card_token": ["x"] * 4,
                          "event_time": [datetime(2024, 1, 1, tzinfo=UTC)] * 4,
                          "is_fraud": [True, False, False, False], "fraud_scenario": [None] * 4}
                         ).with_columns([pl.lit(1.0).alias(name) for name in FEATURE_NAMES])  # fmt: skip
    assert validate(frame, None, rules) == []
    broken = frame.with_columns(amount=pl.Series([np.inf, 1.0, 2.0, 3.0]))
    assert validate(broken, None, rules) == ["amount: infinite values"]
    assert "fraud rate 0.2500 outside" in validate(frame, None, RetrainSettings(max_fraud_rate=0.2, min_rows=1,
                                                                               min_frauds=1))[0]  # fmt: skip


def test_served_rows_take_the_latest_label_known_and_skip_degraded_decisions() -> None:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    base = {f"f_{name}": 1.0 for name in FEATURE_NAMES}
    decisions = pl.DataFrame([
        {"txn_id": "a", "card_token": "x", "event_time": t0, "decided_at": t0, "score": 0.1, **base},
        {"txn_id": "b", "card_token": "x", "event_time": t0, "decided_at": t0, "score": None, **base},
        {"txn_id": "c", "card_token": "y", "event_time": t0, "decided_at": t0, "score": 0.9, **base},
    ])  # fmt: skip
    labels = pl.DataFrame([
        {"txn_id": "a", "is_fraud": True, "known_at": t0 + timedelta(days=1), "label_version": 1},
        {"txn_id": "a", "is_fraud": False, "known_at": t0 + timedelta(days=2), "label_version": 2},
        {"txn_id": "c", "is_fraud": True, "known_at": t0 + timedelta(days=9), "label_version": 1},
    ])  # fmt: skip
    rows = served_rows(decisions, labels, t0 + timedelta(days=5))
    assert rows.get_column("txn_id").to_list() == ["a", "c"]
    assert rows.get_column("is_fraud").to_list() == [False, False]  # a overturned; c's label not known yet
    assert rows.select(FEATURE_NAMES).columns == list(FEATURE_NAMES)
