"""Live quality and drift from the decision log and the label store: exact numbers on a hand-made log, then
``fraudpipe monitor`` on decisions a real pipeline took for a simulated stream."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import average_precision_score

from features.definitions import FEATURE_NAMES
from features.memory import InMemoryFeatureStore
from fraudpipe.clock import FixedClock
from fraudpipe.contracts import Transaction
from fraudpipe.logstore import DayLog
from fraudpipe.settings import CostSettings, ScoringSettings, Settings
from fraudpipe.simulator.config import default
from fraudpipe.simulator.generate import TRANSACTION_COLUMNS, simulate
from models.monitor import (
    Window,
    decay_reason,
    decided_money,
    live_drift,
    live_quality,
    retrain_reasons,
    rollback_due,
)
from models.registry import Registry
from streams.demo_report import money_facts
from streams.pipeline import InMemoryDecisionMemory, Models, Pipeline
from tests import factories

D1 = datetime(2024, 5, 1, 10, tzinfo=UTC)


def _decision(txn: str, when: datetime, score: float | None, decision: str, version: str = "v0001",
              card: str = "tok_a", decided: datetime | None = None, amount: float = 10.0,
              rule: str | None = None) -> dict[str, Any]:  # fmt: skip
    reasons = json.dumps([{"kind": "rule", "rule": rule, "value": 1.0, "threshold": 1.0}] if rule else [])
    return {"txn_id": txn, "card_token": card, "event_time": when, "decided_at": decided or when,
            "amount": amount, "model_version": version, "score": score, "decision": decision,
            "review_threshold": 0.5, "decline_threshold": 0.9, "degraded": score is None,
            "reason_codes": reasons}  # fmt: skip


def _label(txn: str, fraud: bool, known: datetime, version: int = 1) -> dict[str, Any]:
    return {"txn_id": txn, "is_fraud": fraud, "known_at": known, "label_version": version}


def test_quality_per_day_and_model_counts_only_labels_known_by_then() -> None:
    d2 = D1 + timedelta(days=1)
    decisions = pl.DataFrame(
        [
            _decision("a", D1, 0.9, "decline", card="tok_1"),
            _decision("a", D1, 0.9, "decline", card="tok_1", decided=D1 + timedelta(seconds=5)),  # a redelivery
            _decision("b", D1, 0.6, "review", card="tok_2"),
            _decision("c", D1, 0.2, "approve", card="tok_3"),
            _decision("d", D1, 0.1, "approve", card="tok_4"),
            _decision("e", D1, None, "review", card="tok_5"),  # degraded: no score
            _decision("f", d2, 0.8, "decline", "v0002", card="tok_6"),
            _decision("g", d2, 0.3, "approve", "v0002", card="tok_7"),
        ]
    )
    as_of = D1 + timedelta(days=40)
    labels = pl.DataFrame(
        [
            _label("a", True, D1 + timedelta(days=3)),
            _label("c", True, D1 + timedelta(days=9)),
            _label("b", True, D1 + timedelta(days=2)),
            _label("b", False, D1 + timedelta(days=6), version=2),  # overturned: genuine after all
            _label("g", True, as_of + timedelta(days=1)),  # not known yet: ignored
        ]
    )
    quality = live_quality(decisions, labels, as_of=as_of, maturity=timedelta(days=38, hours=12), k=2)
    first, second = quality.to_dicts()
    assert (first["day"], first["model_version"], second["day"], second["model_version"]) == (
        date(2024, 5, 1), "v0001", date(2024, 5, 2), "v0002"
    )  # fmt: skip
    assert first["matured"] and not second["matured"]  # as_of is 39 d 10 h after day 1's end, 38 d 10 h after day 2's
    assert (first["decisions"], first["alerts"], first["frauds"], first["caught"]) == (5, 3, 2, 1)
    assert first["alert_rate"] == pytest.approx(3 / 5)
    assert first["precision"] == pytest.approx(1 / 3) and first["recall"] == pytest.approx(1 / 2)
    assert first["label_coverage"] == pytest.approx(3 / 5)
    truth, scores = [1, 0, 1, 0], [0.9, 0.6, 0.2, 0.1]  # a, b, c, d (e has no score)
    assert first["ap"] == pytest.approx(average_precision_score(truth, scores))
    assert first["cp_at_k"] == pytest.approx(1 / 2)  # top 2 cards by score: tok_1 (fraud), tok_2 (not)
    assert (second["decisions"], second["frauds"], second["recall"], second["ap"]) == (2, 0, None, None)


def test_monitor_json_adds_up_the_money_of_a_hand_made_log(tmp_path: Path) -> None:
    # A missed fraud costs its amount + 10, a review 5, a false decline its whole amount (the cost settings below).
    decisions = [
        _decision("a", D1, 0.9, "decline", card="tok_1", amount=100.0),  # fraud, the model's alert: caught
        _decision("b", D1, 0.6, "review", card="tok_2", amount=50.0),  # genuine, the model's alert: a review (5)
        _decision("c", D1, 0.2, "review", card="tok_3", amount=80.0, rule="known_fraud_30d"),  # fraud, a rule's
        _decision("d", D1, 0.1, "approve", card="tok_4", amount=20.0),  # fraud, missed: 20 + 10
        _decision("e", D1, 0.95, "decline", card="tok_5", amount=30.0, rule="card_blocked"),  # genuine: 30
        _decision("f", D1, 0.3, "approve", card="tok_6", amount=40.0),  # genuine, approved: nothing
    ]
    DayLog(tmp_path / "data" / "decisions", "event_time").append(pl.DataFrame(decisions))
    labels = [{**_label(txn, True, D1 + timedelta(hours=2)), "event_time": D1} for txn in "acd"]
    DayLog(tmp_path / "data" / "labels", "event_time").append(pl.DataFrame(labels))
    (tmp_path / "models").mkdir()
    out = tmp_path / "monitor.json"
    costs = {"FRAUD_COST__CHARGEBACK_FEE": "10", "FRAUD_COST__REVIEW_COST": "5",
             "FRAUD_COST__FALSE_DECLINE_SHARE": "1.0", "FRAUD_COST__REVIEW_CAPACITY": "4"}  # fmt: skip
    result = _monitor(tmp_path, "--as-of", (D1 + timedelta(days=10)).isoformat(), "--json", str(out), **costs)
    assert result.returncode == 0, result.stderr
    (day,) = json.loads(out.read_text())["quality"]
    assert (day["decisions"], day["alerts"], day["model_alerts"], day["rule_alerts"], day["blocked_declines"]) == (
        6, 3, 2, 1, 1
    )  # fmt: skip
    assert (day["frauds"], day["caught"], day["reviews"], day["review_capacity"]) == (3, 2, 2, 4)
    assert day["precision"] == pytest.approx(2 / 3) and day["model_precision"] == pytest.approx(1 / 2)
    assert day["recall"] == pytest.approx(2 / 3) and day["alert_rate"] == pytest.approx(3 / 6)
    assert (day["fraud_amount"], day["fraud_amount_caught"], day["fraud_amount_missed"]) == (200, 180, 20)
    assert day["amount_recall"] == pytest.approx(0.9)
    assert (day["false_declines"], day["false_decline_amount"]) == (1, 30)
    assert day["expected_cost"] == pytest.approx(5 + 5 + 30 + 30)
    # the rules alone: the blocked card declined (30), the rule's review (5), a and d missed (110 + 30)
    assert day["rules_only_cost"] == pytest.approx(175) and day["saving_vs_rules_only"] == pytest.approx(1 - 70 / 175)
    assert "saving against the rules alone" in result.stdout
    # the demo judges its run against the simulation's truth the same way (a transaction missing there: genuine)
    truth = pl.DataFrame({"txn_id": ["a", "c", "d"], "is_fraud": [True, True, True]})
    cost = CostSettings(chargeback_fee=10, review_cost=5, false_decline_share=1.0, review_capacity=4)
    money = decided_money(pl.DataFrame(decisions), truth, cost)
    assert {name: money[name] for name in ("expected_cost", "rules_only_cost", "alerts", "blocked_declines")} == {
        "expected_cost": 70, "rules_only_cost": 175, "alerts": 3, "blocked_declines": 1
    }  # fmt: skip
    assert money_facts(money)["saving against the rules alone"] == "60.0%"
    # the gauges the dashboard and Grafana draw: the same figures, the latest matured day per model
    from prometheus_client import REGISTRY

    from cli.monitoring import _monitor_once

    settings = Settings(_env_file=None, paths={"models_dir": tmp_path / "models", "data_dir": tmp_path / "data"},
                        cost=cost, monitor={"maturity_days": 3})  # fmt: skip
    _monitor_once(settings, (D1 + timedelta(days=10)).isoformat(), 30, None)
    for metric, value in (("saving_vs_rules_only", 0.6), ("fraud_amount_missed", 20), ("false_declines", 1),
                          ("reviews", 2), ("review_capacity", 4), ("expected_cost", 70)):  # fmt: skip
        labels = {"model_version": "v0001", "metric": metric}
        assert REGISTRY.get_sample_value("fraudpipe_live_quality", labels) == pytest.approx(value), metric


def test_monitor_watches_each_segments_false_positive_rate_ratio_of_matured_decisions(tmp_path: Path) -> None:
    """Genuine payments only (no label: genuine once matured). north: 40 of 400 alerted, FPR 0.1; south: 200 of
    400, FPR 0.5 — a ratio of 5 to north (the reference: as large, first by name), clearly outside [0.8, 1.25];
    west: 52 of 400, a ratio of 1.3 — outside, but within what ~50 false positives vary by: not a breach."""
    alerted = {"north": 40, "south": 200, "west": 52}
    decisions = [_decision(f"{region}{i}", D1, 0.6 if i < n else 0.1, "review" if i < n else "approve",
                           card=f"tok_{region}{i}") for region, n in alerted.items() for i in range(400)]  # fmt: skip
    DayLog(tmp_path / "data" / "decisions", "event_time").append(pl.DataFrame(decisions))
    (tmp_path / "models").mkdir()
    table = tmp_path / "segments.csv"
    table.write_text("card_token,region\n" + "".join(f"tok_{r}{i},{r}\n" for r in alerted for i in range(400)))
    from prometheus_client import REGISTRY

    from cli.monitoring import _monitor_once

    def watch(**governance: Any) -> dict[str, float | None]:
        settings = Settings(_env_file=None, paths={"models_dir": tmp_path / "models", "data_dir": tmp_path / "data"},
                            monitor={"maturity_days": 3}, governance=governance)  # fmt: skip
        _monitor_once(settings, (D1 + timedelta(days=10)).isoformat(), 30, None)
        ratio = {s: REGISTRY.get_sample_value("fraudpipe_segment_fpr_ratio", {"column": "region", "segment": s})
                 for s in alerted}  # fmt: skip
        return {**ratio, "breaches": REGISTRY.get_sample_value("fraudpipe_fairness_breaches", {"column": "region"})}

    judged = {"segments_path": table, "segment_columns": ["region"]}
    assert watch(**judged) == {"north": 1.0, "south": 5.0, "west": 1.3, "breaches": 1.0}
    assert watch(**judged, min_segment_false_positives=41)["breaches"] == 0.0  # north's 40: too few to judge by
    assert watch()["breaches"] is None and watch()["south"] is None  # no segment table: no reassuring 0


def test_maturity_is_measured_from_the_end_of_the_day() -> None:
    decisions = pl.DataFrame([_decision("a", D1, 0.5, "approve")])
    empty = pl.DataFrame(schema={"txn_id": pl.String, "is_fraud": pl.Boolean, "known_at": pl.Datetime("us", "UTC"),
                                 "label_version": pl.Int64})  # fmt: skip
    day_end = datetime(2024, 5, 2, tzinfo=UTC)
    for as_of, matured in (
        (day_end + timedelta(days=7) - timedelta(seconds=1), False),
        (day_end + timedelta(days=7), True),
    ):
        row = live_quality(decisions, empty, as_of=as_of, maturity=timedelta(days=7)).row(0, named=True)
        assert row["matured"] is matured and row["label_coverage"] == 0.0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A data dir with the decision log a real pipeline wrote for 10 simulated days, and the label store."""
    root = tmp_path_factory.mktemp("monitor")
    version = factories.register_champion(root / "models")
    _, days = simulate(default(days=10, customers=300, terminals=600, seed=3), b"monitor-test-key-monitor-test-00")
    run = list(days)
    frame = pl.concat([d.transactions for d in run])
    fields = [c for c in TRANSACTION_COLUMNS if c not in {"is_fraud", "fraud_scenario"}]
    txns = [Transaction(**row) for row in frame.select(fields).iter_rows(named=True)]
    clock = FixedClock(datetime(2026, 11, 1, tzinfo=UTC))
    models = Models(Registry(root / "models"), "champion", threads=1, poll_s=600, clock=clock)
    models.start()
    pipeline = Pipeline(InMemoryFeatureStore(), InMemoryDecisionMemory(), models, ScoringSettings(), clock)
    log = DayLog(root / "data" / "decisions", "event_time")
    for i in range(0, len(txns), 500):
        batch = pipeline.score(txns[i : i + 500], [0.0] * len(txns[i : i + 500]))
        log.append(batch.log_rows)
    labels = pl.concat([d.labels for d in run])
    DayLog(root / "data" / "labels", "event_time").append(labels)
    return root, root / "data", version


def _monitor(root: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")}
    env |= {"FRAUD_PATHS__MODELS_DIR": str(root / "models"), "FRAUD_PATHS__DATA_DIR": str(root / "data"),
            "FRAUD_MONITOR__MATURITY_DAYS": "3", "FRAUD_MONITOR__DRIFT_WINDOW_HOURS": "48", **extra}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "fraudpipe", "monitor", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_monitor_reports_matured_quality_and_drift_of_a_served_stream(served: tuple[Path, Path, str],
                                                                      tmp_path: Path) -> None:  # fmt: skip
    root, _, version = served
    out = tmp_path / "monitor.json"
    result = _monitor(root, "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert f"drift of model {version}" in result.stdout
    report = json.loads(out.read_text())
    matured = [row for row in report["quality"] if row["matured"]]
    assert len(matured) >= 5 and {row["model_version"] for row in matured} == {version}
    assert sum(row["frauds"] for row in matured) > 0
    assert sum(row["caught"] for row in matured) > 0  # the champion catches some of the stream's frauds
    assert all(0 <= row["alert_rate"] <= 1 and row["label_coverage"] <= 1 for row in report["quality"])
    (drift,) = report["drift"]
    assert drift["model_version"] == version and drift["decisions"] > 0
    assert [c["name"] for c in drift["columns"]] == ["score", *FEATURE_NAMES]


def test_a_shifted_feature_is_a_breach_and_fails_the_run_when_asked(served: tuple[Path, Path, str]) -> None:
    root, data, version = served
    log = DayLog(data / "decisions", "event_time")
    decisions = log.read()
    registry = Registry(root / "models")
    windows = live_drift(decisions, {version: registry.manifest(version).reference},
                         since=decisions.get_column("decided_at").min())  # fmt: skip
    baseline = {d.name: d.level for d in windows[0].drift}
    shifted = decisions.with_columns(  # later payments, with larger amounts
        pl.col("f_amount") * 20, txn_id=pl.col("txn_id") + "-later", decided_at=pl.col("decided_at") + timedelta(days=3)
    )
    after = live_drift(shifted, {version: registry.manifest(version).reference},
                       since=shifted.get_column("decided_at").min())  # fmt: skip
    assert baseline["amount"] != "breach" and {d.name for d in after[0].breaches} >= {"amount"}
    log.append(shifted)  # served later, with the shift: the drift window sees only these
    result = _monitor(root, "--fail-on-breach")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "amount" in result.stdout
    assert np.isfinite([d.psi for d in after[0].drift]).all()


def test_monitor_without_decisions_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    result = _monitor(tmp_path)
    assert result.returncode != 0 and "no decisions" in result.stderr and "Traceback" not in result.stderr


def test_a_champion_whose_matured_ap_falls_is_rolled_back_automatically(tmp_path: Path) -> None:
    first = factories.register_champion(tmp_path / "models", seed=0)
    second = factories.register_champion(tmp_path / "models", seed=1)  # promoted over the first
    rng = np.random.default_rng(7)
    rows, labels = [], []
    for day in range(8):  # the first served 4 days and ranked frauds well; the second ranks them at random
        version = first if day < 4 else second
        for i in range(200):
            fraud = i < 10
            score = (0.6 + 0.4 * rng.random()) if fraud and version == first else rng.random() * 0.7
            txn = f"d{day}-{i}"
            when = D1 + timedelta(days=day, minutes=i)
            served = {f"f_{name}": 1.0 for name in FEATURE_NAMES}
            rows.append({**_decision(txn, when, score, "approve", version, card=f"tok_{i}"), **served})
            if fraud:
                labels.append({**_label(txn, True, when + timedelta(hours=1)), "event_time": when})
    DayLog(tmp_path / "data" / "decisions", "event_time").append(pl.DataFrame(rows))
    DayLog(tmp_path / "data" / "labels", "event_time").append(pl.DataFrame(labels))
    quiet = _monitor(tmp_path, "--as-of", (D1 + timedelta(days=10)).isoformat())
    assert quiet.returncode == 0, quiet.stderr
    assert Registry(tmp_path / "models").aliases()["champion"] == second  # rollback is off unless configured
    env = {"FRAUD_MONITOR__ROLLBACK_MARGIN_AP": "0.1", "FRAUD_MONITOR__MATURITY_DAYS": "1",
           "FRAUD_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}  # fmt: skip
    result = _monitor(tmp_path, "--as-of", (D1 + timedelta(days=10)).isoformat(), **env)
    assert result.returncode == 0, result.stderr
    assert f"rolled the champion back from {second} to {first}" in result.stdout
    registry = Registry(tmp_path / "models")
    assert registry.aliases()["champion"] == first
    assert registry.history()[-1]["why"].startswith("automatic rollback: matured AP of")
    again = _monitor(tmp_path, "--as-of", (D1 + timedelta(days=10)).isoformat(), **env)
    assert again.returncode == 0 and "rolled" not in again.stdout  # a rollback is never undone automatically


def test_decay_is_the_recent_matured_ap_below_validation() -> None:
    quality = pl.DataFrame(
        {"day": [date(2024, 5, d) for d in (1, 2, 3, 4)], "model_version": ["v0002"] * 4,
         "matured": [True, True, True, False], "ap": [0.70, 0.40, 0.45, 0.10]}
    )  # fmt: skip
    assert decay_reason(quality, "v0002", 0.72, days=3, max_drop=0.25) is None  # mean 0.517: within 0.25
    reason = decay_reason(quality, "v0002", 0.72, days=2, max_drop=0.2)  # 0.425 over the last two matured days
    assert reason is not None and "0.4250 over its last 2 days" in reason
    assert decay_reason(quality, "v0002", 0.72, days=4, max_drop=0.0) is None  # not enough matured days
    assert decay_reason(quality, "v0002", None, days=1, max_drop=0.0) is None


def test_only_a_promotion_is_rolled_back_and_only_when_its_matured_ap_fell() -> None:
    quality = pl.DataFrame(
        {"day": [date(2024, 5, d) for d in (1, 2, 3, 4)], "model_version": ["v0001", "v0001", "v0002", "v0002"],
         "matured": [True] * 4, "ap": [0.70, 0.72, 0.40, 0.45]}
    )  # fmt: skip
    promoted = [{"alias": "champion", "action": "promote", "version": "v0001", "previous": None},
                {"alias": "challenger", "action": "promote", "version": "v0002", "previous": None},
                {"alias": "champion", "action": "promote", "version": "v0002", "previous": "v0001"}]  # fmt: skip
    due = rollback_due(promoted, quality, margin=0.05, min_days=2)
    assert due is not None and due[:2] == ("v0002", "v0001") and "below v0001's 0.7100" in due[2]
    assert rollback_due(promoted, quality, margin=0.4, min_days=2) is None  # within the margin
    assert rollback_due(promoted, quality, margin=0.05, min_days=3) is None  # too few matured days to judge
    rolled = [*promoted, {"alias": "champion", "action": "rollback", "version": "v0001", "previous": "v0002"}]
    assert rollback_due(rolled, quality, margin=0.05, min_days=2) is None  # never undone, never twice
    assert rollback_due(promoted[:1], quality, margin=0.05, min_days=2) is None  # nothing before the first


def test_retraining_is_called_for_by_a_breach_or_decay_of_the_champion_alone() -> None:
    from models.drift import Drift

    quality = pl.DataFrame({"day": [date(2024, 5, 1)], "model_version": ["v0002"], "matured": [True], "ap": [0.3]})
    breach = Drift("amount", 0.4, 0.3, "breach")
    windows = [Window("v0001", 900, [breach]), Window("v0002", 900, [])]
    assert retrain_reasons("v0002", windows, quality, 0.35, days=1, max_drop=0.1) == []
    assert retrain_reasons("v0001", windows, quality, None, days=1, max_drop=0.1) == [
        "drift breach for champion v0001 (amount)"
    ]
    (decay,) = retrain_reasons("v0002", windows, quality, 0.6, days=1, max_drop=0.1)
    assert decay.startswith("decay: matured AP of v0002 is 0.3000")


def _replayed_day(root: Path, history: Any, day: date, booster: Any, version: str) -> None:
    """The decision log of one day of ``history`` served live by ``version`` (features as the stream computes them:
    the offline builder, held equal to the online store by the parity tests; decided as they happen)."""
    from models.train import feature_rows, matrix

    rows = feature_rows(history, (day, day + timedelta(days=1)), history.labels)
    scores = booster.predict(matrix(rows))
    log = rows.select(
        "txn_id", "card_token", "event_time", pl.col("event_time").alias("decided_at"), "amount",
        pl.lit(version).alias("model_version"), pl.Series("score", scores),
        pl.when(pl.Series(scores) >= 0.5).then(pl.lit("review")).otherwise(pl.lit("approve")).alias("decision"),
        pl.lit(0.5).alias("review_threshold"), pl.lit(0.9).alias("decline_threshold"), pl.lit(False).alias("degraded"),
        pl.lit("[]").alias("reason_codes"),
        *[pl.col(name).alias(f"f_{name}") for name in FEATURE_NAMES],
    )  # fmt: skip
    DayLog(root / "data" / "decisions", "event_time").append(log)


def test_a_stable_day_raises_no_breach_and_a_drift_campaign_does(tmp_path: Path) -> None:
    from fraudpipe.settings import TrainingSettings
    from fraudpipe.simulator.config import DriftCampaign
    from models.dataset import History
    from models.protocol import Windows
    from models.train import train_version

    def history(**extra: Any) -> History:
        config = default(days=56, customers=1_500, terminals=3_000, seed=5, **extra)
        run = list(simulate(config, b"drift-test-tokenization-key-0000")[1])
        return History(pl.concat([d.transactions for d in run]), pl.concat([d.labels for d in run]), 0)

    stable = history()
    first = date(2018, 4, 1)
    # trained with 30 days of history behind it (full windows), validated (the drift reference) Friday to Monday
    trained = train_version(stable, Windows(first + timedelta(days=30), 14, 3, 4),
                            TrainingSettings(rounds=30, learning_rate=0.1, min_data_in_leaf=20))  # fmt: skip
    registry = Registry(tmp_path / "stable" / "models")
    version = registry.register(trained.fitted.booster, trained.fields).version
    saturday = first + timedelta(days=55)  # 2018-05-26
    assert saturday.weekday() == 5
    campaign = history(drift=DriftCampaign(start_day=54, cards_per_day=150))  # a quarter of the day's payments
    for name, served in (("stable", stable), ("campaign", campaign)):
        root = tmp_path / name
        if name != "stable":
            shutil.copytree(tmp_path / "stable" / "models", root / "models")
        _replayed_day(root, served, saturday, trained.fitted.booster, version)
        DayLog(root / "data" / "labels", "event_time").append(
            pl.DataFrame(schema={"txn_id": pl.String, "is_fraud": pl.Boolean, "known_at": pl.Datetime("us", "UTC"),
                                 "label_version": pl.Int64, "event_time": pl.Datetime("us", "UTC")})
        )  # fmt: skip
    quiet = _monitor(tmp_path / "stable", "--fail-on-breach", "--json", str(tmp_path / "stable.json"),
                     FRAUD_MONITOR__DRIFT_WINDOW_HOURS="24")  # fmt: skip
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert "0 breaches" in quiet.stdout and "calendar features are not judged" in quiet.stdout
    (window,) = json.loads((tmp_path / "stable.json").read_text())["drift"]
    columns = {c["name"]: c for c in window["columns"]}
    assert window["decisions"] >= 2_000  # enough to judge (FRAUD_MONITOR__DRIFT_MIN_DECISIONS)
    assert columns["is_weekend"]["level"] == "calendar" and columns["is_weekend"]["psi"] > 0.25  # a Saturday
    assert not [c for c in columns.values() if c["level"] == "breach"]
    loud = _monitor(tmp_path / "campaign", "--fail-on-breach", FRAUD_MONITOR__DRIFT_WINDOW_HOURS="24")
    assert loud.returncode == 3, loud.stdout + loud.stderr
    too_few = _monitor(tmp_path / "campaign", "--fail-on-breach", FRAUD_MONITOR__DRIFT_WINDOW_HOURS="24",
                       FRAUD_MONITOR__DRIFT_MIN_DECISIONS="100000")  # fmt: skip
    assert too_few.returncode == 0 and "too few to judge" in too_few.stdout
