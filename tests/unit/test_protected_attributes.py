"""Guard: protected attributes and customer segments are never model features.

The simulator's segments (home country, age band) live in ``customers.parquet`` only; the feature list names none
of them, not even inside a longer name (``card_age_band_mean``); what the registry accepts is exactly that list; and
the model input is taken by feature name, so a segment column next to the features is never read.
"""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from features.definitions import FEATURE_NAMES
from fraudpipe.settings import GovernanceSettings
from fraudpipe.simulator.generate import TRANSACTION_COLUMNS
from models.registry import Registry, RegistryError
from models.train import matrix

PROTECTED = GovernanceSettings().protected_attributes


def names_protected(name: str, attribute: str) -> bool:
    """Whether feature ``name`` names ``attribute``: its words (split on ``_``) hold the attribute's words in a row.
    Words, not letters: ``card_average_7d`` does not name ``age``, ``card_age_band_7d`` names ``age_band``."""
    words, wanted = name.lower().split("_"), attribute.lower().split("_")
    return any(words[i : i + len(wanted)] == wanted for i in range(len(words) - len(wanted) + 1))


@pytest.mark.parametrize(
    ("name", "attribute", "expected"),
    [
        ("card_age_band_7d", "age_band", True),
        ("age", "age", True),
        ("customer_home_country", "home_country", True),
        ("card_average_7d", "age", False),
        ("card_distinct_countries_24h", "home_country", False),
    ],
)
def test_the_guard_finds_an_attribute_inside_a_feature_name(name: str, attribute: str, expected: bool) -> None:
    assert names_protected(name, attribute) is expected


def test_no_feature_names_a_protected_attribute() -> None:
    assert PROTECTED and set(GovernanceSettings().segment_columns) <= set(PROTECTED)
    found = [(name, attribute) for name in FEATURE_NAMES for attribute in PROTECTED if names_protected(name, attribute)]
    assert found == []


def test_transactions_carry_no_segment() -> None:
    """What the stream and the offline builders see: segments only join in reports."""
    assert not [column for column in TRANSACTION_COLUMNS for a in PROTECTED if names_protected(column, a)]


@pytest.mark.parametrize("names", [[*FEATURE_NAMES, "age_band"], ["home_country", *FEATURE_NAMES[1:]]])
def test_the_registry_refuses_a_model_trained_on_a_segment(names: list[str], tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, len(names)))
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1},
                        lgb.Dataset(x, (x[:, 0] > 1).astype(int), feature_name=names), 2)  # fmt: skip
    registry = Registry(tmp_path / "models")
    with pytest.raises(RegistryError, match=r"not features\.definitions\.FEATURE_NAMES"):
        registry.register(booster, {})
    assert registry.versions() == []


def test_the_model_input_never_reads_segment_columns() -> None:
    rows = pl.DataFrame({name: [float(i), float(i + 1)] for i, name in enumerate(FEATURE_NAMES)})
    with_segments = rows.with_columns(home_country=pl.lit("FR"), age_band=pl.lit("61+"), age=pl.lit(70.0))
    assert np.array_equal(matrix(with_segments), matrix(rows))
    assert matrix(with_segments).shape == (2, len(FEATURE_NAMES))
