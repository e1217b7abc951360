"""docker-compose.yml, the Dockerfile and deploy/ checked statically: no Docker engine needed.

Every check is a function ``(Project) -> list[str]`` returning the problems it finds (empty: fine). The real files
must have none; and for each check a deliberately broken copy must show the expected problem, so no check passes
vacuously. Commands are parsed by the real CLI (``typer.main.get_command``) without running; ``FRAUD_`` variables
are validated by the real :class:`~fraudpipe.settings.Settings`; dashboard queries against the collectors of
:mod:`streams.metrics`.

docker-compose.sasl.yml is checked merged over docker-compose.yml (:func:`merge_compose`, Compose's merge rules):
every check above, then the SASL ones: no listener without a login, each fraudpipe service that talks to Kafka
logging in as its own SCRAM user with a password taken from the environment, and granted what its commands need.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import json
import os
import re
import shlex
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from unittest import mock

import pytest
import typer
import typer.core
import typer.main
import yaml
from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from cli import app as cli_app
from fraudpipe.settings import Settings
from streams.topics import AclSpec, worker_acls

ROOT = Path(__file__).resolve().parents[2]
INFRA = ("kafka", "redis", "prometheus", "grafana")  # long-running, not ours: each needs a health check
SCALABLE = ("worker",)  # `docker compose up --scale worker=N`
REQUIRED_DEPENDENCIES = {
    "worker": {
        "kafka": "service_healthy",
        "redis": "service_healthy",
        "init": "service_completed_successfully",
        "trainer": "service_completed_successfully",
    },
    "init": {"kafka": "service_healthy"},
    "replayer": {"init": "service_completed_successfully", "trainer": "service_completed_successfully"},
    "retrainer": {"kafka": "service_healthy", "init": "service_completed_successfully"},
}
REQUIRED_DEPENDENCIES["labels"] = REQUIRED_DEPENDENCIES["api"] = REQUIRED_DEPENDENCIES["worker"]
DASHBOARD_MUST_SHOW = (
    "fraudpipe_events_in_total",
    "fraudpipe_events_out_total",
    "fraudpipe_end_to_end_seconds_bucket",
    "fraudpipe_decisions_total",
    "fraudpipe_dead_letters_total",
    "fraudpipe_drift_psi",
    "fraudpipe_segment_fpr_ratio",
    "fraudpipe_fairness_breaches",
    "fraudpipe_model_info",
)
# name:MAJOR.MINOR.PATCH[-variant], optionally @sha256:digest, or name@sha256:digest
PINNED = re.compile(r"^[^\s:@]+(?::v?\d+\.\d+\.\d+[\w.-]*(?:@sha256:[0-9a-f]{64})?|@sha256:[0-9a-f]{64})$")
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "enum": ("",),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
}


@dataclass
class Project:
    """The files under test, parsed (text where parsing is part of the check)."""

    compose: dict[str, Any]
    dockerfile: str
    dockerignore: str
    prometheus: dict[str, Any]
    dashboard: str
    datasources: dict[str, Any]
    providers: dict[str, Any]
    versions: dict[str, str]
    pyproject: dict[str, Any]
    services_sh: str
    sasl_override: dict[str, Any]  # docker-compose.sasl.yml as written (``compose`` is the file it overrides)


@cache
def _project() -> Project:
    grafana = ROOT / "deploy" / "grafana"
    return Project(
        compose=yaml.safe_load((ROOT / "docker-compose.yml").read_text()),
        dockerfile=(ROOT / "Dockerfile").read_text(),
        dockerignore=(ROOT / ".dockerignore").read_text(),
        prometheus=yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()),
        dashboard=(grafana / "dashboards" / "fraudpipe.json").read_text(),
        datasources=yaml.safe_load((grafana / "provisioning" / "datasources" / "prometheus.yml").read_text()),
        providers=yaml.safe_load((grafana / "provisioning" / "dashboards" / "fraudpipe.yml").read_text()),
        versions=dict(
            line.split("=", 1)
            for line in (ROOT / "scripts" / "versions.env").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ),
        pyproject=tomllib.loads((ROOT / "pyproject.toml").read_text()),
        services_sh=(ROOT / "scripts" / "services.sh").read_text(),
        sasl_override=yaml.safe_load((ROOT / "docker-compose.sasl.yml").read_text()),
    )


@cache
def _sasl_project() -> Project:
    """The project as ``docker compose -f docker-compose.yml -f docker-compose.sasl.yml`` sees it."""
    project = _project()
    return dataclasses.replace(project, compose=merge_compose(project.compose, project.sasl_override))


# --- merging an override file, as Compose does ----------------------------------------------------------------------

REPLACED = {("command",), ("entrypoint",), ("healthcheck", "test")}  # shell commands: the later file's wins
MAPPING_LISTS = {"environment", "labels", "extra_hosts", "sysctls", "annotations"}  # KEY=VALUE lists are mappings


def _as_mapping(value: Any) -> Any:
    """A ``KEY=VALUE`` list as the mapping Compose reads it as (mappings pass through)."""
    if isinstance(value, list):
        return dict(str(item).partition("=")[::2] for item in value)
    return value


def _mount_target(entry: Any) -> str:
    return str(entry.get("target")) if isinstance(entry, dict) else str(entry).split(":")[1]


def _port_key(entry: Any) -> tuple[str, int | None, int, str]:
    return next(_published({"ports": [entry]}))


def merge_compose(base: Any, override: Any, path: tuple[str, ...] = ()) -> Any:
    """``override`` merged into ``base`` by the Compose rules (reference/compose-file/merge): mappings merge key by
    key; sequences append (an entry already there is not repeated), except ``command``, ``entrypoint`` and
    ``healthcheck.test``, which the override replaces; ``environment`` and the other ``KEY=VALUE`` lists merge as
    mappings; a service's ``volumes`` merge by mount target and its ``ports`` are kept unique; scalars are replaced.
    (No ``!reset``/``!override`` tags: the test's YAML loader refuses them, so they cannot slip in unchecked.)"""
    in_service = len(path) == 3 and path[0] == "services"
    key = path[-1] if path else ""
    if path[2:] in REPLACED and path[:1] == ("services",):
        return copy.deepcopy(override)
    if in_service and key in MAPPING_LISTS:
        base, override = _as_mapping(base), _as_mapping(override)
    if isinstance(base, dict) and isinstance(override, dict):
        merged = copy.deepcopy(base)
        for name, value in override.items():
            merged[name] = merge_compose(base[name], value, (*path, name)) if name in base else copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(override, list):
        if in_service and key in {"volumes", "ports"}:
            identity = _mount_target if key == "volumes" else _port_key
            replaced = {identity(entry) for entry in override}
            return [e for e in base if identity(e) not in replaced] + copy.deepcopy(override)
        return copy.deepcopy(base) + [e for e in override if e not in base]
    return copy.deepcopy(override)


# --- reading the compose file ---------------------------------------------------------------------------------------


def _services(p: Project) -> dict[str, dict[str, Any]]:
    return p.compose.get("services") or {}


def _ours(p: Project) -> dict[str, dict[str, Any]]:
    """Services running the fraudpipe image."""
    return {name: s for name, s in _services(p).items() if str(s.get("image", "")).startswith("fraudpipe:")}


def _image(service: dict[str, Any]) -> tuple[str, str]:
    """(repository, tag) of a service's image; tag "" when there is none."""
    reference = str(service.get("image", "")).split("@")[0]
    repository, _, tag = reference.rpartition(":") if ":" in reference.split("/")[-1] else (reference, "", "")
    return repository, tag


def _environment(service: dict[str, Any]) -> dict[str, Any]:
    """A service's environment, from either the mapping or the ``KEY=VALUE`` list form."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(str(item).partition("=")[::2] for item in environment)
    return dict(environment)


def _fraud_env(service: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in _environment(service).items() if k.upper().startswith("FRAUD_")}


_REDIRECT = re.compile(r"^\d*[<>]")


def _cli_calls(service: dict[str, Any]) -> list[list[str]]:
    """The fraudpipe command lines a service runs (without ``fraudpipe``): its command under the image's entrypoint,
    or each ``fraudpipe ...`` of a ``sh -c`` script (one call per line, ended by ``||``, ``&&``, ``;`` or a
    redirection)."""
    command = service.get("command") or []
    command = shlex.split(command) if isinstance(command, str) else [str(part) for part in command]
    entrypoint = service.get("entrypoint")
    if entrypoint is None:
        return [command] if command else []
    if not (Path(str(entrypoint[0])).name in {"sh", "bash"} and str(entrypoint[-1]).endswith("c")):
        return [["<entrypoint>", *map(str, entrypoint)]]
    calls: list[list[str]] = []
    for line in "\n".join(command).splitlines():
        current: list[str] | None = None
        for token in shlex.split(line, comments=True):
            if current is None:
                current = [] if token == "fraudpipe" else None
            elif token in {"||", "&&", ";", "|", "&"} or _REDIRECT.match(token):
                calls.append(current)
                current = None
            else:
                current.append(token.removesuffix(";"))
        if current is not None:
            calls.append(current)
    return calls


def _cli_parse(args: list[str]) -> dict[str, Any] | str:
    """The parameters the CLI would run ``fraudpipe ARGS`` with (parsed, not run), or why it would refuse them
    (unknown command or option, bad value, missing argument)."""
    command: Any = typer.main.get_command(cli_app)
    parent, name, rest = None, "fraudpipe", list(args)
    while isinstance(command, typer.core.TyperGroup):
        context = typer.Context(command, info_name=name, parent=parent)
        sub = command.get_command(context, rest[0]) if rest else None
        if sub is None:
            return f"`fraudpipe {' '.join(args)}`: no command {rest[0] if rest else '(none)'!r} under {name!r}"
        parent, name, command, rest = context, rest[0], sub, rest[1:]
    try:
        return dict(command.make_context(name, rest, parent=parent).params)
    except typer.TyperException as error:
        return f"`fraudpipe {' '.join(args)}`: {error.format_message()}"


def _cli_problem(args: list[str]) -> str | None:
    """Why the CLI would refuse ``fraudpipe ARGS``; None when it accepts them."""
    parsed = _cli_parse(args)
    return parsed if isinstance(parsed, str) else None


def _settings_of(service: dict[str, Any]) -> Settings:
    """The settings a container of ``service`` reads (its FRAUD_ variables only; no .env)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FRAUD_")}
    env.update({k: str(v) for k, v in _fraud_env(service).items()})
    with mock.patch.dict(os.environ, env, clear=True):
        return Settings(_env_file=None)  # type: ignore[call-arg]


def _valid_settings(service: dict[str, Any]) -> Settings | None:
    """The service's settings, or None when they do not validate (``fraud_settings`` reports why)."""
    try:
        return _settings_of(service)
    except (ValidationError, SettingsError):
        return None


def _field_problem(name: str) -> str | None:
    """Why ``name`` is not a settings field (``FRAUD_SECTION__FIELD``, upper case)."""
    model: type[BaseModel] = Settings
    parts = name.removeprefix("FRAUD_").split("__")
    for depth, part in enumerate(parts):
        field = model.model_fields.get(part.lower())
        if field is None or part != part.upper():
            return f"{name}: {'.'.join(parts[: depth + 1]).lower()} is not a setting"
        section = isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        if section != (depth < len(parts) - 1):
            return f"{name}: {'a section, not a field' if section else 'a field, not a section'}"
        if section:
            model = field.annotation  # type: ignore[assignment]
    return None


def _listening(name: str, service: dict[str, Any]) -> set[int]:
    """Ports a container of the service listens on: from the settings for ours, from the image's defaults or its
    listener configuration for the others."""
    repository, _ = _image(service)
    if repository == "fraudpipe":
        settings = _valid_settings(service)
        if settings is None:
            return set()
        ports = set()
        for call in _cli_calls(service):
            if call[:1] == ["worker"] and settings.metrics.port:
                ports.add(settings.metrics.port)
            if call[:1] == ["serve"]:
                ports.add(settings.api.port)
            if call[:1] == ["monitor"] and "--every" in call and settings.monitor.metrics_port:
                ports.add(settings.monitor.metrics_port)
        return ports
    if repository == "apache/kafka":
        listeners = str(_environment(service).get("KAFKA_LISTENERS", ""))
        return {int(port) for port in re.findall(r":(\d+)(?:,|$)", listeners)}
    return {"redis": {6379}, "prom/prometheus": {9090}, "grafana/grafana": {3000}}.get(repository, set())


def _published(service: dict[str, Any]) -> Iterator[tuple[str, int | None, int, str]]:
    """(host ip, host port or None for a random one, container port, protocol) of each published port."""
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            yield (
                str(entry.get("host_ip", "")),
                int(published) if published else None,
                int(entry["target"]),
                str(entry.get("protocol", "tcp")),
            )
            continue
        spec, _, protocol = str(entry).partition("/")
        parts = spec.rsplit(":", 2)
        host_ip, host = (parts[0], parts[1]) if len(parts) == 3 else ("", parts[0] if len(parts) == 2 else "")
        yield host_ip, int(host) if host else None, int(parts[-1]), protocol or "tcp"


def _mounts(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(source, target) of each volume entry (short syntax)."""
    for entry in service.get("volumes") or []:
        source, target = str(entry).split(":")[:2]
        yield source, target


# --- the checks -----------------------------------------------------------------------------------------------------


def images_pinned(p: Project) -> list[str]:
    """Every image has a version tag (major.minor.patch) or a digest, never ``latest``; ours carries pyproject's
    version and is built here."""
    problems = []
    version = p.pyproject["project"]["version"]
    for name, service in _services(p).items():
        image = str(service.get("image", ""))
        if not PINNED.match(image):
            problems.append(f"{name}: image {image or '(none)'!r} is not pinned to a version or digest")
        if "build" in service and image != f"fraudpipe:{version}":
            problems.append(f"{name}: builds an image tagged {image!r}, not fraudpipe:{version}")
    return problems


def service_versions(p: Project) -> list[str]:
    """Kafka and Redis are the versions scripts/versions.env pins (the local services run the same)."""
    problems = []
    found = {_image(s)[0]: _image(s)[1] for s in _services(p).values()}
    if found.get("apache/kafka") != p.versions["KAFKA_VERSION"]:
        problems.append(f"kafka image {found.get('apache/kafka')!r} != KAFKA_VERSION {p.versions['KAFKA_VERSION']}")
    redis = p.versions.get("REDIS_IMAGE_VERSION", "")
    if not re.fullmatch(rf"{re.escape(redis)}(-[\w.-]+)?", found.get("redis", "")):
        problems.append(f"redis image {found.get('redis')!r} is not REDIS_IMAGE_VERSION {redis}")
    return problems


def healthchecks(p: Project) -> list[str]:
    """Infrastructure and every service of ours that serves HTTP has a health check that is on."""
    problems = []
    for name, service in _services(p).items():
        if name not in INFRA and not (name in _ours(p) and _listening(name, service)):
            continue
        check = service.get("healthcheck") or {}
        test = check.get("test") or []
        if check.get("disable") or not test or test[0] == "NONE":
            problems.append(f"{name}: no health check")
    return problems


def dependencies(p: Project) -> list[str]:
    """depends_on is long form with conditions: infrastructure healthy, one-shot jobs completed successfully; the
    required edges are there; one-shot jobs never restart."""
    problems = []
    services = _services(p)
    one_shots = {name for name, s in services.items() if str(s.get("restart", "no")) == "no"}
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if not isinstance(depends, dict):
            problems.append(f"{name}: depends_on must name a condition for each service")
            continue
        for target, spec in depends.items():
            condition = (spec or {}).get("condition")
            if target not in services:
                problems.append(f"{name}: depends on unknown service {target!r}")
            elif target in INFRA and condition != "service_healthy":
                problems.append(f"{name}: must wait for {target} to be service_healthy, not {condition}")
            elif target in one_shots and condition != "service_completed_successfully":
                problems.append(f"{name}: must wait for one-shot {target} to be service_completed_successfully")
            elif condition == "service_healthy" and not (services[target].get("healthcheck") or {}).get("test"):
                problems.append(f"{name}: waits for {target} to be healthy, but {target} has no health check")
        for target, condition in REQUIRED_DEPENDENCIES.get(name, {}).items():
            if (depends.get(target) or {}).get("condition") != condition:
                problems.append(f"{name}: must depend on {target} with condition {condition}")
    for name in ("init", "trainer", "replayer"):
        if name not in one_shots:
            problems.append(f"{name}: a one-shot job must have restart: 'no'")
    return problems


def fraud_settings(p: Project) -> list[str]:
    """Every FRAUD_ variable is a settings field, written as a string, and each service's set validates."""
    problems = []
    for name, service in _services(p).items():
        variables = _fraud_env(service)
        for variable, value in variables.items():
            if (problem := _field_problem(variable)) is not None:
                problems.append(f"{name}: {problem}")
            if not isinstance(value, str):
                problems.append(f"{name}: {variable} must be a quoted string, got {value!r}")
        if variables:
            try:
                _settings_of(service)
            except ValidationError as error:
                problems.append(f"{name}: settings do not validate: {error.errors(include_url=False)}")
            except SettingsError as error:
                problems.append(f"{name}: settings do not validate: {error}: {error.__cause__}")
    return problems


def cli_commands(p: Project) -> list[str]:
    """Every fraudpipe service runs real CLI commands with options the CLI accepts."""
    problems = []
    for name, service in _ours(p).items():
        calls = _cli_calls(service)
        if not calls:
            problems.append(f"{name}: runs no fraudpipe command (the image's default is --help)")
        problems += [f"{name}: {problem}" for call in calls if (problem := _cli_problem(call))]
    return problems


def host_ports(p: Project) -> list[str]:
    """No two published ports take the same host port; a scalable service publishes no fixed host port and has no
    container name."""
    problems, taken = [], {}
    for name, service in _services(p).items():
        for host_ip, host, _, protocol in _published(service):
            if host is None:
                continue
            if name in SCALABLE:
                problems.append(f"{name}: scalable, so it must not publish the fixed host port {host}")
            for (other_ip, other_port, other_protocol), other in taken.items():
                wildcard = {host_ip, other_ip} & {"", "0.0.0.0"}
                if (other_port, other_protocol) == (host, protocol) and (wildcard or host_ip == other_ip):
                    problems.append(f"{name}: host port {host} is already published by {other}")
            taken[(host_ip, host, protocol)] = name
    problems += [
        f"{name}: scalable, so no container_name" for name in SCALABLE if "container_name" in _services(p).get(name, {})
    ]
    return problems


def reachable(p: Project) -> list[str]:
    """What other containers call is listened on: published, exposed and health-checked ports are ports the
    service listens on, and our servers bind to all interfaces."""
    problems = []
    for name, service in _services(p).items():
        listening = _listening(name, service)
        settings = _valid_settings(service) if name in _ours(p) and listening else None
        if settings is not None:
            binds = {"serve": settings.api.bind, "worker": settings.metrics.bind, "monitor": settings.metrics.bind}
            for command in (call[0] for call in _cli_calls(service) if call):
                if binds.get(command, "0.0.0.0") not in {"0.0.0.0", "::", ""}:
                    problems.append(f"{name}: `{command}` binds {binds[command]}: unreachable from other containers")
        checked = " ".join(map(str, (service.get("healthcheck") or {}).get("test") or []))
        used = {("published", port) for _, _, port, _ in _published(service)}
        used |= {("exposed", int(str(port).split("/")[0])) for port in service.get("expose") or []}
        used |= {
            ("health-checked", int(port)) for port in re.findall(rf"(?:127\.0\.0\.1|localhost|{name}):(\d+)", checked)
        }
        problems += [
            f"{name}: {how} port {port} is not one it listens on {sorted(listening)}"
            for how, port in sorted(used)
            if port not in listening
        ]
    return problems


def volumes(p: Project) -> list[str]:
    """Named volumes are declared, bind mounts exist in the repository, and our data and models live on a volume
    every fraudpipe service shares."""
    problems, declared = [], set(p.compose.get("volumes") or {})
    shared: set[str] | None = None
    for name, service in _services(p).items():
        mounts = dict(_mounts(service))
        for source in mounts:
            if source.startswith((".", "/")):
                if not (ROOT / source).exists():
                    problems.append(f"{name}: bind mount {source} does not exist")
            elif source not in declared:
                problems.append(f"{name}: volume {source!r} is not declared")
        if name in _ours(p):
            shared = set(mounts) if shared is None else shared & set(mounts)
            settings = _valid_settings(service)
            for path in (settings.paths.data_dir, settings.paths.models_dir) if settings else ():
                if not any(path.is_relative_to(target) for source, target in mounts.items() if source in declared):
                    problems.append(f"{name}: {path} is not on a named volume")
    if not shared:
        problems.append("the fraudpipe services share no volume (models and data must be shared)")
    return problems


def prometheus_targets(p: Project) -> list[str]:
    """Scrape targets are compose services on ports they listen on; every metrics endpoint of ours is scraped; a
    scalable service is found through DNS (one A record per replica); the API's metrics path needs no redirect."""
    problems, scraped = [], set()
    services = _services(p)
    for job in p.prometheus.get("scrape_configs") or []:
        targets = [tuple(t.rsplit(":", 1)) for c in job.get("static_configs") or [] for t in c.get("targets") or []]
        for sd in job.get("dns_sd_configs") or []:
            if sd.get("type") != "A" or "port" not in sd:
                problems.append(f"job {job['job_name']}: dns_sd_configs needs type A and a port")
            targets += [(host, str(sd.get("port"))) for host in sd.get("names") or []]
        for host, port in targets:
            scraped.add(host)
            if host not in services:
                problems.append(f"job {job['job_name']}: {host} is not a compose service")
            elif int(port) not in _listening(host, services[host]):
                problems.append(f"job {job['job_name']}: {host} does not listen on {port}")
            elif host in SCALABLE and not job.get("dns_sd_configs"):
                problems.append(f"job {job['job_name']}: {host} is scalable: find its replicas with dns_sd_configs")
            serves_api = host in services and any(c[:1] == ["serve"] for c in _cli_calls(services[host]))
            if serves_api and job.get("metrics_path") != "/metrics/":
                problems.append(f"job {job['job_name']}: the API serves metrics at /metrics/ (/metrics redirects)")
    problems += [
        f"{name}: serves metrics but no scrape job targets it"
        for name, service in _ours(p).items()
        if _listening(name, service) and name not in scraped
    ]
    prometheus = services.get("prometheus", {})
    config = next((a.split("=", 1)[1] for a in prometheus.get("command") or [] if a.startswith("--config.file=")), "")
    if ("./deploy/prometheus/prometheus.yml", config) not in set(_mounts(prometheus)):
        problems.append("prometheus: deploy/prometheus/prometheus.yml is not mounted at its --config.file")
    return problems


@cache
def _metric_samples() -> frozenset[str]:
    """Every sample name streams.metrics can expose (counters gain ``_total``, histograms ``_bucket``...)."""
    from streams import metrics

    names = set()
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase):
            for family in collector.describe():
                names |= {family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type]}
    return frozenset(names)


def grafana(p: Project) -> list[str]:
    """The dashboard parses, queries the provisioned data source, only metrics streams.metrics defines (quantiles
    from ``_bucket`` series) and covers the pipeline; provisioning and mounts line up."""
    try:
        dashboard = json.loads(p.dashboard)
    except json.JSONDecodeError as error:
        return [f"dashboard: not JSON: {error}"]
    problems, used = [], set()
    uids = {source.get("uid") for source in p.datasources.get("datasources") or []}
    for panel in dashboard.get("panels") or []:
        title = panel.get("title", "?")
        if not panel.get("targets"):
            problems.append(f"panel {title!r}: no query")
        for target in panel.get("targets") or []:
            source = target.get("datasource") or panel.get("datasource") or {}
            if source.get("uid") not in uids:
                problems.append(f"panel {title!r}: data source {source.get('uid')!r} is not provisioned")
            expr = str(target.get("expr", ""))
            names = set(re.findall(r"\bfraudpipe_\w+", expr))
            used |= names
            problems += [
                f"panel {title!r}: {n} is not a metric of streams/metrics.py"
                for n in sorted(names)
                if n not in _metric_samples()
            ]
            if "histogram_quantile" in expr and not all(n.endswith("_bucket") for n in names):
                problems.append(f"panel {title!r}: histogram_quantile needs _bucket series")
    if not dashboard.get("panels"):
        problems.append("dashboard: no panels")
    problems += [f"dashboard: shows no {name}" for name in DASHBOARD_MUST_SHOW if name not in used]
    services = _services(p)
    for source in p.datasources.get("datasources") or []:
        host, _, port = str(source.get("url", "")).removeprefix("http://").partition(":")
        if host not in services or not port.isdigit() or int(port) not in _listening(host, services[host]):
            problems.append(f"data source {source.get('name')}: {source.get('url')} is no compose service port")
    mounts = set(_mounts(services.get("grafana", {})))
    for provider in p.providers.get("providers") or []:
        if ("./deploy/grafana/dashboards", provider.get("options", {}).get("path")) not in mounts:
            problems.append(f"provider {provider.get('name')}: deploy/grafana/dashboards is not mounted at its path")
    if ("./deploy/grafana/provisioning", "/etc/grafana/provisioning") not in mounts:
        problems.append("grafana: deploy/grafana/provisioning is not mounted at /etc/grafana/provisioning")
    home = PurePosixPath(
        str(_environment(services.get("grafana", {})).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"))
    )
    mounted = [ROOT / source / home.relative_to(target) for source, target in mounts if home.is_relative_to(target)]
    if not any(path.is_file() for path in mounted):
        problems.append(f"grafana: the home dashboard {home} is no mounted file")
    return problems


def _dockerfile_stages(text: str) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(base image, stage name, [(INSTRUCTION, arguments)]) per FROM, continuation lines joined, comments dropped."""
    stages: list[tuple[str, str, list[tuple[str, str]]]] = []
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        keyword, _, arguments = (logical + line).partition(" ")
        logical = ""
        if keyword.upper() == "FROM":
            words = [w for w in arguments.split() if not w.startswith("--")]
            stages.append((words[0], words[2] if len(words) > 2 else "", []))
        elif stages:
            stages[-1][2].append((keyword.upper(), arguments.strip()))
    return stages


def _packages(p: Project) -> list[str]:
    """Top-level package folders pyproject's [tool.setuptools.packages.find] includes."""
    include = p.pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted(
        d.name
        for d in ROOT.iterdir()
        if (d / "__init__.py").exists() and any(fnmatch.fnmatch(d.name, pattern) for pattern in include)
    )


def _copied(instructions: list[tuple[str, str]]) -> list[str]:
    """Sources of the COPY instructions that copy from the build context (not ``--from`` another stage)."""
    sources = []
    for keyword, arguments in instructions:
        words = arguments.split()
        if keyword == "COPY" and not any(word.startswith("--from") for word in words):
            sources += [word for word in words[:-1] if not word.startswith("--")]
    return sources


def dockerfile(p: Project) -> list[str]:
    """Multi-stage; base images pinned; the final stage runs as a non-root user with ENTRYPOINT fraudpipe; every
    package pyproject includes (and the files it needs to build) is copied in."""
    stages = _dockerfile_stages(p.dockerfile)
    if len(stages) < 2:
        return ["Dockerfile: not multi-stage"]
    problems, names = [], set()
    for base, name, _ in stages:
        if base not in names and not PINNED.match(base):
            problems.append(f"Dockerfile: base image {base!r} is not pinned to a version or digest")
        names.add(name)
    final = stages[-1][2]
    users = [arguments.split(":")[0] for keyword, arguments in final if keyword == "USER"]
    if not users or users[-1] in {"root", "0"}:
        problems.append("Dockerfile: the final stage must run as a non-root USER")
    entrypoints = [arguments for keyword, arguments in final if keyword == "ENTRYPOINT"]
    if not entrypoints or not entrypoints[-1].startswith("[") or json.loads(entrypoints[-1]) != ["fraudpipe"]:
        problems.append('Dockerfile: the final stage needs ENTRYPOINT ["fraudpipe"] (exec form)')
    copied = {source for _, _, instructions in stages for source in _copied(instructions)}
    needed = ["pyproject.toml", p.pyproject["project"]["readme"], *p.pyproject["project"]["license-files"]]
    problems += [
        f"Dockerfile: {item} is not copied"
        for item in [*needed, *_packages(p)]
        if "." not in copied and item not in copied
    ]
    return problems


def dockerignore(p: Project) -> list[str]:
    """The build context leaves out local state and caches, and keeps what the Dockerfile copies."""
    patterns = [line.strip().rstrip("/") for line in p.dockerignore.splitlines() if line.strip()[:1] not in {"", "#"}]
    problems = [
        f".dockerignore: {must} is not excluded"
        for must in (".venv", "var", ".services", ".git", ".env")
        if must not in patterns
    ]
    for _, _, instructions in _dockerfile_stages(p.dockerfile):
        problems += [
            f".dockerignore: excludes {source}, which the Dockerfile copies"
            for source in _copied(instructions)
            if any(fnmatch.fnmatch(source, pattern) for pattern in patterns)
        ]
    return problems


def _kafka_variable(key: str) -> str:
    """The apache/kafka image's environment variable for server property ``key``: ``.`` -> ``_``, ``_`` -> ``__``,
    ``-`` -> ``___``, upper case, prefixed KAFKA_ (``listener.name.x.scram-sha-512.sasl.jaas.config`` ->
    ``KAFKA_LISTENER_NAME_X_SCRAM___SHA___512_SASL_JAAS_CONFIG``)."""
    return "KAFKA_" + "".join({".": "_", "_": "__", "-": "___"}.get(c, c) for c in key).upper()


def mounted_scripts(p: Project) -> list[str]:
    """A script a service runs from /opt/fraudpipe is mounted there (from deploy/)."""
    problems = []
    for name, service in _services(p).items():
        command = service.get("command") or []
        words = shlex.split(command) if isinstance(command, str) else [str(word) for word in command]
        targets = {target for _, target in _mounts(service)}
        problems += [
            f"{name}: runs {word}, which is not mounted"
            for word in words
            if word.startswith("/opt/fraudpipe/") and word not in targets
        ]
    return problems


def kafka_parity(p: Project) -> list[str]:
    """The compose broker has the settings scripts/services.sh gives the local one (listeners, paths and the security
    mode aside: those the script fills in per run)."""
    found = re.search(r'server\.properties" <<EOF\n(.*?)\nEOF', p.services_sh, re.DOTALL)
    if found is None:
        return ["scripts/services.sh: no server.properties heredoc found"]
    environment = _environment(_services(p).get("kafka") or {})
    problems = []
    for line in found.group(1).splitlines():
        key, _, value = line.partition("=")
        if line.startswith("#") or not value or "$" in value:  # "$...": ports, paths, security mode of that run
            continue
        variable = _kafka_variable(key)
        if str(environment.get(variable)) != value:
            problems.append(f"kafka: {variable}={environment.get(variable)!r}, scripts/services.sh has {key}={value}")
    return problems


def _volume_of(service: dict[str, Any], path: Path) -> str | None:
    """The source of the mount holding ``path`` in a container of ``service`` (None: not on a mount)."""
    held = [(target, source) for source, target in _mounts(service) if path.is_relative_to(target)]
    return max(held, key=lambda pair: len(pair[0]))[1] if held else None


def compaction(p: Project) -> list[str]:
    """A long-running service of ours compacts the logs on a schedule (``fraudpipe logs compact --every N``), reading
    the data directory the workers write, on the same volume."""
    ours = _ours(p)
    jobs = [(name, call) for name, s in ours.items() for call in _cli_calls(s) if call[:2] == ["logs", "compact"]]
    if not jobs:
        return ["no service runs `fraudpipe logs compact --every N`: the logs' files would only grow"]
    worker = ours.get("worker")
    written = _valid_settings(worker) if worker is not None else None
    problems = []
    for name, call in jobs:
        params, settings = _cli_parse(call), _valid_settings(ours[name])
        if isinstance(params, str) or settings is None or worker is None or written is None:
            continue  # cli_commands and fraud_settings report why
        if params["every"] is None:
            problems.append(f"{name}: `logs compact` without --every runs once")
        if str(ours[name].get("restart", "no")) == "no":
            problems.append(f"{name}: a scheduled job must be restarted (restart: unless-stopped)")
        if settings.paths.data_dir != written.paths.data_dir:
            problems.append(f"{name}: compacts {settings.paths.data_dir}, the workers write {written.paths.data_dir}")
        elif _volume_of(ours[name], settings.paths.data_dir) != _volume_of(worker, written.paths.data_dir):
            problems.append(f"{name}: {settings.paths.data_dir} is not on the workers' volume")
    return problems


CHECKS: dict[str, Callable[[Project], list[str]]] = {
    check.__name__: check
    for check in (
        images_pinned,
        service_versions,
        healthchecks,
        dependencies,
        fraud_settings,
        cli_commands,
        host_ports,
        reachable,
        volumes,
        prometheus_targets,
        grafana,
        dockerfile,
        dockerignore,
        kafka_parity,
        mounted_scripts,
        compaction,
    )
}


# --- the SASL override: docker-compose.sasl.yml merged over docker-compose.yml --------------------------------------

SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
CLIENT_MECHANISM = "SCRAM-SHA-512"
# Calls that never talk to Kafka: a service running only these gets no Kafka login.
KAFKA_FREE = (("simulate",), ("train",), ("model", "show"), ("monitor",), ("logs",))
# WRITE a principal needs for a call (a `worker` needs streams.topics.worker_acls of its agents and group).
WRITES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("serve",): ("scores", "alerts", "repairs"),
    ("replay",): ("transactions", "labels"),
    ("retrain",): ("registry_events",),
    ("model", "rollback"): ("registry_events",),
}
ADMIN_CALLS = (("topics",),)  # the only calls a service logging in as admin (a super user) may run
_INTERPOLATION = re.compile(r"(?<!\$)\$\{([^}]*)\}")
_SECRET = re.compile(r'\b(?:password|user_\w+)="([^"]*)"')


def _calls_only(calls: list[list[str]], prefixes: tuple[tuple[str, ...], ...]) -> bool:
    return bool(calls) and all(any(tuple(call[: len(p)]) == p for p in prefixes) for call in calls)


def _password_variable(user: str) -> str:
    return "FRAUDPIPE_KAFKA_SASL_PASSWORD_" + user.upper().replace("-", "_")


def _required(value: Any, variable: str) -> bool:
    """Whether ``value`` is exactly ``${VARIABLE:?message}``: taken from the environment, refused when unset."""
    return re.fullmatch(rf"\$\{{{re.escape(variable)}:\?[^}}]+\}}", str(value)) is not None


def _broker(p: Project) -> dict[str, str]:
    return {key: str(value) for key, value in _environment(_services(p).get("kafka") or {}).items()}


def _listener_map(value: str) -> dict[str, str]:
    """``NAME://host:port,...`` as {NAME: host:port}."""
    pairs = (item.strip().partition("://") for item in value.split(",") if item.strip())
    return {name.upper(): address for name, _, address in pairs}


def _broker_view(env: dict[str, str]) -> tuple[dict[str, str], dict[str, str], set[str]]:
    """(listener -> host:port, listener -> security protocol, controller listeners) of the broker's settings."""
    pairs = env.get("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "").split(",")
    protocols = dict(pair.strip().upper().split(":", 1) for pair in pairs if ":" in pair)
    controllers = {name.strip().upper() for name in env.get("KAFKA_CONTROLLER_LISTENER_NAMES", "").split(",")}
    return _listener_map(env.get("KAFKA_LISTENERS", "")), protocols, controllers - {""}


def _mechanisms(env: dict[str, str], listener: str) -> list[str]:
    """SASL mechanisms ``listener`` offers: its own setting, else the broker's (Kafka's default: GSSAPI)."""
    value = env.get(_kafka_variable(f"listener.name.{listener.lower()}.sasl.enabled.mechanisms"))
    value = value or env.get("KAFKA_SASL_ENABLED_MECHANISMS", "GSSAPI")
    return [mechanism.strip() for mechanism in value.split(",") if mechanism.strip()]


def _jaas_variable(listener: str, mechanism: str) -> str:
    return _kafka_variable(f"listener.name.{listener.lower()}.{mechanism.lower()}.sasl.jaas.config")


def sasl_listeners(p: Project) -> list[str]:
    """No listener lets a client in without a login: every one is SASL, clients get SCRAM-SHA-512 only, the KRaft
    controller's listener PLAIN for admin only; each has its login module; the broker logs in as admin; the health
    check logs in too."""
    env = _broker(p)
    listeners, protocols, controllers = _broker_view(env)
    inter = env.get("KAFKA_INTER_BROKER_LISTENER_NAME", "").upper()
    problems = [] if listeners else ["kafka: no KAFKA_LISTENERS"]
    for name in listeners:
        protocol = protocols.get(name, name)
        if protocol not in SASL_PROTOCOLS:
            problems.append(f"kafka: listener {name} is {protocol}: a client gets in without logging in")
            continue
        wanted = ["PLAIN"] if name in controllers else [CLIENT_MECHANISM]
        if _mechanisms(env, name) != wanted:
            problems.append(f"kafka: listener {name} offers {_mechanisms(env, name)}, not {wanted} (SCRAM for "
                            "clients; PLAIN only where the broker logs in to its own controller)")  # fmt: skip
        for mechanism in _mechanisms(env, name):
            jaas = env.get(_jaas_variable(name, mechanism))
            if not jaas:
                problems.append(f"kafka: listener {name} has no login module for {mechanism} "
                                f"({_jaas_variable(name, mechanism)})")  # fmt: skip
                continue
            if name in controllers and set(re.findall(r"\buser_(\w+)=", jaas)) != {"admin"}:
                problems.append(f"kafka: the controller listener {name} must take admin only (user_admin=)")
            if name in {inter, *controllers} and 'username="admin"' not in jaas:
                problems.append(f'kafka: on {name} the broker must log in as admin (username="admin")')
    test = " ".join(map(str, (_services(p).get("kafka", {}).get("healthcheck") or {}).get("test") or []))
    if "--command-config" not in test:
        problems.append("kafka: the health check must log in (--command-config): the broker refuses anonymous requests")
    return problems


def sasl_parity(p: Project) -> list[str]:
    """The compose broker has the SASL settings `scripts/services.sh start kafka --sasl` gives the local one
    (authorizer, no access without an ACL, super user, mechanisms); the script's client listener is named
    SASL_PLAINTEXT, its settings apply to each client listener here. Passwords aside: each run has its own."""
    found = re.search(r"kafka_sasl_config\(\) \{.*?<<EOF\n(.*?)\nEOF", p.services_sh, re.DOTALL)
    if found is None:
        return ["scripts/services.sh: no kafka_sasl_config heredoc found"]
    env = _broker(p)
    listeners, _, controllers = _broker_view(env)
    problems = []
    for line in found.group(1).splitlines():
        key, _, value = line.partition("=")
        if line.startswith("#") or not value or "$" in value:
            continue
        scoped = re.fullmatch(r"listener\.name\.([a-z_]+)\.(.+)", key)
        if scoped is None or scoped.group(1) == "controller":
            targets = [(key, env.get(_kafka_variable(key)))]
        else:
            targets = [
                (target, env.get(_kafka_variable(target), env.get(_kafka_variable(scoped.group(2)))))
                for target in (
                    f"listener.name.{n.lower()}.{scoped.group(2)}" for n in listeners if n not in controllers
                )
            ]
        problems += [
            f"kafka: {target}={actual!r}, scripts/services.sh --sasl has {key}={value}"
            for target, actual in targets
            if actual != value
        ]
    return problems


def sasl_logins(p: Project) -> list[str]:
    """Every fraudpipe service that talks to Kafka logs in over SASL with SCRAM-SHA-512 as a user the broker makes
    at format time, with that user's own password variable; admin only for `fraudpipe topics`; services that never
    talk to Kafka get no login. No password is literal: each is ``${FRAUDPIPE_KAFKA_SASL_PASSWORD_<USER>:?...}``,
    and every ``${...}`` in the files is required (``:?``), so a missing one stops Compose instead of being empty."""
    env = _broker(p)
    users = {"admin", *env.get("FRAUDPIPE_KAFKA_SASL_USERS", "").split()}
    problems = [
        f"kafka: {_password_variable(user)} must be ${{{_password_variable(user)}:?...}}: SCRAM user {user}'s password"
        for user in sorted(users)
        if not _required(env.get(_password_variable(user)), _password_variable(user))
    ]
    for name, service in _services(p).items():
        for variable, value in _environment(service).items():
            secrets = _SECRET.findall(str(value)) + ([str(value)] if "PASSWORD" in variable.upper() else [])
            if any(not re.fullmatch(r"\$\{FRAUDPIPE_KAFKA_SASL_PASSWORD_\w+:\?[^}]+\}", s) for s in secrets):
                problems.append(
                    f"{name}: {variable} holds a literal password, not ${{FRAUDPIPE_KAFKA_SASL_PASSWORD_...:?}}"
                )
    strings = json.dumps(p.compose)
    problems += [
        f"${{{found}}} is not required (${{NAME:?message}}): unset, it would silently be empty"
        for found in _INTERPOLATION.findall(strings)
        if not re.fullmatch(r"[A-Za-z_]\w*:\?.+", found)
    ]
    for name, service in _ours(p).items():
        calls, settings = _cli_calls(service), _valid_settings(service)
        if _calls_only(calls, KAFKA_FREE):
            if any(key.startswith("FRAUD_KAFKA__SASL_") for key in _fraud_env(service)):
                problems.append(f"{name}: never talks to Kafka, so it gets no Kafka login")
            continue
        if settings is None:
            continue  # fraud_settings reports why
        kafka = settings.kafka
        if kafka.security_protocol not in SASL_PROTOCOLS:
            problems.append(f"{name}: talks to Kafka over {kafka.security_protocol}, without a login")
            continue
        if kafka.sasl_mechanism != CLIENT_MECHANISM:
            problems.append(f"{name}: logs in with {kafka.sasl_mechanism}, not {CLIENT_MECHANISM}")
        user = str(kafka.sasl_username)
        if user not in users:
            problems.append(f"{name}: logs in as {user!r}, not a user the broker makes ({', '.join(sorted(users))})")
        if not _required(_fraud_env(service).get("FRAUD_KAFKA__SASL_PASSWORD"), _password_variable(user)):
            problems.append(f"{name}: FRAUD_KAFKA__SASL_PASSWORD must be ${{{_password_variable(user)}:?...}}, "
                            f"{user}'s own")  # fmt: skip
        if user == "admin" and not _calls_only(calls, ADMIN_CALLS):
            problems.append(f"{name}: logs in as admin, a super user: only `fraudpipe topics` jobs may")
    return problems


def _granted(p: Project) -> tuple[dict[str, set[AclSpec]], dict[str, set[str]]]:
    """(principal -> ACLs granted, principal -> services granting them): each ``fraudpipe topics grant`` as the CLI
    parses it (streams.topics.worker_acls with its job's settings), and each PRINCIPAL=TOPIC,... argument of a
    deploy/kafka/sasl-acls.sh job (WRITE)."""
    granted: dict[str, set[AclSpec]] = {}
    granters: dict[str, set[str]] = {}
    for name, service in _services(p).items():
        settings = _valid_settings(service) if name in _ours(p) else None
        for call in _cli_calls(service) if settings else []:
            params = _cli_parse(call) if call[:2] == ["topics", "grant"] else None
            if not isinstance(params, dict) or settings is None:
                continue  # not a grant, or one cli_commands reports
            agents = [agent.strip() for agent in str(params["agents"]).split(",") if agent.strip()]
            specs = worker_acls(settings.topics, params["group"] or settings.kafka.app_id, agents)
            granted.setdefault(params["principal"], set()).update(specs)
            granters.setdefault(params["principal"], set()).add(name)
        command = [str(word) for word in service.get("command") or []] if name not in _ours(p) else []
        if not any(word.endswith("/sasl-acls.sh") for word in command):
            continue
        for word in command:
            principal, equals, topics = word.partition("=")
            if equals and principal.startswith("User:"):
                granted.setdefault(principal, set()).update(AclSpec("topic", t, "write") for t in topics.split(","))
                granters.setdefault(principal, set()).add(name)
    return granted, granters


def sasl_grants(p: Project) -> list[str]:
    """Each principal a fraudpipe service logs in as is granted what its commands need, by a job it waits for:
    a worker, worker_acls of its agents and group (`fraudpipe topics grant` in init); the API, replayer and
    retrainer, WRITE on what they publish (WRITES)."""
    granted, granters = _granted(p)
    problems = []
    for name, service in _ours(p).items():
        settings = _valid_settings(service)
        if settings is None or settings.kafka.sasl_username in {None, "admin"}:
            continue
        principal, topics = f"User:{settings.kafka.sasl_username}", settings.topics
        needed: set[AclSpec] = set()
        for call in _cli_calls(service):
            if call[:1] == ["worker"]:
                needed |= set(worker_acls(topics, settings.kafka.app_id, settings.worker.agents))
            for prefix, names in WRITES.items():
                if tuple(call[: len(prefix)]) == prefix:
                    needed |= {AclSpec("topic", topics.full(getattr(topics, n)), "write") for n in names}
        problems += [
            f"{name}: {principal} lacks {spec.operation.upper()} on {spec.resource} {spec.name}"
            for spec in sorted(needed - granted.get(principal, set()), key=lambda s: (s.resource, s.name, s.operation))
        ]
        depends = service.get("depends_on") or {}
        problems += [
            f"{name}: must wait for {granter} (service_completed_successfully), which grants {principal} its ACLs"
            for granter in sorted(granters.get(principal, set()) if needed else set())
            if not isinstance(depends, dict)
            or (depends.get(granter) or {}).get("condition") != "service_completed_successfully"
        ]
    return problems


SASL_CHECKS: dict[str, Callable[[Project], list[str]]] = {
    check.__name__: check for check in (sasl_listeners, sasl_parity, sasl_logins, sasl_grants)
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_the_files_pass(name: str) -> None:
    assert CHECKS[name](_project()) == []


@pytest.mark.parametrize("name", [*CHECKS, *SASL_CHECKS])
def test_the_sasl_override_passes(name: str) -> None:
    """docker-compose.yml with docker-compose.sasl.yml over it: every check of the plain file, and the SASL ones."""
    assert {**CHECKS, **SASL_CHECKS}[name](_sasl_project()) == []


# --- each check can fail -------------------------------------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[Project], None]:
    """A mutation: set ``value`` at ``path`` in the compose dict (``services.worker.command``); None deletes."""

    def mutate(p: Project) -> None:
        *parents, last = path.split(".")
        node = p.compose
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value

    return mutate


def _edit(field: str, old: str, new: str) -> Callable[[Project], None]:
    """A mutation: replace ``old`` by ``new`` in a text file of the project (it must occur)."""

    def mutate(p: Project) -> None:
        text = getattr(p, field)
        assert old in text, f"{old!r} not in {field}"
        setattr(p, field, text.replace(old, new))

    return mutate


def _prometheus_target(job: str, target: str) -> Callable[[Project], None]:
    def mutate(p: Project) -> None:
        (config,) = [c for c in p.prometheus["scrape_configs"] if c["job_name"] == job]
        config["static_configs"] = [{"targets": [target]}]
        config.pop("dns_sd_configs", None)

    return mutate


BROKEN = [
    ("images_pinned", _set("services.kafka.image", "apache/kafka:latest"), "not pinned"),
    ("images_pinned", _set("services.grafana.image", "grafana/grafana"), "not pinned"),
    ("images_pinned", _set("services.redis.image", "redis:7-alpine"), "not pinned"),
    ("images_pinned", _set("services.worker.image", "fraudpipe:9.9.9"), "not fraudpipe:"),
    ("service_versions", _set("services.kafka.image", "apache/kafka:4.0.0"), "KAFKA_VERSION"),
    ("service_versions", _set("services.redis.image", "redis:7.2.4-alpine"), "REDIS_IMAGE_VERSION"),
    ("healthchecks", _set("services.redis.healthcheck", None), "redis: no health check"),
    ("healthchecks", _set("services.prometheus.healthcheck", {"disable": True}), "prometheus: no health check"),
    ("healthchecks", _set("services.api.healthcheck", None), "api: no health check"),
    ("dependencies", _set("services.worker.depends_on.trainer", {"condition": "service_started"}), "trainer"),
    ("dependencies", _set("services.worker.depends_on", ["kafka", "redis"]), "must name a condition"),
    ("dependencies", _set("services.worker.depends_on.redis", None), "worker: must depend on redis"),
    ("dependencies", _set("services.labels.depends_on.kafak", {"condition": "service_healthy"}), "unknown service"),
    ("dependencies", _set("services.api.depends_on.kafka", {"condition": "service_started"}), "service_healthy"),
    ("dependencies", _set("services.trainer.restart", "on-failure"), "trainer: a one-shot"),
    ("dependencies", _set("services.api.depends_on", {}), "api: must depend on init"),
    ("fraud_settings", _set("services.worker.environment.FRAUD_WORKER__AGENTS", '["score","typo"]'), "validate"),
    ("fraud_settings", _set("services.worker.environment.FRAUD_WORKER__AGENT", '["score"]'), "not a setting"),
    ("fraud_settings", _set("services.api.environment.FRAUD_NOPE", "1"), "nope is not a setting"),
    ("fraud_settings", _set("services.api.environment.FRAUD_API", "x"), "a section, not a field"),
    ("fraud_settings", _set("services.api.environment.FRAUD_API__PORT", 8000), "quoted string"),
    ("fraud_settings", _set("services.api.environment.FRAUD_API__PORT", "0"), "validate"),
    ("cli_commands", _set("services.worker.command", ["wroker"]), "no command 'wroker'"),
    ("cli_commands", _set("services.replayer.command", ["replay", "--rate", "500"]), "Missing argument"),
    ("cli_commands", _set("services.replayer.command", ["replay", "/sim", "--rate", "fast"]), "--rate"),
    ("cli_commands", _set("services.monitor.command", ["monitor", "--evry", "60"]), "No such option"),
    ("cli_commands", _set("services.init.command", ["topics"]), "no command '(none)'"),
    ("cli_commands", _set("services.api.command", None), "runs no fraudpipe command"),
    ("cli_commands", _set("services.trainer.command", ["fraudpipe trian /sim --promote"]), "no command 'trian'"),
    ("cli_commands", _set("services.trainer.command", ["echo fraudpipe-free"]), "runs no fraudpipe command"),
    ("host_ports", _set("services.grafana.ports", ["127.0.0.1:8000:3000"]), "already published by api"),
    ("host_ports", _set("services.prometheus.ports", ["8000:9090"]), "already published by api"),
    ("host_ports", _set("services.worker.ports", ["9108:9108"]), "must not publish"),
    ("host_ports", _set("services.worker.container_name", "worker"), "no container_name"),
    ("reachable", _set("services.api.environment.FRAUD_API__BIND", "127.0.0.1"), "unreachable"),
    ("reachable", _set("services.worker.environment.FRAUD_METRICS__BIND", "127.0.0.1"), "unreachable"),
    ("reachable", _set("services.api.ports", ["127.0.0.1:8000:8080"]), "published port 8080"),
    ("reachable", _set("services.monitor.expose", ["9108"]), "exposed port 9108"),
    ("reachable", _set("services.worker.environment.FRAUD_METRICS__PORT", "9200"), "health-checked port 9108"),
    ("volumes", _set("services.worker.volumes", ["fraudpipe:/srv"]), "is not on a named volume"),
    ("volumes", _set("services.worker.volumes", ["elsewhere:/var/lib/fraudpipe"]), "not declared"),
    (
        "volumes",
        _set("services.prometheus.volumes", ["./deploy/nope.yml:/etc/prometheus/prometheus.yml:ro"]),
        "does not exist",
    ),
    ("prometheus_targets", _prometheus_target("labels", "lables:9108"), "not a compose service"),
    ("prometheus_targets", _prometheus_target("monitor", "monitor:9108"), "does not listen on 9108"),
    ("prometheus_targets", _prometheus_target("worker", "worker:9108"), "dns_sd_configs"),
    ("prometheus_targets", _prometheus_target("api", "labels:9108"), "api: serves metrics but no scrape job"),
    ("prometheus_targets", _set("services.prometheus.command", ["--config.file=/etc/p.yml"]), "not mounted"),
    ("grafana", _edit("dashboard", "fraudpipe_decisions_total", "fraudpipe_decisions"), "not a metric"),
    (
        "grafana",
        _edit("dashboard", "fraudpipe_end_to_end_seconds_bucket", "fraudpipe_end_to_end_seconds_sum"),
        "_bucket",
    ),
    ("grafana", _edit("dashboard", '"uid": "prometheus"', '"uid": "other"'), "not provisioned"),
    ("grafana", _edit("dashboard", '"panels": [', '"panels": [,'), "not JSON"),
    ("grafana", _edit("dashboard", "fraudpipe_model_info", "fraudpipe_model_swaps_total"), "shows no"),
    ("grafana", _set("services.grafana.volumes", []), "not mounted"),
    ("grafana", _set("services.grafana.environment.GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "/x.json"), "home"),
    ("dockerfile", _edit("dockerfile", "USER 10001:10001", "USER root"), "non-root"),
    ("dockerfile", _edit("dockerfile", "USER 10001:10001", ""), "non-root"),
    ("dockerfile", _edit("dockerfile", "AS runtime", "AS runtime\nFROM python:3.11-slim-bookworm"), "not pinned"),
    (
        "dockerfile",
        _edit("dockerfile", "FROM python:3.11.13-slim-bookworm AS builder", "FROM python:latest AS b"),
        "not pinned",
    ),
    ("dockerfile", _edit("dockerfile", 'ENTRYPOINT ["fraudpipe"]', 'ENTRYPOINT ["python"]'), "ENTRYPOINT"),
    ("dockerfile", _edit("dockerfile", "COPY streams ./streams", ""), "streams is not copied"),
    ("dockerignore", _edit("dockerignore", ".venv/", ""), ".venv is not excluded"),
    ("dockerignore", _edit("dockerignore", "tests/", "tests/\nREADME.md"), "excludes README.md"),
    ("kafka_parity", _set("services.kafka.environment.KAFKA_AUTO_CREATE_TOPICS_ENABLE", "true"), "auto.create"),
    ("kafka_parity", _set("services.kafka.environment.KAFKA_NUM_PARTITIONS", None), "num.partitions"),
    ("mounted_scripts", _set("services.kafka.command", ["/bin/bash", "/opt/fraudpipe/start.sh"]), "not mounted"),
    ("compaction", _set("services.compactor", None), "no service runs `fraudpipe logs compact"),
    ("compaction", _set("services.compactor.command", ["logs", "compact"]), "without --every"),
    ("compaction", _set("services.compactor.restart", "no"), "must be restarted"),
    ("compaction", _set("services.compactor.environment", {"FRAUD_PATHS__DATA_DIR": "/srv/data"}), "compacts /srv"),
    ("compaction", _set("services.compactor.volumes", ["elsewhere:/var/lib/fraudpipe"]), "not on the workers'"),
]


@pytest.mark.parametrize(("name", "mutate", "expected"), BROKEN, ids=[f"{b[0]}-{i}" for i, b in enumerate(BROKEN)])
def test_each_check_finds_a_broken_copy(name: str, mutate: Callable[[Project], None], expected: str) -> None:
    broken = copy.deepcopy(_project())
    mutate(broken)
    problems = CHECKS[name](broken)
    assert any(expected in problem for problem in problems), problems


_KAFKA_ENV = "services.kafka.environment."
_ADMIN = "${FRAUDPIPE_KAFKA_SASL_PASSWORD_ADMIN:?set it}"
_INIT_GRANTS = (
    "fraudpipe topics create --timeout 60\nfraudpipe topics grant --principal User:worker --agents score,alerts"
)

SASL_BROKEN = [
    (
        "sasl_listeners",
        _set(
            _KAFKA_ENV + "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
            "INTERNAL:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT,HOST:PLAINTEXT",
        ),
        "HOST is PLAINTEXT",
    ),
    (
        "sasl_listeners",
        _set(
            _KAFKA_ENV + "KAFKA_LISTENERS", "INTERNAL://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093,PLAINTEXT://0.0.0.0:9094"
        ),
        "PLAINTEXT is PLAINTEXT",
    ),
    ("sasl_listeners", _set(_KAFKA_ENV + "KAFKA_SASL_ENABLED_MECHANISMS", "PLAIN,SCRAM-SHA-512"), "offers"),
    (
        "sasl_listeners",
        _set(_KAFKA_ENV + "KAFKA_LISTENER_NAME_HOST_SCRAM___SHA___512_SASL_JAAS_CONFIG", None),
        "HOST has no login module",
    ),
    (
        "sasl_listeners",
        _set(
            _KAFKA_ENV + "KAFKA_LISTENER_NAME_CONTROLLER_PLAIN_SASL_JAAS_CONFIG",
            f'PlainLoginModule required username="admin" password="{_ADMIN}" user_admin="{_ADMIN}" '
            f'user_worker="{_ADMIN}";',
        ),
        "admin only",
    ),
    (
        "sasl_listeners",
        _set(
            _KAFKA_ENV + "KAFKA_LISTENER_NAME_INTERNAL_SCRAM___SHA___512_SASL_JAAS_CONFIG", "ScramLoginModule required;"
        ),
        "log in as admin",
    ),
    (
        "sasl_listeners",
        _set(
            "services.kafka.healthcheck.test",
            ["CMD-SHELL", "kafka-broker-api-versions.sh --bootstrap-server kafka:9092"],
        ),
        "health check must log in",
    ),
    ("sasl_parity", _set(_KAFKA_ENV + "KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND", "true"), "allow.everyone"),
    ("sasl_parity", _set(_KAFKA_ENV + "KAFKA_AUTHORIZER_CLASS_NAME", None), "authorizer.class.name=None"),
    ("sasl_parity", _set(_KAFKA_ENV + "KAFKA_SUPER_USERS", "User:admin;User:worker"), "super.users"),
    ("sasl_parity", _set(_KAFKA_ENV + "KAFKA_SASL_MECHANISM_INTER_BROKER_PROTOCOL", "PLAIN"), "inter.broker"),
    ("sasl_logins", _set("services.worker.environment.FRAUD_KAFKA__SASL_PASSWORD", "s3cret-password"), "literal"),
    ("sasl_logins", _set("services.worker.environment.FRAUD_KAFKA__SASL_PASSWORD", _ADMIN), "worker's own"),
    (
        "sasl_logins",
        _set(
            "services.worker.environment.FRAUD_KAFKA__SASL_PASSWORD",
            "${FRAUDPIPE_KAFKA_SASL_PASSWORD_WORKER:-changeme}",
        ),
        "is not required",
    ),
    ("sasl_logins", _set(_KAFKA_ENV + "FRAUDPIPE_KAFKA_SASL_PASSWORD_LABELER", "labeler-password"), "literal"),
    (
        "sasl_logins",
        _set(
            _KAFKA_ENV + "KAFKA_LISTENER_NAME_INTERNAL_SCRAM___SHA___512_SASL_JAAS_CONFIG",
            'ScramLoginModule required username="admin" password="hunter2-hunter2";',
        ),
        "literal",
    ),
    ("sasl_logins", _set(_KAFKA_ENV + "FRAUDPIPE_KAFKA_SASL_USERS", "worker replayer labeler"), "not a user"),
    ("sasl_logins", _set("services.labels.environment.FRAUD_KAFKA__SASL_USERNAME", "nobody"), "'nobody'"),
    (
        "sasl_logins",
        _set("services.replayer.environment.FRAUD_KAFKA__SECURITY_PROTOCOL", "PLAINTEXT"),
        "replayer: talks to Kafka over PLAINTEXT",
    ),
    ("sasl_logins", _set("services.worker.environment.FRAUD_KAFKA__SASL_MECHANISM", "SCRAM-SHA-256"), "SHA-256"),
    ("sasl_logins", _set("services.monitor.environment", {"FRAUD_KAFKA__SASL_PASSWORD": _ADMIN}), "no Kafka login"),
    (
        "sasl_logins",
        lambda p: p.compose["services"]["api"]["environment"].update(
            FRAUD_KAFKA__SASL_USERNAME="admin", FRAUD_KAFKA__SASL_PASSWORD=_ADMIN
        ),
        "api: logs in as admin",
    ),
    (
        "sasl_grants",
        _set("services.init.command", [_INIT_GRANTS]),
        "labels: User:labeler lacks READ on topic labels.v1",
    ),
    ("sasl_grants", _set("services.init.command", [_INIT_GRANTS + " --group fraudpipe-labels"]), "worker: User:wor"),
    (
        "sasl_grants",
        _set(
            "services.acls.command",
            ["/bin/bash", "/opt/fraudpipe/sasl-acls.sh", "User:replayer=transactions.v1,labels.v1"],
        ),
        "retrainer: User:retrainer lacks WRITE on topic model-events.v1",
    ),
    (
        "sasl_grants",
        _set(
            "services.acls.command",
            [
                "/bin/bash",
                "/opt/fraudpipe/sasl-acls.sh",
                "User:replayer=transaction.v1,labels.v1",
                "User:retrainer=model-events.v1",
            ],
        ),
        "lacks WRITE on topic transactions.v1",
    ),
    (
        "sasl_grants",
        _set("services.worker.environment.FRAUD_WORKER__AGENTS", '["score","alerts","labels"]'),
        "worker: User:worker lacks READ on topic labels.v1",
    ),
    ("sasl_grants", _set("services.replayer.depends_on.acls", None), "replayer: must wait for acls"),
    (
        "sasl_grants",
        _set("services.api.environment.FRAUD_KAFKA__SASL_USERNAME", "replayer"),
        "lacks WRITE on topic scores.v1",
    ),
]


@pytest.mark.parametrize(
    ("name", "mutate", "expected"), SASL_BROKEN, ids=[f"{b[0]}-{i}" for i, b in enumerate(SASL_BROKEN)]
)
def test_each_sasl_check_finds_a_broken_copy(name: str, mutate: Callable[[Project], None], expected: str) -> None:
    broken = copy.deepcopy(_sasl_project())
    mutate(broken)
    problems = SASL_CHECKS[name](broken)
    assert any(expected in problem for problem in problems), problems


def test_every_check_is_tested_broken() -> None:
    assert {name for name, _, _ in BROKEN} == set(CHECKS)
    assert {name for name, _, _ in SASL_BROKEN} == set(SASL_CHECKS)


def test_the_override_is_merged_as_compose_merges() -> None:
    base = {
        "services": {
            "a": {
                "image": "a:1.0.0",
                "command": ["one"],
                "environment": ["A=1", "B=2"],
                "healthcheck": {"test": ["CMD", "old"], "interval": "5s"},
                "volumes": ["data:/data", "./f.sh:/f.sh:ro"],
                "ports": ["127.0.0.1:80:80"],
                "expose": ["1"],
                "depends_on": {"b": {"condition": "service_healthy"}},
            }
        },
        "volumes": {"data": None},
    }
    override = {
        "services": {
            "a": {
                "command": ["two"],
                "environment": {"B": "3", "C": "4"},
                "healthcheck": {"test": ["CMD", "new"]},
                "volumes": ["other:/data"],
                "ports": ["127.0.0.1:80:80", "127.0.0.1:81:81"],
                "expose": ["2"],
                "depends_on": {"c": {"condition": "service_completed_successfully"}},
            },
            "d": {"image": "d:1.0.0"},
        },
        "volumes": {"other": None},
    }
    merged = merge_compose(base, override)
    a = merged["services"]["a"]
    assert a["command"] == ["two"]  # shell commands: replaced
    assert a["environment"] == {"A": "1", "B": "3", "C": "4"}  # by key, list or mapping
    assert a["healthcheck"] == {"test": ["CMD", "new"], "interval": "5s"}  # test replaced, the rest merged
    assert a["volumes"] == ["./f.sh:/f.sh:ro", "other:/data"]  # by mount target
    assert a["ports"] == ["127.0.0.1:80:80", "127.0.0.1:81:81"]  # unique
    assert a["expose"] == ["1", "2"]  # other sequences append
    assert set(a["depends_on"]) == {"b", "c"}
    assert merged["services"]["d"] == {"image": "d:1.0.0"}
    assert set(merged["volumes"]) == {"data", "other"}
    assert base["services"]["a"]["command"] == ["one"]  # the inputs are left alone


def test_the_sasl_override_changes_only_what_it_must() -> None:
    """Everything docker-compose.yml says still holds with the override, except the broker's listeners, volume,
    start and health check and the clients' logins; and the plain file has no SASL in it."""
    base, merged = _project().compose, _sasl_project().compose
    for name, service in base["services"].items():
        for key, value in service.items():
            if key == "environment":
                kept = {k: v for k, v in _environment(service).items() if not re.search(r"LISTENER|SECURITY", k)}
                assert kept.items() <= _environment(merged["services"][name]).items(), name
            elif key not in {"command", "healthcheck", "volumes", "depends_on", "entrypoint"}:
                assert merged["services"][name][key] == value, (name, key)
    assert not any(check(_project()) == [] for check in (sasl_listeners, sasl_logins))


def test_the_broker_scripts_parse() -> None:
    for script in sorted((ROOT / "deploy" / "kafka").glob("*.sh")):
        checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
        assert checked.returncode == 0, f"{script.name}: {checked.stderr}"


def test_the_start_script_writes_the_properties_the_image_would() -> None:
    """sasl-start.sh formats the storage with server properties made from the KAFKA_* variables (the image makes
    its own from the same variables when it starts): each one is the property _kafka_variable names, the image's
    own start-script settings left out."""
    text = (ROOT / "deploy" / "kafka" / "sasl-start.sh").read_text()
    found = re.search(r"^server_properties\(\) \{.*?^\}$", text, re.DOTALL | re.MULTILINE)
    assert found is not None, "sasl-start.sh: no server_properties function"
    variables = {k: _INTERPOLATION.sub("pw-12345678", v) for k, v in _broker(_sasl_project()).items()}
    variables |= {"KAFKA_OPTS": "-Dx=y", "KAFKA_HEAP_OPTS": "-Xmx1g", "KAFKA_LOG4J_LOGGERS": "a=INFO"}
    rendered = subprocess.run(["bash", "-c", found.group(0) + "\nserver_properties"], capture_output=True, text=True,
                              env={"PATH": os.environ["PATH"], **variables}, check=True).stdout  # fmt: skip
    properties = dict(line.split("=", 1) for line in rendered.splitlines())
    expected = {k: v for k, v in variables.items() if k.startswith("KAFKA_") and k not in
                {"KAFKA_OPTS", "KAFKA_HEAP_OPTS", "KAFKA_LOG4J_LOGGERS"}}  # fmt: skip
    assert {_kafka_variable(key): value for key, value in properties.items()} == expected
    assert properties["listener.name.internal.scram-sha-512.sasl.jaas.config"].endswith('password="pw-12345678";')


# --- the image carries the packages' data files ---------------------------------------------------------------------


def package_data_problems(pyproject: dict[str, Any], root: Path, packages: list[str]) -> list[str]:
    """Files other than Python sources under the packages that ``[tool.setuptools.package-data]`` does not ship: a
    non-editable install (the Docker image) would not have them. An extension's C sources are compiled by the install
    (``[[tool.setuptools.ext-modules]]``), and what it builds (``.so``) is not a source."""
    setuptools = pyproject.get("tool", {}).get("setuptools", {})
    package_data = setuptools.get("package-data", {})
    compiled = {source for module in setuptools.get("ext-modules", []) for source in module.get("sources", [])}
    problems = []
    for top in packages:
        for path in sorted((root / top).rglob("*")):
            relative = path.relative_to(root)
            if path.is_dir() or path.suffix in {".py", ".pyc", ".pyi", ".so"} or "__pycache__" in relative.parts:
                continue
            if relative.as_posix() in compiled:
                continue
            owners = [relative.parents[i] for i in range(len(relative.parts) - 1)]  # innermost folder first
            shipped = any(
                len(pattern.split("/")) == len(inside.parts)
                and all(
                    fnmatch.fnmatch(part, glob) for part, glob in zip(inside.parts, pattern.split("/"), strict=True)
                )
                for owner in owners
                if (root / owner / "__init__.py").exists()
                for key in (".".join(owner.parts), "*")
                for pattern in package_data.get(key, [])
                for inside in [PurePosixPath(path.relative_to(root / owner))]
            )
            if not shipped:
                problems.append(f"{relative} is not in [tool.setuptools.package-data]")
    return problems


def test_package_data_check_can_fail(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    for name in ("pkg/__init__.py", "pkg/sub/__init__.py", "pkg/a.lua", "pkg/sub/page.html", "pkg/sub/x.py"):
        (tmp_path / name).write_text("")
    covered = {"tool": {"setuptools": {"package-data": {"pkg": ["*.lua", "sub/*.html"]}}}}
    assert package_data_problems(covered, tmp_path, ["pkg"]) == []
    partly = {"tool": {"setuptools": {"package-data": {"pkg": ["*.lua"]}}}}
    assert package_data_problems(partly, tmp_path, ["pkg"]) == [
        "pkg/sub/page.html is not in [tool.setuptools.package-data]"
    ]
    by_subpackage = {"tool": {"setuptools": {"package-data": {"pkg": ["*.lua"], "pkg.sub": ["*.html"]}}}}
    assert package_data_problems(by_subpackage, tmp_path, ["pkg"]) == []
    (tmp_path / "pkg" / "fast.c").write_text("")
    assert package_data_problems(by_subpackage, tmp_path, ["pkg"]) == [
        "pkg/fast.c is not in [tool.setuptools.package-data]"
    ]
    by_subpackage["tool"]["setuptools"]["ext-modules"] = [{"name": "pkg.fast", "sources": ["pkg/fast.c"]}]
    assert package_data_problems(by_subpackage, tmp_path, ["pkg"]) == []


def test_the_image_carries_every_package_data_file() -> None:
    project = _project()
    assert package_data_problems(project.pyproject, ROOT, _packages(project)) == []
