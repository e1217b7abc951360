"""Event contracts: what travels on fraudpipe's topics.

| model          | topic                    | key         |
|----------------|--------------------------|-------------|
| ``Transaction``| ``transactions.v1``      | card token  |
| ``Label``      | ``labels.v1``            | card token  |
| ``Decision``   | ``scores.v1`` (audit)    | card token  |
| ``Alert``      | ``alerts.v1``            | card token  |
| ``DeadLetter`` | ``<topic>.dlq.v1``       | source key  |

Units: amounts are in the currency's *major* unit (12.34 EUR), with no more decimals than its minor unit (ISO 4217:
0 for JPY, 3 for BHD) and, on input, at most its cap (a common limit in EUR, per currency:
``scoring.amount_caps()``); times are timezone-aware and normalised to UTC, durations are milliseconds
(``latency_ms``), scores are probabilities in [0, 1].

Every model is strict (no type coercion: ``"12.5"`` is not a number), forbids unknown fields and carries a
``schema_version``. Decoding from bytes goes through :mod:`fraudpipe.codec`, which turns validation errors into a
machine-readable :class:`Reason`.

PANs: ``card_token`` is the keyed token made at the ingestion edge (or an opaque card key from an external file).
Every identifier (``txn_id``, ``card_token``, ``terminal_id``, ``merchant_id``, ``customer_id``, ``device_id``,
``alert_id``) and every free-text field refuses a value holding a PAN (:func:`fraudpipe.pan.contains_pan`: 13-19
Luhn-valid digits made of whole groups, with the separators people write them with), as ``pan_detected``:
identifiers become topic keys, Redis key names, log columns and dashboard rows, so a PAN let in there is
everywhere. The price: a purely numeric id of 13-19 digits passes the Luhn check one time in ten and is refused
— give such ids a letter (``TX0000001234567890``), as no card number has one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from fraudpipe.currencies import CURRENCIES, DEFAULT_CAPS, minor_units
from fraudpipe.pan import contains_pan

__all__ = [
    "AMOUNT_CAPS_CONTEXT",
    "EARLIEST_EVENT_TIME",
    "LATEST_EVENT_TIME",
    "SCHEMA_VERSION",
    "Alert",
    "Channel",
    "Contribution",
    "DeadLetter",
    "Decision",
    "DecisionOutcome",
    "Event",
    "Label",
    "LabelSource",
    "ModelEvent",
    "ModelRef",
    "Reason",
    "ReasonCode",
    "RuleReason",
    "Thresholds",
    "Transaction",
]

SCHEMA_VERSION: Literal[1] = 1
EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_EVENT_TIME = datetime(2100, 1, 1, tzinfo=UTC)
LATEST_EVENT_TIME_CONTEXT = "latest_event_time"
"""Validation-context key: a datetime after which event times are refused (the codec passes now + clock skew)."""
AMOUNT_CAPS_CONTEXT = "amount_caps"
"""Validation-context key: the largest accepted amount per currency (major units; default
:data:`fraudpipe.currencies.DEFAULT_CAPS`, the settings' ``scoring.amount_caps()`` in the worker and the API)."""


class Reason(StrEnum):
    """Why an input was refused. Stable strings: they are DLQ fields, metric labels and API error codes."""

    EMPTY_PAYLOAD = "empty_payload"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    NOT_UTF8 = "not_utf8"
    INVALID_JSON = "invalid_json"
    DUPLICATE_KEY = "duplicate_key"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    EXTRA_FIELD = "extra_field"
    WRONG_TYPE = "wrong_type"
    INVALID_NUMBER = "invalid_number"
    AMOUNT_NEGATIVE = "amount_negative"
    AMOUNT_TOO_LARGE = "amount_too_large"
    AMOUNT_PRECISION = "amount_precision"
    """More decimals than the currency's minor unit has (0.5 JPY, 12.345 EUR)."""
    INVALID_CURRENCY = "invalid_currency"
    NAIVE_DATETIME = "naive_datetime"
    TIME_OUT_OF_RANGE = "time_out_of_range"
    STRING_TOO_LONG = "string_too_long"
    INVALID_VALUE = "invalid_value"
    PAN_DETECTED = "pan_detected"
    TXN_ID_CONFLICT = "txn_id_conflict"
    """A transaction id already decided for a payment with other content (a reused id, never a redelivery)."""
    MISSING_KEY = "missing_key"
    """A record with no Kafka key where the topic is keyed (transactions: by card token)."""
    KEY_MISMATCH = "key_mismatch"
    """A record whose Kafka key is not its card token: it would be ordered and owned by another card's partition."""
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    PROCESSING_ERROR = "processing_error"
    SINK_FAILED = "sink_failed"


# --- field types --------------------------------------------------------------------------------------------


def _utc_in_range(value: datetime, info: ValidationInfo) -> datetime:
    value = value.astimezone(UTC)
    latest = LATEST_EVENT_TIME
    if info.context and (context_latest := info.context.get(LATEST_EVENT_TIME_CONTEXT)) is not None:
        latest = min(latest, context_latest)
    if not EARLIEST_EVENT_TIME <= value < latest:
        raise PydanticCustomError(
            Reason.TIME_OUT_OF_RANGE.value,
            "time must be in [{earliest}, {latest})",
            {"earliest": EARLIEST_EVENT_TIME.isoformat(), "latest": latest.isoformat()},
        )
    return value


def _check_amount(amount: float, currency: str, info: ValidationInfo) -> None:
    """``amount`` (major units) fits ``currency``: no more decimals than its minor unit, at most its cap."""
    if round(amount, minor_units(currency)) != amount:
        raise PydanticCustomError(Reason.AMOUNT_PRECISION.value, "amount has more decimals than {currency} has",
                                  {"currency": currency})  # fmt: skip
    caps = DEFAULT_CAPS
    if info.context and (given := info.context.get(AMOUNT_CAPS_CONTEXT)) is not None:
        caps = given
    if amount > caps[currency]:
        raise PydanticCustomError(Reason.AMOUNT_TOO_LARGE.value, "amount is above the cap of {cap} {currency}",
                                  {"cap": caps[currency], "currency": currency})  # fmt: skip


def _no_pan_in_id(value: str) -> str:
    if contains_pan(value):
        raise PydanticCustomError(Reason.PAN_DETECTED.value, "an identifier holds a PAN")
    return value


def _no_pan_inside(value: str) -> str:
    if contains_pan(value):
        raise PydanticCustomError(Reason.PAN_DETECTED.value, "free text contains a PAN")
    return value


UtcTime = Annotated[AwareDatetime, AfterValidator(_utc_in_range)]
Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/+=-]*$"),
    AfterValidator(_no_pan_in_id),
]
FreeText = Annotated[str, StringConstraints(max_length=256), AfterValidator(_no_pan_inside)]
if TYPE_CHECKING:
    Currency = str
else:  # a Literal over the ISO 4217 set: checked in pydantic-core, with no Python call per event
    Currency = Literal[tuple(sorted(CURRENCIES))]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Channel = Literal["card_present", "ecommerce", "moto", "atm"]
LabelSource = Literal["chargeback", "analyst"]
DecisionOutcome = Literal["approve", "review", "decline"]


class Event(BaseModel):
    """Base of every contract: strict, frozen, unknown fields refused, NaN and infinities refused."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", allow_inf_nan=False, cache_strings="keys")

    schema_version: Literal[1] = SCHEMA_VERSION


# --- inputs -------------------------------------------------------------------------------------------------


class Transaction(Event):
    """One card payment attempt, as scored. ``terminal_id`` or ``merchant_id`` (or both) must be present.

    Optional context (device, channel, MCC, country, geo) may be absent: features that need it degrade to explicit
    missing values. ``lat``/``lon`` are degrees (WGS84) and come together or not at all.
    """

    txn_id: Identifier
    event_time: UtcTime
    card_token: Identifier
    card_bin: Annotated[str, StringConstraints(pattern=r"^\d{6,8}$")] | None = None
    card_last4: Annotated[str, StringConstraints(pattern=r"^\d{4}$")] | None = None
    amount: Annotated[float, Field(ge=0.0)]
    currency: Currency
    terminal_id: Identifier | None = None
    merchant_id: Identifier | None = None
    merchant_name: FreeText | None = None
    mcc: Annotated[str, StringConstraints(pattern=r"^\d{4}$")] | None = None
    customer_id: Identifier | None = None
    device_id: Identifier | None = None
    channel: Channel | None = None
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] | None = None
    lat: Annotated[float, Field(ge=-90.0, le=90.0)] | None = None
    lon: Annotated[float, Field(ge=-180.0, le=180.0)] | None = None

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Transaction:
        _check_amount(self.amount, self.currency, info)
        if self.terminal_id is None and self.merchant_id is None:
            raise PydanticCustomError(Reason.MISSING_FIELD.value, "terminal_id or merchant_id is required")
        if (self.lat is None) != (self.lon is None):
            raise PydanticCustomError(Reason.MISSING_FIELD.value, "lat and lon come together")
        return self


class Label(Event):
    """What the bank learned about a transaction, and when (``known_at``; never before ``event_time``).

    ``label_version`` grows when a verdict is revised (an analyst overturns a chargeback): consumers keep the
    highest version per ``txn_id`` and de-duplicate on (``txn_id``, ``label_version``).
    """

    txn_id: Identifier
    card_token: Identifier
    event_time: UtcTime
    known_at: UtcTime
    is_fraud: bool
    source: LabelSource
    label_version: Annotated[int, Field(ge=1, le=1_000)] = 1
    terminal_id: Identifier | None = None
    merchant_id: Identifier | None = None
    note: FreeText | None = None

    @model_validator(mode="after")
    def _known_after_event(self) -> Label:
        if self.known_at < self.event_time:
            raise PydanticCustomError(Reason.TIME_OUT_OF_RANGE.value, "known_at is before event_time")
        return self


# --- outputs ------------------------------------------------------------------------------------------------


class ModelRef(Event):
    """The model that produced a score: registry version and SHA-256 of its model file."""

    version: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    sha256: Sha256Hex


class Thresholds(Event):
    """Score thresholds in force: ``review <= score < decline`` is a review, ``score >= decline`` a decline."""

    review: Probability
    decline: Probability


class Contribution(Event):
    """A reason code from the model: a feature, its value, and its SHAP contribution (log-odds) to the score.

    ``kind`` tells it from a :class:`RuleReason`; messages written before rules had reasons carry no ``kind`` and
    decode as contributions."""

    kind: Literal["feature"] = "feature"
    feature: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    value: float | None
    contribution: float
    direction: Literal["raises", "lowers"]


class RuleReason(Event):
    """A reason code from the decision policy: the rule that made the outcome at least a review, whatever the
    score (``models.scorer.Policy``; in degraded mode ``scoring.fallback``). ``rule`` is a stable id
    (``card_blocked``, ``known_fraud_30d``, ``large_amount``, ``fallback_fail_closed``, ``fallback_large_amount``);
    ``value`` is what it tested (a count, an amount in major units) and ``threshold`` the limit it fired at, when it
    has them."""

    kind: Literal["rule"] = "rule"
    rule: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    value: float | None = None
    threshold: float | None = None


def _reason_kind(value: Any) -> str | None:
    """The tag of a reason code, as input (a dict without ``kind``: a contribution of an older message) or model;
    ``None`` for an unknown one (refused without repeating it: input is never echoed in an error)."""
    kind = value.get("kind", "feature") if isinstance(value, dict) else getattr(value, "kind", None)
    return kind if kind in ("feature", "rule") else None


ReasonCode = Annotated[
    Annotated[Contribution, Tag("feature")] | Annotated[RuleReason, Tag("rule")],
    Discriminator(_reason_kind),
]
"""One reason code of a decision or alert: a feature contribution (``kind`` ``feature``, the default) or a policy
rule (``kind`` ``rule``)."""


class Decision(Event):
    """The scored record of one transaction — the audit record on ``scores.v1``.

    ``features`` are the values as served (``None`` = missing), ``latency_ms`` runs from the event reaching the
    worker to the decision being produced, ``degraded`` marks a fallback decision (features or model unavailable).
    ``reason_codes`` (reviews and declines only): the rules that forced the outcome (:class:`RuleReason`, first),
    then, when the score itself crossed the review threshold, the features that raised it most
    (:class:`Contribution`).
    """

    txn_id: Identifier
    card_token: Identifier
    event_time: UtcTime
    decided_at: UtcTime
    amount: Annotated[float, Field(ge=0.0)]
    currency: Currency
    features: Annotated[dict[str, float | None], Field(max_length=512)]
    model: ModelRef | None
    score: Probability | None
    decision: DecisionOutcome
    thresholds: Thresholds
    reason_codes: Annotated[list[ReasonCode], Field(max_length=16)] = []
    latency_ms: Annotated[float, Field(ge=0.0)]
    degraded: bool = False


class Alert(Event):
    """A review or decline sent to analysts and sinks; ``alert_id`` is stable per transaction (idempotency key)."""

    ID_PREFIX: ClassVar[str] = "alert:"

    alert_id: Identifier
    txn_id: Identifier
    card_token: Identifier
    card_last4: Annotated[str, StringConstraints(pattern=r"^\d{4}$")] | None = None
    event_time: UtcTime
    raised_at: UtcTime
    amount: Annotated[float, Field(ge=0.0)]
    currency: Currency
    terminal_id: Identifier | None = None
    merchant_id: Identifier | None = None
    decision: Literal["review", "decline"]
    score: Probability | None
    model: ModelRef | None
    reason_codes: Annotated[list[ReasonCode], Field(max_length=16)] = []
    degraded: bool = False

    @staticmethod
    def id_for(txn_id: str) -> str:
        """The alert id of a transaction: one alert per transaction, whatever the redeliveries."""
        return f"{Alert.ID_PREFIX}{txn_id}"


class DeadLetter(Event):
    """An input that could not be processed, with where it came from and why.

    ``payload`` is the original bytes decoded as UTF-8 (undecodable bytes as ``\\xNN`` escapes), with every
    possible PAN masked, cut to ``MAX_PAYLOAD_CHARS``; ``payload_bytes`` is the original size.
    """

    MAX_PAYLOAD_CHARS: ClassVar[int] = 8_192

    source_topic: Annotated[str, StringConstraints(min_length=1, max_length=249)]
    source_partition: Annotated[int, Field(ge=-1)]
    source_offset: Annotated[int, Field(ge=-1)]
    reason: Reason
    detail: Annotated[str, StringConstraints(max_length=2_000)]
    payload: Annotated[str, StringConstraints(max_length=8_192)]
    payload_bytes: Annotated[int, Field(ge=0)]
    payload_truncated: bool
    failed_at: UtcTime


# --- the model registry -------------------------------------------------------------------------------------


class ModelEvent(Event):
    """A change of a registry alias (``promote``, ``rollback``: ``version`` is what the alias points at now,
    ``previous`` what it pointed at), or a retrained challenger refused by the gates (``refuse``: no alias changed,
    ``version`` the refused one, ``refusals`` why). Published on ``model-events.v1`` by every command that changes an
    alias; workers and the API swap their model on it (:mod:`streams.model_events`)."""

    action: Literal["promote", "rollback", "refuse"]
    alias: Literal["champion", "challenger"]
    version: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None
    previous: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None
    by: Annotated[str, StringConstraints(max_length=200)]
    why: Annotated[str, StringConstraints(max_length=2_000)]
    at: UtcTime
    refusals: Annotated[list[Annotated[str, StringConstraints(max_length=2_000)]], Field(max_length=64)] = []
