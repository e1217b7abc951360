"""The ``fraudpipe`` command line: one entry point, one subcommand group per concern.

Each command reads the settings once, calls into the library and prints a short result. Layers above
``fraudpipe`` (``streams``, ``models``, ``features``) are imported inside the commands that need them, so the CLI
stays the bottom layer's edge and ``fraudpipe --help`` starts fast. Expected failures (bad settings, unreachable
broker) print one line to stderr and exit non-zero; they never end in a traceback.
"""

from __future__ import annotations

import sys
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
