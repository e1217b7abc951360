"""One transaction's audit trail, rebuilt from the logs (``fraudpipe audit show``), and the logs' seal check
(``fraudpipe audit verify``).

The trail of a transaction id, oldest first:

    event       the transaction as the worker received it (tokenized: card token, BIN, last four — never a PAN)
    decision    features as served, model version and model file SHA-256 (checked against the registry), score,
                thresholds in force, outcome, reason codes (``kind`` ``rule``: a policy rule that forced it;
                ``feature``: a SHAP contribution), latency, degraded or not; ``redeliveries`` counts the extra copies
                a redelivered batch wrote (same decision, remembered)
    alert       the alert id when the outcome was review or decline, and each sink that took it (or gave up)
    labels      every label version received, with its source and when it became known
    conflicts   each payment refused because it came with this id but other content (a reused id: dead-lettered
                as ``txn_id_conflict``, never answered with this transaction's decision)
    seals       whether every log file the trail was read from is intact

The logs hold transactions by event day: ``days`` narrows the search when the event day is known.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl

from fraudpipe.contracts import Alert
from fraudpipe.logstore import Logs
from fraudpipe.seal import verify_frame

__all__ = ["CONFLICT_COLUMNS", "EVENT_COLUMNS", "trail", "trails"]

_DECISION = ("decided_at", "model_version", "model_sha256", "score", "decision", "review_threshold",
             "decline_threshold", "degraded", "latency_ms")  # fmt: skip
EVENT_COLUMNS = ("card_bin", "card_last4", "terminal_id", "merchant_id", "merchant_name", "mcc", "customer_id",
                 "device_id", "channel", "country", "lat", "lon")  # fmt: skip
"""The transaction's own fields the decision log keeps besides the decision's (tokenized: no PAN reaches it)."""
CONFLICT_COLUMNS = ("txn_id", "card_token", "card_last4", "event_time", "amount", "currency", "terminal_id",
                    "merchant_id")  # fmt: skip
"""What the conflict log keeps of a refused payment (besides ``refused_at``)."""
_EVENT = ("txn_id", "event_time", "card_token", "amount", "currency", *EVENT_COLUMNS)


def _model_check(registered: Callable[[str], str | None] | None, version: str | None, sha256: str | None) -> str:
    if version is None:
        return "no model (degraded decision)"
    if registered is None:
        return "not checked (no registry)"
    if (known := registered(version)) is None:
        return "not in the registry"
    return "matches the registry" if known == sha256 else "DIFFERS from the registry's manifest"


def _reason_codes(text: str | None) -> list[dict[str, Any]]:
    """The logged reason codes (JSON text), each with its ``kind``: ``rule`` or ``feature`` (rows logged before
    rules had reasons hold contributions without one)."""
    return [{"kind": "feature", **code} for code in json.loads(text or "[]")]


def _seals(files: set[str], key: bytes | None) -> dict[str, str]:
    if key is None:
        return {}
    checked = {}
    for name in sorted(files):
        problem = verify_frame(pl.read_parquet(name), key)
        checked[name] = "intact" if problem is None else f"BROKEN at row {problem.row}: {problem.why}"
    return checked


def trail(txn_id: str, logs: Logs, *, registered: Callable[[str], str | None] | None, key: bytes | None,
          days: tuple[date, date] | None = None) -> dict[str, Any] | None:  # fmt: skip
    """The audit trail of ``txn_id`` as plain JSON-able values (module docstring), ``None`` if it was never
    decided. ``registered(version)``: the model file SHA-256 the registry holds for a version (``None``: unknown);
    ``key`` checks the seals of the files read."""
    return trails([txn_id], logs, registered=registered, key=key, days=days).get(txn_id)


def trails(txn_ids: Sequence[str], logs: Logs, *, registered: Callable[[str], str | None] | None,
           key: bytes | None, days: tuple[date, date] | None = None,
           cards: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """:func:`trail` of each of ``txn_ids`` that was decided (by id), each log read once for all of them. With
    ``cards``, only rows of those cards count: an id reused by another card (after the decision memory forgot it,
    or while Redis was away) is that card's payment, not theirs — including the payments refused for reusing it."""
    wanted = list(dict.fromkeys(txn_ids))

    def rows_of(log: Any, ids: list[str], span: tuple[date, date] | None = None) -> dict[str, pl.DataFrame]:
        rows = log.find("txn_id", ids, span)
        if cards is not None and rows.height:
            rows = rows.filter(pl.col("card_token").is_in(list(cards))) if "card_token" in rows.columns else rows[:0]
        return _by_txn(rows)

    decisions = rows_of(logs.decisions, wanted, days)
    deliveries = rows_of(logs.deliveries, list(decisions), days)  # only alerts have any; _trail reads an alert's
    labels = rows_of(logs.labels, list(decisions))
    conflicts = rows_of(logs.conflicts, list(decisions))
    seals: dict[str, str] = {}
    out = {}
    for txn_id in wanted:
        if txn_id not in decisions:
            continue
        found = _trail(txn_id, decisions[txn_id], deliveries.get(txn_id), labels.get(txn_id), conflicts.get(txn_id),
                       registered)  # fmt: skip
        files = found.pop("files")
        seals |= _seals(files - set(seals), key)
        found["seals"] = {str(Path(name).relative_to(Path(name).parents[2])): seals[name] for name in sorted(files)
                          if name in seals}  # fmt: skip
        out[txn_id] = found
    return out


def _by_txn(rows: pl.DataFrame) -> dict[str, pl.DataFrame]:
    return (
        {str(txn_id): part for (txn_id,), part in rows.partition_by("txn_id", as_dict=True).items()}
        if rows.height
        else {}
    )


def _trail(txn_id: str, decisions: pl.DataFrame, deliveries: pl.DataFrame | None, labels: pl.DataFrame | None,
           conflicts: pl.DataFrame | None, registered: Callable[[str], str | None] | None,
           ) -> dict[str, Any]:  # fmt: skip
    """One transaction's trail from its rows of each log (``files``: the log files they came from)."""
    first = decisions.sort("decided_at").row(0, named=True)
    features = {c[2:]: first[c] for c in decisions.columns if c.startswith("f_")}
    decision = {name: first.get(name) for name in _DECISION}
    decision |= {"features": features, "reason_codes": _reason_codes(first["reason_codes"]),
                 "model_check": _model_check(registered, first["model_version"], first["model_sha256"]),
                 "redeliveries": decisions.height - 1}  # fmt: skip
    files = set(decisions["file"].to_list())
    alert: dict[str, Any] | None = None
    if first["decision"] != "approve":
        sinks: list[dict[str, Any]] = []
        if deliveries is not None:
            files |= set(deliveries["file"].to_list())
            sinks = deliveries.sort("at").unique(["sink", "outcome"], keep="first", maintain_order=True).select(
                "sink", "outcome", "at").to_dicts()  # fmt: skip
        alert = {"alert_id": Alert.id_for(txn_id), "sinks": sinks}
    label_rows: list[dict[str, Any]] = []
    if labels is not None:
        files |= set(labels["file"].to_list())
        wanted = [c for c in ("label_version", "is_fraud", "source", "known_at", "note") if c in labels.columns]
        label_rows = labels.sort("label_version").unique("label_version", keep="first", maintain_order=True).select(
            wanted).to_dicts()  # fmt: skip
    conflict_rows: list[dict[str, Any]] = []
    if conflicts is not None:
        files |= set(conflicts["file"].to_list())
        conflict_rows = conflicts.sort("refused_at").unique([c for c in conflicts.columns if c != "file"],
            keep="first", maintain_order=True).select(*CONFLICT_COLUMNS[1:], "refused_at").to_dicts()  # fmt: skip
    return {
        "txn_id": txn_id,
        "event": {name: first.get(name) for name in _EVENT if name in first},
        "decision": decision,
        "alert": alert,
        "labels": label_rows,
        "conflicts": conflict_rows,
        "files": files,
    }
