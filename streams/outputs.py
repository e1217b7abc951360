"""A scored batch's outputs: the decision log's rows, the ``scores.v1`` decisions and the ``alerts.v1`` alerts.
Pure: plain values in, a frame and bytes out.

A batch's decisions are kept column-wise (:class:`Decided`). :func:`decision_messages` and :func:`alert_messages`
encode them as the ``Decision`` and ``Alert`` contracts with msgspec: one small struct per message, encoded in C,
which costs a few microseconds per batch and per message (a polars query costs a millisecond per batch whatever its
size, and at a thousand payments a second batches are small). The structs below mirror the contracts field for field
(a test holds them equal), and the contracts stay the schema: the tests decode every message with them.

:func:`decision_rows` lays decisions out as the decision log's rows (the schema every reader of
``data_dir/decisions`` knows: audit fields, ``EVENT_COLUMNS``, ``f_<feature>`` as served, ``reason_codes`` as JSON
text), for one batch or many at once: the scoring agent's group-commit writer appends each batch's :class:`LogPart`
(its columns, without the transactions) and builds one frame per flush (:class:`fraudpipe.groupcommit.GroupWriter`'s
``combine``), so the frame's cost is paid per flush, not per batch.

:func:`reason_texts` writes each decision's reason codes: the policy rules that fired on an alert (a
:class:`~fraudpipe.contracts.RuleReason` each, first), then, for an alert its *score* made, the SHAP contributions.
A decision forced by a rule alone carries the rule and no SHAP; an approval carries none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from itertools import chain
from operator import attrgetter
from typing import Any

import msgspec
import numpy as np
import polars as pl
from numpy.typing import NDArray
from pydantic import TypeAdapter

from features.definitions import FEATURE_NAMES
from fraudpipe.audit import EVENT_COLUMNS
from fraudpipe.contracts import SCHEMA_VERSION, Alert, Contribution, Transaction
from models.scorer import OUTCOMES, Fired

__all__ = [
    "LOG_SCHEMA",
    "MAX_REASONS",
    "Decided",
    "LogPart",
    "alert_messages",
    "decision_messages",
    "decision_rows",
    "reason_texts",
]

MAX_REASONS = 16
"""At most this many reason codes per decision (the contract's bound): rules first, then contributions."""
_FEATURES = tuple(f"f_{name}" for name in FEATURE_NAMES)
LOG_SCHEMA = pl.Schema(
    {
        "txn_id": pl.String,
        "card_token": pl.String,
        "event_time": pl.Datetime("us", "UTC"),
        "decided_at": pl.Datetime("us", "UTC"),
        "amount": pl.Float64,
        "currency": pl.String,
        "model_version": pl.String,
        "model_sha256": pl.String,
        "score": pl.Float64,
        "decision": pl.String,
        "review_threshold": pl.Float64,
        "decline_threshold": pl.Float64,
        "degraded": pl.Boolean,
        "latency_ms": pl.Float64,
        "reason_codes": pl.String,
        **{name: pl.Float64 if name in ("lat", "lon") else pl.String for name in EVENT_COLUMNS},
        **dict.fromkeys(_FEATURES, pl.Float64),
    }
)
"""The decision log's columns, in order (``data_dir/decisions``; read by ``fraudpipe.audit``, ``models.monitor``,
``models.retrain``, ``fraudpipe.privacy``)."""

_TXN_FIELDS = ("txn_id", "card_token", "event_time", "amount", "currency", *EVENT_COLUMNS)
_read_txn = attrgetter(*_TXN_FIELDS)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_CONTRIBUTIONS = TypeAdapter(list[Contribution])
_NO_REASONS = "[]"


@dataclass(frozen=True, slots=True)
class Decided:
    """A batch's decisions, column-wise, one row each in decision order (all arrays and lists that long).

    ``txns`` the transactions decided; ``decided_at`` one instant for the batch; ``latency_ms`` from each event
    reaching the worker; ``matrix`` the features as served (FEATURE_NAMES columns, NaN = missing; ``None`` for a
    degraded batch: no features); ``scores`` (NaN = none); ``level`` 0 approve / 1 review / 2 decline;
    ``versions`` / ``sha256s`` the model of each decision (``None``: none); ``reasons`` the reason codes as JSON
    text (:func:`reason_texts`); ``blocked`` the declines of blocked cards (not analysts' alerts; ``None``: none)."""

    txns: Sequence[Transaction]
    decided_at: datetime
    latency_ms: NDArray[np.float64]
    matrix: NDArray[np.float64] | None
    scores: NDArray[np.float64]
    level: NDArray[np.int8]
    versions: Sequence[str | None]
    sha256s: Sequence[str | None]
    review: float
    decline: float
    reasons: Sequence[str]
    degraded: bool
    blocked: NDArray[np.bool_] | None = None


# --- the messages --------------------------------------------------------------------------------------------------

_Features = msgspec.defstruct("_Features", list(FEATURE_NAMES))
"""A decision's features as an object, one field per feature in FEATURE_NAMES order (NaN is written ``null``)."""


class _ModelRef(msgspec.Struct):
    schema_version: int
    version: str
    sha256: str | None


class _Thresholds(msgspec.Struct):
    schema_version: int
    review: float
    decline: float


class _Decision(msgspec.Struct):
    """``fraudpipe.contracts.Decision`` as written on ``scores.v1``."""

    schema_version: int
    txn_id: str
    card_token: str
    event_time: datetime
    decided_at: datetime
    amount: float
    currency: str
    features: Any
    model: _ModelRef | None
    score: float
    decision: str
    thresholds: _Thresholds
    reason_codes: msgspec.Raw
    latency_ms: float
    degraded: bool


class _Alert(msgspec.Struct):
    """``fraudpipe.contracts.Alert`` as written on ``alerts.v1``."""

    schema_version: int
    alert_id: str
    txn_id: str
    card_token: str
    card_last4: str | None
    event_time: datetime
    raised_at: datetime
    amount: float
    currency: str
    terminal_id: str | None
    merchant_id: str | None
    decision: str
    score: float
    model: _ModelRef | None
    reason_codes: msgspec.Raw
    degraded: bool


class _RuleReason(msgspec.Struct):
    """``fraudpipe.contracts.RuleReason`` in a decision's reason codes."""

    schema_version: int
    kind: str
    rule: str
    value: float
    threshold: float


MESSAGE_STRUCTS = {"Decision": _Decision, "Alert": _Alert, "RuleReason": _RuleReason, "ModelRef": _ModelRef,
                   "Thresholds": _Thresholds}  # fmt: skip
"""The contracts this module writes, by name, and the struct that writes each (the tests hold their fields equal)."""
_encode = msgspec.json.Encoder().encode


def _models(decided: Decided) -> list[_ModelRef | None]:
    """Each decision's model reference (one struct per model in the batch)."""
    refs: dict[tuple[str | None, str | None], _ModelRef | None] = {}
    out = []
    for version, sha256 in zip(decided.versions, decided.sha256s, strict=True):
        key = (version, sha256)
        if key not in refs:
            refs[key] = None if version is None else _ModelRef(SCHEMA_VERSION, version, sha256)
        out.append(refs[key])
    return out


def decision_messages(decided: Decided) -> list[tuple[bytes, bytes]]:
    """The ``scores.v1`` messages of ``decided``: (card token, ``Decision`` JSON) each, in order. A degraded
    decision's features are ``{}`` (none were read)."""
    n = len(decided.txns)
    if n == 0:
        return []
    thresholds = _Thresholds(SCHEMA_VERSION, decided.review, decided.decline)
    outcomes = np.asarray(OUTCOMES, dtype=object)[decided.level].tolist()
    features: list[Any] = [{}] * n if decided.matrix is None else [_Features(*row) for row in decided.matrix.tolist()]
    at, degraded = decided.decided_at, decided.degraded
    out = []
    for txn, row, model, score, outcome, reasons, latency in zip(
        decided.txns, features, _models(decided), decided.scores.tolist(), outcomes, decided.reasons,
        decided.latency_ms.tolist(), strict=True,
    ):  # fmt: skip
        message = _Decision(SCHEMA_VERSION, txn.txn_id, txn.card_token, txn.event_time, at, txn.amount,
                            txn.currency, row, model, score, outcome, thresholds, msgspec.Raw(reasons), latency,
                            degraded)  # fmt: skip
        out.append((txn.card_token.encode(), _encode(message)))
    return out


def alert_messages(decided: Decided) -> list[tuple[bytes, bytes]]:
    """The ``alerts.v1`` messages of the reviews and declines in ``decided`` (not a blocked card's decline: no one
    has to look at it): (card token, ``Alert`` JSON) each, in order; ``raised_at`` is the decision's time,
    ``alert_id`` :meth:`Alert.id_for`."""
    alerts = decided.level > 0
    rows = np.flatnonzero(alerts if decided.blocked is None else alerts & ~decided.blocked).tolist()
    if not rows:
        return []
    models, at = _models(decided), decided.decided_at
    out = []
    for i in rows:
        txn = decided.txns[i]
        message = _Alert(SCHEMA_VERSION, Alert.id_for(txn.txn_id), txn.txn_id, txn.card_token, txn.card_last4,
                         txn.event_time, at, txn.amount, txn.currency, txn.terminal_id, txn.merchant_id,
                         OUTCOMES[decided.level[i]], float(decided.scores[i]), models[i],
                         msgspec.Raw(decided.reasons[i]), decided.degraded)  # fmt: skip
        out.append((txn.card_token.encode(), _encode(message)))
    return out


def reason_texts(alerting: NDArray[np.bool_], fired: Sequence[Fired],
                 explained: Mapping[int, Sequence[Contribution]]) -> list[str]:  # fmt: skip
    """The reason codes of each row as JSON text (``"[]"`` for none): for an ``alerting`` row, a ``RuleReason``
    per rule in ``fired`` that fired on it (in order), then ``explained[row]`` (its SHAP contributions, when its
    score made it an alert), at most :data:`MAX_REASONS` in all."""
    out = [_NO_REASONS] * len(alerting)
    for row in np.flatnonzero(alerting).tolist():
        parts = [_encode(_RuleReason(SCHEMA_VERSION, "rule", rule.rule, float(rule.value[row]), rule.threshold))
                 for rule in fired if rule.rows[row]][:MAX_REASONS]  # fmt: skip
        codes = explained.get(row)
        if codes and (room := MAX_REASONS - len(parts)) > 0:
            parts.append(_CONTRIBUTIONS.dump_json(list(codes[:room]))[1:-1])
        if parts:
            out[row] = (b"[" + b",".join(parts) + b"]").decode()
    return out


# --- the log -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogPart:
    """One batch's decision-log rows waiting for their flush: the transactions' fields as columns (``fields``: the
    transactions themselves are not kept, which would hold a pydantic object per row for seconds) and the batch's
    decisions (``decided``, its ``txns`` left out). :meth:`of` takes them from a :class:`Decided`."""

    fields: dict[str, tuple[Any, ...]]
    decided: Decided

    @classmethod
    def of(cls, decided: Decided) -> LogPart:
        columns = zip(*map(_read_txn, decided.txns), strict=True) if decided.txns else ((),) * len(_TXN_FIELDS)
        return cls(dict(zip(_TXN_FIELDS, columns, strict=True)), replace(decided, txns=()))

    @property
    def height(self) -> int:
        """Rows (the group-commit writer counts its buffered rows with it)."""
        return len(self.fields["txn_id"])


def decision_rows(parts: Sequence[LogPart]) -> pl.DataFrame:
    """The decision log's rows (:data:`LOG_SCHEMA`) of ``parts``, one per decision in order. The scoring agent's
    writer builds them once per flush and writes them to ``data_dir/decisions`` (by event day) before the batches'
    offsets are committed: the audit trail, and the training source of the feedback loop (features exactly as
    served). Redeliveries append again; readers de-duplicate by ``txn_id``."""
    sizes = [part.height for part in parts]
    n = sum(sizes)
    if n == 0:
        return pl.DataFrame(schema=LOG_SCHEMA)
    batches = [part.decided for part in parts]
    values = {name: list(chain.from_iterable(part.fields[name] for part in parts)) for name in _TXN_FIELDS}
    event_us = [(t - _EPOCH) // _MICROSECOND for t in values["event_time"]]
    decided_us = np.repeat([(d.decided_at - _EPOCH) // _MICROSECOND for d in batches], sizes)

    def each(name: str) -> np.ndarray[Any, Any]:  # a per-batch value, per row
        return np.repeat([getattr(d, name) for d in batches], sizes)

    def joined(name: str) -> list[Any]:  # a per-row sequence, across batches
        return list(chain.from_iterable(getattr(d, name) for d in batches))

    level = np.concatenate([d.level for d in batches])
    columns: dict[str, object] = {
        "txn_id": values["txn_id"],
        "card_token": values["card_token"],
        "event_time": pl.Series(event_us, dtype=pl.Int64).cast(LOG_SCHEMA["event_time"]),
        "decided_at": pl.Series(decided_us, dtype=pl.Int64).cast(LOG_SCHEMA["decided_at"]),
        "amount": values["amount"],
        "currency": values["currency"],
        "model_version": joined("versions"),
        "model_sha256": joined("sha256s"),
        "score": pl.Series(np.concatenate([d.scores for d in batches]), dtype=pl.Float64, nan_to_null=True),
        "decision": pl.Series(np.asarray(OUTCOMES, dtype=object)[level], dtype=pl.String),
        "review_threshold": each("review"),
        "decline_threshold": each("decline"),
        "degraded": each("degraded"),
        "latency_ms": np.concatenate([d.latency_ms for d in batches]),
        "reason_codes": joined("reasons"),
        **{name: values[name] for name in EVENT_COLUMNS},
    }
    frame = pl.DataFrame(columns, schema={name: LOG_SCHEMA[name] for name in columns})
    served = [np.full((size, len(_FEATURES)), np.nan) if d.matrix is None else d.matrix
              for d, size in zip(batches, sizes, strict=True)]  # fmt: skip
    by_column = np.ascontiguousarray(np.concatenate(served).T)  # one Series per feature, NaN (missing) as null
    return frame.hstack([pl.Series(name, values, nan_to_null=True) for name, values in zip(_FEATURES, by_column,
                                                                                         strict=True)])  # fmt: skip
