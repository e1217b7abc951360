"""Writes a simulation to disk, one day at a time. The only module of the simulator that touches files.

Layout of ``OUT/`` (every file written to a temporary name, then renamed: a reader never sees half a file)::

    manifest.json                            config, seed, counts per scenario, files
    customers.parquet                        one row per card: its customer, token, BIN, last four, the blocked card
                                             it replaced, segments (no PAN)
    transactions/day=YYYY-MM-DD/part-0.parquet   TRANSACTION_COLUMNS, sorted by event_time
    labels/day=YYYY-MM-DD/part-0.parquet         LABEL_COLUMNS of that day's transactions, sorted by known_at
    transactions.jsonl, labels.jsonl         the same rows as JSON lines (with --format jsonl or both)

Partitions are hive-style, so ``polars.scan_parquet(OUT / "transactions")``, DuckDB or pandas read them directly.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import polars as pl

from fraudpipe.simulator.config import SimulationConfig
from fraudpipe.simulator.generate import Day
from fraudpipe.simulator.population import AGE_BANDS, GRID_COUNTRIES, Population

__all__ = ["OUTPUT_NAMES", "OutputExistsError", "Summary", "check_output", "write_simulation"]

OUTPUT_NAMES = ("manifest.json", "customers.parquet", "transactions", "labels", "transactions.jsonl", "labels.jsonl")
Format = Literal["parquet", "jsonl", "both"]


class OutputExistsError(FileExistsError):
    """The output folder already holds a simulation (or other files) and overwriting was not asked for."""


Summary = dict[str, Any]
"""Counts of a finished run (also written as ``manifest.json``)."""


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    write(temporary)
    os.replace(temporary, path)


def check_output(out: Path, overwrite: bool) -> None:
    """Raise if ``out`` cannot receive a simulation: it is a file, or a non-empty folder and not ``overwrite``.

    Raises:
        OutputExistsError: as above.
    """
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out} is not empty (use --overwrite to replace a previous simulation)")


def _prepare(out: Path, overwrite: bool) -> None:
    check_output(out, overwrite)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{out} is not empty (use --overwrite to replace a previous simulation)")
        for name in OUTPUT_NAMES:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def customers_frame(population: Population) -> pl.DataFrame:
    """One row per card: its customer's id, the card's token / BIN / last four, the card it replaced (``replaces``:
    a blocked card's token, null for a customer's first card), home country and age band (segments for fairness
    reports, never model features), and the spending profile the simulator drew."""
    reissued = population.reissued
    owner = np.concatenate([np.arange(population.customers), [r.customer for r in reissued]]).astype(np.int64)
    return pl.DataFrame(
        {
            "customer_id": population.customer_ids.gather(owner),
            "card_token": pl.concat([population.card_tokens, pl.Series([r.token for r in reissued], dtype=pl.String)]),
            "card_bin": pl.concat([population.card_bins, pl.Series([r.bin for r in reissued], dtype=pl.String)]),
            "card_last4": pl.concat([population.card_last4, pl.Series([r.last4 for r in reissued], dtype=pl.String)]),
            "replaces": pl.Series([None] * population.customers + [r.replaces for r in reissued], dtype=pl.String),
            "home_country": pl.Series(np.array(GRID_COUNTRIES)[population.home_country[owner]]),
            "age_band": pl.Series(np.array(AGE_BANDS)[population.age_band[owner]]),
            "mean_amount": np.round(population.mean_amount[owner], 2),
            "tx_per_day": np.round(population.tx_per_day[owner], 4),
            "ecommerce_share": np.round(population.ecommerce_share[owner], 4),
        }
    )


def _parquet_writer(frame: pl.DataFrame) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        frame.write_parquet(path, compression="zstd", statistics=True)

    return write


def _append_jsonl(handle: IO[bytes], frame: pl.DataFrame) -> None:
    frame.write_ndjson(handle)


def write_simulation(
    out: Path,
    config: SimulationConfig,
    population: Population,
    days: Iterator[Day],
    *,
    output_format: Format = "parquet",
    overwrite: bool = False,
    on_day: Callable[[Day], None] | None = None,
) -> Summary:
    """Write every day of ``days`` under ``out`` and return the run's counts. ``on_day`` is called after each day.

    Raises:
        OutputExistsError: ``out`` is not empty and ``overwrite`` is false.
    """
    _prepare(out, overwrite)
    parquet, jsonl = output_format in {"parquet", "both"}, output_format in {"jsonl", "both"}
    scenarios: Counter[str] = Counter()
    totals = Counter(transactions=0, frauds=0, labels=0, days=0)
    handles: dict[str, IO[bytes]] = {}
    try:
        if jsonl:
            handles = {name: (out / f".{name}.jsonl.tmp").open("wb") for name in ("transactions", "labels")}
        for day in days:
            stamp = day.date.strftime("%Y-%m-%d")
            for name, frame in (("transactions", day.transactions), ("labels", day.labels)):
                if parquet:
                    _atomic(out / name / f"day={stamp}" / "part-0.parquet", _parquet_writer(frame))
                if jsonl:
                    _append_jsonl(handles[name], frame)
            counts = day.transactions.get_column("fraud_scenario").drop_nulls().value_counts()
            scenarios.update(dict(counts.iter_rows()))
            totals.update(
                transactions=day.transactions.height,
                frauds=int(day.transactions.get_column("is_fraud").sum()),
                labels=day.labels.height,
                days=1,
            )
            if on_day is not None:
                on_day(day)
    finally:
        for handle in handles.values():
            handle.close()
    for name in handles:
        os.replace(out / f".{name}.jsonl.tmp", out / f"{name}.jsonl")
    # after the days: the cards reissued while they were drawn are in it
    _atomic(out / "customers.parquet", lambda p: customers_frame(population).write_parquet(p, compression="zstd"))
    summary: Summary = dict(
        generator="fraudpipe simulate",
        format_version=1,
        config=config.model_dump(mode="json"),
        customers=population.customers,
        reissued_cards=len(population.reissued),
        terminals=population.terminals,
        transactions=totals["transactions"],
        frauds=totals["frauds"],
        fraud_rate=round(totals["frauds"] / max(totals["transactions"], 1), 6),
        labels=totals["labels"],
        days=totals["days"],
        frauds_by_scenario=dict(sorted(scenarios.items())),
        formats=[f for f, on in (("parquet", parquet), ("jsonl", jsonl)) if on],
    )
    _atomic(out / "manifest.json", lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))
    return summary
