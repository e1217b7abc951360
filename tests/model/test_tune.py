"""``fraudpipe tune``: selection folds that end before the reported window, a study whose first trial is the
settings, and its parameters carried into ``train`` and ``evaluate`` (refused when its folds reach a test week)."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import pytest

from fraudpipe.settings import TrainingSettings
from models.dataset import History
from models.protocol import Windows
from models.registry import Registry
from models.tune import SEARCHED, fold_windows, folds, tune, tuned_history_days, tuned_settings
from tests.model.conftest import FAST, run_cli

UNTIL = date(2018, 5, 6)


def test_folds_end_before_until_a_week_apart() -> None:
    windows = fold_windows(UNTIL, 3, train_days=7, delay_days=7, test_days=7, history_days=2)
    assert [w.test for w in windows] == [
        (date(2018, 4, 29), date(2018, 5, 6)),
        (date(2018, 4, 22), date(2018, 4, 29)),
        (date(2018, 4, 15), date(2018, 4, 22)),
    ]
    assert windows[0] == Windows(date(2018, 4, 15), 7, 7, 7, 2)  # the protocol: train, gap, test


def test_a_study_never_reads_a_day_from_until_on(small_history: History) -> None:
    built = folds(small_history, fold_windows(UNTIL, 2, 7, 7, 7, 0))
    for fold in built:
        assert fold.test.get_column("event_time").dt.date().max() < UNTIL
        assert fold.x.shape[0] > 0 and fold.test.height == fold.test_x.shape[0]
    small = FAST.model_copy(update={"rounds": 20})
    study = tune(built, small, trials=3, until=UNTIL, k=20)
    first = study["trials"][0]
    assert first["params"] == {name: max(getattr(small, name), 1e-8) if name == "lambda_l2" else getattr(small, name)
                               for name in SEARCHED}  # fmt: skip
    assert study["current"]["value"] == first["value"]
    assert study["best"]["value"] == max(t["value"] for t in study["trials"]) >= first["value"]
    assert study["chosen"] == study["trials"][study["best"]["number"]]["params"]
    assert [f["test_end"] for f in study["folds"]] == ["2018-05-06", "2018-04-29"]
    assert all(len(t["folds"]) == 2 for t in study["trials"])
    again = tune(built, small, trials=3, until=UNTIL, k=20)  # seeded: the same study
    assert again["chosen"] == study["chosen"]


def test_a_study_chooses_the_days_of_history_too(small_history: History) -> None:
    built = folds(small_history, fold_windows(UNTIL, 1, 7, 7, 7, history_days=7))
    (fold,) = built
    assert fold.before.max() == 7 and (fold.before == 0).sum() < len(fold.before)  # a week before the window too
    study = tune(built, FAST.model_copy(update={"rounds": 20}), trials=3, until=UNTIL, k=20, history_days=3)
    assert study["trials"][0]["params"]["history_days"] == 3  # the current choice first
    assert all(0 <= t["params"]["history_days"] <= 7 for t in study["trials"])
    assert tuned_history_days(study) == study["chosen"]["history_days"]
    assert "history_days" not in tuned_settings(TrainingSettings(), study).model_dump()


def test_tuned_settings_take_the_chosen_parameters_only() -> None:
    chosen = {"learning_rate": 0.07, "num_leaves": 15, "rounds": 250}
    settings = tuned_settings(TrainingSettings(seed=4), {"chosen": chosen})
    assert (settings.learning_rate, settings.num_leaves, settings.rounds, settings.seed) == (0.07, 15, 250, 4)
    with pytest.raises(ValueError, match="no 'chosen'"):
        tuned_settings(TrainingSettings(), {"auc": 0.9})
    with pytest.raises(ValueError, match="objective"):
        tuned_settings(TrainingSettings(), {"chosen": {"objective": "xentropy"}})


def test_tune_then_train_and_evaluate_with_it(small_sim: Path, tmp_path: Path) -> None:
    report, page = tmp_path / "tune.json", tmp_path / "tune.html"
    env = {"FRAUD_PATHS__MODELS_DIR": str(tmp_path / "models"), "FRAUD_TRAINING__MIN_DATA_IN_LEAF": "20"}
    result = run_cli("tune", "--input", str(small_sim), "--until", str(UNTIL), "--folds", "2", "--trials", "3",
                     "--report", str(report), "--html", str(page), cwd=tmp_path, **env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    study = json.loads(report.read_text())
    assert len(study["trials"]) == 3 and study["until"] == str(UNTIL) and study["metric"] == "ap"
    html = page.read_text()
    assert 'id="history"' in html and "<h2>Folds</h2>" in html and "mean ap" in html
    trained = run_cli("train", str(small_sim), "--train-start", "2018-04-08", "--tuned", str(report), cwd=tmp_path,
                      **env)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    manifest = Registry(tmp_path / "models").manifest(Registry(tmp_path / "models").versions()[-1])
    assert manifest.tuning["chosen"] == study["chosen"] and manifest.tuning["report"] == str(report)
    assert manifest.params["num_leaves"] == study["chosen"]["num_leaves"]
    assert manifest.windows["history"]["from"] is not None or study["chosen"]["history_days"] == 0
    assert manifest.params["learning_rate"] == pytest.approx(study["chosen"]["learning_rate"])
    seen = run_cli("evaluate", "--input", str(small_sim), "--train-start", "2018-04-15", "--report",
                   str(tmp_path / "e.json"), "--tuned", str(report), cwd=tmp_path, **env)  # fmt: skip
    assert seen.returncode == 1 and "past the test week from 2018-04-29" in seen.stderr
    assert "Traceback" not in seen.stderr
    later = UNTIL - timedelta(days=14)  # its test week starts at UNTIL: the folds never saw it
    honest = run_cli("evaluate", "--input", str(small_sim), "--train-start", str(later), "--report",
                     str(tmp_path / "e.json"), "--tuned", str(report), cwd=tmp_path, **env)  # fmt: skip
    assert honest.returncode == 0, honest.stderr
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert evaluated["tuning"]["chosen"] == study["chosen"] and evaluated["rounds"] == study["chosen"]["rounds"]
    assert evaluated["protocol"]["label_visibility"] == "aligned"
    bad = run_cli("tune", "--input", str(small_sim), "--until", str(UNTIL), "--metric", "f1", "--report",
                  str(report), cwd=tmp_path, **env)  # fmt: skip
    assert bad.returncode == 1 and "--metric must be one of" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "other.json").write_text('{"auc": 0.9}')
    other = run_cli("evaluate", "--input", str(small_sim), "--train-start", str(later), "--report",
                    str(tmp_path / "e.json"), "--tuned", str(tmp_path / "other.json"), cwd=tmp_path, **env)  # fmt: skip
    assert other.returncode == 1 and "not a fraudpipe tune report" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
