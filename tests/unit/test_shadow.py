"""Shadow scoring: the challenger scores the same features after the champion decided; the champion's decisions are
identical with shadow on and off, and a failing shadow is counted and ignored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from features.memory import InMemoryFeatureStore
from fraudpipe.clock import FixedClock
from fraudpipe.logstore import DayLog
from fraudpipe.settings import ScoringSettings
from models.registry import Registry
from streams import metrics
from streams.pipeline import InMemoryDecisionMemory, Models, Pipeline
from streams.scoring import score_in_shadow
from tests import factories

T0 = datetime(2024, 3, 1, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    root = tmp_path_factory.mktemp("models")
    champion = factories.register_champion(root, seed=0)
    challenger = factories.register_champion(root, seed=1)
    registry = Registry(root)
    registry.promote(champion, why="the champion")
    registry.promote(challenger, alias="challenger", why="the challenger")
    return registry


def _pipeline(registry: Registry) -> Pipeline:
    clock = FixedClock(T0)
    models = Models(registry, "champion", threads=1, poll_s=60, clock=clock)
    models.start()
    scoring = ScoringSettings(thresholds_from="settings", review_threshold=0.05, decline_threshold=0.9)
    return Pipeline(InMemoryFeatureStore(), InMemoryDecisionMemory(), models, scoring, clock)


def _batches() -> list[list[object]]:
    txns = [
        factories.transaction(txn_id=f"t-{i}", card_token=f"tok_card{i % 9}",
                              event_time=(T0 - timedelta(minutes=300 - i)).isoformat(), amount=5.0 + 37 * (i % 11))
        for i in range(300)
    ]  # fmt: skip
    return [txns[i : i + 60] for i in range(0, 300, 60)] + [txns[:20]]  # the last: redeliveries


def test_champion_decisions_are_identical_with_shadow_on_and_off(registry: Registry, tmp_path: Path) -> None:
    plain, shadowed = _pipeline(registry), _pipeline(registry)
    challenger = Models(registry, "challenger", threads=1, poll_s=60, clock=FixedClock(T0))
    challenger.refresh(force=True)
    log = DayLog(tmp_path / "shadow", "event_time")
    for txns in _batches():
        alone = plain.score(txns, [0.0] * len(txns))  # type: ignore[arg-type]
        watched = shadowed.score(txns, [0.0] * len(txns))  # type: ignore[arg-type]
        if (rows := score_in_shadow(shadowed, watched, challenger)) is not None:
            log.append(rows)
        assert [d.model_dump() for d in watched.decisions()] == [d.model_dump() for d in alone.decisions()]
        assert [a.model_dump() for a in watched.alerts()] == [a.model_dump() for a in alone.alerts()]
    rows = log.read()
    assert rows.height == 300  # the fresh decisions; the redelivered 20 were answered from memory, not scored
    assert set(rows.get_column("model_version")) == {registry.aliases()["challenger"]}
    assert set(rows.get_column("champion_version")) == {registry.aliases()["champion"]}
    differs = rows.filter(pl.col("score") != pl.col("champion_score")).height
    assert differs > 250  # another model: other scores, on the very same features


class _Broken(Models):
    def refresh(self, *, force: bool = False) -> bool:
        raise RuntimeError("the challenger exploded")


def test_a_failing_shadow_is_counted_and_ignored(registry: Registry, tmp_path: Path) -> None:
    pipeline = _pipeline(registry)
    txns = _batches()[0]
    batch = pipeline.score(txns, [0.0] * len(txns))  # type: ignore[arg-type]
    before = [d.model_dump() for d in batch.decisions()]
    failures = metrics.SHADOW_FAILURES._value.get()
    broken = _Broken(registry, "challenger", threads=1, poll_s=60, clock=FixedClock(T0))
    assert score_in_shadow(pipeline, batch, broken) is None
    assert metrics.SHADOW_FAILURES._value.get() == failures + 1
    assert [d.model_dump() for d in batch.decisions()] == before
    assert not (tmp_path / "shadow").exists()


def test_without_a_challenger_the_shadow_is_idle(tmp_path: Path) -> None:
    root = tmp_path / "models"
    factories.register_champion(root)
    registry = Registry(root)
    challenger = Models(registry, "challenger", threads=1, poll_s=60, clock=FixedClock(T0))
    assert challenger.refresh(force=True) is False and challenger.scorer is None
    pipeline = _pipeline(registry)
    txns = _batches()[0]
    assert pipeline.shadow(pipeline.score(txns, [0.0] * len(txns)), challenger) is None  # type: ignore[arg-type]
