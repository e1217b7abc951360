"""A scored batch's outputs, built column-wise: the decision log's rows, the ``scores.v1`` decisions and the
``alerts.v1`` alerts, with no Python object per event. Pure: plain values in, a frame and bytes out.

:func:`decision_rows` lays a batch's decisions out as the decision log's rows (the schema every reader of
``data_dir/decisions`` knows: audit fields, ``EVENT_COLUMNS``, ``f_<feature>`` as served, ``reason_codes`` as JSON
text); :func:`decision_messages` and :func:`alert_messages` encode those rows as the ``Decision`` and ``Alert``
contracts (:func:`fraudpipe.codec.encode_many`; the contracts stay the schema: the tests decode every message with
them). :func:`reason_texts` writes each decision's reason codes: the policy rules that fired on an alert (a
:class:`~fraudpipe.contracts.RuleReason` each, first), then, for an alert its *score* made, the SHAP
contributions. A decision forced by a rule alone carries the rule and no SHAP; an approval carries none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import attrgetter

import numpy as np
import polars as pl
from numpy.typing import NDArray
from pydantic import TypeAdapter

from features.definitions import FEATURE_NAMES
from fraudpipe.audit import EVENT_COLUMNS
from fraudpipe.codec import encode_many
from fraudpipe.contracts import SCHEMA_VERSION, Alert, Contribution, Decision, Transaction
from models.scorer import OUTCOMES, Fired

__all__ = [
    "LOG_SCHEMA",
    "MAX_REASONS",
    "Decided",
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


@dataclass(frozen=True, slots=True)
class Decided:
    """A batch's decisions, column-wise, one row each in decision order (all arrays and lists that long).

    ``txns`` the transactions decided; ``decided_at`` one instant for the batch; ``latency_ms`` from each event
    reaching the worker; ``matrix`` the features as served (FEATURE_NAMES columns, NaN = missing; ``None`` for a
    degraded batch: no features); ``scores`` (NaN = none); ``level`` 0 approve / 1 review / 2 decline;
    ``versions`` / ``sha256s`` the model of each decision (``None``: none); ``reasons`` the reason codes as JSON
    text (:func:`reason_texts`)."""

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
    reasons: pl.Series
    degraded: bool


def reason_texts(alerting: NDArray[np.bool_], fired: Sequence[Fired],
                 explained: Mapping[int, Sequence[Contribution]]) -> pl.Series:  # fmt: skip
    """The reason codes of each row as JSON text (``"[]"`` for none): for an ``alerting`` row, a ``RuleReason``
    per rule in ``fired`` that fired on it (in order), then ``explained[row]`` (its SHAP contributions, when its
    score made it an alert), at most :data:`MAX_REASONS` in all. Column-wise but for the explained rows."""
    n = len(alerting)
    if not alerting.any():
        return pl.Series("reason_codes", ["[]"] * n, dtype=pl.String)
    columns: dict[str, object] = {}
    parts: list[pl.Expr] = []
    rules = np.zeros(n, dtype=np.int64)
    for number, rule in enumerate(fired):
        where, value, rows = f"fired{number}", f"value{number}", rule.rows & alerting
        columns[where], columns[value] = rows, rule.value
        rules += rows
        code = pl.struct(schema_version=pl.lit(SCHEMA_VERSION), kind=pl.lit("rule"), rule=pl.lit(rule.rule),
                         value=pl.col(value), threshold=pl.lit(rule.threshold, dtype=pl.Float64))  # fmt: skip
        parts.append(pl.when(pl.col(where)).then(code.struct.json_encode()))
    shap: list[str | None] = [None] * n
    for row, codes in explained.items():
        room = MAX_REASONS - int(rules[row])
        if codes and alerting[row] and room > 0:
            shap[row] = _CONTRIBUTIONS.dump_json(list(codes[:room])).decode()[1:-1]
    columns["shap"] = pl.Series(shap, dtype=pl.String)
    parts.append(pl.col("shap"))
    texts = pl.concat_str(pl.lit("["), pl.concat_str(parts, separator=",", ignore_nulls=True), pl.lit("]"))
    return pl.DataFrame(columns).select(texts.alias("reason_codes")).to_series()


def decision_rows(decided: Decided) -> pl.DataFrame:
    """The decision log's rows (:data:`LOG_SCHEMA`), one per decision in order. The scorer agent writes them to
    ``data_dir/decisions`` (by event day) before publishing each batch: the audit trail, and the training source
    of the feedback loop (features exactly as served). Redeliveries append again; readers de-duplicate by
    ``txn_id``."""
    n = len(decided.txns)
    if n == 0:
        return pl.DataFrame(schema=LOG_SCHEMA)
    values = dict(zip(_TXN_FIELDS, zip(*map(_read_txn, decided.txns), strict=True), strict=True))
    event_us = [(t - _EPOCH) // _MICROSECOND for t in values["event_time"]]
    decided_us = (decided.decided_at - _EPOCH) // _MICROSECOND
    columns: dict[str, object] = {
        "txn_id": values["txn_id"],
        "card_token": values["card_token"],
        "event_time": pl.Series(event_us, dtype=pl.Int64).cast(LOG_SCHEMA["event_time"]),
        "decided_at": pl.Series([decided_us], dtype=pl.Int64).cast(LOG_SCHEMA["decided_at"]).new_from_index(0, n),
        "amount": values["amount"],
        "currency": values["currency"],
        "model_version": decided.versions,
        "model_sha256": decided.sha256s,
        "score": pl.Series(decided.scores, dtype=pl.Float64).fill_nan(None),
        "decision": pl.Series(np.asarray(OUTCOMES, dtype=object)[decided.level], dtype=pl.String),
        "review_threshold": np.full(n, decided.review),
        "decline_threshold": np.full(n, decided.decline),
        "degraded": np.full(n, decided.degraded),
        "latency_ms": decided.latency_ms,
        "reason_codes": decided.reasons,
        **{name: values[name] for name in EVENT_COLUMNS},
    }
    frame = pl.DataFrame(columns, schema={name: LOG_SCHEMA[name] for name in columns})
    if decided.matrix is None:
        return frame.hstack(pl.DataFrame(schema=dict.fromkeys(_FEATURES, pl.Float64)).clear(n).get_columns())
    by_column = np.ascontiguousarray(decided.matrix.T)  # one Series per feature, NaN as null (4x a frame's fill_nan)
    return frame.hstack([pl.Series(name, values, nan_to_null=True) for name, values in zip(_FEATURES, by_column,
                                                                                         strict=True)])  # fmt: skip


def _model(rows: pl.DataFrame) -> pl.Expr:
    ref = pl.struct(schema_version=pl.lit(SCHEMA_VERSION), version=pl.col("model_version"),
                    sha256=pl.col("model_sha256"))  # fmt: skip
    return pl.when(pl.col("model_version").is_not_null()).then(ref).alias("model")


def decision_messages(rows: pl.DataFrame) -> list[tuple[bytes, bytes]]:
    """The ``scores.v1`` messages of the decision log's ``rows``: (card token, ``Decision`` JSON) each, in order.
    A degraded decision's features are ``{}`` (none were read)."""
    if rows.height == 0:
        return []
    features = pl.struct([pl.col(f"f_{name}").alias(name) for name in FEATURE_NAMES]).struct.json_encode()
    frame = rows.select(
        "txn_id", "card_token", "event_time", "decided_at", "amount", "currency", _model(rows), "score", "decision",
        pl.struct(schema_version=pl.lit(SCHEMA_VERSION), review=pl.col("review_threshold"),
                  decline=pl.col("decline_threshold")).alias("thresholds"),
        "latency_ms", "degraded",
        pl.when(pl.col("degraded")).then(pl.lit("{}")).otherwise(features).alias("features"),
        "reason_codes",
    )  # fmt: skip
    keys = rows.get_column("card_token").cast(pl.Binary).to_list()
    return list(zip(keys, encode_many(frame, Decision, raw=("features", "reason_codes")), strict=True))


def alert_messages(rows: pl.DataFrame) -> list[tuple[bytes, bytes]]:
    """The ``alerts.v1`` messages of the reviews and declines among the decision log's ``rows``: (card token,
    ``Alert`` JSON) each, in order; ``raised_at`` is the decision's time, ``alert_id`` :meth:`Alert.id_for`."""
    alerts = rows.filter(pl.col("decision") != "approve")
    if alerts.height == 0:
        return []
    frame = alerts.select(
        pl.concat_str(pl.lit(Alert.ID_PREFIX), pl.col("txn_id")).alias("alert_id"),
        "txn_id", "card_token", "card_last4", "event_time", pl.col("decided_at").alias("raised_at"), "amount",
        "currency", "terminal_id", "merchant_id", "decision", "score", _model(alerts), "degraded", "reason_codes",
    )  # fmt: skip
    keys = alerts.get_column("card_token").cast(pl.Binary).to_list()
    return list(zip(keys, encode_many(frame, Alert, raw=("reason_codes",)), strict=True))
