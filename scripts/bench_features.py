"""Benchmark of the online feature store (not a test): transactions/s for update + read (the Redis transaction and
the batch read back, by the C reader when it is built) at several batch sizes, from one process against a local
Redis, one batch at a time (``store.raw``) and pipelined (``store.stream``: Redis applies batch k+1 while the
process reads batch k), pipelined with the feature matrix too; and Redis bytes per card and per terminal.

    .venv/bin/python scripts/bench_features.py [--redis redis://127.0.0.1:6379/0] [--days 30] [--json out.json]

Uses a simulated history (default preset). Two situations: *fresh* — the first 30,000 payments of the history on an
empty store (cards with little state); *steady* — the last day's payments after every earlier day was applied
(cards, terminals and merchants with a month of state, what a running system sees). Medians of --repeat runs per
batch size, each on a fresh key prefix; Redis' own time per transaction (INFO commandstats: the script and the
MGET) alongside.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
import uuid
from datetime import timedelta

import polars as pl
import redis

from features.batch import feature_matrix
from features.store import RedisFeatureStore
from fraudpipe.contracts import Transaction
from fraudpipe.simulator.config import default
from fraudpipe.simulator.generate import TRANSACTION_COLUMNS, simulate


def _transactions(days: int) -> list[Transaction]:
    _, day_iter = simulate(default(days=days), b"bench-key-bench-key-bench-key-00")
    frame = pl.concat([day.transactions for day in day_iter])
    fields = [c for c in TRANSACTION_COLUMNS if c not in {"is_fraud", "fraud_scenario"}]
    return [Transaction(**row) for row in frame.select(fields).iter_rows(named=True)]


def _server_us(client: redis.Redis) -> float:
    stats = client.info("commandstats")
    return sum(float(stats.get(f"cmdstat_{name}", {}).get("usec", 0)) for name in ("evalsha", "mget"))


MODES = {"one at a time": (False, False, ""), "pipelined": (True, False, "pipelined_"),
         "pipelined + matrix": (True, True, "pipelined_with_features_")}  # fmt: skip
"""How a run sends its batches: ``store.raw`` one after the other, or ``store.stream`` (Redis applies the next
batch while this process reads one); whether the feature matrix is built from each reply, inside the timing; and
the mode's prefix in the JSON results."""


def _run(client: redis.Redis, store: RedisFeatureStore, txns: list[Transaction], batch: int, mode: str) -> tuple[
        float, float]:  # fmt: skip
    """(transactions/s, Redis µs per transaction) in batches of ``batch``, sent as ``mode`` says (MODES)."""
    pipelined, matrix, _ = MODES[mode]
    chunks = [txns[i : i + batch] for i in range(0, len(txns), batch)]
    before = _server_us(client)
    started = time.perf_counter()
    replies = store.stream(chunks) if pipelined else (store.raw(chunk) for chunk in chunks)
    for reply, chunk in zip(replies, chunks, strict=True):
        if matrix:
            feature_matrix(reply, chunk)
    return len(txns) / (time.perf_counter() - started), (_server_us(client) - before) / len(txns)


def _bytes(client: redis.Redis, pattern: str, entities: str) -> float:
    keys = list(client.scan_iter(match=pattern, count=10_000))
    total = sum(client.memory_usage(k) or 0 for k in keys)
    owners = {k.decode().split(":")[3] for k in keys} if entities == "card" else {k for k in keys}
    return total / max(len(owners), 1)


def _drop(client: redis.Redis, prefix: str) -> None:
    for key in client.scan_iter(match=f"{prefix}*", count=10_000):
        client.delete(key)


def _report(results: dict[str, object], label: str, key: str, batch: int,
            runs: dict[str, list[tuple[float, float]]]) -> None:  # fmt: skip
    for mode, mode_runs in runs.items():
        rates, server = [run[0] for run in mode_runs], [run[1] for run in mode_runs]
        results[f"{key}{MODES[mode][2]}tx_per_s_batch_{batch}"] = round(statistics.median(rates))
        print(f"{label} batch {batch:>4}, {mode:>18}: {statistics.median(rates):>9,.0f} tx/s, Redis "
              f"{statistics.median(server):5.1f} µs/tx (runs: {', '.join(f'{r:,.0f}' for r in rates)})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    client = redis.Redis.from_url(args.redis)
    txns = _transactions(args.days)
    last_day = txns[-1].event_time - timedelta(days=1)
    history = [t for t in txns if t.event_time <= last_day]
    today = [t for t in txns if t.event_time > last_day]
    results: dict[str, object] = {"transactions": len(txns), "steady_transactions": len(today)}
    for batch, limit in ((1, 5_000), (50, 30_000), (500, 30_000)):
        runs: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
        for _, mode in itertools.product(range(args.repeat), MODES):
            prefix = f"bench:{uuid.uuid4().hex[:8]}:"
            runs[mode].append(_run(client, RedisFeatureStore(client, prefix), txns[:limit], batch, mode))
            _drop(client, prefix)
        _report(results, "fresh ", "", batch, runs)
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    store = RedisFeatureStore(client, prefix)
    rate, redis_us = _run(client, store, history, 500, "pipelined")
    print(f"warming {len(history):,} payments of {args.days - 1} days at batch 500: {rate:,.0f} tx/s, Redis "
          f"{redis_us:.1f} µs/tx")  # fmt: skip
    results["bytes_per_card"] = round(_bytes(client, f"{prefix}card:*", "card"))
    results["bytes_per_terminal"] = round(_bytes(client, f"{prefix}terminal:*", "terminal"))
    print(f"{args.days - 1} days of history: {results['bytes_per_card']:,} bytes per card, "
          f"{results['bytes_per_terminal']:,} per terminal")  # fmt: skip
    for batch in (50, 500):
        runs = {mode: [] for mode in MODES}
        for _, mode in itertools.product(range(args.repeat), MODES):
            copy = f"bench:{uuid.uuid4().hex[:8]}:"  # the last day on a copy of the warm state (no markers)
            for key in client.scan_iter(match=f"{prefix}*", count=10_000):
                if b":applied:" not in key:
                    client.copy(key, copy + key.decode()[len(prefix) :])
            runs[mode].append(_run(client, RedisFeatureStore(client, copy), today, batch, mode))
            _drop(client, copy)
        _report(results, "steady", "steady_", batch, runs)
    _drop(client, prefix)
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
