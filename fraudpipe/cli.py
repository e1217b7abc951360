"""The ``fraudpipe`` command line: one entry point, one subcommand group per concern.

Each command reads the settings once, calls into the library and prints a short result. Layers above
``fraudpipe`` (``streams``, ``models``, ``features``) are imported inside the commands that need them, so the CLI
stays the bottom layer's edge and ``fraudpipe --help`` starts fast. Expected failures (bad settings, unreachable
broker) print one line to stderr and exit non-zero; they never end in a traceback.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from fraudpipe.settings import Settings, env_example, get_settings

if TYPE_CHECKING:
    from models.dataset import History

__all__ = ["app", "main"]

app = typer.Typer(
    name="fraudpipe",
    help="Real-time card-fraud detection pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
features_app = typer.Typer(help="Online features (Redis).", no_args_is_help=True)
config_app = typer.Typer(help="Settings.", no_args_is_help=True)
model_app = typer.Typer(help="Model registry: versions and the champion / challenger aliases.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(model_app, name="model")
app.add_typer(config_app, name="config")
app.add_typer(features_app, name="features")
audit_app = typer.Typer(help="Audit trail: one transaction's chain, and the logs' seals.", no_args_is_help=True)
privacy_app = typer.Typer(help="Erasure of a data subject, and retention.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(privacy_app, name="privacy")

out = Console()
err = Console(stderr=True)


class CliError(Exception):
    """An expected failure: its message is printed on one line and the command exits with status 1."""


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as error:
        first = error.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise CliError(f"invalid setting {where or '(settings)'}: {first['msg']}") from None


@topics_app.command("create")
def topics_create(
    partitions: Annotated[int | None, typer.Option(min=1, help="Partitions per topic [settings: 6].")] = None,
    replication: Annotated[int | None, typer.Option(min=1, help="Replication factor [settings: 1].")] = None,
    retention_hours: Annotated[float | None, typer.Option(min=0.001, help="Retention of main topics.")] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for the broker.")] = 10.0,
) -> None:
    """Create every fraudpipe topic and its dead-letter topic; existing ones are left as they are."""
    from streams.topics import BrokerUnavailableError, create_topics, topic_specs

    settings = _settings()
    overrides: dict[str, int] = {}
    if partitions is not None:
        overrides["partitions"] = partitions
    if replication is not None:
        overrides["replication_factor"] = replication
    if retention_hours is not None:
        overrides["retention_ms"] = int(retention_hours * 3_600_000)
    topic_settings = settings.topics.model_copy(update=overrides)
    try:
        report = create_topics(settings.kafka, topic_specs(topic_settings), timeout_s=timeout)
    except BrokerUnavailableError as error:
        raise CliError(str(error)) from None
    table = Table("topic", "status", box=None)
    for name in report.created:
        table.add_row(name, "[green]created[/]")
    for name in report.existing:
        table.add_row(name, "exists")
    out.print(table)
    for problem in report.mismatched:
        err.print(f"[yellow]warning[/]: {problem}")


@topics_app.command("grant")
def topics_grant(
    principal: Annotated[str, typer.Option(help="Who gets the rights, e.g. User:worker.")],
    agents: Annotated[str, typer.Option(help="Agents that principal runs (comma-separated).")] = "score,alerts,labels",
    group: Annotated[str | None, typer.Option(help="Its consumer group [settings: kafka.app_id].")] = None,
) -> None:
    """Grant a worker principal the least it needs (streams.topics.worker_acls); run as a Kafka administrator."""
    from confluent_kafka import KafkaException

    from streams.topics import grant_acls, worker_acls

    chosen = [a.strip() for a in agents.split(",") if a.strip()]
    if not chosen or set(chosen) - {"score", "alerts", "labels"}:
        raise CliError("--agents takes score, alerts and/or labels, comma-separated")
    if not principal.startswith("User:"):
        raise CliError("--principal looks like User:NAME")
    settings = _settings()
    specs = worker_acls(settings.topics, group or settings.kafka.app_id, chosen)
    try:
        grant_acls(settings.kafka, principal, specs)
    except KafkaException as error:
        raise CliError(f"the broker refused: {error.args[0]}") from None
    table = Table("resource", "name", "operation", box=None)
    for spec in specs:
        table.add_row(spec.resource, spec.name, spec.operation)
    out.print(table)
    out.print(f"granted to {principal}", highlight=False)


@config_app.command("show")
def config_show() -> None:
    """Print the settings in force (secrets masked)."""
    out.print_json(_settings().model_dump_json(indent=2))


@config_app.command("table")
def config_table() -> None:
    """Every setting as markdown tables (the README's configuration section is this output)."""
    from fraudpipe.settings import settings_table

    sys.stdout.write(settings_table())


@config_app.command("env-example")
def config_env_example() -> None:
    """Print the text of .env.example: every variable with its default."""
    sys.stdout.write(env_example())


_SCENARIO_NAMES = (
    "amount_threshold",
    "compromised_terminals",
    "compromised_cards",
    "card_testing",
    "account_takeover",
    "impossible_travel",
)


def _first_line(error: Exception) -> str:
    """The useful line of an error: pydantic's "N validation errors" header is skipped."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and "validation error" in lines[0]:
        return f"{lines[1]}: {lines[2]}" if len(lines) > 2 else lines[1]
    return lines[0] if lines else type(error).__name__


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


def _duration(text: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "d")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise CliError(f"--label-delay expects a duration like 7d, 12h, 30m or 45s; got {text!r}") from None
    if seconds < 0:
        raise CliError(f"--label-delay must not be negative; got {text!r}")
    return timedelta(seconds=seconds)


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
    """Replay transactions (and their delayed labels) onto Kafka, keyed by card token."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from fraudpipe.files import SourceError, open_source, parse_mapping
    from streams.replay import ReplayOptions, ReplayStats, read_checkpoint
    from streams.replay import replay as run

    if rate is not None and speedup is not None:
        raise CliError("--rate and --speedup exclude each other")
    settings = _settings()
    try:
        opened = open_source(
            source,
            parse_mapping(mapping),
            key=settings.privacy.tokenization_key.get_secret_value().encode(),
            timezone=timezone,
            currency=currency,
            label_delay=_duration(label_delay),
        )
        start = read_checkpoint(checkpoint, source) if resume else from_position
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
    )
    if stats.failed:
        raise CliError(f"{stats.failed:,} messages were not delivered (first error: {stats.first_error})")


@features_app.command("backfill")
def features_backfill(
    source: Annotated[Path, typer.Argument(help="Simulator output folder, or a .csv / .parquet / .jsonl file.")],
    mapping: Annotated[str | None, typer.Option("--map", help="target=column pairs, as for replay.")] = None,
    until: Annotated[str | None, typer.Option(help="Only history before this ISO time (UTC if naive).")] = None,
    timezone: Annotated[str, typer.Option(help="Time zone of naive event times in the file.")] = "UTC",
    label_delay: Annotated[str, typer.Option(help="Delay of labels derived from a label column.")] = "7d",
    batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="Transactions per store call.")] = 500,
) -> None:
    """Warm the online feature store from history (re-runnable: applied transactions are skipped)."""
    from datetime import UTC, datetime

    from rich.progress import Progress, TextColumn, TimeElapsedColumn

    from features.backfill import backfill as run
    from features.store import RedisFeatureStore, StoreUnavailableError, redis_client
    from fraudpipe.files import SourceError, open_source, parse_mapping

    settings = _settings()
    try:
        limit = None if until is None else datetime.fromisoformat(until)
        if limit is not None and limit.tzinfo is None:
            limit = limit.replace(tzinfo=UTC)
        opened = open_source(
            source, parse_mapping(mapping), key=settings.privacy.tokenization_key.get_secret_value().encode(),
            timezone=timezone, label_delay=_duration(label_delay),
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
            raise CliError(f"{error} (is Redis running at {settings.redis.url}?)") from None
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
    try:
        state = RedisFeatureStore(redis_client(settings.redis), settings.redis.key_prefix).card_state(card)
    except StoreUnavailableError as error:
        raise CliError(f"{error} (is Redis running at {settings.redis.url}?)") from None
    if state is None:
        raise CliError(f"no online state for card {card}")
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


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker(ctx: typer.Context) -> None:
    """Run a stream worker (Faust). Extra arguments go to Faust's worker command, e.g. ``-l info``."""
    from prometheus_client import start_http_server

    from models.registry import Registry, RegistryError

    settings = _settings()
    alias = settings.scoring.model_alias
    try:  # refuse to start rather than score with nothing
        model = Registry(settings.paths.models_dir).load(alias)
    except RegistryError as error:
        raise CliError(f"cannot start the worker: {error} (train one: fraudpipe train DATA --promote)") from None
    err.print(f"{alias}: {model.version} ({model.sha256[:12]})", highlight=False)
    _check_redis_login(settings)
    settings.paths.data_dir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    if settings.metrics.port:
        start_http_server(settings.metrics.port, addr=settings.metrics.bind)
    from streams.agents import AGENTS
    from streams.app import app as faust_app
    from streams.app import web_flags

    if not settings.worker.agents:
        raise CliError("FRAUD_WORKER__AGENTS names no agent: nothing to run")
    for name, agents in AGENTS.items():  # agents register on import; drop those this worker does not run
        if name not in settings.worker.agents:
            for agent in agents:
                del faust_app.agents[agent.name]

    sys.argv = ["fraudpipe-worker", "worker", *web_flags(settings), *ctx.args]
    faust_app.main()


def _check_redis_login(settings: Settings) -> None:
    """Refuse to start on a Redis login that is refused: a configuration mistake, not an outage (an outage only
    degrades decisions, so a Redis that does not answer now is let through)."""
    import redis as redis_lib

    from features.store import redis_client

    client = redis_client(settings.redis)
    try:
        client.ping()
    except (redis_lib.AuthenticationError, redis_lib.AuthenticationWrongNumberOfArgsError) as error:
        raise CliError(f"cannot start the worker: Redis refused the login ({error})") from None
    except redis_lib.ResponseError as error:  # NOPERM on PING: the user may run nothing it needs
        raise CliError(f"cannot start the worker: the Redis user may not run PING ({error})") from None
    except redis_lib.RedisError:
        pass
    finally:
        client.close()


@app.command()
def serve() -> None:
    """Run the REST scoring API (POST /v1/score, /healthz, /readyz, /metrics) on settings.api."""
    import uvicorn

    from models.registry import RegistryError
    from streams.api import create_app

    settings = _settings()
    try:
        api = create_app(settings)
    except RegistryError as error:
        raise CliError(f"cannot start the API: {error} (train one: fraudpipe train DATA --promote)") from None
    err.print(f"scoring API on http://{settings.api.bind}:{settings.api.port} (docs at /docs)", highlight=False)
    uvicorn.run(api, host=settings.api.bind, port=settings.api.port, log_level=settings.log_level.lower())


# --- models -------------------------------------------------------------------------------------------------

MapOption = Annotated[str | None, typer.Option("--map", help="target=column pairs, as for replay.")]
SeedOption = Annotated[int | None, typer.Option(help="Training seed [settings: training.seed].")]
RoundsOption = Annotated[int | None, typer.Option(min=1, help="Boosting rounds at most [settings: training.rounds].")]
RateOption = Annotated[float | None, typer.Option(min=1e-6, max=1.0, help="[settings: training.learning_rate].")]


def _day(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise CliError(f"{option} expects a date YYYY-MM-DD; got {text!r}") from None


def _history(source: Path, mapping: str | None, settings: Settings, label_delay: timedelta) -> History:
    from fraudpipe.files import SourceError, parse_mapping
    from models.dataset import load_history

    with err.status(f"reading {source}"):
        try:
            history = load_history(
                source,
                parse_mapping(mapping),
                key=settings.privacy.tokenization_key.get_secret_value().encode(),
                label_delay=label_delay,
            )
        except SourceError as error:
            raise CliError(str(error)) from None
    if history.rejected:
        err.print(f"{history.rejected:,} rows failed validation and were left out (fraudpipe replay lists them)")
    return history


def _training(settings: Settings, seed: int | None, rounds: int | None, learning_rate: float | None) -> Any:
    changes = {"seed": seed, "rounds": rounds, "learning_rate": learning_rate}
    return settings.training.model_copy(update={k: v for k, v in changes.items() if v is not None})


def _fitting(total: int) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("rounds"), TimeElapsedColumn(),
        console=err, transient=True,
    )  # fmt: skip
    task = progress.add_task("train", total=total)
    return progress, lambda done, _: progress.update(task, completed=done)


@app.command()
def train(
    source: Annotated[Path, typer.Argument(help="Simulator output folder, or a .csv / .parquet / .jsonl file.")],
    mapping: MapOption = None,
    train_start: Annotated[str | None, typer.Option(help="First training day [latest that fits].")] = None,
    train_days: Annotated[int, typer.Option(min=1, help="Days of the training window.")] = 14,
    history_days: Annotated[int, typer.Option(min=0, help="More training days before the window.")] = 0,
    delay_days: Annotated[int, typer.Option(min=0, help="Gap whose labels are not known yet.")] = 7,
    valid_days: Annotated[int, typer.Option(min=1, help="Validation days after the gap (early stopping).")] = 7,
    label_delay: Annotated[str, typer.Option(help="Delay of labels derived from a file's label column.")] = "7d",
    alerts_per_day: Annotated[int, typer.Option(min=1, help="Review budget the review threshold is set for.")] = 100,
    decline_precision: Annotated[float, typer.Option(min=0.0, max=1.0, help="Precision the decline needs.")] = 0.9,
    seed: SeedOption = None,
    rounds: RoundsOption = None,
    learning_rate: RateOption = None,
    promote: Annotated[bool, typer.Option(help="Make the new version the champion.")] = False,
    why: Annotated[str, typer.Option(help="Recorded with the promotion.")] = "trained with fraudpipe train",
) -> None:
    """Train a LightGBM model, register it (model, manifest, report) and optionally promote it."""
    from models.registry import Registry
    from models.report import render_report, report_data
    from models.train import latest_windows, train_version

    settings = _settings()
    history = _history(source, mapping, settings, _duration(label_delay))
    windows = latest_windows(history, train_days, delay_days, valid_days)
    if train_start is not None:
        windows = replace(windows, train_start=_day(train_start, "--train-start"))
    windows = replace(windows, history_days=history_days)
    training = _training(settings, seed, rounds, learning_rate)
    progress, update = _fitting(training.rounds)
    with progress:
        try:
            trained = train_version(
                history, windows, training, alerts_per_day=alerts_per_day, decline_precision=decline_precision,
                progress=update,
            )  # fmt: skip
        except ValueError as error:
            raise CliError(str(error)) from None
    registry = Registry(settings.paths.models_dir)
    metrics = trained.fields["metrics"]
    report = render_report(report_data("fraudpipe model (validation window)", trained.fitted.booster,
                                        trained.valid, metrics, trained.fields["windows"]))  # fmt: skip
    segment_metrics = _card_segments(settings, source, trained.valid, trained.fields["thresholds"])
    manifest = registry.register(trained.fitted.booster, trained.fields, report, segment_metrics=segment_metrics)
    if promote:
        registry.promote(manifest.version, why=why)
    thresholds = manifest.thresholds
    Console(soft_wrap=True).print(
        f"registered {manifest.version} ({trained.fitted.rounds} rounds, {metrics['train_seconds']:.1f} s) — "
        f"validation {windows.test[0]}..{windows.test[1] - timedelta(days=1)}: AUC {metrics['auc']:.3f}, "
        f"AP {metrics['ap']:.3f}, CP@{metrics['k']} {metrics['cp_at_k']:.3f}; thresholds review "
        f"{thresholds['review']:.3f} / decline {thresholds['decline']:.3f}"
        + (" — now champion" if promote else "")
        + f"\nreport: {registry.versions_dir / manifest.version / 'report.html'}",
        highlight=False,
    )


@app.command()
def evaluate(
    source: Annotated[Path, typer.Option("--input", help="Simulator folder or .csv / .parquet / .jsonl file.")],
    train_start: Annotated[str, typer.Option(help="First training day, YYYY-MM-DD.")],
    report: Annotated[Path, typer.Option(help="JSON report to write.")],
    mapping: MapOption = None,
    train_days: Annotated[int, typer.Option(min=1)] = 7,
    delay_days: Annotated[int, typer.Option(min=0)] = 7,
    test_days: Annotated[int, typer.Option(min=1)] = 7,
    history_days: Annotated[int, typer.Option(min=0, help="More training days before the window.")] = 0,
    k: Annotated[int, typer.Option(min=1, help="Cards investigated per day (CP@k).")] = 100,
    html: Annotated[Path | None, typer.Option(help="HTML report to write.")] = None,
    seed: SeedOption = None,
    rounds: RoundsOption = None,
    learning_rate: RateOption = None,
) -> None:
    """Train and test under the published protocol (delay gap, known-compromised cards removed); write the report."""
    import json

    from models.evaluate import evaluate as run
    from models.protocol import Windows
    from models.report import report_data, write_report

    settings = _settings()
    windows = Windows(_day(train_start, "--train-start"), train_days, delay_days, test_days, history_days)
    history = _history(source, mapping, settings, timedelta(days=delay_days))
    training = _training(settings, seed, rounds, learning_rate)
    progress, update = _fitting(training.rounds)
    with progress:
        try:
            result = run(history, windows, training, k=k, progress=update)
        except ValueError as error:
            raise CliError(str(error)) from None
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(result.report, indent=2) + "\n")
    if html is not None:
        title = f"fraudpipe evaluate — test {windows.test[0]}..{windows.test[1] - timedelta(days=1)}"
        write_report(report_data(title, result.booster, result.test, result.report, result.report["windows"]), html)
    r = result.report
    auc, ap = (f"{r[key]:.3f}" if r[key] is not None else "n/a" for key in ("auc", "ap"))
    Console(soft_wrap=True).print(
        f"AUC {auc}  AP {ap}  CP@{k} {r['cp_at_k']:.3f}  ({r['n_test']:,} test transactions, "
        f"{r['n_test_fraud']:,} frauds) → {report}" + (f", {html}" if html else ""),
        highlight=False,
    )


@app.command()
def monitor(
    as_of: Annotated[
        str | None, typer.Option(help="Judge as of this time (ISO 8601); default: the stream's latest decision time.")
    ] = None,
    days: Annotated[int, typer.Option(min=1, help="Show the last N event days.")] = 14,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write quality and drift as JSON here.")] = None,
    every: Annotated[
        float | None, typer.Option(min=1.0, help="Repeat every N seconds, serving the numbers as Prometheus gauges.")
    ] = None,
    fail_on_breach: Annotated[bool, typer.Option(help="Exit 3 when a drift breach is found (for schedulers).")] = False,
) -> None:
    """Live quality per day and model version (as labels mature) and drift of the served features and scores."""
    import time

    settings = _settings()
    if every is not None and settings.monitor.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.monitor.metrics_port, addr=settings.metrics.bind)
    while True:
        if every is None:
            if _monitor_once(settings, as_of, days, json_out) and fail_on_breach:
                raise typer.Exit(3)
            return
        _repeating(lambda: _monitor_once(settings, as_of, days, json_out))
        time.sleep(every)


@app.command()
def retrain(
    as_of: Annotated[
        str | None, typer.Option(help="Judge as of this time (ISO 8601); default: the stream's latest decision time.")
    ] = None,
    every: Annotated[float | None, typer.Option(min=1.0, help="Run every N seconds (scheduled).")] = None,
    only_on_breach: Annotated[
        bool,
        typer.Option(
            help="Train only when the champion's served features or scores breach the drift bound (triggered)."
        ),
    ] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the run's report here.")] = None,
    seed: SeedOption = None,
    rounds: RoundsOption = None,
    learning_rate: RateOption = None,
) -> None:
    """Train a challenger from the decision log and matured labels; promote it only if it beats the champion.

    Exit codes: 0 promoted (or nothing to do), 3 the training data failed validation, 4 the gate kept the champion.
    """
    import time

    settings = _settings()
    training = _training(settings, seed, rounds, learning_rate)
    while True:
        if every is None:
            if code := _retrain_once(settings, as_of, only_on_breach, json_out, training):
                raise typer.Exit(code)
            return
        _repeating(lambda: _retrain_once(settings, as_of, only_on_breach, json_out, training))
        time.sleep(every)


def _repeating(run: Any) -> None:
    """One pass of a scheduled (``--every``) command: an expected failure (no decisions yet, Kafka away) is printed
    and the schedule goes on; the next pass tries again."""
    try:
        run()
    except CliError as error:
        err.print(f"[yellow]skipped this pass[/]: {error}", highlight=False, soft_wrap=True)


def _retrain_once(settings: Settings, as_of_text: str | None, only_on_breach: bool, json_out: Path | None,
                  training: Any) -> int:  # fmt: skip
    import json
    from datetime import UTC

    from models.registry import RegistryError
    from models.retrain import DataValidationError
    from models.retrain import retrain as run

    out = Console(soft_wrap=True)
    r = settings.retrain
    reach = r.train_days + r.valid_days + r.holdout_days + settings.monitor.maturity_days + 1
    decisions, labels, as_of = _served_logs(settings, reach, as_of_text)
    registry = _registry()
    champion = registry.aliases().get("champion")
    if only_on_breach and champion is not None:
        reasons = _retrain_reasons(settings, registry, champion, decisions, labels, as_of)
        if not reasons:
            out.print(f"no drift breach or decay for champion {champion}: nothing to retrain", highlight=False)
            return 0
        out.print(f"{'; '.join(reasons)}: retraining", highlight=False)
    try:
        outcome = run(decisions, labels, registry, as_of=as_of, maturity=timedelta(days=settings.monitor.maturity_days),
                      settings=settings.retrain, training=training, k=settings.monitor.k,
                      segments=_training_segments(settings, None), governance=settings.governance)  # fmt: skip
    except DataValidationError as error:
        out.print("[red]training data failed validation, nothing trained:[/red]")
        for failure in error.failures:
            out.print(f"  - {failure}", highlight=False)
        return 3
    except (ValueError, RegistryError) as error:
        raise CliError(str(error)) from None
    report = outcome.report()
    text = json.dumps(report, indent=2) + "\n"
    # Every run's verdict is kept, promoted or not. Not 'retrain': a folder named like a module of the models package
    # would shadow it when models_dir is ./models under an editable install.
    runs = settings.paths.models_dir / "retrain-runs"
    runs.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (runs / f"{stamp}-{outcome.challenger}.json").write_text(text)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(text)
    for name, numbers in outcome.metrics.items():
        out.print(f"{name:<10} on the holdout: " + "  ".join(f"{k} {v:.4f}" for k, v in numbers.items()
                                                            if isinstance(v, float)), highlight=False)  # fmt: skip
    _publish_model_event(settings, {"event": "promoted" if outcome.promoted else "refused", "alias": "champion",
                                    "version": outcome.challenger, "previous": outcome.champion,
                                    "refusals": outcome.refusals, "metrics": outcome.metrics})  # fmt: skip
    if outcome.promoted:
        out.print(f"promoted {outcome.challenger} to champion (was {outcome.champion}); workers swap it in",
                  highlight=False)  # fmt: skip
        return 0
    refusals = "; ".join(outcome.refusals)
    out.print(f"kept champion {outcome.champion}; challenger {outcome.challenger} refused: {refusals}", highlight=False)
    return 4


def _auto_rollback(settings: Settings, registry: Any, quality: Any, out: Console) -> None:
    """Roll the champion back when its matured AP fell below the previous champion's (``monitor`` settings)."""
    from models.monitor import rollback_reason

    history = [entry for entry in registry.history() if entry["alias"] == "champion"]
    if not history or history[-1]["action"] != "promote" or history[-1]["previous"] is None:
        return  # only a promotion is undone automatically: never a rollback, never twice
    current, previous = history[-1]["version"], history[-1]["previous"]
    cfg = settings.monitor
    assert cfg.rollback_margin_ap is not None
    reason = rollback_reason(quality, current, previous, margin=cfg.rollback_margin_ap, min_days=cfg.rollback_min_days)
    if reason is None:
        return
    back = registry.rollback(by="fraudpipe monitor", why=f"automatic rollback: {reason}")
    out.print(f"[red]rolled the champion back from {current} to {back}:[/red] {reason}", highlight=False)
    _publish_model_event(settings, {"event": "rolled_back", "alias": "champion", "version": back,
                                    "previous": current, "refusals": [reason], "metrics": {}})  # fmt: skip


def _retrain_reasons(settings: Settings, registry: Any, champion: str, decisions: Any, labels: Any,
                     as_of: datetime) -> list[str]:  # fmt: skip
    """What calls for retraining the champion: a drift breach over the monitor's window, or matured-metric decay."""
    from models.monitor import decay_reason, live_quality

    cfg = settings.monitor
    manifest = registry.manifest(champion)
    windows = _drift(settings, decisions, {champion: manifest.reference})
    breaches = [d.name for w in windows for d in w.breaches]
    reasons = [f"drift breach for champion {champion} ({', '.join(breaches[:5])})"] if breaches else []
    quality = live_quality(decisions, labels, as_of=as_of, maturity=timedelta(days=cfg.maturity_days), k=cfg.k)
    decay = decay_reason(quality, champion, manifest.metrics.get("ap"), days=settings.retrain.holdout_days,
                         max_drop=cfg.decay_ap_drop)  # fmt: skip
    return reasons + ([f"decay: {decay}"] if decay else [])


def _as_of(text: str) -> datetime:
    from datetime import UTC

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"--as-of: not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _publish_model_event(settings: Settings, event: dict[str, Any]) -> None:
    """Tell model-events.v1 what a retraining run decided (workers also follow the registry on their own)."""
    import json
    import logging
    from datetime import UTC

    from confluent_kafka import KafkaException, Producer

    event = {**event, "at": datetime.now(UTC).isoformat()}
    failures: list[str] = []

    def delivered(error: Any, _: Any) -> None:
        if error is not None:
            failures.append(str(error))

    try:
        config = {**settings.kafka.client_config(), "message.timeout.ms": 5_000}
        producer = Producer(config, logger=logging.getLogger("fraudpipe.kafka"))
        producer.produce(settings.topics.full(settings.topics.registry_events), value=json.dumps(event).encode(),
                         on_delivery=delivered)  # fmt: skip
        if producer.flush(10) != 0 or failures:
            raise KafkaException(failures[0] if failures else "not delivered within 10 s")
    except KafkaException as error:
        err.print(f"warning: model event not published to {settings.topics.registry_events}: {error}")


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
) -> None:
    """The whole pipeline on this machine: local Kafka and Redis, a simulated history, a champion, a worker, the
    monitor, the API and its dashboard, and a live stream with labels — with a live summary. Ctrl-C stops all."""
    from rich.live import Live

    from streams.demo import DemoOptions, run
    from streams.demo_report import render_live

    settings = _settings()
    options = DemoOptions(work_dir=work_dir.resolve(), duration_s=duration, rate=rate, customers=customers,
                          history_days=history_days, live_days=live_days, api_port=port)  # fmt: skip
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
    if final["decisions"] == 0:
        raise CliError(f"demo: no decision was made; see the logs in {final['logs']}")


@app.command()
def bench(
    events: Annotated[int, typer.Option(min=1_000, help="Events of each maximum-rate run.")] = 200_000,
    workers: Annotated[int, typer.Option(min=1, max=2, help="Worker processes.")] = 1,
    repeat: Annotated[int, typer.Option(min=1, max=9, help="Maximum-rate runs (median reported).")] = 1,
    paced_events: Annotated[int, typer.Option(min=1_000, help="Events of each paced run.")] = 30_000,
    naive_events: Annotated[int, typer.Option(min=500, help="Events of the naive baseline.")] = 10_000,
    customers: Annotated[int, typer.Option(min=100, help="Simulated customers (cards).")] = 5_000,
    history_days: Annotated[int, typer.Option(min=10, help="Days of history: training and warm state.")] = 30,
    stage_events: Annotated[int, typer.Option(min=500, help="Events of the in-process stage timings.")] = 10_000,
    work_dir: Annotated[Path, typer.Option(help="Scratch folder (emptied first).")] = Path("var/bench"),
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
) -> None:
    """Measure the worker end to end on local Kafka and Redis: throughput, latency, baselines, stages."""
    import json
    import shutil
    import time

    from streams.bench import BenchOptions, markdown, run

    base = _settings()
    marker = work_dir / ".fraudpipe-bench"
    if work_dir.exists() and any(work_dir.iterdir()) and not marker.exists():
        raise CliError(f"--work-dir {work_dir} is not empty and not a previous bench folder: not touching it")
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    marker.touch()
    settings = base.model_copy(
        update={
            "paths": base.paths.model_copy(update={"data_dir": work_dir / "data", "models_dir": work_dir / "models"}),
            "redis": base.redis.model_copy(update={"key_prefix": "fp:bench:"}),
        }
    )
    client = _bench_redis(settings)
    for key in client.scan_iter(match="fp:bench:*", count=10_000):
        client.unlink(key)
    options = BenchOptions(events=events, workers=workers, repeat=repeat, paced_events=paced_events,
                           naive_events=naive_events, stage_events=stage_events, history_days=history_days,
                           customers=customers)  # fmt: skip
    started = time.monotonic()
    report = run(settings, options, work_dir,
                 progress=lambda text: err.print(f"bench [{time.monotonic() - started:5.0f} s]: {text}",
                                                 highlight=False))  # fmt: skip
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2) + "\n")
    Console(soft_wrap=True).print(markdown(report), highlight=False)


def _bench_redis(settings: Settings) -> Any:
    import redis

    from streams.bench import ensure_services

    ensure_services(settings)
    return redis.Redis.from_url(settings.redis.url)


def _served_logs(settings: Settings, days: int, as_of_text: str | None) -> tuple[Any, Any, datetime]:
    """The decision and label logs of the ``days`` event days up to ``as_of`` (default: the latest decision's event
    time), read by day partition so a long log is never read whole; and ``as_of``."""
    from fraudpipe.logstore import DayLog

    log = DayLog(settings.paths.data_dir / "decisions", "event_time")
    available = log.days()
    if not available:
        raise CliError(f"no decisions under {settings.paths.data_dir / 'decisions'} yet (is a worker running?)")
    end = available[-1] if as_of_text is None else _as_of(as_of_text).date()
    span = (end - timedelta(days=days), end + timedelta(days=1))
    decisions = log.read(span)
    if decisions.is_empty():
        raise CliError(f"no decisions between {span[0]} and {end}")
    labels = DayLog(settings.paths.data_dir / "labels", "event_time").read(span)
    as_of = _latest(decisions, "event_time") if as_of_text is None else _as_of(as_of_text)
    return decisions, labels, as_of


def _drift(settings: Settings, decisions: Any, references: dict[str, Any]) -> Any:
    """Drift of the decisions made in the monitor's window before the latest one, per model version."""
    from models.monitor import live_drift

    cfg = settings.monitor
    since = _latest(decisions, "decided_at") - timedelta(hours=cfg.drift_window_hours)
    return live_drift(decisions, references, since=since, moderate=cfg.psi_moderate, breach=cfg.psi_breach)


def _latest(frame: Any, column: str) -> datetime:
    value = frame.get_column(column).max()
    assert isinstance(value, datetime)
    return value


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _monitor_once(settings: Settings, as_of_text: str | None, days: int, json_out: Path | None) -> int:
    """One pass of ``fraudpipe monitor``: print, export, write; the number of drift breaches."""
    import json

    import polars as pl

    from fraudpipe.logstore import DayLog
    from models.monitor import live_quality
    from models.registry import RegistryError
    from streams import metrics

    cfg = settings.monitor
    decisions, labels, as_of = _served_logs(settings, days, as_of_text)
    maturity = timedelta(days=cfg.maturity_days)
    quality = live_quality(decisions, labels, as_of=as_of, maturity=maturity, k=cfg.k)
    first_day = as_of.date() - timedelta(days=days)
    shadow = DayLog(settings.paths.data_dir / "shadow", "event_time").read(
        (first_day, as_of.date() + timedelta(days=1))
    )
    if not shadow.is_empty():  # the challenger's would-be decisions, judged on the same labels
        judged = live_quality(shadow, labels, as_of=as_of, maturity=maturity, k=cfg.k)
        judged = judged.with_columns(model_version=pl.col("model_version") + " (shadow)")
        quality = pl.concat([quality, judged]).sort("day", "model_version")
    first = as_of.date() - timedelta(days=days - 1)
    quality = quality.filter(pl.col("day") >= first) if not quality.is_empty() else quality
    references = {}
    registry = _registry()
    for version in decisions.get_column("model_version").drop_nulls().unique().to_list():
        try:
            references[version] = registry.manifest(version).reference
        except RegistryError:
            continue
    windows = _drift(settings, decisions, references)

    table = Table("day", "model", "matured", "decisions", "alert rate", "frauds", "caught", "precision", "recall",
                  "AP", f"CP@{cfg.k}", "labelled", box=None)  # fmt: skip
    for row in quality.iter_rows(named=True):
        rates = [_fmt(row[name]) for name in ("precision", "recall", "ap", "cp_at_k", "label_coverage")]
        table.add_row(str(row["day"]), row["model_version"], "yes" if row["matured"] else "no",
                      f"{row['decisions']:,}", _fmt(row["alert_rate"]), str(row["frauds"]), str(row["caught"]),
                      *rates)  # fmt: skip
    out = Console(soft_wrap=True)
    out.print(f"as of {as_of.isoformat()} (days matured after {cfg.maturity_days} days)", highlight=False)
    out.print(table)
    breaches = 0
    for window in windows:
        top = sorted(window.drift, key=lambda d: d.psi, reverse=True)[:5]
        worst = ", ".join(f"{d.name} {d.psi:.3f} ({d.level})" for d in top)
        out.print(f"drift of model {window.model_version} over {window.decisions:,} decisions in the last "
                  f"{cfg.drift_window_hours:g} h: {len(window.breaches)} breaches; highest PSI: {worst}",
                  highlight=False)  # fmt: skip
        breaches += len(window.breaches)
        metrics.DRIFT_BREACHES.labels(window.model_version).set(len(window.breaches))
        for drift in window.drift:
            metrics.DRIFT_PSI.labels(window.model_version, drift.name).set(drift.psi)
    if cfg.rollback_margin_ap is not None:
        _auto_rollback(settings, registry, quality, out)
    matured = quality.filter(pl.col("matured")) if not quality.is_empty() else quality
    for (version,), group in matured.group_by("model_version") if not matured.is_empty() else []:
        latest = group.sort("day").row(-1, named=True)
        for name in ("precision", "recall", "ap", "cp_at_k", "alert_rate", "label_coverage"):
            if latest[name] is not None:
                metrics.LIVE_QUALITY.labels(str(version), name).set(latest[name])
    if json_out is not None:
        payload = {
            "as_of": as_of.isoformat(),
            "quality": [{**row, "day": str(row["day"])} for row in quality.iter_rows(named=True)],
            "drift": [{"model_version": w.model_version, "decisions": w.decisions,
                       "columns": [{"name": d.name, "psi": d.psi, "kl": d.kl, "level": d.level} for d in w.drift]}
                      for w in windows],
        }  # fmt: skip
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(payload, indent=2) + "\n")
    return breaches


def _audit_key(settings: Settings) -> bytes:
    return settings.privacy.audit_key.get_secret_value().encode()


@audit_app.command("show")
def audit_show(
    txn_id: Annotated[str, typer.Argument(help="Transaction id.")],
    day: Annotated[str | None, typer.Option(help="Its event day (YYYY-MM-DD), to search one day only.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the trail as JSON.")] = False,
) -> None:
    """A transaction's full chain: event (tokenized), features as served, model and hash, score, thresholds,
    decision, reason codes, alert and sinks, labels — and whether the log files it came from are intact."""
    import json

    from fraudpipe.audit import trail
    from fraudpipe.logstore import Logs
    from models.registry import Registry, RegistryError

    settings = _settings()
    days = None
    if day is not None:
        first = _day(day, "--day")
        days = (first, first + timedelta(days=1))
    registry = Registry(settings.paths.models_dir)

    def registered(version: str) -> str | None:
        try:
            return registry.manifest(version).model_sha256
        except RegistryError:
            return None

    found = trail(txn_id, Logs.under(settings.paths.data_dir), registered=registered, key=_audit_key(settings),
                  days=days)  # fmt: skip
    if found is None:
        raise CliError(f"no decision for transaction {txn_id} in {settings.paths.data_dir / 'decisions'}")
    if json_out:
        out.print_json(json.dumps(found, default=str))
        return
    decision = found["decision"]
    say = partial(out.print, highlight=False, soft_wrap=True)
    say(f"[bold]{txn_id}[/]")
    say("event: " + ", ".join(f"{k}={v}" for k, v in found["event"].items() if v is not None))
    say(
        f"decision: [bold]{decision['decision']}[/] at {decision['decided_at']} — score {_fmt(decision['score'])}, "
        f"thresholds review {decision['review_threshold']} / decline {decision['decline_threshold']}, model "
        f"{decision['model_version'] or '-'} ({decision['model_check']}), latency {decision['latency_ms']:.1f} ms"
        + (", DEGRADED" if decision["degraded"] else "")
        + (f", {decision['redeliveries']} redelivered copies" if decision["redeliveries"] else ""),
    )
    for code in decision["reason_codes"]:
        say(f"  reason: {code['feature']} = {code['value']} {code['direction']} the score by "
            f"{abs(code['contribution']):.3f}")  # fmt: skip
    served = ", ".join(f"{k}={_fmt(v)}" for k, v in decision["features"].items())
    say(f"features as served: {served}")
    if found["alert"] is not None:
        sinks = ", ".join(f"{s['sink']} {s['outcome']} {s['at']}" for s in found["alert"]["sinks"]) or "none yet"
        say(f"alert {found['alert']['alert_id']}: {sinks}")
    for label in found["labels"] or [{}]:
        say("label: " + (", ".join(f"{k}={v}" for k, v in label.items()) or "none received"))
    for name, state in found["seals"].items():
        say(f"seal {name}: {state}")


@audit_app.command("verify")
def audit_verify() -> None:
    """Check every sealed log file (decisions, labels, deliveries, shadow); exit 3 if any was altered."""
    from fraudpipe.logstore import Logs

    settings = _settings()
    logs = Logs.under(settings.paths.data_dir, _audit_key(settings))
    table = Table("log", "files", "rows", "broken", box=None)
    broken_files = 0
    for name, day_log in logs.all().items():
        rows, broken = day_log.verify()
        broken_files += len(broken)
        table.add_row(name, str(len(day_log.files())), f"{rows:,}", str(len(broken)))
        for path, problem in broken:
            err.print(f"[red]altered[/]: {path} — row {problem.row}: {problem.why}", highlight=False, soft_wrap=True)
    out.print(table)
    if broken_files:
        raise SystemExit(3)
    out.print("every log file is intact")


@privacy_app.command("erase")
def privacy_erase(
    card: Annotated[str | None, typer.Option("--card", help="Card token (tok_...).")] = None,
    pan: Annotated[str | None, typer.Option("--pan", help="Card number: tokenized here, never stored.")] = None,
    customer: Annotated[str | None, typer.Option("--customer", help="Customer id: every card of theirs.")] = None,
) -> None:
    """Erase a data subject everywhere fraudpipe keeps them, block later replays of their old events, and write a
    receipt without personal data."""
    import getpass

    import redis as redis_lib

    from features.store import redis_client
    from fraudpipe.clock import SystemClock
    from fraudpipe.logstore import Logs
    from fraudpipe.pan import InvalidPanError, is_pan, tokenize_pan
    from fraudpipe.privacy import customer_cards, erase

    if sum(x is not None for x in (card, pan, customer)) != 1:
        raise CliError("give exactly one of --card, --pan, --customer")
    settings = _settings()
    logs = Logs.under(settings.paths.data_dir, _audit_key(settings))
    if card is not None:
        if is_pan(card):
            raise CliError("--card takes a card token; give a card number with --pan")
        tokens, asked = [card], "card"
    elif pan is not None:
        try:
            key = settings.privacy.tokenization_key.get_secret_value().encode()
            tokens, asked = [tokenize_pan(pan, key).token], "pan"
        except InvalidPanError as error:
            raise CliError(str(error)) from None
    else:
        assert customer is not None
        path = settings.governance.segments_path
        tokens = customer_cards(customer, logs, _segment_file(path) if path is not None else None)
        asked = "customer"
        if not tokens:
            raise CliError("no card of this customer in the decision log or the segments table")
    client = redis_client(settings.redis)
    try:
        receipt = erase(
            tokens, requested_as=asked, client=client, prefix=settings.redis.key_prefix, key=_audit_key(settings),
            logs=logs, alert_stream=settings.sinks.redis_stream_key,
            alert_file=settings.sinks.jsonl_path if "jsonl" in settings.sinks.enabled else None,
            receipts=settings.paths.data_dir / "privacy" / "receipts", clock=SystemClock(),
            settle_s=settings.privacy.erasure_poll_s + 1.0, by=getpass.getuser(),
        )  # fmt: skip
    except redis_lib.RedisError as error:
        raise CliError(f"Redis: {error} (is Redis running at {settings.redis.url}?); no file was changed") from None
    rows = ", ".join(f"{n} {c}" for n, c in receipt.log_rows.items())
    out.print(
        f"erased {len(receipt.subjects)} card(s), {receipt.transactions} transaction(s): {receipt.redis_keys} Redis "
        f"keys, {receipt.alert_stream_entries} alert-stream entries, log rows ({rows}), "
        f"{receipt.alert_file_lines} alert-file lines; receipt {receipt.erasure_id}",
        highlight=False,
    )


@privacy_app.command("retain")
def privacy_retain(
    as_of: Annotated[str | None, typer.Option(help="Apply retention as of this UTC time [now].")] = None,
) -> None:
    """Enforce the retention settings (``FRAUD_PRIVACY__RETAIN_*``): drop log days, trim alert copies."""
    import redis as redis_lib

    from features.store import redis_client
    from fraudpipe.logstore import Logs
    from fraudpipe.privacy import retain

    settings = _settings()
    p = settings.privacy
    keep = {"decisions": p.retain_decisions_days, "labels": p.retain_labels_days,
            "deliveries": p.retain_deliveries_days, "shadow": p.retain_shadow_days}  # fmt: skip
    client = redis_client(settings.redis) if "redis_stream" in settings.sinks.enabled else None
    from datetime import UTC

    moment = _as_of(as_of) if as_of else datetime.now(UTC)
    try:
        removed = retain(Logs.under(settings.paths.data_dir, _audit_key(settings)), keep, as_of=moment,
                         client=client, alert_stream=settings.sinks.redis_stream_key,
                         alert_file=settings.sinks.jsonl_path if "jsonl" in settings.sinks.enabled else None,
                         alert_days=p.retain_alerts_days)  # fmt: skip
    except redis_lib.RedisError as error:
        raise CliError(f"Redis: {error} (is Redis running at {settings.redis.url}?)") from None
    out.print("removed: " + ", ".join(f"{name} {count}" for name, count in removed.items()), highlight=False)


def _registry() -> Any:
    from models.registry import Registry

    return Registry(_settings().paths.models_dir)


@model_app.command("list")
def model_list() -> None:
    """Every version with its validation metrics and aliases."""
    registry = _registry()
    aliases = registry.aliases()
    table = Table("version", "created", "AUC", "AP", "CP@k", "aliases")
    for version in registry.versions():
        m = registry.manifest(version)
        names = ", ".join(alias for alias, target in aliases.items() if target == version)
        auc, ap = (f"{m.metrics.get(key) or 0:.3f}" for key in ("auc", "ap"))
        table.add_row(version, f"{m.created_at:%Y-%m-%d %H:%M}", auc, ap, f"{m.metrics.get('cp_at_k', 0):.3f}", names)
    out.print(table)


@model_app.command("show")
def model_show(ref: Annotated[str, typer.Argument(help="Version (v0001) or alias (champion).")] = "champion") -> None:
    """A version's manifest (without its reference distributions), verified against its model file."""
    import json

    from models.registry import RegistryError

    registry = _registry()
    try:
        manifest = registry.load(ref).manifest
    except RegistryError as error:
        raise CliError(str(error)) from None
    shown = manifest.model_dump(mode="json", exclude={"reference"})
    Console(soft_wrap=True).print_json(json.dumps(shown))


@model_app.command("promote")
def model_promote(
    version: Annotated[str, typer.Argument(help="Version to promote.")],
    why: Annotated[str, typer.Option(help="Why (recorded).")],
    alias: Annotated[str, typer.Option(help="champion or challenger.")] = "champion",
) -> None:
    """Point an alias at a version (verified first)."""
    from models.registry import RegistryError

    try:
        _registry().promote(version, alias=alias, why=why)
    except RegistryError as error:
        raise CliError(str(error)) from None
    out.print(f"{alias} → {version}")


@model_app.command("rollback")
def model_rollback(
    why: Annotated[str, typer.Option(help="Why (recorded).")],
    alias: Annotated[str, typer.Option(help="champion or challenger.")] = "champion",
) -> None:
    """Point an alias back at the version it had before."""
    from models.registry import RegistryError

    try:
        version = _registry().rollback(alias=alias, why=why)
    except RegistryError as error:
        raise CliError(str(error)) from None
    out.print(f"{alias} → {version} (rolled back)")


@model_app.command("history")
def model_history() -> None:
    """Every alias change: when, what, who, why."""
    table = Table("at", "alias", "action", "version", "previous", "by", "why")
    for entry in _registry().history():
        table.add_row(entry["at"][:19], entry["alias"], entry["action"], entry["version"] or "-",
                      entry["previous"] or "-", entry["by"], entry["why"])  # fmt: skip
    out.print(table)


@model_app.command("card")
def model_card(
    ref: Annotated[str, typer.Argument(help="Version (v0001) or alias (champion).")] = "champion",
    out_path: Annotated[Path | None, typer.Option("--out", help="Write the card here instead of printing it.")] = None,
) -> None:
    """A version's model card (Markdown): intended use, training data, features, metrics overall and per segment,
    fairness summary, known limitations. Versions registered before cards get one rendered from their manifest."""
    from models.registry import RegistryError

    try:
        text = _registry().card(ref)
    except RegistryError as error:
        raise CliError(str(error)) from None
    if out_path is None:
        sys.stdout.write(text)
        return
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text)
    out.print(f"model card of {ref} → {out_path}", highlight=False)


def _segment_file(path: Path) -> Any:
    """The segment table at ``path`` (.csv read as text, or .parquet).

    Raises:
        CliError: missing, of another kind, or unreadable.
    """
    import polars as pl

    if not path.is_file():
        raise CliError(f"segment table {path} not found")
    if path.suffix.lower() not in {".csv", ".parquet"}:
        raise CliError(f"segment table {path}: expected a .csv or .parquet file")
    try:
        return pl.read_csv(path, infer_schema=False) if path.suffix.lower() == ".csv" else pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as error:
        raise CliError(f"cannot read segment table {path}: {_first_line(error)}") from None


def _training_segments(settings: Settings, source: Path | None) -> Any:
    """The segments a new version's model card is measured by: ``governance.segments_path``, else a simulator
    folder's ``customers.parquet``; ``None`` (with a warning when one was expected) if there are none to use."""
    from models.fairness import segments_of

    g = settings.governance
    folder_table = source / "customers.parquet" if source is not None and source.is_dir() else None
    path = g.segments_path or (folder_table if folder_table is not None and folder_table.is_file() else None)
    if path is None:
        return None
    if g.segment_key != "card_token":  # training rows know their card only
        err.print(f"warning: model card without segment metrics: training rows have no {g.segment_key!r} column "
                  "(FRAUD_GOVERNANCE__SEGMENT_KEY); they are joined by card_token", highlight=False,
                  soft_wrap=True)  # fmt: skip
        return None
    try:
        table = _segment_file(path)
        columns = [name for name in g.segment_columns if name in table.columns]
        absent = [name for name in g.segment_columns if name not in table.columns]
        if absent:
            err.print(f"warning: segment table {path} has no column {', '.join(absent)}", highlight=False,
                      soft_wrap=True)  # fmt: skip
        return segments_of(table, g.segment_key, columns, source=str(path))
    except (CliError, ValueError) as error:
        err.print(f"warning: model card without segment metrics: {error}", highlight=False, soft_wrap=True)
        return None


def _card_segments(settings: Settings, source: Path, rows: Any, thresholds: dict[str, Any]) -> Any:
    """Per-segment metrics and fairness of a trained version on its scored validation ``rows``, for its card."""
    from models.fairness import card_segments

    segments = _training_segments(settings, source)
    if segments is None:
        return None
    g = settings.governance
    return card_segments(rows, thresholds, segments, window="validation", bound=g.disparity_bound,
                         min_decisions=g.min_segment_decisions)  # fmt: skip


def _pairs_of(values: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not name or not setting:
            raise CliError(f"{option} expects COLUMN=VALUE; got {value!r}")
        pairs[name] = setting
    return pairs


@app.command()
def fairness(
    segments: Annotated[
        Path | None, typer.Option(help="Segment table, .csv or .parquet (settings: governance.segments_path).")
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="Column joining decisions to segments (settings: governance.segment_key).")
    ] = None,
    by: Annotated[
        list[str], typer.Option("--by", help="Segment column (repeatable; settings: governance.segment_columns).")
    ] = [],  # noqa: B006
    reference: Annotated[
        list[str], typer.Option(help="COLUMN=VALUE: a column's reference segment (repeatable; default: the largest).")
    ] = [],  # noqa: B006
    as_of: Annotated[
        str | None, typer.Option(help="Judge as of this time (ISO 8601); default: the stream's latest decision time.")
    ] = None,
    days: Annotated[int, typer.Option(min=1, help="Judge the last N matured event days.")] = 30,
    bound: Annotated[
        float | None, typer.Option(help="Flag ratios outside bound..1/bound (settings: governance.disparity_bound).")
    ] = None,
    min_decisions: Annotated[
        int | None, typer.Option(min=1, help="Smaller segments are never flagged (governance.min_segment_decisions).")
    ] = None,
    html: Annotated[Path | None, typer.Option(help="Write the HTML report (plots and tables) here.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.")] = None,
    fail_on_flag: Annotated[bool, typer.Option(help="Exit 3 when a ratio is flagged (for schedulers).")] = False,
) -> None:
    """Alert rate, false-positive rate, precision and recall of matured decisions per customer segment, their
    ratios to a reference segment, and a warning for each ratio outside the bound (the four-fifths rule)."""
    import json

    from models.fairness import fairness as judge
    from models.fairness import judged_decisions, segments_of
    from models.fairness_report import render_fairness
    from models.report import write_html

    settings = _settings()
    g = settings.governance
    path = segments or g.segments_path
    if path is None:
        raise CliError("no segment table: pass --segments PATH (.csv or .parquet) or set "
                       "FRAUD_GOVERNANCE__SEGMENTS_PATH")  # fmt: skip
    chosen = bound if bound is not None else g.disparity_bound
    if not 0.0 < chosen <= 1.0:
        raise CliError(f"--bound must be in (0, 1]; got {chosen}")
    try:
        table = segments_of(_segment_file(path), key or g.segment_key, by or g.segment_columns, source=str(path))
    except ValueError as error:
        raise CliError(f"{path}: {error}") from None
    references = _pairs_of(reference, "--reference")
    unknown = sorted(set(references) - set(table.columns))
    if unknown:
        raise CliError(f"--reference names {', '.join(unknown)}, not a reported column ({', '.join(table.columns)})")
    maturity = timedelta(days=settings.monitor.maturity_days)
    decisions, labels, moment = _served_logs(settings, days + settings.monitor.maturity_days + 1, as_of)
    judged = judged_decisions(decisions, labels, as_of=moment, maturity=maturity, days=days)
    if judged.is_empty():
        raise CliError(f"no decisions on matured days as of {moment.isoformat()} (a day matures "
                       f"{settings.monitor.maturity_days} days after it ends: FRAUD_MONITOR__MATURITY_DAYS; or a "
                       "later --as-of)")  # fmt: skip
    try:
        report = judge(judged, table, bound=chosen, min_decisions=min_decisions or g.min_segment_decisions,
                       reference=references)  # fmt: skip
    except ValueError as error:
        raise CliError(str(error)) from None
    span = (str(judged.get_column("day").min()), str(judged.get_column("day").max()))
    context = {"as of": moment.isoformat(), "matured days": f"{span[0]} .. {span[1]}",
               "maturity (days)": settings.monitor.maturity_days, "segments": str(path), "key": table.key}  # fmt: skip
    _print_fairness(report, context)
    if json_out is not None:
        payload = {"as_of": moment.isoformat(), "window": {"from": span[0], "to": span[1], "days": days},
                   "maturity_days": settings.monitor.maturity_days, "segments": str(path), "key": table.key,
                   **report.to_dict()}  # fmt: skip
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(payload, indent=2) + "\n")
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        write_html(render_fairness(report, title="fraudpipe fairness report", context=context), html)
    if report.flags and fail_on_flag:
        raise typer.Exit(3)


def _print_fairness(report: Any, context: dict[str, Any]) -> None:
    """The headline, a table per segment column (each rate with its ratio to the reference), a warning per flag."""
    o = report.overall
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 132)
    console.print(
        f"{o.decisions:,} decisions on matured days {context['matured days']} (as of {context['as of']}): alert rate "
        f"{_fmt(o.alert_rate)}, false-positive rate {_fmt(o.fpr)}, precision {_fmt(o.precision)}, recall "
        f"{_fmt(o.recall)}; {report.unmatched:,} without a segment row; bound [{report.bound:.2f}, "
        f"{1 / report.bound:.2f}] for segments of {report.min_decisions:,}+ decisions",
        highlight=False,
    )
    for column in report.columns:
        title = f"by {column.column} (reference {column.reference})"
        table = Table("segment", "decisions", "frauds", "alert rate", "ratio", "FPR", "ratio", "recall", "ratio",
                      "precision", "", box=None, title=title)  # fmt: skip
        for s in column.segments:
            ratio = {name: "-" if value is None else f"{value:.2f}" for name, value in (s.ratios or {}).items()}
            mark = "reference" if s.reference else ("[red]flagged[/]" if s.flags else ("" if s.flaggable else "small"))
            table.add_row(s.value, f"{s.decisions:,}", f"{s.frauds:,}", _fmt(s.alert_rate), ratio["alert_rate"],
                          _fmt(s.fpr), ratio["fpr"], _fmt(s.recall), ratio["recall"], _fmt(s.precision),
                          mark)  # fmt: skip
        console.print(table)
    for flag in report.flags:
        err.print(f"[yellow]warning[/]: {flag.message(report.bound)}", highlight=False, soft_wrap=True)


def _fail(message: str) -> NoReturn:
    from rich.markup import escape

    err.print(f"[red]error[/]: {escape(message)}", highlight=False, soft_wrap=True)
    raise SystemExit(1)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except CliError as error:
        _fail(str(error))
