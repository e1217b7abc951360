"""Stream processing: the one Faust app (``streams.app``), its agents, intake, topic administration.

The top layer: imports ``models``, ``features`` and ``fraudpipe``; nothing imports it back.
"""

import sys
from importlib.abc import MetaPathFinder
from typing import Any


class _NoPandas(MetaPathFinder):
    """Refuses ``pandas`` (and its submodules) to the import system: ``import pandas`` raises ModuleNotFoundError,
    while ``sys.modules`` holds no entry for it — what libraries that look pandas up there (scikit-learn) expect."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"{name} is not imported in this process (streams.without_pandas)", name=name)
        return None


def without_pandas() -> None:
    """Make ``import pandas`` fail in this process (call it before anything imports LightGBM). LightGBM imports
    pandas whenever it is installed — fairlearn, the governance commands' library, brings it — for DataFrame inputs
    a worker (or the API) never passes: measured, ~30 MB of a worker's memory and ~1 s of its start-up. Without
    it, LightGBM takes numpy arrays as it always does here, and scikit-learn its metrics."""
    if "pandas" not in sys.modules and not any(isinstance(finder, _NoPandas) for finder in sys.meta_path):
        sys.meta_path.insert(0, _NoPandas())
