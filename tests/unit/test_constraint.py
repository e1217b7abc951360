"""Training under a fairness constraint (models.constraint) on a hand-made biased dataset: a feature that predicts
fraud is shifted for one segment, so the model trained without the constraint flags that segment's genuine payments
far more often; trained under it, the disparity it is asked to even out shrinks into the band."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from features.definitions import FEATURE_NAMES
from fraudpipe.settings import GovernanceSettings, TrainingSettings
from models.card import render_card
from models.constraint import Constraint, as_binary, constrain, penalty_objective, segment_codes
from models.fairness import segments_of
from models.train import fit, matrix


def _biased(n: int, seed: int, cards: int = 2_000) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Payments of ``cards`` cards, odd cards in segment B: B's ``terminal_fraud_rate_7d`` runs 1.2 higher and the
    fraud odds rise with it, so a model that uses it flags B's genuine payments more."""
    rng = np.random.default_rng(seed)
    card = rng.integers(0, cards, n)
    columns = {name: np.zeros(n) for name in FEATURE_NAMES}
    columns["amount"] = rng.uniform(5, 150, n)
    columns["hour_of_day"] = rng.integers(0, 24, n).astype(float)
    columns["card_amount_zscore_30d"] = signal = rng.normal(size=n)
    columns["terminal_fraud_rate_7d"] = proxy = rng.normal(size=n) + 1.2 * (card % 2 == 1)
    fraud = rng.random(n) < 1 / (1 + np.exp(-(-5.0 + 1.6 * signal + 0.9 * proxy)))
    start = datetime(2024, 1, 1, tzinfo=UTC)
    seconds = np.sort(rng.uniform(0, 28 * 86_400, n))
    rows = pl.DataFrame({
        "txn_id": [f"T{i}" for i in range(n)], "card_token": [f"tok_{c}" for c in card],
        "event_time": [start + timedelta(seconds=float(s)) for s in seconds], "is_fraud": fraud,
        **columns,
    })  # fmt: skip
    customers = pl.DataFrame({"card_token": [f"tok_{c}" for c in range(cards)],
                              "home_country": ["B" if c % 2 else "A" for c in range(cards)]})  # fmt: skip
    return rows, customers


@pytest.fixture(scope="module")
def trained() -> tuple[dict[str, object], object, pl.DataFrame]:
    rows, customers = _biased(60_000, 0)
    train, valid = rows.head(36_000), rows.tail(24_000)
    settings, governance = TrainingSettings(), GovernanceSettings()
    segments = segments_of(customers, "card_token", ["home_country"])
    baseline = fit(train, settings, valid)
    constraint = Constraint.of(governance.model_copy(update={"fairness_constraint": "false_positive_rate_parity"}))
    assert constraint is not None
    fitted, record = constrain(train, valid, baseline, settings, constraint, segments, governance)
    return record, fitted, valid


def test_the_constraint_evens_out_the_disparity_it_is_asked_to(trained) -> None:
    record, _, _ = trained
    before, after = record["baseline"], record["chosen"]
    assert before["worst_ratio"] > 2.0  # the hand-made bias: B's genuine payments flagged over twice as often
    assert record["strength"] > 0 and record["tried"]
    assert after["worst_ratio"] <= 1.25 < before["worst_ratio"]  # within the band where it is trained
    assert after["validation"]["worst_ratio"] < before["validation"]["worst_ratio"] / 1.5  # and on unseen payments
    assert after["ap"] >= before["ap"] - record["max_ap_loss"]
    assert record["band"] == [0.8, 1.25] and record["column"] == "home_country"


def test_the_constrained_model_is_a_plain_scoring_booster_without_the_protected_column(trained) -> None:
    _, fitted, valid = trained
    booster = fitted.booster
    assert booster.feature_name() == list(FEATURE_NAMES) and "home_country" not in booster.feature_name()
    assert "objective=binary sigmoid:1" in booster.model_to_string()
    scores = booster.predict(matrix(valid))
    assert scores.min() >= 0.0 and scores.max() <= 1.0


def test_as_binary_scores_like_the_custom_objective_from_its_prior() -> None:
    import lightgbm as lgb

    rng = np.random.default_rng(1)
    x = rng.normal(size=(4_000, len(FEATURE_NAMES)))
    y = (rng.random(4_000) < 1 / (1 + np.exp(-(-3 + 2 * x[:, 0])))).astype(float)
    init = float(np.log(y.mean() / (1 - y.mean())))
    codes = np.zeros(4_000, dtype=np.intp)
    objective = penalty_objective(y, codes, kind="false_positive_rate_parity", threshold=-2.0, strength=0.0)
    booster = lgb.train({"objective": objective, "verbose": -1, "num_leaves": 7}, lgb.Dataset(x, y,
                        init_score=np.full(4_000, init)), 10)  # fmt: skip
    raw = booster.predict(x)
    plain = as_binary(booster, init, 10)
    assert np.allclose(plain.predict(x), 1 / (1 + np.exp(-(raw + init))), atol=1e-12)


def test_segment_codes_join_by_card_and_name_unknown_cards() -> None:
    rows = pl.DataFrame({"card_token": ["a", "b", "zz", "a"]})
    segments = segments_of(pl.DataFrame({"card_token": ["a", "b"], "home_country": ["FR", "DE"]}), "card_token",
                           ["home_country"])  # fmt: skip
    codes, names = segment_codes(rows, segments, "home_country")
    assert [names[c] for c in codes] == ["FR", "DE", "(unknown)", "FR"]
    with pytest.raises(ValueError, match="no column 'age_band'"):
        segment_codes(rows, segments, "age_band")


def test_none_is_no_constraint_and_an_unknown_kind_is_refused() -> None:
    governance = GovernanceSettings()
    assert Constraint.of(governance) is None
    made = Constraint.of(governance, "equalized_odds", "age_band", 0.9)
    assert made is not None and (made.kind, made.column, made.bound) == ("equalized_odds", "age_band", 0.9)
    with pytest.raises(ValueError, match="must be one of"):
        Constraint.of(governance, "demographic_parity")


def test_the_manifest_and_card_keep_the_constraint(trained, tmp_path) -> None:
    from models.registry import Registry
    from models.train import lgb_params

    record, fitted, _ = trained
    fields = {"params": lgb_params(TrainingSettings()), "rounds": fitted.rounds, "windows": {}, "metrics": {},
              "thresholds": {}, "data_fingerprint": "test", "reference": {}, "fairness_constraint": record}  # fmt: skip
    registry = Registry(tmp_path / "models")
    manifest = registry.register(fitted.booster, fields)
    assert registry.manifest(manifest.version).fairness_constraint == record
    card = render_card(manifest)
    assert "with a fairness penalty" in card and "## Fairness constraint" in card
    assert f"| {record['strength']:g} |" in card and "| none (baseline) |" in card


def test_the_objective_weights_frauds_as_scale_pos_weight_and_leaves_out_unknown_cards() -> None:
    y = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    codes = np.array([0, 0, 1, 1, 2, 2], dtype=np.intp)
    preds = np.array([0.5, -1.0, 0.2, -0.3, 1.0, 0.7])
    p = 1 / (1 + np.exp(-preds))
    plain = penalty_objective(y, codes, kind="false_positive_rate_parity", threshold=0.0, strength=0.0,
                              positive_weight=5.0)  # fmt: skip
    grad, hess = plain(preds.copy(), None)
    weight = np.where(y == 1, 5.0, 1.0)
    assert np.allclose(grad, weight * (p - y)) and np.allclose(hess, weight * p * (1 - p))
    # segment 2 (cards the table does not know) left out: its genuine payment gets no penalty gradient
    penalised = penalty_objective(y, codes, kind="false_positive_rate_parity", threshold=0.0, strength=1.0,
                                  min_genuine=1, left_out=2)  # fmt: skip
    grad, _ = penalised(preds.copy(), None)
    assert grad[5] == pytest.approx(p[5]) and grad[1] != pytest.approx(p[1])
    nothing = penalty_objective(y, codes, kind="equalized_odds", threshold=0.0, strength=1.0, min_frauds=10)
    with np.errstate(all="raise"):  # no segment with enough frauds: the recall part adds nothing, warns nothing
        grad, _ = nothing(preds.copy(), None)
    assert np.isfinite(grad).all()
