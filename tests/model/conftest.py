"""A small simulated history shared by the model tests: written once per session, read like any user's folder."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest

from features.definitions import FEATURE_NAMES
from fraudpipe.logstore import DayLog
from fraudpipe.settings import TrainingSettings
from models.dataset import History, load_history
from models.protocol import Windows
from models.registry import Registry
from models.scorer import Policy, Scorer
from models.train import feature_rows, matrix
from tests import factories

KEY = b"model-tests-tokenization-key-000"
WINDOWS = Windows(train_start=date(2018, 4, 15), train_days=14, delay_days=7, test_days=7)
"""Training from day 15 (two weeks of history before it), a week's gap, a week of validation or test."""
FAST = TrainingSettings(rounds=40, learning_rate=0.1, min_data_in_leaf=20)
"""Small and quick; the quality bar is measured on the handbook preset, not here."""


@pytest.fixture(scope="session")
def small_sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """43 days of the default preset (every scenario), 1,000 cards and 2,000 terminals, as a simulator folder."""
    return factories.simulated_folder(
        tmp_path_factory.mktemp("sim"), days=43, customers=1_000, terminals=2_000, seed=3, key=KEY
    )


@pytest.fixture(scope="session")
def small_history(small_sim: Path) -> History:
    return load_history(small_sim, {}, key=KEY)


def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m fraudpipe ARGS`` in a fresh interpreter, as users run it: no FRAUD_ variable but ``env``'s."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")}
    return subprocess.run([sys.executable, "-m", "fraudpipe", *args], cwd=cwd, env=clean | env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


TRAIN_START, SERVED_FROM = date(2018, 4, 8), date(2018, 4, 22)
"""``trained_sim`` trains on 14 days from TRAIN_START (then a 7-day gap, a 7-day validation window); ``served_sim``
serves the days from SERVED_FROM (after the training window) to the end of ``small_sim``."""


@pytest.fixture(scope="session")
def trained_sim(small_sim: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir whose champion ``fraudpipe train`` registered on ``small_sim`` (its customers.parquet at hand)."""
    models = tmp_path_factory.mktemp("trained") / "models"
    result = run_cli(
        "train", str(small_sim), "--train-start", str(TRAIN_START), "--train-days", "14", "--promote",
        "--rounds", str(FAST.rounds), "--learning-rate", str(FAST.learning_rate),
        cwd=models.parent, FRAUD_PATHS__MODELS_DIR=str(models),
        FRAUD_TRAINING__MIN_DATA_IN_LEAF=str(FAST.min_data_in_leaf),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return models


@pytest.fixture(scope="session")
def served_sim(small_history: History, trained_sim: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir as the worker leaves it after serving ``small_sim`` from SERVED_FROM with ``trained_sim``'s
    champion: the decision log (features computed offline — the online store's twin —, scores, the serving policy's
    decisions) and the label log (every simulated label). Returns the data dir."""
    data = tmp_path_factory.mktemp("served") / "data"
    model = Registry(trained_sim).load("champion")
    rows = feature_rows(small_history, (SERVED_FROM, small_history.days[1] + timedelta(days=1)), small_history.labels)
    inputs = matrix(rows)
    scores = Scorer(model).score(inputs)
    thresholds = model.manifest.thresholds
    decided = Policy(thresholds["review"], thresholds["decline"]).decide(scores, inputs)
    amounts = small_history.transactions.select("txn_id", "amount", "currency")
    decisions = (
        rows.join(amounts, on="txn_id", how="left", maintain_order="left")
        .select(
            "txn_id", "card_token", "event_time",
            "amount", "currency", decided_at=pl.col("event_time") + timedelta(milliseconds=12),
            model_version=pl.lit(model.version), model_sha256=pl.lit(model.sha256), score=pl.Series(scores),
            decision=pl.Series(decided), review_threshold=pl.lit(thresholds["review"]),
            decline_threshold=pl.lit(thresholds["decline"]), degraded=pl.lit(False), latency_ms=pl.lit(12.0),
            reason_codes=pl.lit("[]"), **{f"f_{name}": pl.col(name) for name in FEATURE_NAMES},
        )
    )  # fmt: skip
    DayLog(data / "decisions", "event_time").append(decisions)
    DayLog(data / "labels", "event_time").append(small_history.labels)
    return data
