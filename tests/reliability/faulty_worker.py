"""``fraudpipe worker`` with one injected fault, for the reliability suite (never shipped: tests only).

    FRAUDPIPE_FAULT_RAISE=<txn id>      feature code raises for any batch holding that transaction
    FRAUDPIPE_FAULT_SLOW=<txn id>:<s>   feature code sleeps <s> seconds on the batch holding that transaction

The fault goes into :meth:`features.store.RedisFeatureStore.begin` (the feature code the worker calls per batch); the
worker is otherwise the real one, started through the real CLI.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from cli import main
from features.store import RedisFeatureStore
from fraudpipe.contracts import Transaction

_begin = RedisFeatureStore.begin
_raises = os.environ.get("FRAUDPIPE_FAULT_RAISE")
_slow_id, _, _slow_s = os.environ.get("FRAUDPIPE_FAULT_SLOW", "").partition(":")


def _faulty(self: RedisFeatureStore, txns: Sequence[Transaction]) -> Any:
    ids = {t.txn_id for t in txns}
    if _raises and _raises in ids:
        raise RuntimeError(f"injected feature-code failure for {_raises}")
    if _slow_id and _slow_id in ids:
        print(f"injected: sleeping {_slow_s} s on {_slow_id}", file=sys.stderr, flush=True)
        time.sleep(float(_slow_s))
    return _begin(self, txns)


RedisFeatureStore.begin = _faulty  # type: ignore[method-assign]  # raw calls it too

if __name__ == "__main__":
    sys.argv = ["fraudpipe", "worker", *sys.argv[1:]]
    main()
