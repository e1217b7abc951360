"""Model cards: every version ``fraudpipe train`` and ``fraudpipe retrain`` register has one, with metrics per
segment when segments are at hand; ``fraudpipe model card`` shows it, or renders one for an older version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from features.definitions import FEATURE_NAMES
from models.card import render_card
from models.registry import CARD_FILE, Registry
from tests.model.conftest import FAST, TRAIN_START, run_cli


def _section(card: str, heading: str) -> list[list[str]]:
    """The cells of the Markdown table under ``heading``, header and rule left out."""
    lines = card[card.index(heading) :].splitlines()[1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_a_trained_version_has_a_card_with_metrics_per_segment(trained_sim: Path, small_sim: Path) -> None:
    registry = Registry(trained_sim)
    (version,) = registry.versions()
    card = (trained_sim / "versions" / version / CARD_FILE).read_text()
    manifest = registry.manifest(version)
    for heading in ("## Intended use", "## Out of scope", "## Training data", "## Features (43)", "## Metrics (",
                    "## Metrics per segment", "## Fairness summary", "## Known limitations"):  # fmt: skip
        assert heading in card
    assert all(f"`{name}`" in card for name in FEATURE_NAMES)
    cost = manifest.thresholds["cost"]
    assert "chosen on validation for the least expected cost" in card
    assert f"at most {cost['review_capacity']:,} reviews a day" in card
    saving = manifest.metrics["policy"]["saving_vs_rules_only"]
    assert f"| saving against the rules alone | {saving:.4f} |" in card
    train = manifest.windows["train"]
    assert f"| train | {train['from']} | {train['to']} | {train['transactions']:,} | {train['frauds']:,} |" in card
    assert str(TRAIN_START) == train["from"]
    customers = pl.read_parquet(small_sim / "customers.parquet")
    n, frauds = manifest.metrics["n_test"], manifest.metrics["n_test_fraud"]
    for column in ("home_country", "age_band"):
        rows = _section(card, f"### {column} (reference")
        everything, segments = rows[0], rows[1:]
        assert everything[0] == "all" and everything[7] == f"{manifest.metrics['auc']:.4f}"
        values = {row[0].removesuffix(" (reference)").removesuffix(" ⚑") for row in segments}
        assert values == set(customers.get_column(column).unique())  # every validation card has its segment
        assert sum(_number(row[1]) for row in segments) == n and sum(_number(row[2]) for row in segments) == frauds
        assert sum(row[0].endswith("(reference)") for row in segments) == 1
    assert "ratios outside the bound" in card or "No ratio outside the bound" in card
    assert registry.load(version).version == version  # the card is beside the model, not part of what is verified


def test_model_card_prints_the_card_or_renders_one_for_an_older_version(trained_sim: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(trained_sim, models)
    stored = (models / "versions" / "v0001" / CARD_FILE).read_text()
    shown = run_cli("model", "card", "champion", cwd=tmp_path, FRAUD_PATHS__MODELS_DIR=str(models))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == stored
    (models / "versions" / "v0001" / CARD_FILE).unlink()  # as a version registered before cards
    older = run_cli("model", "card", "v0001", "--out", str(tmp_path / "cards" / "v0001.md"), cwd=tmp_path,
                    FRAUD_PATHS__MODELS_DIR=str(models))  # fmt: skip
    assert older.returncode == 0, older.stderr
    rendered = (tmp_path / "cards" / "v0001.md").read_text()
    assert "No segment data supplied" in rendered and "## Training data" in rendered
    assert rendered.split("## Metrics per segment")[0] == stored.split("## Metrics per segment")[0]
    missing = run_cli("model", "card", "v0042", cwd=tmp_path, FRAUD_PATHS__MODELS_DIR=str(models))
    assert missing.returncode == 1 and "unknown model version 'v0042'" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "Traceback" not in missing.stderr


def test_train_takes_the_segments_setting_over_the_folders_customers(small_sim: Path, tmp_path: Path) -> None:
    customers = pl.read_parquet(small_sim / "customers.parquet")
    table = tmp_path / "segments.csv"
    customers.select("card_token", tier=pl.when(pl.col("tx_per_day") >= 2).then(pl.lit("busy"))
                     .otherwise(pl.lit("calm"))).write_csv(table)  # fmt: skip
    models = tmp_path / "models"
    result = run_cli(
        "train", str(small_sim), "--train-start", str(TRAIN_START), "--rounds", str(FAST.rounds),
        "--learning-rate", str(FAST.learning_rate), cwd=tmp_path, FRAUD_PATHS__MODELS_DIR=str(models),
        FRAUD_TRAINING__MIN_DATA_IN_LEAF=str(FAST.min_data_in_leaf), FRAUD_GOVERNANCE__SEGMENTS_PATH=str(table),
        FRAUD_GOVERNANCE__SEGMENT_COLUMNS='["tier", "home_country"]',
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"warning: segment table {table} has no column home_country" in result.stderr
    card = Registry(models).card("v0001")
    assert "### tier (reference" in card and "### home_country" not in card and f"`{table}`" in card
    assert [row[0].split(" ")[0] for row in _section(card, "### tier")] == ["all", "busy", "calm"]


def test_retrain_cards_its_challenger_per_segment_on_the_holdout(served_sim: Path, trained_sim: Path,
                                                                 small_sim: Path, tmp_path: Path) -> None:  # fmt: skip
    models = tmp_path / "models"
    shutil.copytree(trained_sim, models)
    result = run_cli(
        "retrain", cwd=tmp_path, FRAUD_PATHS__MODELS_DIR=str(models), FRAUD_PATHS__DATA_DIR=str(served_sim),
        FRAUD_GOVERNANCE__SEGMENTS_PATH=str(small_sim / "customers.parquet"), FRAUD_MONITOR__MATURITY_DAYS="3",
        FRAUD_RETRAIN__TRAIN_DAYS="7", FRAUD_RETRAIN__VALID_DAYS="3", FRAUD_RETRAIN__HOLDOUT_DAYS="4",
        FRAUD_RETRAIN__MIN_ROWS="2000", FRAUD_TRAINING__ROUNDS=str(FAST.rounds),
        FRAUD_TRAINING__MIN_DATA_IN_LEAF=str(FAST.min_data_in_leaf), FRAUD_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:1",
    )  # fmt: skip
    assert result.returncode in (0, 4), result.stdout + result.stderr  # promoted or not: registered either way
    registry = Registry(models)
    challenger = registry.aliases()["challenger"]
    assert challenger == "v0002"
    card = registry.card(challenger)
    holdout = registry.manifest(challenger).windows["holdout"]
    assert f"| holdout | {holdout['from']} | {holdout['to']} |" in card and "## Metrics (holdout window)" in card
    assert "On the holdout window" in card and "### home_country (reference" in card
    rows = _section(card, "### age_band")
    assert sum(_number(row[1]) for row in rows[1:]) == holdout["transactions"]


def test_the_gate_refuses_a_challenger_whose_disparity_leaves_the_bound(
    served_sim: Path, trained_sim: Path, small_sim: Path, tmp_path: Path
) -> None:
    """With the gate on false-positive-rate and recall ratios, a band as narrow as [0.99, 1.01] and an interval as
    narrow as its point (confidence 1 %), the challenger's segments on the holdout refuse it: exit code 4, each
    reason in the verdict; the same run without the gate has no fairness reason, and one with the gate but no
    segment table is refused for it."""
    runs = {}
    table = str(small_sim / "customers.parquet")
    for name, gate, segments in (("gated", '["fpr", "recall"]', table), ("open", "[]", table),
                                 ("unsegmented", '["fpr"]', "")):  # fmt: skip
        models = tmp_path / name / "models"
        shutil.copytree(trained_sim, models)
        result = run_cli(
            "retrain", "--json", str(tmp_path / f"{name}.json"), cwd=tmp_path, FRAUD_PATHS__MODELS_DIR=str(models),
            FRAUD_PATHS__DATA_DIR=str(served_sim), FRAUD_GOVERNANCE__SEGMENTS_PATH=segments,
            FRAUD_GOVERNANCE__GATE_RATIOS=gate, FRAUD_GOVERNANCE__DISPARITY_BOUND="0.99",
            FRAUD_GOVERNANCE__MIN_SEGMENT_DECISIONS="50", FRAUD_GOVERNANCE__MIN_SEGMENT_FRAUDS="1",
            FRAUD_GOVERNANCE__MIN_SEGMENT_FALSE_POSITIVES="1", FRAUD_GOVERNANCE__BREACH_CONFIDENCE="0.01",
            FRAUD_MONITOR__MATURITY_DAYS="3",
            FRAUD_RETRAIN__TRAIN_DAYS="7", FRAUD_RETRAIN__VALID_DAYS="3", FRAUD_RETRAIN__HOLDOUT_DAYS="4",
            FRAUD_RETRAIN__MIN_ROWS="2000", FRAUD_TRAINING__ROUNDS=str(FAST.rounds),
            FRAUD_TRAINING__MIN_DATA_IN_LEAF=str(FAST.min_data_in_leaf), FRAUD_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:1",
        )  # fmt: skip
        runs[name] = (result, json.loads((tmp_path / f"{name}.json").read_text()))
    result, gated = runs["gated"]
    fairness = [r for r in gated["refusals"] if r.startswith("fairness: ")]
    assert result.returncode == 4 and fairness and not gated["promoted"], result.stdout + result.stderr
    assert "outside [0.99, 1.01] on the holdout" in fairness[0] and fairness[0] in result.stdout
    assert Registry(tmp_path / "gated" / "models").aliases()["champion"] == "v0001"
    assert not [r for r in runs["open"][1]["refusals"] if r.startswith("fairness: ")]
    result, unsegmented = runs["unsegmented"]  # a gate asked for and not judged refuses: it never passes silently
    assert result.returncode == 4 and any(r.startswith("fairness: not judged") for r in unsegmented["refusals"])


def test_a_card_says_when_no_segment_data_was_supplied(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, len(FEATURE_NAMES)))
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1},
                        lgb.Dataset(x, (x[:, 0] > 1).astype(int), feature_name=list(FEATURE_NAMES)), 3)  # fmt: skip
    fields = {"params": {}, "rounds": 3, "windows": {}, "metrics": {"auc": 0.5}, "thresholds": {},
              "data_fingerprint": "test", "reference": {}}  # fmt: skip
    registry = Registry(tmp_path / "models")
    manifest = registry.register(booster, fields)
    card = (registry.versions_dir / manifest.version / CARD_FILE).read_text()
    assert card == render_card(manifest)
    assert "No segment data supplied" in card and "Not assessed (no segment data)" in card
    assert "No windows recorded." in card and "No thresholds recorded." in card


@pytest.mark.parametrize("hostile", ["a|b", "line\nbreak"])
def test_card_cells_never_break_the_table(hostile: str, trained_sim: Path) -> None:
    manifest = Registry(trained_sim).manifest("v0001")
    card = render_card(manifest.model_copy(update={"notes": hostile}))
    (row,) = [line for line in card.splitlines() if line.startswith("| notes |")]
    assert row.count("|") - row.count("\\|") == 3


def test_train_under_a_fairness_constraint_records_it_on_the_manifest_and_card(small_sim: Path,
                                                                               tmp_path: Path) -> None:  # fmt: skip
    models = tmp_path / "models"
    common = ("train", str(small_sim), "--train-start", str(TRAIN_START), "--rounds", str(FAST.rounds),
              "--learning-rate", str(FAST.learning_rate))  # fmt: skip
    env = {"FRAUD_PATHS__MODELS_DIR": str(models), "FRAUD_TRAINING__MIN_DATA_IN_LEAF": str(FAST.min_data_in_leaf)}
    result = run_cli(*common, "--fairness-constraint", "false_positive_rate_parity", "--fairness-bound", "0.9",
                     cwd=tmp_path, **env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = Registry(models).manifest("v0001")
    record = manifest.fairness_constraint
    assert (record["kind"], record["column"], record["band"]) == ("false_positive_rate_parity", "home_country",
                                                                   [0.9, 1.1111])  # fmt: skip
    assert manifest.features == list(FEATURE_NAMES)  # the protected column trains, it is never an input
    assert "false_positive_rate_parity on home_country" in result.stdout
    card = Registry(models).card("v0001")
    assert "## Fairness constraint" in card and "| none (baseline) |" in card
    # asked for on a column the segment table does not have: one line, nothing registered
    refused = run_cli(*common, "--fairness-constraint", "equalized_odds", "--fairness-column", "shoe_size",
                      cwd=tmp_path, **env)  # fmt: skip
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "needs a segment table with a 'shoe_size' column" in refused.stderr
    assert Registry(models).versions() == ["v0001"]


def test_retrain_trains_its_challenger_under_the_constraint_the_settings_set(
    served_sim: Path, trained_sim: Path, small_sim: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(trained_sim, models)
    env = dict(
        FRAUD_PATHS__MODELS_DIR=str(models),
        FRAUD_PATHS__DATA_DIR=str(served_sim),
        FRAUD_MONITOR__MATURITY_DAYS="3",
        FRAUD_RETRAIN__TRAIN_DAYS="7",
        FRAUD_RETRAIN__VALID_DAYS="3",
        FRAUD_RETRAIN__HOLDOUT_DAYS="4",
        FRAUD_RETRAIN__MIN_ROWS="2000",
        FRAUD_TRAINING__ROUNDS=str(FAST.rounds),
        FRAUD_TRAINING__MIN_DATA_IN_LEAF=str(FAST.min_data_in_leaf),
        FRAUD_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:1",
        FRAUD_GOVERNANCE__FAIRNESS_CONSTRAINT="equalized_odds",
    )
    unsegmented = run_cli("retrain", cwd=tmp_path, **env)  # no segment table to train under it: one line, nothing
    assert unsegmented.returncode == 1 and "Traceback" not in unsegmented.stderr
    assert "needs a segment table with a 'home_country' column" in unsegmented.stderr
    assert Registry(models).versions() == ["v0001"]
    result = run_cli("retrain", cwd=tmp_path, FRAUD_GOVERNANCE__SEGMENTS_PATH=str(small_sim / "customers.parquet"),
                     **env)  # fmt: skip
    assert result.returncode in (0, 4), result.stdout + result.stderr
    manifest = Registry(models).manifest("v0002")
    record = manifest.fairness_constraint
    assert record["kind"] == "equalized_odds" and record["column"] == "home_country"
    assert set(record["baseline"]["ratios"]) == {"fpr", "recall"}
    assert manifest.features == list(FEATURE_NAMES)
    assert "## Fairness constraint" in Registry(models).card("v0002")
