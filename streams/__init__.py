"""Stream processing: the one Faust app (``streams.app``), its agents, intake, topic administration.

The top layer: imports ``models``, ``features`` and ``fraudpipe``; nothing imports it back.
"""

import sys


def without_pandas() -> None:
    """Make ``import pandas`` fail in this process (call it before anything imports LightGBM). LightGBM imports
    pandas whenever it is installed — fairlearn, the governance commands' library, brings it — for DataFrame inputs
    a worker (or the API) never passes: measured, ~30 MB of a worker's memory and ~1 s of its start-up. Without
    it, LightGBM takes numpy arrays as it always does here."""
    sys.modules.setdefault("pandas", None)  # type: ignore[arg-type]  # None: the import machinery refuses the name
