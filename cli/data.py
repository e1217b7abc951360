"""Commands that bring data in: ``simulate`` a history, ``replay`` a file onto Kafka, and the online feature store
(``features backfill`` warms it from history, ``features show`` prints one card's state)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cli._apps import app, features_app
from cli._common import (
    CliError,
    SinceOption,
    UntilOption,
    _duration,
    _first_line,
    _settings,
    _window,
    err,
    out,
)
from fraudpipe.settings import Settings

_SCENARIO_NAMES = (
    "amount_threshold",
    "compromised_terminals",
    "compromised_cards",
    "card_testing",
    "account_takeover",
    "impossible_travel",
)


def _pairs(values: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or name not in _SCENARIO_NAMES:
            raise CliError(f"{option} expects NAME=VALUE with NAME one of {', '.join(_SCENARIO_NAMES)}; got {value!r}")
        pairs[name] = setting
    return pairs


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Output folder (created; must be empty unless --overwrite).")],
    preset: Annotated[str, typer.Option(help="handbook (the published simulator) or default (all scenarios).")] = (
        "default"
    ),
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same output.")] = 0,
    days: Annotated[int | None, typer.Option(min=1, help="Days to simulate [183].")] = None,
    customers: Annotated[int | None, typer.Option(min=1, help="Customers, one card each [5000].")] = None,
    terminals: Annotated[int | None, typer.Option(min=1, help="Terminals [10000].")] = None,
    start: Annotated[str | None, typer.Option(help="First day, YYYY-MM-DD [2018-04-01].")] = None,
    output_format: Annotated[str, typer.Option("--format", help="parquet, jsonl or both.")] = "parquet",
    disable: Annotated[list[str], typer.Option(help="Switch a scenario off (repeatable).")] = [],  # noqa: B006
    per_day: Annotated[list[str], typer.Option(help="NAME=RATE: a scenario's events per day (repeatable).")] = [],  # noqa: B006
    drift_start_day: Annotated[
        int | None, typer.Option(min=0, help="Start a new card-testing campaign on this day.")
    ] = None,
    drift_cards_per_day: Annotated[float, typer.Option(min=0, help="Cards hit per day by the campaign.")] = 15.0,
    config_file: Annotated[Path | None, typer.Option("--config", help="A SimulationConfig as JSON.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a previous simulation in OUT.")] = False,
) -> None:
    """Simulate customers, cards, terminals, payments, fraud scenarios and delayed labels."""
    import json
    import time
    from datetime import date

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from fraudpipe.simulator import config as sim_config
    from fraudpipe.simulator.generate import simulate as run
    from fraudpipe.simulator.output import OutputExistsError, check_output, write_simulation

    settings = _settings()
    if preset not in {"handbook", "default"}:
        raise CliError(f"--preset must be handbook or default; got {preset!r}")
    if output_format not in {"parquet", "jsonl", "both"}:
        raise CliError(f"--format must be parquet, jsonl or both; got {output_format!r}")
    try:
        base = sim_config.handbook() if preset == "handbook" else sim_config.default()
        if config_file is not None:
            base = sim_config.SimulationConfig.model_validate(json.loads(config_file.read_text()))
        fields = base.model_dump()
        fields.update({k: v for k, v in (("seed", seed), ("days", days), ("customers", customers),
                                         ("terminals", terminals)) if v is not None})  # fmt: skip
        if start is not None:
            fields["start_date"] = date.fromisoformat(start)
        for name in _pairs([f"{n}=off" for n in disable], "--disable"):
            fields["scenarios"][name]["enabled"] = False
        for name, rate in _pairs(per_day, "--per-day").items():
            fields["scenarios"][name]["per_day"] = float(rate)
        if drift_start_day is not None:
            fields["drift"] = {**fields["drift"], "start_day": drift_start_day, "cards_per_day": drift_cards_per_day}
        config = sim_config.SimulationConfig.model_validate(fields)
    except (ValueError, OSError) as error:
        raise CliError(f"invalid simulation settings: {_first_line(error)}") from None
    try:
        check_output(out, overwrite)
    except OutputExistsError as error:
        raise CliError(str(error)) from None

    key = settings.privacy.tokenization_key.get_secret_value().encode()
    began = time.perf_counter()
    population, day_iter = run(config, key)
    with Progress(
        TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TextColumn("days"),
        TextColumn("{task.fields[txns]:,} transactions"), TimeRemainingColumn(), console=err,
    ) as progress:  # fmt: skip
        task = progress.add_task("days", total=config.days, txns=0)
        seen = [0]

        def advance(day: object) -> None:
            seen[0] += day.transactions.height  # type: ignore[attr-defined]
            progress.update(task, advance=1, txns=seen[0])

        try:
            summary = write_simulation(
                out, config, population, day_iter, output_format=output_format, overwrite=overwrite,  # type: ignore[arg-type]
                on_day=advance,
            )  # fmt: skip
        except OSError as error:
            raise CliError(f"cannot write {out}: {error.strerror or error}") from None
    elapsed = time.perf_counter() - began
    out_console = Console(soft_wrap=True)
    out_console.print(
        f"{summary['transactions']:,} transactions, {summary['frauds']:,} frauds "
        f"({100 * float(summary['fraud_rate']):.3f} %), {summary['labels']:,} labels in {elapsed:.1f} s -> {out}"
    )
    for name, count in summary["frauds_by_scenario"].items():
        out_console.print(f"  {name:<24} {count:>9,}")


@app.command()
def replay(
    source: Annotated[Path, typer.Argument(help="Simulator output folder, or a .csv / .parquet / .jsonl file.")],
    mapping: Annotated[
        str | None, typer.Option("--map", help="target=column pairs: txn_id, event_time, card_id, amount, ...")
    ] = None,
    rate: Annotated[float | None, typer.Option(min=0.001, help="Messages per second.")] = None,
    speedup: Annotated[float | None, typer.Option(min=0.001, help="Event time runs this many times faster.")] = None,
    timezone: Annotated[str, typer.Option(help="Time zone of naive event times in the file.")] = "UTC",
    currency: Annotated[str, typer.Option(help="Currency when the file has no currency column.")] = "EUR",
    label_delay: Annotated[str, typer.Option(help="Delay of labels derived from a label column (7d, 12h...).")] = "7d",
    since: SinceOption = None,
    until: UntilOption = None,
    rejects: Annotated[Path, typer.Option(help="Where rows that fail validation are written (JSON lines).")] = Path(
        "replay-rejects.jsonl"
    ),
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint file (position of the delivered prefix).")] = Path(
        ".replay-checkpoint.json"
    ),
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint.")] = False,
    from_position: Annotated[int, typer.Option(min=0, help="Skip this many messages first.")] = 0,
    drain_labels: Annotated[bool, typer.Option(help="Send labels still in the future at the end.")] = True,
    delivery_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds before an unacknowledged message fails.")
    ] = 120,
) -> None:
    """Replay transactions (and their delayed labels) onto Kafka, keyed by card token. --since / --until replay a
    slice of the file (a week of a year): its payments and their labels."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from fraudpipe.files import SourceError, open_source, parse_mapping
    from streams.replay import ReplayOptions, ReplayStats, read_checkpoint
    from streams.replay import replay as run

    if rate is not None and speedup is not None:
        raise CliError("--rate and --speedup exclude each other")
    settings = _settings()
    since_at, until_at = _window(since, until)
    try:
        opened = open_source(
            source,
            parse_mapping(mapping),
            key=settings.privacy.tokenization_key.get_secret_value().encode(),
            timezone=timezone,
            currency=currency,
            label_delay=_duration(label_delay),
            since=since_at,
            until=until_at,
        )
        start = read_checkpoint(checkpoint, source, opened.window) if resume else from_position
    except (SourceError, ValueError) as error:
        raise CliError(str(error)) from None
    options = ReplayOptions(
        rate=rate, speedup=speedup, start_position=start, checkpoint=checkpoint, rejects=rejects,
        drain_labels=drain_labels, delivery_timeout_s=delivery_timeout,
    )  # fmt: skip
    with Progress(
        TextColumn("replaying"), BarColumn(), TextColumn("{task.completed:,.0f} transactions"),
        TextColumn("{task.fields[speed]:,.0f} msg/s"), TimeElapsedColumn(), TimeRemainingColumn(), console=err,
    ) as progress:  # fmt: skip
        task = progress.add_task("replay", total=opened.total_rows, speed=0.0)

        def update(stats: ReplayStats) -> None:
            progress.update(task, completed=stats.transactions + stats.rejected, speed=stats.rate)

        try:
            stats = run(opened, settings.kafka, settings.topics, options, on_progress=update)
        except SourceError as error:
            raise CliError(str(error)) from None
    Console(soft_wrap=True).print(
        f"{stats.transactions:,} transactions and {stats.labels:,} labels sent in {stats.elapsed_s:.1f} s "
        f"({stats.rate:,.0f} msg/s), {stats.delivered:,} delivered, {stats.rejected:,} rows rejected"
        + (f" (see {rejects})" if stats.rejected else "")
        + (f", {stats.skipped:,} skipped before position {start:,}" if stats.skipped else "")
        + (f" (the slice {opened.window})" if opened.window else "")
    )
    if stats.failed:
        raise CliError(f"{stats.failed:,} messages were not delivered (first error: {stats.first_error})")


@features_app.command("backfill")
def features_backfill(
    source: Annotated[Path, typer.Argument(help="Simulator output folder, or a .csv / .parquet / .jsonl file.")],
    mapping: Annotated[str | None, typer.Option("--map", help="target=column pairs, as for replay.")] = None,
    since: SinceOption = None,
    until: Annotated[
        str | None,
        typer.Option(
            help="Only history before this ISO date or time: payments, and labels known by then (UTC "
            "unless it names a zone)."
        ),
    ] = None,
    timezone: Annotated[str, typer.Option(help="Time zone of naive event times in the file.")] = "UTC",
    label_delay: Annotated[str, typer.Option(help="Delay of labels derived from a label column.")] = "7d",
    batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="Transactions per store call.")] = 500,
) -> None:
    """Warm the online feature store from history (re-runnable: applied transactions are skipped)."""
    from rich.progress import Progress, TextColumn, TimeElapsedColumn

    from features.backfill import backfill as run
    from features.store import RedisFeatureStore, StoreUnavailableError, redis_client
    from fraudpipe.files import SourceError, open_source, parse_mapping

    settings = _settings()
    since_at, limit = _window(since, until)
    try:
        opened = open_source(
            source, parse_mapping(mapping), key=settings.privacy.tokenization_key.get_secret_value().encode(),
            timezone=timezone, label_delay=_duration(label_delay), since=since_at, until=limit,
        )  # fmt: skip
    except (SourceError, ValueError) as error:
        raise CliError(str(error)) from None
    client = redis_client(settings.redis)
    store = RedisFeatureStore(client, settings.redis.key_prefix)
    erasures = _erasures(settings, client)
    with Progress(
        TextColumn("backfilling {task.completed:,.0f} transactions"), TimeElapsedColumn(), console=err
    ) as bar:
        task = bar.add_task("backfill", total=opened.total_rows)
        try:
            erasures.refresh()
            stats = run(opened, store, until=limit, batch_size=batch_size, erasures=erasures,
                        on_progress=lambda s: bar.update(task, completed=s.transactions))  # fmt: skip
        except StoreUnavailableError as error:
            raise CliError(f"{error} (is Redis running at {settings.redis.address}?)") from None
        except SourceError as error:
            raise CliError(str(error)) from None
    Console(soft_wrap=True).print(
        f"{stats.transactions:,} transactions ({stats.applied:,} newly applied), {stats.labels:,} labels applied, "
        f"{stats.rejected:,} rows rejected; {stats.later_labels:,} labels known after the history ends left for "
        "labels.v1" + (f"; {stats.erased:,} events of erased cards skipped" if stats.erased else "")
    )


def _erasures(settings: Settings, client: Any) -> Any:
    """The erasure list in Redis, read on first refresh."""
    from fraudpipe.clock import SystemClock
    from fraudpipe.privacy import ErasureList

    key = settings.privacy.audit_key.get_secret_value().encode()
    return ErasureList.in_redis(client, settings.redis.key_prefix, key, poll_s=settings.privacy.erasure_poll_s,
                                clock=SystemClock())  # fmt: skip


@features_app.command("show")
def features_show(card: Annotated[str, typer.Option("--card", help="Card token (tok_...) or card key.")]) -> None:
    """A card's online state: window totals per bucket, latest payment, how many recent items per kind (no PAN,
    no location)."""
    from datetime import UTC, datetime

    from features.store import RedisFeatureStore, StoreUnavailableError, redis_client
    from features.windows import RESOLUTIONS
    from fraudpipe.pan import is_pan

    if is_pan(card):
        raise CliError("--card takes a card token, never a PAN")
    settings = _settings()
    store = RedisFeatureStore(redis_client(settings.redis), settings.redis.key_prefix)
    try:
        state, blocked = store.card_state(card), store.blocked(card)
    except StoreUnavailableError as error:
        raise CliError(f"{error} (is Redis running at {settings.redis.address}?)") from None
    if state is None:
        raise CliError(f"no online state for card {card}")
    if blocked:
        on = ", ".join(blocked)
        out.print(
            f"[bold]blocked[/]: every payment is declined (card_blocked); confirmed fraud on {on}", soft_wrap=True
        )
    table = Table("resolution", "bucket start (UTC)", "payments", "amount", box=None)
    for res, seconds in RESOLUTIONS.items():
        ring = state.get(res) or []
        for i in range(0, len(ring), 4):
            start = datetime.fromtimestamp(ring[i] * seconds, tz=UTC).strftime("%Y-%m-%d %H:%M")
            table.add_row(res, start, str(ring[i + 1]), f"{ring[i + 2] / 100:,.2f}")
    out.print(table)
    frauds = state.get("f") or []
    latest = datetime.fromtimestamp(state["pt"] / 1e6, tz=UTC).isoformat() if "pt" in state else "-"
    out.print(f"latest payment: {latest}; known frauds: {sum(frauds[1::2])}")
    recent = state.get("r") or {}
    out.print("recent items: " + ", ".join(f"{kind} {len(items)}" for kind, items in sorted(recent.items())))
