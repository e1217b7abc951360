"""The ``fraudpipe`` command line: one entry point, one subcommand group per concern.

Each command reads the settings once, calls into the library and prints a short result. Layers above
``fraudpipe`` (``streams``, ``models``, ``features``) are imported inside the commands that need them, so the CLI
stays the bottom layer's edge and ``fraudpipe --help`` starts fast. Expected failures (bad settings, unreachable
broker) print one line to stderr and exit non-zero; they never end in a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from fraudpipe.settings import Settings, env_example, get_settings

__all__ = ["app", "main"]

app = typer.Typer(
    name="fraudpipe",
    help="Real-time card-fraud detection pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
config_app = typer.Typer(help="Settings.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(config_app, name="config")

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


@config_app.command("show")
def config_show() -> None:
    """Print the settings in force (secrets masked)."""
    out.print_json(_settings().model_dump_json(indent=2))


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
    from fraudpipe.simulator.output import OutputExistsError, write_simulation

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
        raise CliError(f"invalid simulation settings: {str(error).splitlines()[0]}") from None

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
        except OutputExistsError as error:
            raise CliError(str(error)) from None
    elapsed = time.perf_counter() - began
    out_console = Console(soft_wrap=True)
    out_console.print(
        f"{summary['transactions']:,} transactions, {summary['frauds']:,} frauds "
        f"({100 * float(summary['fraud_rate']):.3f} %), {summary['labels']:,} labels in {elapsed:.1f} s -> {out}"
    )
    for name, count in summary["frauds_by_scenario"].items():
        out_console.print(f"  {name:<24} {count:>9,}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker(ctx: typer.Context) -> None:
    """Run a stream worker (Faust). Extra arguments go to Faust's worker command, e.g. ``-l info``."""
    settings = _settings()
    settings.paths.data_dir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    from streams.agents import screen_transactions  # noqa: F401 - registers the agents
    from streams.app import app as faust_app

    sys.argv = ["fraudpipe-worker", "worker", *ctx.args]
    faust_app.main()


def _fail(message: str) -> NoReturn:
    err.print(f"[red]error[/]: {message}", highlight=False, soft_wrap=True)
    raise SystemExit(1)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except CliError as error:
        _fail(str(error))
