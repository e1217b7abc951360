"""Training, the scorer and the decision policy on a small simulated history: determinism, early stopping,
behaviour (directional and invariance), reason codes, thresholds."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from features.definitions import FEATURE_NAMES, feature_index
from fraudpipe.settings import Rule
from models.dataset import History
from models.protocol import window_of
from models.registry import LoadedModel, Manifest
from models.scorer import Policy, Scorer
from models.train import feature_rows, fit, matrix, train_version
from tests.model.conftest import FAST, WINDOWS

IDX = feature_index()


@pytest.fixture(scope="module")
def rows(small_history: History) -> pl.DataFrame:
    return feature_rows(small_history, (WINDOWS.train[0], WINDOWS.test[1]), small_history.labels)


@pytest.fixture(scope="module")
def booster(rows: pl.DataFrame) -> lgb.Booster:
    return fit(window_of(rows, WINDOWS.train), FAST).booster


def _scorer(booster: lgb.Booster) -> Scorer:
    manifest = Manifest.model_construct(version="v0001", model_sha256="0" * 64, features=list(FEATURE_NAMES))
    return Scorer(LoadedModel(manifest, booster))


def test_training_is_deterministic_for_a_seed(rows: pl.DataFrame, booster: lgb.Booster) -> None:
    train = window_of(rows, WINDOWS.train)
    again = fit(train, FAST).booster
    assert again.model_to_string() == booster.model_to_string()
    other = fit(train, FAST.model_copy(update={"seed": 1})).booster
    assert other.model_to_string() != booster.model_to_string()


def test_early_stopping_keeps_the_best_round_on_the_window_after_the_gap(small_history: History) -> None:
    trained = train_version(small_history, WINDOWS, FAST.model_copy(update={"early_stopping_rounds": 5}))
    assert 1 <= trained.fitted.rounds <= FAST.rounds
    assert trained.fitted.booster.current_iteration() == trained.fitted.rounds
    valid_days = trained.valid.get_column("event_time").dt.date()
    assert valid_days.min() == WINDOWS.test[0] and valid_days.max() == WINDOWS.test[1] - timedelta(days=1)
    fields = trained.fields
    assert fields["windows"]["train"]["to"] == str(WINDOWS.train[1] - timedelta(days=1))
    assert 0 <= fields["thresholds"]["review"] <= fields["thresholds"]["decline"] <= 1
    assert set(fields["reference"]["features"]) == set(FEATURE_NAMES)
    assert sum(fields["reference"]["score"]["shares"]) == pytest.approx(1.0)


def test_a_training_window_without_frauds_is_refused(rows: pl.DataFrame) -> None:
    with pytest.raises(ValueError, match="both frauds and genuine"):
        fit(window_of(rows, WINDOWS.train).filter(~pl.col("is_fraud")), FAST)


def test_a_much_larger_amount_on_a_new_terminal_never_lowers_the_score(
    rows: pl.DataFrame, booster: lgb.Booster
) -> None:
    x = matrix(window_of(rows, WINDOWS.test))
    before = _scorer(booster).score(x)
    bigger = x.copy()
    bigger[:, IDX["amount"]] *= 5
    bigger[:, IDX["card_amount_ratio_30d"]] *= 5
    zscore = bigger[:, IDX["card_amount_zscore_30d"]]
    bigger[:, IDX["card_amount_zscore_30d"]] = zscore + np.abs(zscore) + 1
    bigger[:, IDX["card_new_terminal"]] = 1.0
    after = _scorer(booster).score(bigger)
    assert np.all(after >= before - 1e-12)
    assert np.mean(after > before) > 0.5  # and it does raise most of them: the test can see a change


def test_renaming_a_card_token_does_not_change_its_scores(small_history: History, booster: lgb.Booster) -> None:
    card = small_history.transactions.get_column("card_token")[0]
    renamed = History(
        small_history.transactions.with_columns(
            card_token=pl.when(pl.col("card_token") == card).then(pl.lit("tok_renamed")).otherwise("card_token")
        ),
        small_history.labels.with_columns(
            card_token=pl.when(pl.col("card_token") == card).then(pl.lit("tok_renamed")).otherwise("card_token")
        ),
        0,
    )
    days = (WINDOWS.train[0], WINDOWS.test[1])
    original = feature_rows(small_history, days, small_history.labels).filter(pl.col("card_token") == card)
    moved = feature_rows(renamed, days, renamed.labels).filter(pl.col("card_token") == "tok_renamed")
    assert original.height > 0
    scorer = _scorer(booster)
    np.testing.assert_array_equal(scorer.score(matrix(original)), scorer.score(matrix(moved)))


def test_one_batch_call_scores_like_one_row_at_a_time(rows: pl.DataFrame, booster: lgb.Booster) -> None:
    x = matrix(window_of(rows, WINDOWS.test).head(50))
    scorer = _scorer(booster)
    singles = np.concatenate([scorer.score(x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(scorer.score(x), singles, rtol=0, atol=1e-12)
    assert scorer.score(np.empty((0, len(FEATURE_NAMES)))).shape == (0,)


def test_reason_codes_are_the_features_that_raised_the_score_most(rows: pl.DataFrame, booster: lgb.Booster) -> None:
    x = matrix(window_of(rows, WINDOWS.test).head(200))
    contributions = booster.predict(x, pred_contrib=True)
    raw = booster.predict(x, raw_score=True)
    np.testing.assert_allclose(contributions.sum(axis=1), raw, atol=1e-9)  # SHAP values add up to the margin
    for row, codes, values in zip(x, _scorer(booster).explain(x, top=3), contributions, strict=True):
        expected = [FEATURE_NAMES[i] for i in np.argsort(-values[:-1], kind="stable")[:3] if values[i] > 0]
        assert [c.feature for c in codes] == expected
        for code in codes:
            assert code.direction == "raises" and code.contribution > 0
            i = IDX[code.feature]
            assert (code.value is None and np.isnan(row[i])) or code.value == row[i]


def test_policy_thresholds_and_stricter_only_rules() -> None:
    x = np.zeros((5, len(FEATURE_NAMES)))
    x[:, IDX["amount"]] = [10, 10, 10, 10, 5_000]
    x[3, IDX["card_fraud_count_30d"]] = 1
    policy = Policy(
        review=0.5, decline=0.9, rules=(Rule(id="known_fraud_30d"), Rule(id="large_amount", threshold=1_000))
    )
    assert policy.decide([0.1, 0.5, 0.95, 0.1, 0.1], x) == ["approve", "review", "decline", "review", "review"]
    assert policy.decide([0.1, 0.5, 0.95, 0.95, 0.95], x)[3:] == ["decline", "decline"]  # never loosened
    with pytest.raises(ValueError, match="review <= decline"):
        Policy(review=0.9, decline=0.5)


def test_the_compiled_runtime_gives_lightgbms_scores(rows: pl.DataFrame, booster: lgb.Booster, tmp_path: Path) -> None:
    x = matrix(window_of(rows, WINDOWS.test))
    manifest = Manifest.model_construct(version="v0001", model_sha256="ab" * 32, features=list(FEATURE_NAMES))
    compiled = Scorer(LoadedModel(manifest, booster), runtime="lleaves", cache_dir=tmp_path)
    np.testing.assert_allclose(compiled.score(x), _scorer(booster).score(x), rtol=0, atol=1e-6)
    np.testing.assert_allclose(compiled.score(x[:1]), _scorer(booster).score(x[:1]), rtol=0, atol=1e-6)
    assert (tmp_path / f"{'ab' * 32}.o").exists()  # compiled once per model hash, then loaded
    with pytest.raises(ValueError, match="unknown model runtime"):
        Scorer(LoadedModel(manifest, booster), runtime="onnx")
