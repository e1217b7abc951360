"""Benchmark of the online feature store (not a test): transactions/s for apply + read + the feature matrix at
several batch sizes, from one process against a local Redis, and Redis bytes per card and per terminal.

    .venv/bin/python scripts/bench_features.py [--redis redis://127.0.0.1:6379/0] [--days 3] [--json out.json]

Uses a simulated history (default preset); medians of --repeat runs per batch size, each on a fresh key prefix.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid

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


def _run(client: redis.Redis, txns: list[Transaction], batch: int, limit: int) -> tuple[float, str]:
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    store = RedisFeatureStore(client, prefix)
    sample = txns[:limit]
    started = time.perf_counter()
    for i in range(0, len(sample), batch):
        chunk = sample[i : i + batch]
        feature_matrix(store.raw(chunk), chunk)
    elapsed = time.perf_counter() - started
    return len(sample) / elapsed, prefix


def _bytes(client: redis.Redis, pattern: str, entities: str) -> float:
    keys = list(client.scan_iter(match=pattern, count=10_000))
    total = sum(client.memory_usage(k) or 0 for k in keys)
    owners = {k.decode().split(":")[3] for k in keys} if entities == "card" else {k for k in keys}
    return total / max(len(owners), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    client = redis.Redis.from_url(args.redis)
    txns = _transactions(args.days)
    results: dict[str, object] = {"transactions": len(txns)}
    prefixes = []
    for batch, limit in ((1, 5_000), (50, 30_000), (500, 30_000)):
        rates = []
        for _ in range(args.repeat):
            rate, prefix = _run(client, txns, batch, limit)
            rates.append(rate)
            prefixes.append(prefix)
        results[f"tx_per_s_batch_{batch}"] = round(statistics.median(rates))
        print(
            f"batch {batch:>4}: {statistics.median(rates):>9,.0f} tx/s (runs: {', '.join(f'{r:,.0f}' for r in rates)})"
        )
    full = f"bench:{uuid.uuid4().hex[:8]}:"
    store = RedisFeatureStore(client, full)
    for i in range(0, len(txns), 500):
        store.apply(txns[i : i + 500])
    results["bytes_per_card"] = round(_bytes(client, f"{full}card:*", "card"))
    results["bytes_per_terminal"] = round(_bytes(client, f"{full}terminal:*", "terminal"))
    print(
        f"{args.days} days of history: {results['bytes_per_card']:,} bytes per card, "
        f"{results['bytes_per_terminal']:,} per terminal"
    )
    for prefix in [*prefixes, full]:
        for key in client.scan_iter(match=f"{prefix}*", count=10_000):
            client.delete(key)
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
