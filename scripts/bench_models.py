"""Benchmark of the model stage (not a test): the quality bar, training time, batch scoring and reason codes.

    .venv/bin/python scripts/bench_models.py --input var/sim-handbook [--json out.json]

On a simulator folder of the handbook preset (``fraudpipe simulate --preset handbook --out ...``): reads the history,
builds the offline features of the whole history (timed), runs the evaluation protocol of the quality bar (train
from 2018-07-25 for 7 days, 7-day delay, 7-day test; timed), then measures scoring rows/s at batch sizes 1, 100 and
1,000 with one thread (LightGBM, and the lleaves compiled runtime when installed), and the cost of reason codes per
alert. Medians of --repeat runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from features.definitions import FEATURE_NAMES
from features.vectorized import build_features_fast
from fraudpipe.settings import TrainingSettings
from models.dataset import load_history
from models.evaluate import evaluate
from models.protocol import Windows
from models.registry import LoadedModel, Manifest
from models.scorer import Scorer, explain
from models.train import matrix


def _rate(fn: object, rows: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return rows / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    results: dict[str, object] = {}

    started = time.perf_counter()
    history = load_history(args.input, {}, key=b"bench-models-tokenization-key-00")
    results["read_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    build_features_fast(history.transactions, history.labels)
    results["offline_features_s"] = round(time.perf_counter() - started, 1)
    results["history_transactions"] = history.transactions.height

    windows = Windows(date(2018, 7, 25), 7, 7, 7)
    started = time.perf_counter()
    result = evaluate(history, windows, TrainingSettings(), k=100)
    results["evaluate_s"] = round(time.perf_counter() - started, 1)
    report = result.report
    results |= {key: report[key] for key in ("auc", "ap", "cp_at_k", "recall_at_1pct_fpr", "n_test", "n_test_fraud")}
    results["train_s"] = report["train_seconds"]
    results["train_rows"] = report["windows"]["train"]["transactions"]
    print(
        f"quality (seed 0): AUC {report['auc']:.3f}  AP {report['ap']:.3f}  CP@100 {report['cp_at_k']:.3f}  "
        f"recall@1%FPR {report['recall_at_1pct_fpr']:.3f}; training {report['train_seconds']:.1f} s on "
        f"{results['train_rows']:,} rows; offline features of {results['history_transactions']:,} payments "
        f"{results['offline_features_s']} s"
    )

    booster = result.booster
    x = matrix(result.test)
    manifest = Manifest.model_construct(version="bench", model_sha256="0" * 64, features=list(FEATURE_NAMES))
    runtimes = {"lightgbm": Scorer(LoadedModel(manifest, booster))}
    with tempfile.TemporaryDirectory() as cache:
        try:
            runtimes["lleaves"] = Scorer(LoadedModel(manifest, booster), runtime="lleaves", cache_dir=Path(cache))
        except RuntimeError as error:
            print(f"lleaves not measured: {error}")
        for name, scorer in runtimes.items():
            gap = float(np.abs(scorer.score(x) - runtimes["lightgbm"].score(x)).max())
            for batch in (1, 100, 1_000):
                chunks = [x[i : i + batch] for i in range(0, min(len(x), 20_000 if batch > 1 else 2_000), batch)]
                rows = sum(len(c) for c in chunks)
                rate = _rate(lambda s=scorer, chunks=chunks: [s.score(c) for c in chunks], rows, args.repeat)
                results[f"{name}_rows_per_s_batch_{batch}"] = round(rate)
                print(f"scoring with {name:8}, batch {batch:>5}: {rate:>10,.0f} rows/s (max |Δ| vs lightgbm {gap:.1e})")
    alerts = x[np.argsort(-result.test.get_column("score").to_numpy())[:100]]
    per_alert = 1e6 / _rate(lambda: explain(booster, alerts, top=3), len(alerts), args.repeat)
    single = 1e6 / _rate(lambda: [explain(booster, alerts[i : i + 1]) for i in range(20)], 20, args.repeat)
    results["reason_codes_us_per_alert_batch_100"] = round(per_alert, 1)
    results["reason_codes_us_per_alert_single"] = round(single, 1)
    print(f"reason codes: {per_alert:,.0f} µs per alert in a batch of 100, {single:,.0f} µs one at a time")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
