"""A small simulated history shared by the model tests: written once per session, read like any user's folder."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from fraudpipe.settings import TrainingSettings
from models.dataset import History, load_history
from models.protocol import Windows
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
