"""Repository invariants."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("package", ["cli", "fraudpipe", "features", "models", "streams"])
def test_packages_import_from_this_repository(package: str) -> None:
    """`features`, `models` and `streams` also exist on PyPI: ours must win, from a neutral working directory."""
    code = f"import {package}, pathlib; print(pathlib.Path({package}.__file__).resolve())"
    found = subprocess.run(
        [sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True
    ).stdout.strip()
    assert Path(found) == ROOT / package / "__init__.py"


def test_the_layers_contract_holds_and_catches_an_upward_import(tmp_path: Path) -> None:
    """cli -> streams -> models -> features -> fraudpipe (import-linter's contract in pyproject.toml, also run by
    ``make lint``): kept by the code, and broken by one upward import planted in a copy of it."""
    lint = [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"]
    kept = subprocess.run(lint, cwd=ROOT, capture_output=True, text=True, check=False)
    assert kept.returncode == 0, kept.stdout[-2000:]
    copy = tmp_path / "copy"
    for name in ("cli", "streams", "models", "features", "fraudpipe"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    with (copy / "features" / "formulas.py").open("a") as module:
        module.write("\nimport models.registry  # planted\n")
    broken = subprocess.run(lint, cwd=copy, capture_output=True, text=True, check=False,
                            env={**os.environ, "PYTHONPATH": str(copy)})  # fmt: skip
    assert broken.returncode != 0
    assert "features is not allowed to import models" in broken.stdout, broken.stdout[-2000:]


@pytest.mark.parametrize("module", ["fraudpipe.contracts", "fraudpipe.codec", "fraudpipe.pan", "fraudpipe.settings"])
def test_pure_modules_import_no_network_client(module: str) -> None:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert not {"redis", "confluent_kafka", "aiokafka", "faust"} & set(loaded)
    importlib.import_module(module)


def test_the_worker_scores_without_pandas() -> None:
    """fairlearn brings pandas, and LightGBM imports it when it is there: the worker refuses it before LightGBM is
    imported (:func:`streams.without_pandas`), and LightGBM still trains and scores on numpy arrays, scikit-learn
    measures."""
    code = (
        "import sys; from streams import without_pandas; without_pandas();"
        "import numpy as np, lightgbm, streams.scoring, models.scorer;"
        "x = np.random.default_rng(0).random((200, 3)); y = (x[:, 0] > 0.5).astype(int);"
        "booster = lightgbm.train({'verbose': -1, 'num_leaves': 4}, lightgbm.Dataset(x, y), 5);"
        "from sklearn.metrics import roc_auc_score; auc = roc_auc_score(y, booster.predict(x));"
        "print(float(booster.predict(x[:1])[0]) > 0, auc > 0.9, sys.modules.get('pandas'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.split() == ["True", "True", "None"]
    loaded = subprocess.run([sys.executable, "-c", "import sys, lightgbm; print('pandas' in sys.modules)"],
                            capture_output=True, text=True, check=True, cwd=ROOT).stdout  # fmt: skip
    assert loaded.strip() == "True"  # what the guard is for: pandas is installed, and LightGBM takes it
