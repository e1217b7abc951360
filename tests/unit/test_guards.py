"""Repository invariants."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("package", ["fraudpipe", "features", "models", "streams"])
def test_packages_import_from_this_repository(package: str) -> None:
    """`features`, `models` and `streams` also exist on PyPI: ours must win, from a neutral working directory."""
    code = f"import {package}, pathlib; print(pathlib.Path({package}.__file__).resolve())"
    found = subprocess.run(
        [sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True
    ).stdout.strip()
    assert Path(found) == ROOT / package / "__init__.py"


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("fraudpipe", ("features", "models", "streams")),
        ("features", ("models", "streams")),
        ("models", ("streams",)),
    ],
)
def test_imports_go_one_way(package: str, forbidden: tuple[str, ...]) -> None:
    """streams -> models -> features -> fraudpipe. The CLI may import upward only inside its commands."""
    for path in (ROOT / package).rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.startswith(("import ", "from ")):
                module = line.split()[1].split(".")[0]
                assert module not in forbidden, f"{path.relative_to(ROOT)}:{number} imports {module}"


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
