"""Settings: one frozen object, read once at the edge.

Every value comes from (highest first) the environment, a ``.env`` file in the working directory, then the defaults
below. Variables are ``FRAUD_<SECTION>__<FIELD>`` (``FRAUD_KAFKA__BOOTSTRAP_SERVERS``), top-level ones
``FRAUD_<FIELD>``. ``.env.example`` lists every variable with its default (``fraudpipe config env-example``
regenerates it; a guard test keeps the two equal). Secrets are ``SecretStr``: they print as ``**********``.

Only entry points (CLI commands, the Faust app module, test fixtures) call :func:`get_settings`; everything else
receives the section it needs. Nothing here connects, creates folders or reads files beyond ``.env``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "DEV_AUDIT_KEY",
    "DEV_TOKENIZATION_KEY",
    "ApiSettings",
    "GovernanceSettings",
    "KafkaSettings",
    "MetricsSettings",
    "PathSettings",
    "PrivacySettings",
    "RedisSettings",
    "ScoringSettings",
    "Settings",
    "SinkSettings",
    "TopicSettings",
    "TrainingSettings",
    "WebSettings",
    "WorkerSettings",
    "env_example",
    "get_settings",
]

DEV_TOKENIZATION_KEY = "dev-only-tokenization-key-change-me-in-production"
DEV_AUDIT_KEY = "dev-only-audit-key-change-me-in-production"
Port = Annotated[int, Field(ge=1, le=65_535)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    """Broker connection. ``app_id`` is the Faust application id, hence the workers' consumer group.

    ``security_protocol`` SASL_PLAINTEXT or SASL_SSL needs ``sasl_mechanism``, ``sasl_username`` and
    ``sasl_password``; every client (confluent-kafka's and the Faust worker's) then authenticates with them.
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "fraudpipe"
    app_id: str = "fraudpipe"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    request_timeout_ms: Annotated[int, Field(ge=100)] = 10_000

    def client_config(self) -> dict[str, str]:
        """librdkafka (confluent-kafka) configuration for these settings; holds the password in clear."""
        config = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism is not None:
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username or ""
            config["sasl.password"] = self.sasl_password.get_secret_value() if self.sasl_password else ""
        return config

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism, sasl_username and sasl_password "
                "(FRAUD_KAFKA__SASL_MECHANISM, FRAUD_KAFKA__SASL_USERNAME, FRAUD_KAFKA__SASL_PASSWORD)"
            )
        return self

    def faust_broker_url(self) -> str:
        """The broker list in Faust's ``kafka://host:port;host:port`` form."""
        hosts = [server.strip() for server in self.bootstrap_servers.split(",") if server.strip()]
        return ";".join(f"kafka://{host}" for host in hosts)


class RedisSettings(_Section):
    """Online feature store. Timeouts are short on purpose: a stalled call must not stall the consumer."""

    url: str = "redis://127.0.0.1:6379/0"
    username: str | None = None
    password: SecretStr | None = None
    socket_timeout_ms: Annotated[int, Field(ge=1)] = 250
    connect_timeout_ms: Annotated[int, Field(ge=1)] = 500
    key_prefix: str = "fp:v2:"


class TopicSettings(_Section):
    """Topic names, and how ``fraudpipe topics create`` makes them. ``prefix`` is prepended to every name."""

    prefix: str = ""
    transactions: str = "transactions.v1"
    labels: str = "labels.v1"
    scores: str = "scores.v1"
    alerts: str = "alerts.v1"
    registry_events: str = "model-events.v1"
    repairs: str = "feature-repairs.v1"
    """Transactions decided without the feature store (degraded), applied to it once it answers."""
    partitions: Annotated[int, Field(ge=1, le=1_000)] = 6
    replication_factor: Annotated[int, Field(ge=1, le=10)] = 1
    retention_ms: Annotated[int, Field(ge=-1)] = 7 * 24 * 3_600_000
    dlq_retention_ms: Annotated[int, Field(ge=-1)] = 30 * 24 * 3_600_000

    def full(self, name: str) -> str:
        """``name`` with the prefix applied."""
        return f"{self.prefix}{name}"

    @staticmethod
    def dlq_of(name: str) -> str:
        """Dead-letter topic of ``name``: ``transactions.v1`` -> ``transactions.dlq.v1``."""
        base, dot, version = name.rpartition(".")
        if dot and version.startswith("v") and version[1:].isdigit():
            return f"{base}.dlq.{version}"
        return f"{name}.dlq"

    def consumed(self) -> tuple[str, ...]:
        """Full names of the topics fraudpipe consumes from outside producers (each has a DLQ)."""
        return tuple(self.full(name) for name in (self.transactions, self.labels, self.registry_events, self.alerts))

    def produced(self) -> tuple[str, ...]:
        """Full names of the topics fraudpipe's workers produce."""
        return tuple(self.full(name) for name in (self.scores, self.alerts, self.repairs))


class ScoringSettings(_Section):
    """The hot path: micro-batches, thresholds, validation tolerance."""

    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 500
    batch_within_ms: Annotated[int, Field(ge=1, le=10_000)] = 20
    mode: Literal["score", "passthrough", "naive"] = "score"
    """``score``: the product. The other two are ``fraudpipe bench``'s baselines: ``passthrough`` forwards each
    record to ``scores.v1`` untouched (the ceiling of the client stack), ``naive`` scores one event at a time (one
    Redis call and one model call per event: the floor)."""
    review_threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    decline_threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.9
    max_clock_skew_s: Annotated[float, Field(ge=0.0)] = 300.0
    model_threads: Annotated[int, Field(ge=1, le=64)] = 1
    thresholds_from: Literal["model", "settings"] = "model"
    """``model``: the thresholds chosen on validation and stored in the champion's manifest; ``settings``: the two
    above."""
    review_amount: Annotated[float | None, Field(gt=0.0)] = None
    """Rule: payments of at least this amount are at least reviewed (unset: no such rule)."""
    reason_codes: Annotated[int, Field(ge=1, le=16)] = 3
    model_alias: Literal["champion", "challenger"] = "champion"
    model_runtime: Literal["lightgbm", "lleaves"] = "lightgbm"
    """``lleaves``: score with the model compiled to native code (``pip install 'fraudpipe[compiled]'``): same
    scores, several times faster per batch; LightGBM stays the reference and computes the reason codes."""
    model_poll_s: Annotated[float, Field(gt=0.0)] = 5.0
    """How often a worker checks the registry alias it follows (a promotion is served within this interval; the
    promotion itself is recorded on model-events.v1)."""
    shadow: bool = False
    """Also score every batch with the registry's challenger, in shadow: its scores and would-be decisions go to
    ``data_dir/shadow`` for ``fraudpipe monitor`` to compare, never to a decision; it runs after the batch is
    published, and its failures are counted and ignored."""
    fallback: Literal["fail_open", "fail_closed"] = "fail_open"
    """Decisions while features cannot be read (Redis down or slow): ``fail_open`` approves payments below
    ``fallback_review_amount`` and reviews the others; ``fail_closed`` reviews every payment."""
    fallback_review_amount: Annotated[float, Field(gt=0.0)] = 100.0
    decision_memory_s: Annotated[int, Field(ge=60)] = 7 * 86_400
    """How long the decision of a transaction is remembered, so a redelivery republishes the same decision."""

    @model_validator(mode="after")
    def _ordered(self) -> ScoringSettings:
        if self.review_threshold > self.decline_threshold:
            raise ValueError("review_threshold must not exceed decline_threshold")
        return self


class TrainingSettings(_Section):
    """LightGBM training. Defaults measured on the simulator's handbook preset (see models/train.py)."""

    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05
    num_leaves: Annotated[int, Field(ge=2, le=4_096)] = 31
    min_data_in_leaf: Annotated[int, Field(ge=1)] = 50
    feature_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    bagging_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    lambda_l2: Annotated[float, Field(ge=0.0)] = 0.0
    rounds: Annotated[int, Field(ge=1, le=100_000)] = 300
    early_stopping_rounds: Annotated[int, Field(ge=1)] = 50
    seed: int = 0
    threads: Annotated[int, Field(ge=1, le=64)] = 1


class PrivacySettings(_Section):
    """PAN tokenization, audit seals, erasure and retention. The keys must be set (>= 32 characters, not the dev
    key) when ``environment=prod``.

    Retention is in days of event time, enforced by ``fraudpipe privacy retain`` (0 keeps forever). Online features
    need no setting: their Redis keys expire on their own (the feature store's TTLs).
    """

    tokenization_key: SecretStr = SecretStr(DEV_TOKENIZATION_KEY)
    audit_key: SecretStr = SecretStr(DEV_AUDIT_KEY)
    """HMAC key sealing every decision-log row (``fraudpipe audit verify``) and digesting erased subjects."""
    erasure_poll_s: Annotated[float, Field(gt=0.0)] = 5.0
    """How often a worker re-reads the erasure list from Redis."""
    retain_decisions_days: Annotated[int, Field(ge=0)] = 400
    retain_labels_days: Annotated[int, Field(ge=0)] = 400
    retain_deliveries_days: Annotated[int, Field(ge=0)] = 400
    retain_shadow_days: Annotated[int, Field(ge=0)] = 90
    retain_alerts_days: Annotated[int, Field(ge=0)] = 90
    """The alert sinks' copies: the Redis alert stream and the JSONL file."""


class GovernanceSettings(_Section):
    """Fairness reports and model cards. Segments come from a table keyed by ``segment_key`` (the simulator's
    ``customers.parquet``, keyed by card token); ``protected_attributes`` may never be model features."""

    segments_path: Path | None = None
    segment_key: str = "card_token"
    segment_columns: tuple[str, ...] = ("home_country", "age_band")
    protected_attributes: tuple[str, ...] = (
        "age", "age_band", "gender", "sex", "ethnicity", "race", "religion", "nationality", "home_country",
        "marital_status", "disability",
    )  # fmt: skip
    disparity_bound: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    """A segment's ratio to the reference segment outside [bound, 1 / bound] is flagged (the four-fifths rule)."""
    min_segment_decisions: Annotated[int, Field(ge=1)] = 200
    """Smaller segments are reported but never flagged: their rates are noise."""


class PathSettings(_Section):
    """Where files go; relative paths are relative to the working directory. Nothing is created on import."""

    data_dir: Path = Path("var/data")
    models_dir: Path = Path("var/models")


class SinkSettings(_Section):
    """Where alerts go besides ``alerts.v1``. ``enabled``: any of log, redis_stream, jsonl, webhook."""

    enabled: tuple[Literal["log", "redis_stream", "jsonl", "webhook"], ...] = ("log", "redis_stream")
    budget_s: Annotated[float, Field(gt=0.0)] = 2.0
    """Longest a sink may take for one batch before it counts as failed for that batch (retried with the next)."""
    redis_stream_key: str = "fp:alerts"
    redis_stream_maxlen: Annotated[int, Field(ge=100)] = 10_000
    jsonl_path: Path = Path("var/alerts.jsonl")
    webhook_url: str | None = None
    webhook_attempts: Annotated[int, Field(ge=1, le=20)] = 5
    """Failed deliveries of an alert before it goes to ``alerts.dlq.v1``."""
    webhook_timeout_s: Annotated[float, Field(gt=0.0)] = 2.0
    webhook_backoff_s: Annotated[float, Field(ge=0.0)] = 0.2
    dedupe_ttl_s: Annotated[int, Field(ge=60)] = 7 * 86_400


class ApiSettings(_Section):
    """The REST scoring API (``fraudpipe serve``); it serves its metrics on its own ``/metrics``."""

    bind: str = "127.0.0.1"
    port: Port = 8000
    dashboard_metrics_urls: tuple[str, ...] = ()
    """Prometheus endpoints the dashboard reads (workers, ``fraudpipe monitor``); empty: this host's worker
    (``metrics.bind:metrics.port``) and monitor (``metrics.bind:monitor.metrics_port``)."""


class MetricsSettings(_Section):
    """The Prometheus endpoint of a worker or the API (``/metrics``); port 0 turns it off."""

    bind: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65_535)] = 9108


class MonitorSettings(_Section):
    """Live quality and drift (``fraudpipe monitor``): when a day's labels count as complete, and drift bounds."""

    maturity_days: Annotated[int, Field(ge=0, le=365)] = 30
    """Days after a day's end before its unlabelled decisions count as genuine (chargebacks take weeks)."""
    k: Annotated[int, Field(ge=1)] = 100
    """Cards investigated per day, for CP@k."""
    drift_window_hours: Annotated[float, Field(gt=0)] = 24.0
    psi_moderate: Annotated[float, Field(gt=0)] = 0.1
    psi_breach: Annotated[float, Field(gt=0)] = 0.25
    metrics_port: Annotated[int, Field(ge=0, le=65_535)] = 9109
    """Where ``fraudpipe monitor --every`` serves its gauges (on ``metrics.bind``); 0 turns it off."""
    decay_ap_drop: Annotated[float, Field(ge=0.0)] = 0.1
    """``fraudpipe retrain --only-on-breach`` also trains when the champion's mean matured AP over its last
    ``retrain.holdout_days`` days is below its validation AP by more than this (metric decay)."""
    rollback_margin_ap: Annotated[float, Field(ge=0.0)] | None = None
    """Automatic rollback (off unless set): ``fraudpipe monitor`` rolls the champion back when its matured AP falls
    below the previous champion's by more than this."""
    rollback_min_days: Annotated[int, Field(ge=1)] = 3
    """Matured days of each champion needed before an automatic rollback is considered."""


class RetrainSettings(_Section):
    """``fraudpipe retrain``: windows of matured days, the data-validation gate, the promotion gate."""

    train_days: Annotated[int, Field(ge=1)] = 14
    valid_days: Annotated[int, Field(ge=1)] = 3
    holdout_days: Annotated[int, Field(ge=1)] = 7
    min_rows: Annotated[int, Field(ge=1)] = 5_000
    min_frauds: Annotated[int, Field(ge=1)] = 20
    min_fraud_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0005
    max_fraud_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    max_null_increase: Annotated[float, Field(ge=0.0, le=1.0)] = 0.25
    """A feature may be missing this much more often than in the champion's reference."""
    max_psi: Annotated[float, Field(gt=0.0)] = 8.0
    """Beyond this PSI against the champion's reference a feature is broken (units, pipeline), not drifting: with
    shares floored at 1e-4, fully disjoint distributions score about 9.2, a strong real drift 1 to 4."""
    margin_ap: Annotated[float, Field(ge=0.0)] = 0.005
    margin_cp: Annotated[float, Field(ge=0.0)] = 0.0
    max_drop: Annotated[float, Field(ge=0.0)] = 0.02
    """How much AUC or recall at 1 % FPR may drop against the champion."""


class WorkerSettings(_Section):
    """Which agents a ``fraudpipe worker`` runs: ``score`` (transactions → decisions and alerts), ``alerts`` (alert
    sinks), ``labels`` (label-derived features and the label log). Run them apart to scale them apart."""

    agents: tuple[Literal["score", "alerts", "labels"], ...] = ("score", "alerts", "labels")


class WebSettings(_Section):
    """Faust's own web server (it can serve table contents): off by default, loopback when on."""

    enabled: bool = False
    bind: str = "127.0.0.1"
    port: Port = 6066


class Settings(BaseSettings):
    """All of fraudpipe's configuration. Frozen: build a new one to change anything."""

    model_config = SettingsConfigDict(
        env_prefix="FRAUD_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        frozen=True,
        extra="forbid",
    )

    environment: Literal["dev", "test", "prod"] = "dev"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    topics: TopicSettings = TopicSettings()
    scoring: ScoringSettings = ScoringSettings()
    training: TrainingSettings = TrainingSettings()
    privacy: PrivacySettings = PrivacySettings()
    governance: GovernanceSettings = GovernanceSettings()
    paths: PathSettings = PathSettings()
    web: WebSettings = WebSettings()
    worker: WorkerSettings = WorkerSettings()
    metrics: MetricsSettings = MetricsSettings()
    monitor: MonitorSettings = MonitorSettings()
    retrain: RetrainSettings = RetrainSettings()
    sinks: SinkSettings = SinkSettings()
    api: ApiSettings = ApiSettings()

    @model_validator(mode="after")
    def _production_key(self) -> Settings:
        if self.environment != "prod":
            return self
        for name, dev in (("tokenization_key", DEV_TOKENIZATION_KEY), ("audit_key", DEV_AUDIT_KEY)):
            key = getattr(self.privacy, name).get_secret_value()
            if key == dev or len(key) < 32:
                raise ValueError(f"FRAUD_PRIVACY__{name.upper()} must be set to a secret of >= 32 characters in prod")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once. Entry points only."""
    return Settings()


def _env_lines(model: type[BaseModel], prefix: str) -> list[str]:
    lines: list[str] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, _Section):
            lines.extend(_env_lines(annotation, f"{prefix}{name.upper()}__"))
            continue
        lines.append(f"{prefix}{name.upper()}={_env_value(field.default)}")
    return lines


def _env_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    return str(value)


def env_example() -> str:
    """The text of ``.env.example``: every variable with its default, grouped by section."""
    header = [
        "# Every fraudpipe setting with its default. Copy to .env and change what you need.",
        "# Generated by `fraudpipe config env-example`; a guard test keeps it equal to fraudpipe/settings.py.",
    ]
    return "\n".join([*header, *_env_lines(Settings, "FRAUD_")]) + "\n"
