"""Commands that run the whole pipeline on this machine, on local Kafka and Redis: the ``demo`` with its live
summary, and the end-to-end benchmark (``bench``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from cli._apps import app
from cli._common import CliError, _settings, err, out
from fraudpipe.settings import Settings


@app.command()
def demo(
    duration: Annotated[
        float | None,
        typer.Option(
            min=5.0, help="Run this many seconds, then stop and summarize (non-interactive); without it, until Ctrl-C."
        ),
    ] = None,
    rate: Annotated[float, typer.Option(min=1.0, help="Transactions per second replayed live.")] = 100.0,
    customers: Annotated[int, typer.Option(min=100, help="Simulated customers (one card each).")] = 2_000,
    history_days: Annotated[int, typer.Option(min=20, help="Days of history (training, warm features).")] = 30,
    live_days: Annotated[int, typer.Option(min=1, help="Days replayed live after the history.")] = 10,
    work_dir: Annotated[Path, typer.Option(help="Where the demo keeps its simulation, models, data and logs.")] = Path(
        "var/demo"
    ),
    port: Annotated[int, typer.Option(min=0, max=65_535, help="API and dashboard port (0: any free one).")] = 8000,
    sasl: Annotated[
        bool,
        typer.Option(
            "--sasl",
            help="Kafka with SASL/SCRAM and ACLs (scripts/services.sh start kafka --sasl, on the Kafka port + 100): "
            "the worker logs in as `worker` with only the ACLs it needs.",
        ),
    ] = False,
) -> None:
    """The whole pipeline on this machine: local Kafka and Redis, a simulated history, a champion, a worker, the
    monitor, the API and its dashboard, and a live stream with labels — with a live summary. Ctrl-C stops all.
    Redis is logged in to as scripts/services.sh's default user unless FRAUD_REDIS__PASSWORD says otherwise."""
    from rich.live import Live

    from streams.demo import DemoOptions, run
    from streams.demo_report import render_live

    settings = _settings()
    options = DemoOptions(work_dir=work_dir.resolve(), duration_s=duration, rate=rate, customers=customers,
                          history_days=history_days, live_days=live_days, api_port=port, sasl=sasl)  # fmt: skip
    live = Live(console=out, refresh_per_second=2, transient=False)

    def show(summary: Any, alerts: Any, url: str, elapsed: float, status: str) -> None:
        if not live.is_started:
            live.start()
        live.update(render_live(summary, alerts, url, elapsed, status))

    def say(text: str) -> None:
        (live.console if live.is_started else out).print(f"[dim]demo:[/] {text}", highlight=False, soft_wrap=True)

    try:
        final = run(settings, options, say=say, show=show)
    except (RuntimeError, OSError) as error:
        raise CliError(f"demo: {error}") from None
    finally:
        if live.is_started:
            live.stop()
    out.print(
        f"demo done: {final['decisions']:,} decisions ({final['by_outcome']['review']:,} review, "
        f"{final['by_outcome']['decline']:,} decline), {final['alerts_seen']:,} alerts seen, "
        f"{final['dead_letters']:,} dead letters, latest p99 "
        f"{'-' if final['p99_ms'] is None else format(final['p99_ms'], '.0f') + ' ms'}, champion {final['champion']}\n"
        f"summary report: {final['report']}\nlogs: {final['logs']}",
        highlight=False, soft_wrap=True,
    )  # fmt: skip
    if final["money"] is not None:
        from streams.demo_report import money_facts

        out.print("against the simulation's truth, under the cost model (FRAUD_COST__*):", highlight=False)
        for name, value in money_facts(final["money"]).items():
            out.print(f"  {name}: {value}", highlight=False, soft_wrap=True)
    if final["decisions"] == 0:
        raise CliError(f"demo: no decision was made; see the logs in {final['logs']}")


@app.command()
def bench(
    events: Annotated[int, typer.Option(min=1_000, help="Events of each maximum-rate run.")] = 200_000,
    workers: Annotated[int, typer.Option(min=1, max=2, help="Worker processes.")] = 1,
    repeat: Annotated[int, typer.Option(min=1, max=9, help="Maximum-rate and paced runs (medians reported).")] = 1,
    paced_events: Annotated[int, typer.Option(min=1_000, help="Events of each paced run.")] = 30_000,
    naive_events: Annotated[int, typer.Option(min=500, help="Events of the naive baseline.")] = 10_000,
    customers: Annotated[int, typer.Option(min=100, help="Simulated customers (cards).")] = 5_000,
    history_days: Annotated[int, typer.Option(min=10, help="Days of history: training and warm state.")] = 30,
    inprocess_events: Annotated[
        int, typer.Option(min=500, help="Events of the in-process pipeline (no Kafka), the ratio's denominator.")
    ] = 10_000,
    sweep: Annotated[
        str, typer.Option(help="Batch sizes of the sweep, comma-separated ('' or 0: no sweep).")
    ] = "1,10,50,200,500,2000",
    sweep_events: Annotated[
        int, typer.Option(min=500, help="Events of each run of the sweep (at most 1,000 batches).")
    ] = 20_000,
    warmup_events: Annotated[
        int,
        typer.Option(min=0, help="Events before each run, left out of it (at least 2 batches, at most 100; 0: none)."),
    ] = 1_000,
    work_dir: Annotated[Path, typer.Option(help="Scratch folder (emptied first).")] = Path("var/bench"),
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    html_out: Annotated[
        Path | None,
        typer.Option("--html", help="Write the HTML report here (default: beside --json, else in --work-dir)."),
    ] = None,
) -> None:
    """Measure the worker end to end on local Kafka and Redis (started with scripts/services.sh if they do not
    answer, and stopped after): throughput, latency, baselines, the in-process pipeline, a batch-size sweep."""
    import json
    import shutil
    import time

    from streams.bench import BenchOptions, run
    from streams.bench_decisions import IncompleteRunError
    from streams.bench_report import markdown, write_html_report
    from streams.local_services import local_services, stop

    try:
        sizes = tuple(int(size) for size in sweep.replace(" ", "").split(",") if size and int(size) != 0)
    except ValueError:
        raise CliError(f"--sweep takes batch sizes separated by commas, not {sweep!r}") from None
    if any(not 1 <= size <= 10_000 for size in sizes):
        raise CliError("--sweep: each batch size is between 1 and 10,000")
    marker = work_dir / ".fraudpipe-bench"
    if work_dir.exists() and any(work_dir.iterdir()) and not marker.exists():
        raise CliError(f"--work-dir {work_dir} is not empty and not a previous bench folder: not touching it")
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    marker.touch()
    try:  # scripts/services.sh's Redis asks for a password: logged in as its default user
        services = local_services(_settings())
    except RuntimeError as error:
        raise CliError(f"bench: {error}") from None
    try:
        base = services.settings
        settings = base.model_copy(
            update={
                "paths": base.paths.model_copy(
                    update={"data_dir": work_dir / "data", "models_dir": work_dir / "models"}
                ),
                "redis": base.redis.model_copy(update={"key_prefix": "fp:bench:"}),
            }
        )
        _clear_bench_keys(settings)
        options = BenchOptions(events=events, workers=workers, repeat=repeat, paced_events=paced_events,
                               naive_events=naive_events, inprocess_events=inprocess_events, sweep=sizes,
                               sweep_events=sweep_events, warmup_events=warmup_events, history_days=history_days,
                               customers=customers)  # fmt: skip
        started = time.monotonic()
        try:
            report = run(settings, options, work_dir,
                         progress=lambda text: err.print(f"bench [{time.monotonic() - started:5.0f} s]: {text}",
                                                         highlight=False))  # fmt: skip
        except IncompleteRunError as error:
            raise CliError(f"bench: {error}") from None
    finally:
        stop(services.started)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2) + "\n")
    html_path = html_out or (json_out.with_suffix(".html") if json_out is not None else work_dir / "bench.html")
    write_html_report(report, html_path)
    Console(soft_wrap=True).print(markdown(report), highlight=False)
    err.print(f"HTML report: {html_path}", highlight=False, soft_wrap=True)


def _clear_bench_keys(settings: Settings) -> None:
    """Delete the previous bench's keys (``fp:bench:*``) so the figures start from a cold Redis."""
    from features.store import redis_client

    with redis_client(settings.redis.model_copy(update={"socket_timeout_ms": 30_000})) as client:
        for key in client.scan_iter(match=f"{settings.redis.key_prefix}*", count=10_000):
            client.unlink(key)
