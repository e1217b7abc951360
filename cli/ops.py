"""Commands that set up and run the pipeline's services: ``topics create|grant`` on Kafka,
``config show|table|env-example`` for the settings, the stream ``worker``, the REST scoring API (``serve``) and its
keys (``api-key``)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from cli._apps import app, config_app, topics_app
from cli._common import CliError, _settings, err, out
from fraudpipe.settings import Settings, env_example


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
    """Every setting as markdown tables (docs/configuration.md is this output)."""
    from fraudpipe.settings import settings_table

    sys.stdout.write(settings_table())


@config_app.command("env-example")
def config_env_example() -> None:
    """Print the text of .env.example: every variable with its default."""
    sys.stdout.write(env_example())


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker(ctx: typer.Context) -> None:
    """Run a stream worker (Faust). Extra arguments go to Faust's worker command, e.g. ``-l info``."""
    from streams import without_pandas

    without_pandas()  # before LightGBM is imported
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
    # The event loop scores while the consumer, delivery and log-writer threads run: it gets the interpreter back
    # within 1 ms of one of them taking it, not 5 (the scoring agent freezes what start-up loaded, see agents.py).
    sys.setswitchinterval(0.001)
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
    """Run the REST scoring API (POST /v1/score, /healthz, /readyz, /metrics, the dashboard) on settings.api."""
    import gc

    from streams import without_pandas

    without_pandas()  # before LightGBM is imported: the API scores like a worker
    import uvicorn

    from models.registry import RegistryError
    from streams.api import create_app
    from streams.auth import Keys

    settings = _settings()
    try:
        api = create_app(settings)
    except RegistryError as error:
        raise CliError(f"cannot start the API: {error} (train one: fraudpipe train DATA --promote)") from None
    keys = Keys.from_settings(settings.api, settings.environment)
    asked = f"API keys required ({len(keys.entries)} set)" if keys.required else "no API key asked"
    err.print(f"scoring API on http://{settings.api.bind}:{settings.api.port} (docs at /docs); {asked}",
              highlight=False)  # fmt: skip
    # Latency of the event loop (health probes included) under load, measured with 200 clients:
    # - what start-up loaded (libraries, schemas, the models) stays for the process's life: moved out of the
    #   collector's sight, a full collection scans only what requests allocate (one took 70-250 ms without it);
    # - the loop gets the interpreter back within 1 ms of each system call, not 5, while a scoring thread runs.
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(0.001)
    uvicorn.run(api, host=settings.api.bind, port=settings.api.port, log_level=settings.log_level.lower())


@app.command("api-key")
def api_key(
    scopes: Annotated[str, typer.Option(help="Its scopes, comma-separated: score, read:alerts.")] = "score",
    stdin: Annotated[bool, typer.Option("--stdin", help="Hash the key read from stdin instead of making one.")] = False,
) -> None:
    """Make an API key for the REST API (or hash one given on stdin): prints the key once to stdout, and to stderr
    its entry for FRAUD_API__KEYS (the settings keep only its SHA-256)."""
    import json

    from streams.auth import SCOPES, hash_key, new_key

    chosen = [s.strip() for s in scopes.split(",") if s.strip()]
    if not chosen or set(chosen) - set(SCOPES):
        raise CliError(f"--scopes takes {', '.join(SCOPES)}, comma-separated")
    key = sys.stdin.readline().strip() if stdin else new_key()
    if len(key) < 16:
        raise CliError("a key needs at least 16 characters")
    if not stdin:
        sys.stdout.write(key + "\n")
    entry = json.dumps({hash_key(key): chosen})
    err.print(f"add to FRAUD_API__KEYS (merge with the keys already there): {entry}", highlight=False, soft_wrap=True)
