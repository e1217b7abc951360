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
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fraudpipe import currencies

__all__ = [
    "DEV_AUDIT_KEY",
    "DEV_TOKENIZATION_KEY",
    "ApiSettings",
    "CostSettings",
    "GovernanceSettings",
    "KafkaSettings",
    "LogSettings",
    "MetricsSettings",
    "PathSettings",
    "PrivacySettings",
    "RedisSettings",
    "Rule",
    "ScoringSettings",
    "Settings",
    "SinkSettings",
    "TopicSettings",
    "TrainingSettings",
    "WebSettings",
    "WorkerSettings",
    "env_example",
    "get_settings",
    "settings_table",
]

DEV_TOKENIZATION_KEY = "dev-only-tokenization-key-change-me-in-production"
DEV_AUDIT_KEY = "dev-only-audit-key-change-me-in-production"
Port = Annotated[int, Field(ge=1, le=65_535)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class KafkaSettings(_Section):
    """Broker connection. ``app_id`` is the Faust application id, hence the workers' consumer group.

    ``security_protocol`` SASL_PLAINTEXT or SASL_SSL needs ``sasl_mechanism``, ``sasl_username`` and
    ``sasl_password``; every client (confluent-kafka's and the Faust worker's) then authenticates with them.
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated host:port of the brokers."""
    client_id: str = "fraudpipe"
    """Client id the brokers see (logs, quotas)."""
    app_id: str = "fraudpipe"
    """Faust application id: the workers' consumer group."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (TLS trusts the system CAs)."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, with a SASL protocol."""
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    request_timeout_ms: Annotated[int, Field(ge=100)] = 10_000
    """Budget of one broker request (admin calls, produce)."""

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

    def producer_config(self, tuning: Mapping[str, object] | None = None) -> dict[str, object]:
        """The configuration every producer of the project is built from (worker, API, replayer, model events):
        idempotent (a retry never duplicates a message), acknowledged by all in-sync replicas, lz4-compressed, with
        these connection and security settings; ``tuning`` sets batching, timeouts and logging (``linger.ms``,
        ``message.timeout.ms`` …), never the guarantees.

        Raises:
            ValueError: ``tuning`` sets ``enable.idempotence`` or ``acks``.
        """
        guarantees = {"enable.idempotence": True, "acks": "all"}
        tuning = dict(tuning or {})
        if guarantees.keys() & tuning.keys():
            raise ValueError(f"a producer's {' and '.join(sorted(guarantees.keys() & tuning.keys()))} are not tunable")
        return {**self.client_config(), **guarantees, "compression.type": "lz4", **tuning}

    def consumer_config(self, group: str, tuning: Mapping[str, object] | None = None) -> dict[str, object]:
        """The configuration every consumer of the project is built from (the scoring consumer, the model-event
        listeners, the benchmark's reader): in ``group``, never committing on its own (offsets are committed
        explicitly, behind durable outputs, or not at all), with these connection and security settings; ``tuning``
        sets assignment, fetching and logging, never the guarantee.

        Raises:
            ValueError: ``tuning`` sets ``enable.auto.commit`` or ``group.id``.
        """
        fixed = {"group.id": group, "enable.auto.commit": False}
        tuning = dict(tuning or {})
        if fixed.keys() & tuning.keys():
            raise ValueError(f"a consumer's {' and '.join(sorted(fixed.keys() & tuning.keys()))} are not tunable")
        return {**self.client_config(), **fixed, **tuning}

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

    @property
    def scoring_group(self) -> str:
        """The consumer group of the scoring consumer (``transactions.v1``, :mod:`streams.consumer`); Faust's own
        consumer, for the other agents' topics, is in ``app_id``."""
        return self.scoring_group_of(self.app_id)

    @staticmethod
    def scoring_group_of(app_id: str) -> str:
        """:attr:`scoring_group` for the app id ``app_id``."""
        return f"{app_id}.scoring"

    @staticmethod
    def model_events_group_of(app_id: str) -> str:
        """The group id the model-event listeners of the app id ``app_id`` name: never joined, nothing committed
        (:mod:`streams.model_events`), but librdkafka looks its coordinator up, so the principal reads it."""
        return f"{app_id}.model-events"

    def faust_broker_url(self) -> str:
        """The broker list in Faust's ``kafka://host:port;host:port`` form."""
        hosts = [server.strip() for server in self.bootstrap_servers.split(",") if server.strip()]
        return ";".join(f"kafka://{host}" for host in hosts)


class RedisSettings(_Section):
    """Online feature store. Timeouts are short on purpose: a stalled call must not stall the consumer."""

    url: str = "redis://127.0.0.1:6379/0"
    """The feature store's Redis (standalone, or a primary)."""
    username: str | None = None
    """Redis ACL user (a login in the URL wins)."""
    password: SecretStr | None = None
    socket_timeout_ms: Annotated[int, Field(ge=1)] = 250
    """Budget of one call; past it the batch is decided in degraded mode."""
    connect_timeout_ms: Annotated[int, Field(ge=1)] = 500
    key_prefix: str = "fp:v4:"
    """Prefix of every key fraudpipe writes (versioned with the store's format)."""

    @property
    def address(self) -> str:
        """``url`` without a login it may carry (``redis://:PASSWORD@host``): what messages show."""
        scheme, _, rest = self.url.partition("://")
        where, slash, path = rest.partition("/")
        return f"{scheme}://{where.rpartition('@')[2]}{slash}{path}"


class TopicSettings(_Section):
    """Topic names, and how ``fraudpipe topics create`` makes them. ``prefix`` is prepended to every name."""

    prefix: str = ""
    """Prepended to every topic name (one cluster, several deployments or tests)."""
    transactions: str = "transactions.v1"
    """Input: payments to score, keyed by card token."""
    labels: str = "labels.v1"
    """Input: chargebacks and analyst verdicts."""
    scores: str = "scores.v1"
    """Output: one Decision per transaction (the audit record)."""
    alerts: str = "alerts.v1"
    """Output: one Alert per review or decline."""
    registry_events: str = "model-events.v1"
    """Model registrations, promotions and retraining verdicts."""
    repairs: str = "feature-repairs.v1"
    """Transactions decided without the feature store (degraded), applied to it once it answers."""
    partitions: Annotated[int, Field(ge=1, le=1_000)] = 6
    """Partitions per topic: the most workers that can share a topic."""
    replication_factor: Annotated[int, Field(ge=1, le=10)] = 1
    """Replicas per partition (3 in production)."""
    retention_ms: Annotated[int, Field(ge=-1)] = 7 * 24 * 3_600_000
    """How long topics keep records (-1: forever)."""
    dlq_retention_ms: Annotated[int, Field(ge=-1)] = 30 * 24 * 3_600_000
    """How long dead-letter topics keep records."""

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


RuleId = Literal["card_blocked", "known_fraud_30d", "large_amount"]


class Rule(BaseModel):
    """One rule of the decision policy (``scoring.rules``), data rather than code: which (``id``, its reason code),
    the outcome it forces at least (``at_least``) and its limit (``threshold``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: RuleId
    at_least: Literal["review", "decline"] = "review"
    threshold: Annotated[float, Field(gt=0.0)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_id(cls, value: Any) -> Any:
        return {"id": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _complete(self) -> Rule:
        if self.id == "card_blocked":
            if self.threshold is not None or ("at_least" in self.model_fields_set and self.at_least != "decline"):
                raise ValueError("card_blocked declines, with no threshold")
            object.__setattr__(self, "at_least", "decline")
        elif self.id == "known_fraud_30d" and self.threshold is None:
            object.__setattr__(self, "threshold", 1.0)
        elif self.id == "large_amount" and self.threshold is None:
            raise ValueError("large_amount needs a threshold (the amount from which it fires)")
        return self


class ScoringSettings(_Section):
    """The hot path: micro-batches, thresholds, validation tolerance."""

    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 500
    """Most transactions per micro-batch (one Redis call and one model call each)."""
    batch_within_ms: Annotated[int, Field(ge=1, le=10_000)] = 10
    """How long a batch waits to fill before it is scored anyway (the longest a payment waits for others to share
    its batch: latency against CPU per payment, measured in docs/benchmarks.md)."""
    commit_interval_s: Annotated[float, Field(gt=0.0, le=60.0)] = 1.0
    """How often the scoring consumer commits its offsets: the in-order watermark of the batches whose outputs the
    broker acknowledged and whose decision-log rows are durable (and on every revoke and at shutdown)."""
    max_batches_in_flight: Annotated[int, Field(ge=1, le=64)] = 4
    """Batches handed to the scoring agent and not yet taken (besides the two it works on: one scored while the next
    is validated); the consumer waits for room beyond that."""
    mode: Literal["score", "passthrough", "naive"] = "score"
    """``score``: the product. The other two are ``fraudpipe bench``'s baselines: ``passthrough`` forwards each
    record to ``scores.v1`` untouched (the ceiling of the client stack), ``naive`` scores one event at a time (one
    Redis call and one model call per event: the floor)."""
    review_threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    """Score from which a payment is reviewed (with thresholds_from=settings)."""
    decline_threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.9
    """Score from which a payment is declined (with thresholds_from=settings)."""
    max_clock_skew_s: Annotated[float, Field(ge=0.0)] = 300.0
    """Event times further than this in the future are refused."""
    model_threads: Annotated[int, Field(ge=1, le=64)] = 1
    """Threads of one model call."""
    thresholds_from: Literal["model", "settings"] = "model"
    """``model``: the thresholds chosen on validation and stored in the champion's manifest; ``settings``: the two
    above."""
    rules: tuple[Rule, ...] = (Rule(id="card_blocked"), Rule(id="known_fraud_30d"))
    """The policy's rules, in order (``models.scorer``; each can only make a decision stricter, and its id is its
    reason code), as JSON: ``card_blocked`` declines every payment of a card with a confirmed fraud;
    ``known_fraud_30d`` takes a card with at least ``threshold`` (1) frauds known in its last 30 days to at least
    ``at_least`` (review); ``large_amount`` a payment of at least ``threshold`` (required). A bare id takes the
    defaults: ``["card_blocked", {"id": "large_amount", "threshold": 5000, "at_least": "decline"}]``."""
    reason_codes: Annotated[int, Field(ge=1, le=16)] = 3
    """Reason codes per alert (largest SHAP contributions)."""
    model_alias: Literal["champion", "challenger"] = "champion"
    """Registry alias the workers serve."""
    model_runtime: Literal["lightgbm", "lleaves"] = "lightgbm"
    """``lleaves``: score with the model compiled to native code (``pip install 'fraudpipe[compiled]'``): same
    scores, several times faster per batch; LightGBM stays the reference and computes the reason codes."""
    model_poll_s: Annotated[float, Field(gt=0.0)] = 5.0
    """How often a worker or the API checks the registry alias it follows when no model event says so: a change
    announced on model-events.v1 is served within a second; one that was not, within this interval."""
    shadow: bool = False
    """Also score every batch with the registry's challenger, in shadow: its scores and would-be decisions go to
    ``data_dir/shadow`` for ``fraudpipe monitor`` to compare, never to a decision; it runs after the batch is
    published, and its failures are counted and ignored."""
    fallback: Literal["fail_open", "fail_closed"] = "fail_open"
    """Decisions while features cannot be read (Redis down or slow): ``fail_open`` approves payments below
    ``fallback_review_amount`` and reviews the others; ``fail_closed`` reviews every payment."""
    fallback_review_amount: Annotated[float, Field(gt=0.0)] = 100.0
    """In degraded fail_open mode, amounts from this one are reviewed."""
    decision_memory_s: Annotated[int, Field(ge=60)] = 7 * 86_400
    """How long the decision of a transaction is remembered at least (at most twice that), with the digest of its
    content: a redelivery (same content) republishes the same decision, a reused id with other content is refused
    as ``txn_id_conflict``."""
    decision_memory_slots: Annotated[int, Field(ge=1, le=16_777_216)] = 4_096
    """Hashes the decision memory spreads each generation's ids over (a generation lasts ``decision_memory_s``):
    about the decisions of a generation / 200 keeps each hash in Redis' compact encoding (~55 bytes a decision, ~90
    in larger hashes). Set it before a deployment: decisions remembered under another
    count are not found (``streams.pipeline.DecisionMemory``)."""
    breaker_failures: Annotated[int, Field(ge=1)] = 3
    """Consecutive failed Redis calls after which the circuit breaker opens: batches are then decided degraded at
    once (``fallback``) instead of each waiting out the socket timeout."""
    breaker_cooldown_s: Annotated[float, Field(ge=0.0)] = 5.0
    """How long an open breaker refuses Redis calls before one trial call is let through."""
    amount_limit_eur: Annotated[float, Field(gt=0.0)] = currencies.DEFAULT_LIMIT_EUR
    """The largest accepted payment, in EUR: each currency's cap is this at a rounded-up rate
    (``fraudpipe.currencies.EUR_RATES``); larger amounts are refused as ``amount_too_large``."""
    amount_caps_by_currency: dict[str, Annotated[float, Field(gt=0.0)]] = {}
    """Caps that replace the derived ones, as JSON: currency -> largest amount in its major unit."""

    def amount_caps(self) -> dict[str, float]:
        """The largest accepted payment per currency (major units): derived from ``amount_limit_eur``, then
        ``amount_caps_by_currency``."""
        return currencies.amount_caps(self.amount_limit_eur, self.amount_caps_by_currency)

    @model_validator(mode="after")
    def _ordered(self) -> ScoringSettings:
        if self.review_threshold > self.decline_threshold:
            raise ValueError("review_threshold must not exceed decline_threshold")
        if len({rule.id for rule in self.rules}) < len(self.rules):
            raise ValueError("rules: each rule at most once")
        if unknown := sorted(set(self.amount_caps_by_currency) - currencies.CURRENCIES):
            raise ValueError(f"amount_caps_by_currency: not ISO 4217 currencies: {', '.join(unknown)}")
        return self


class TrainingSettings(_Section):
    """LightGBM training. Defaults measured on the simulator's handbook preset (see models/train.py)."""

    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05
    num_leaves: Annotated[int, Field(ge=2, le=4_096)] = 31
    min_data_in_leaf: Annotated[int, Field(ge=1)] = 50
    feature_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    bagging_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    lambda_l2: Annotated[float, Field(ge=0.0)] = 0.0
    scale_pos_weight: Annotated[float, Field(gt=0.0, le=1_000.0)] = 1.0
    """Weight of a fraud against a genuine payment in the loss (1: the plain log-loss, calibrated scores)."""
    rounds: Annotated[int, Field(ge=1, le=100_000)] = 300
    early_stopping_rounds: Annotated[int, Field(ge=1)] = 50
    seed: int = 0
    threads: Annotated[int, Field(ge=1, le=64)] = 1
    tuned: Path | None = None
    """A ``fraudpipe tune`` report: its chosen parameters replace the ones above in ``train``, ``retrain`` and
    ``evaluate`` (the command line's ``--seed`` / ``--rounds`` / ``--learning-rate`` still win), and each model's
    manifest records the study."""


class CostSettings(_Section):
    """The cost model decisions are judged by (``models.cost``), in the payments' currency unit: ``train`` and
    ``retrain`` choose the review and decline thresholds that cost least under the review capacity, and every
    report adds up money with it."""

    chargeback_fee: Annotated[float, Field(ge=0.0)] = 20.0
    """What a missed fraud costs on top of its amount (the chargeback's handling fee)."""
    review_cost: Annotated[float, Field(ge=0.0)] = 5.0
    """What one analyst review costs (about five minutes of an analyst's time)."""
    false_decline_share: Annotated[float, Field(ge=0.0, le=1.0)] = 0.3
    """Share of a genuine payment's amount lost when it is declined (lost margin, the customer's friction)."""
    review_capacity: Annotated[int, Field(ge=0)] = 100
    """Payments the analysts can review a day (rule reviews included)."""


class PrivacySettings(_Section):
    """PAN tokenization, audit seals, erasure and retention. The keys must be set (>= 32 characters, not the dev
    key) when ``environment=prod``.

    Retention is in days of event time, enforced by ``fraudpipe privacy retain`` (0 keeps forever). Online features
    need no setting: their Redis keys expire on their own (the feature store's TTLs).
    """

    tokenization_key: SecretStr = SecretStr(DEV_TOKENIZATION_KEY)
    """HMAC key turning PANs into card tokens at the ingestion edge."""
    audit_key: SecretStr = SecretStr(DEV_AUDIT_KEY)
    """HMAC key sealing every decision-log row (``fraudpipe audit verify``) and digesting erased subjects."""
    erasure_poll_s: Annotated[float, Field(gt=0.0)] = 5.0
    """How often a worker re-reads the erasure list from Redis."""
    retain_decisions_days: Annotated[int, Field(ge=0)] = 400
    """Days of the decision log kept (0: forever)."""
    retain_labels_days: Annotated[int, Field(ge=0)] = 400
    """Days of the label log kept (0: forever)."""
    retain_deliveries_days: Annotated[int, Field(ge=0)] = 400
    """Days of the alert delivery log kept (0: forever)."""
    retain_shadow_days: Annotated[int, Field(ge=0)] = 90
    """Days of the shadow log kept (0: forever)."""
    retain_alerts_days: Annotated[int, Field(ge=0)] = 90
    """The alert sinks' copies: the Redis alert stream and the JSONL file."""


class GovernanceSettings(_Section):
    """Fairness reports and model cards. Segments come from a table keyed by ``segment_key`` (the simulator's
    ``customers.parquet``, keyed by card token); ``protected_attributes`` may never be model features."""

    segments_path: Path | None = None
    """Segment table (CSV or Parquet) for fairness reports and model cards."""
    segment_key: str = "card_token"
    """Its column that joins decisions (card_token or customer_id)."""
    segment_columns: tuple[str, ...] = ("home_country", "age_band")
    """Its columns reported on (region, age band...)."""
    protected_attributes: tuple[str, ...] = (
        "age", "age_band", "gender", "sex", "ethnicity", "race", "religion", "nationality", "home_country",
        "marital_status", "disability",
    )  # fmt: skip
    """Names that may never be model features (a guard test checks)."""
    disparity_bound: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    """A segment's ratio to the reference segment outside [bound, 1 / bound] is flagged (the four-fifths rule)."""
    min_segment_decisions: Annotated[int, Field(ge=1)] = 200
    """Smaller segments are reported but never flagged: their rates are noise."""
    gate_ratios: tuple[Literal["fpr", "recall"], ...] = ()
    """Ratios the promotion gate holds a challenger to on the holdout (``fpr``: its false-positive-rate ratio;
    ``recall``: equal opportunity): one outside [``disparity_bound``, 1 / bound] refuses it. Empty: reported on the
    model card only."""
    min_segment_frauds: Annotated[int, Field(ge=1)] = 30
    """The gate judges a recall ratio only when both segments hold at least this many frauds."""
    min_segment_false_positives: Annotated[int, Field(ge=1)] = 30
    """The gate judges a false-positive-rate ratio only when both segments hold at least this many false positives."""
    breach_confidence: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.95
    """The gate and the monitor count a ratio as outside the bound only when its interval at this confidence lies
    wholly outside (models.fairness.ratio_interval): a rate made of a few dozen events is noise."""
    fairness_constraint: Literal["none", "false_positive_rate_parity", "equalized_odds"] = "none"
    """Train and retrain under this constraint on ``fairness_column`` (models.constraint): its ratios held within
    [``disparity_bound``, 1 / bound] on the training window. The column is used to train only, never as an input."""
    fairness_column: str = "home_country"
    """The segment column the constraint evens out (a column of the segment table)."""
    fairness_strengths: tuple[Annotated[float, Field(gt=0.0)], ...] = (0.05, 0.1, 0.2, 0.4)
    """Penalty strengths tried in turn, weakest first (models.constraint)."""
    fairness_max_ap_loss: Annotated[float, Field(ge=0.0, le=1.0)] = 0.02
    """A constrained model may lose at most this much validation AP against the one trained without."""


class PathSettings(_Section):
    """Where files go; relative paths are relative to the working directory. Nothing is created on import."""

    data_dir: Path = Path("var/data")
    """Decision, label, delivery and shadow logs, reports, receipts."""
    models_dir: Path = Path("var/models")
    """The model registry."""


class SinkSettings(_Section):
    """Where alerts go besides ``alerts.v1``. ``enabled``: any of log, redis_stream, jsonl, webhook."""

    enabled: tuple[Literal["log", "redis_stream", "jsonl", "webhook"], ...] = ("log", "redis_stream")
    """Where alerts go besides alerts.v1: log, redis_stream, jsonl, webhook."""
    budget_s: Annotated[float, Field(gt=0.0)] = 2.0
    """Longest a sink may take for one batch before it counts as failed for that batch (retried with the next)."""
    redis_stream_key: str = "fp:alerts"
    """Redis stream of alerts (the dashboard's feed)."""
    redis_stream_maxlen: Annotated[int, Field(ge=100)] = 10_000
    """About how many alerts the stream keeps."""
    jsonl_path: Path = Path("var/alerts.jsonl")
    """File of the jsonl sink."""
    webhook_url: str | None = None
    """Where the webhook sink POSTs each alert."""
    webhook_attempts: Annotated[int, Field(ge=1, le=20)] = 5
    """Failed deliveries of an alert before it goes to ``alerts.dlq.v1``."""
    webhook_timeout_s: Annotated[float, Field(gt=0.0)] = 2.0
    webhook_backoff_s: Annotated[float, Field(ge=0.0)] = 0.2
    dedupe_ttl_s: Annotated[int, Field(ge=60)] = 7 * 86_400
    """How long a sink remembers an alert it delivered (idempotency)."""


class ApiSettings(_Section):
    """The REST scoring API (``fraudpipe serve``); it serves its metrics on its own ``/metrics``.

    API keys are stored as the SHA-256 hex of the key only (``fraudpipe api-key`` makes one), each with its
    scopes: ``score`` (``POST /v1/score``) and ``read:alerts`` (the dashboard's data and reports). Clients send
    ``Authorization: Bearer <key>``. ``/healthz``, ``/readyz`` and ``/metrics`` stay open.
    """

    bind: str = "127.0.0.1"
    """Address of the REST API and dashboard."""
    port: Port = 8000
    """Its port."""
    dashboard_metrics_urls: tuple[str, ...] = ()
    """Prometheus endpoints the dashboard reads (workers, ``fraudpipe monitor``); empty: this host's worker
    (``metrics.bind:metrics.port``) and monitor (``metrics.bind:monitor.metrics_port``)."""
    keys: dict[str, tuple[Literal["score", "read:alerts"], ...]] = {}
    """API keys as JSON: SHA-256 hex of the key -> its scopes, e.g. ``{"<64 hex>": ["score"]}``
    (``fraudpipe api-key`` prints a new key and its entry)."""
    require_auth: bool | None = None
    """Ask every scoring and dashboard-data request for a key; unset: yes, unless ``environment=dev`` with no
    keys set."""
    scoring_threads: Annotated[int, Field(ge=1, le=64)] = 1
    """Threads scoring off the event loop, each with its own pipeline (model and Redis client)."""
    max_pending: Annotated[int, Field(ge=1, le=100_000)] = 256
    """Score requests waiting for a scoring thread; past it a request gets 503 at once."""
    batch_max: Annotated[int, Field(ge=1, le=10_000)] = 32
    """Most waiting requests a scoring thread decides in one micro-batch: larger raises throughput under load but
    lengthens the burst of responses the event loop writes at once (health probes wait behind it)."""
    max_body_bytes: Annotated[int, Field(ge=1_024, le=16 * 1024 * 1024)] = 64 * 1024
    """Largest request body, counted while it streams in: past it the request gets 413 and is read no further
    (default: the codec's largest event, 64 KiB)."""

    @model_validator(mode="after")
    def _hashed_keys(self) -> ApiSettings:
        for digest, scopes in self.keys.items():
            if len(digest) != 64 or not set(digest) <= set("0123456789abcdef"):
                raise ValueError("api.keys are SHA-256 hex digests of the keys (64 lowercase hex characters)")
            if not scopes:
                raise ValueError("each of api.keys needs at least one scope: score, read:alerts")
        return self


class MetricsSettings(_Section):
    """The Prometheus endpoint of a worker or the API (``/metrics``); port 0 turns it off."""

    bind: str = "127.0.0.1"
    """Address of the worker's Prometheus endpoint."""
    port: Annotated[int, Field(ge=0, le=65_535)] = 9108
    """Its port (0: off)."""


class MonitorSettings(_Section):
    """Live quality and drift (``fraudpipe monitor``): when a day's labels count as complete, and drift bounds."""

    maturity_days: Annotated[int, Field(ge=0, le=365)] = 30
    """Days after a day's end before its unlabelled decisions count as genuine (chargebacks take weeks)."""
    k: Annotated[int, Field(ge=1)] = 100
    """Cards investigated per day, for CP@k."""
    drift_window_hours: Annotated[float, Field(gt=0)] = 24.0
    """Trailing window drift is measured over."""
    psi_moderate: Annotated[float, Field(gt=0)] = 0.1
    """PSI from which a feature's drift is moderate."""
    psi_breach: Annotated[float, Field(gt=0)] = 0.25
    """PSI from which it is a breach."""
    drift_min_decisions: Annotated[int, Field(ge=1)] = 2_000
    """Fewer decisions of a model in the drift window are reported but never judged (PSI of a small sample is
    noise); the calendar features (hour, weekend, night) are never judged (``models.drift``)."""
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
    max_cost_increase: Annotated[float, Field(ge=0.0)] | None = 0.05
    """How much more the challenger's policy may cost on the holdout than the champion's (a fraction of the
    champion's expected cost, each with its own thresholds, under the ``cost`` model); unset: cost is not gated."""


class WorkerSettings(_Section):
    """Which agents a ``fraudpipe worker`` runs: ``score`` (transactions → decisions and alerts), ``alerts`` (alert
    sinks), ``labels`` (label-derived features and the label log). Run them apart to scale them apart."""

    agents: tuple[Literal["score", "alerts", "labels"], ...] = ("score", "alerts", "labels")
    """Agents this worker runs: score, alerts, labels."""


class WebSettings(_Section):
    """Faust's own web server (it can serve table contents): off by default, loopback when on."""

    enabled: bool = False
    """Faust's own web server (it can serve table contents): off by default."""
    bind: str = "127.0.0.1"
    port: Port = 6066


class LogSettings(_Section):
    """The worker's Parquet logs (decisions, labels, deliveries, shadow, conflicts under ``paths.data_dir``):
    rows are buffered and written as one sealed file per log, event day and flush (group commit)."""

    flush_interval_s: Annotated[float, Field(gt=0.0, le=300.0)] = 15.0
    """Longest time a row waits in the buffer before its file is written (and its offsets may be committed): files
    per log and worker are one per event day and flush, and a crash redelivers up to this much of the input
    (decided again the same, from the decision memory). Kafka Streams commits every 30 s by default."""
    flush_rows: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000
    """Buffered rows that trigger a write before the interval is up."""


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
        use_attribute_docstrings=True,
    )

    environment: Literal["dev", "test", "prod"] = "dev"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    topics: TopicSettings = TopicSettings()
    scoring: ScoringSettings = ScoringSettings()
    training: TrainingSettings = TrainingSettings()
    cost: CostSettings = CostSettings()
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
    logs: LogSettings = LogSettings()

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
        return json.dumps([v.model_dump(mode="json", exclude_none=True) if isinstance(v, BaseModel) else v
                           for v in value])  # fmt: skip
    return str(value)


def env_example() -> str:
    """The text of ``.env.example``: every variable with its default, grouped by section."""
    header = [
        "# Every fraudpipe setting with its default. Copy to .env and change what you need.",
        "# Generated by `fraudpipe config env-example`; a guard test keeps it equal to fraudpipe/settings.py.",
    ]
    return "\n".join([*header, *_env_lines(Settings, "FRAUD_")]) + "\n"


def settings_table() -> str:
    """Every variable as markdown, one table per section (variable, default, meaning) under the section's own
    description: docs/configuration.md (``fraudpipe config table``; a guard test keeps them equal)."""
    blocks = [_table("general", "Process-wide.", Settings, "FRAUD_")]
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, _Section):
            doc = " ".join((annotation.__doc__ or "").strip().split("\n\n")[0].split())
            blocks.append(_table(name, doc, annotation, f"FRAUD_{name.upper()}__"))
    return "\n".join(blocks)


def _table(title: str, doc: str, model: type[BaseModel], prefix: str) -> str:
    rows = [f"**{title}** — {doc}", "", "| variable | default | meaning |", "|---|---|---|"]
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, _Section):
            continue
        default = "(dev key: set your own)" if isinstance(field.default, SecretStr) else _env_value(field.default)
        meaning = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(f"| `{prefix}{name.upper()}` | {f'`{default}`' if default else ''} | {meaning} |")
    return "\n".join(rows) + "\n"
