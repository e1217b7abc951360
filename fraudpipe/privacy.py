"""Erasure (GDPR art. 17 / CCPA deletion) of one data subject — their cards, everywhere fraudpipe keeps them — and
its twin, the right of access (GDPR art. 15 / CCPA's right to know): :func:`access`, at the end of this docstring.

``erase`` takes the card tokens of a subject (``--card``, a PAN tokenized here, or a customer's cards found in the
decision log and the segments table) and, in this order:

1. puts each card on the **erasure list** (Redis hash ``<prefix>erased``: subject digest → erased-at µs). Workers
   (and the label agent, and ``features backfill``) drop every event of a listed card whose event time is not
   after the erasure: a later replay of old data cannot bring the subject back, while a new payment on the card
   (after the erasure) is scored as any other. It then waits one ``privacy.erasure_poll_s`` so every worker has
   read the list, and one ``logs.flush_interval_s`` so the rows workers buffered before are in their files, before
   anything is deleted;
2. deletes the online state: the card's feature key, its transactions' markers (applied, labelled, decided) and
   the sinks' idempotency markers, and the alerts of the card in the Redis alert stream;
3. rewrites the decision, label, delivery, shadow and conflict logs without the subject's rows (sealed again), and
   the JSONL alert file without their lines;
4. writes a **receipt** (``data_dir/privacy/receipts/<id>.json``) with what was removed where, and no personal
   data: the subject appears only as keyed digests (HMAC-SHA256 under ``privacy.audit_key``) that the erasure list
   uses too.

Left as they are, by design: terminal and merchant counters (sums over every card, no identifier in them); Kafka
topics, whose records age out by ``topics.retention_ms`` (a topic is a log, not a database: records cannot be
deleted one by one); trained models (no rows in them). The erasure list itself must survive Redis restarts: run
Redis with persistence, as the feature store needs anyway.

**Access** (:func:`access`) gathers what fraudpipe holds about the same subject — every decision with the
features as served, its reason codes, alert and deliveries and labels (the audit trail of each transaction,
:func:`fraudpipe.audit.trails`), the payments refused for reusing an id, the challenger's shadow decisions, and
each card's online state, block and erasure — tokenized as stored (a card token, BIN and last four: fraudpipe
never stores a card number), into one JSON document and a readable HTML page. A trail's refused payments are kept
only when the subject made them, and so are a transaction's decision, labels and deliveries: another card's payment
under one of their ids is someone else's data. An
**access receipt** (``data_dir/privacy/access-receipts/<id>.json``) records the request without personal data
(digests of the cards, counts, and the SHA-256 of each file handed over); the export itself goes where the operator
says, never into ``data_dir``, so a later erasure is not undone by a copy fraudpipe keeps.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
import redis

from fraudpipe import keys
from fraudpipe.audit import trails
from fraudpipe.clock import Clock, micros_of
from fraudpipe.contracts import Alert
from fraudpipe.logstore import Logs

_DAY_US = 86_400_000_000
"""A day in µs: the feature store keeps applied-markers in one hash per event day (``features.plan``)."""

__all__ = ["AccessReceipt", "ErasureList", "Receipt", "access", "customer_cards", "erase", "retain", "subject_digest"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def subject_digest(key: bytes, card_token: str) -> str:
    """The keyed digest that stands for a card on the erasure list and in receipts (hex, 64 chars)."""
    return hmac.new(key, b"erased-card:" + card_token.encode(), hashlib.sha256).hexdigest()


class ErasureList:
    """The erasure list as a worker sees it: ``read()`` (Redis' hash, or a dict in unit tests) every ``poll_s``;
    a failed read keeps the last list known."""

    def __init__(self, read: Callable[[], Mapping[Any, Any]], key: bytes, *, poll_s: float, clock: Clock) -> None:
        self.read, self.key, self.poll_s, self.clock = read, key, poll_s, clock
        self.erased: dict[str, int] = {}
        self._read_at: float | None = None

    @classmethod
    def in_redis(cls, client: redis.Redis, prefix: str, key: bytes, *, poll_s: float, clock: Clock) -> ErasureList:
        """The list kept in Redis under ``<prefix>erased`` (what :func:`erase` writes)."""
        return cls(lambda: client.hgetall(keys.erased(prefix)), key, poll_s=poll_s, clock=clock)

    def refresh(self) -> None:
        """Re-read the list if ``poll_s`` has passed since the last read."""
        now = self.clock.monotonic()
        if self._read_at is not None and now - self._read_at < self.poll_s:
            return
        try:
            found = self.read()
        except redis.RedisError as error:
            log.warning("erasure list not refreshed (%s): keeping the %d entries known", error, len(self.erased))
            return
        self.erased = _erasures(found)
        self._read_at = now

    def split(self, items: Sequence[T], card: Callable[[T], str], when: Callable[[T], datetime]) -> tuple[list[T], int]:
        """``items`` without those of erased cards dated up to their erasure, and how many were dropped."""
        if not self.erased:
            return list(items), 0
        kept = [
            item for item in items
            if (at := self.erased.get(subject_digest(self.key, card(item)))) is None or micros_of(when(item)) > at
        ]  # fmt: skip
        return kept, len(items) - len(kept)


def _erasures(found: Mapping[Any, Any]) -> dict[str, int]:
    """The erasure list as read from Redis (bytes or text): subject digest -> erased at (µs)."""
    return {k.decode() if isinstance(k, bytes) else k: int(v) for k, v in found.items()}


@dataclass(frozen=True, slots=True)
class Receipt:
    """What an erasure did, without personal data (``subjects``: digests of the cards erased; ``redis_keys``: the
    keys deleted and the remembered decisions forgotten)."""

    erasure_id: str
    erased_at: datetime
    requested_as: str
    subjects: list[str]
    transactions: int
    redis_keys: int
    alert_stream_entries: int
    log_rows: dict[str, int]
    alert_file_lines: int
    by: str
    kept_by_design: list[str] = field(
        default_factory=lambda: [
            "terminal and merchant counters (aggregates over all cards, no identifier)",
            "Kafka topic records until topics.retention_ms ages them out",
            "trained models (no rows)",
        ]
    )

    def write(self, folder: Path) -> Path:
        return _write_receipt(folder, self.erasure_id, asdict(self) | {"erased_at": self.erased_at.isoformat()})


def _stream_entries(client: redis.Redis, stream: str, cards: set[str]) -> list[bytes]:
    """Ids of the alert stream's entries about ``cards`` (read in pages)."""
    found: list[bytes] = []
    start = "-"
    while True:
        page: Any = client.xrange(stream, min=start, max="+", count=1_000)
        for entry_id, fields in page:
            alert = json.loads(fields.get(b"alert", b"{}"))
            if alert.get("card_token") in cards:
                found.append(entry_id)
        if len(page) < 1_000:
            return found
        start = "(" + page[-1][0].decode()


def _rewrite_lines(path: Path, keep: Callable[[bytes], bool]) -> int:
    """Rewrite ``path`` keeping the lines ``keep`` accepts (atomically); returns the lines removed."""
    if not path.exists():
        return 0
    lines = path.read_bytes().splitlines(keepends=True)
    kept = [line for line in lines if keep(line)]
    if len(kept) < len(lines):
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        temporary.write_bytes(b"".join(kept))
        temporary.replace(path)
    return len(lines) - len(kept)


def _about(cards: set[str]) -> Callable[[bytes], bool]:
    def keep(line: bytes) -> bool:
        try:
            return json.loads(line).get("card_token") not in cards
        except ValueError:
            return True

    return keep


def erase(cards: Iterable[str], *, requested_as: str, client: redis.Redis, prefix: str, key: bytes, logs: Logs,
          alert_stream: str, alert_file: Path | None, receipts: Path, clock: Clock, settle_s: float,
          by: str, forget_decisions: Callable[[list[str]], int]) -> Receipt:  # fmt: skip
    """Erase every trace of ``cards`` (module docstring); returns the receipt, written under ``receipts``.
    ``forget_decisions(txn_ids)`` deletes the remembered decisions of transactions (the decision memory's
    ``forget``, which knows its layout) and says how many there were."""
    tokens = sorted(set(cards))
    now = clock.now()
    digests = [subject_digest(key, token) for token in tokens]
    if digests:
        client.hset(keys.erased(prefix), mapping=dict.fromkeys(digests, micros_of(now)))
        time.sleep(settle_s)  # every worker re-reads the list within one poll: nothing is written back after this
    txns: set[str] = set()
    for name, day_log in logs.all().items():
        if name == "conflicts":  # a refused payment's id is another payment's: its keys are not the subject's
            continue
        rows = day_log.find("card_token", tokens)
        if rows.height:
            txns.update(rows["txn_id"].to_list())
    names = [name(prefix, token) for token in tokens for name in (keys.card, keys.cardlog, keys.blocked)]
    for token in tokens:  # the card's apply-once markers, one hash per block of days
        pattern = keys.applied_of_card(prefix, token)
        names += [name.decode() for name in client.scan_iter(match=pattern, count=10_000)]
    for txn in sorted(txns):
        names.append(keys.label(prefix, txn))
        names += [keys.sunk(prefix, sink) + Alert.id_for(txn) for sink in keys.MARKED_SINKS]
    deleted = sum(int(client.delete(*names[i : i + 1_000])) for i in range(0, len(names), 1_000))
    deleted += forget_decisions(sorted(txns))
    entries = _stream_entries(client, alert_stream, set(tokens))
    if entries:
        client.xdel(alert_stream, *entries)
    log_rows = {name: day_log.remove("card_token", tokens) for name, day_log in logs.all().items()}
    receipt = Receipt(
        erasure_id=f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}", erased_at=now, requested_as=requested_as,
        subjects=digests, transactions=len(txns), redis_keys=deleted, alert_stream_entries=len(entries),
        log_rows=log_rows, alert_file_lines=_rewrite_lines(alert_file, _about(set(tokens))) if alert_file else 0,
        by=by,
    )  # fmt: skip
    receipt.write(receipts)
    return receipt


def customer_cards(customer_id: str, logs: Logs, segments: pl.DataFrame | None) -> list[str]:
    """The card tokens of a customer: from the decision log (``customer_id`` column) and a segments table."""
    tokens: set[str] = set()
    rows = logs.decisions.find("customer_id", [customer_id])
    if rows.height:
        tokens.update(rows["card_token"].to_list())
    if segments is not None and {"customer_id", "card_token"} <= set(segments.columns):
        tokens.update(segments.filter(pl.col("customer_id") == customer_id)["card_token"].to_list())
    return sorted(tokens)


def retain(logs: Logs, keep_days: dict[str, int], *, as_of: datetime, client: redis.Redis | None,
           alert_stream: str, alert_file: Path | None, alert_days: int) -> dict[str, int]:  # fmt: skip
    """Enforce retention as of ``as_of``: drop each log's day partitions older than ``keep_days[name]`` days (0 keeps
    forever), trim the Redis alert stream and rewrite the JSONL alert file to ``alert_days``. Returns what was
    removed: days per log, ``alert_stream_entries``, ``alert_file_lines``."""
    removed: dict[str, int] = {}
    for name, day_log in logs.all().items():
        if keep_days[name]:
            removed[name] = len(day_log.drop_before((as_of - timedelta(days=keep_days[name])).date()))
    if alert_days:
        cutoff = as_of - timedelta(days=alert_days)
        if client is not None:
            minid = int(cutoff.timestamp() * 1000)
            removed["alert_stream_entries"] = int(client.xtrim(alert_stream, minid=minid, approximate=False))
        if alert_file is not None:
            removed["alert_file_lines"] = _rewrite_lines(alert_file, _since(cutoff))
    return removed


def _since(cutoff: datetime) -> Callable[[bytes], bool]:
    def keep(line: bytes) -> bool:
        try:
            return datetime.fromisoformat(json.loads(line)["raised_at"]) >= cutoff
        except (ValueError, KeyError, TypeError):
            return True

    return keep


@dataclass(frozen=True, slots=True)
class AccessReceipt:
    """What an access request handed over, without personal data (``subjects``: digests of the cards; ``files``:
    each file written and its SHA-256)."""

    export_id: str
    exported_at: datetime
    requested_as: str
    subjects: list[str]
    transactions: int
    sections: dict[str, int]
    files: dict[str, str]
    by: str

    def write(self, folder: Path) -> Path:
        return _write_receipt(folder, self.export_id, asdict(self) | {"exported_at": self.exported_at.isoformat()})


def _write_receipt(folder: Path, name: str, body: Mapping[str, Any]) -> Path:
    """``body`` as ``folder/<name>.json`` (the folder made if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


def access(cards: Iterable[str], *, requested_as: str, logs: Logs, online: Callable[[str], dict[str, Any]],
           erased: Mapping[Any, Any], registered: Callable[[str], str | None] | None, key: bytes, out: Path,
           receipts: Path, clock: Clock, by: str) -> AccessReceipt:  # fmt: skip
    """Export what fraudpipe holds about ``cards`` (module docstring) into ``out`` (``subject-access.json`` and
    ``.html``) and write the access receipt under ``receipts``. ``online(card)``: the card's ``online_state`` (plain
    values) and ``blocked_by``; ``erased``: the erasure list as Redis holds it (subject digest -> erased at, µs);
    ``registered``: the registry's model file SHA-256 by version, for each decision's model check; ``key``:
    ``privacy.audit_key`` (seals, digests)."""
    tokens = sorted(set(cards))
    now = clock.now()
    export_id = f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    decided = logs.decisions.find("card_token", tokens)
    ids = (
        decided.sort("event_time", "decided_at")["txn_id"].unique(maintain_order=True).to_list()
        if decided.height
        else []
    )
    chains = trails(ids, logs, registered=registered, key=key, cards=tokens)
    transactions = [chains[txn_id] for txn_id in ids if txn_id in chains]
    refused = logs.conflicts.find("card_token", tokens)
    shadow = logs.shadow.find("card_token", tokens)
    digests = {token: subject_digest(key, token) for token in tokens}
    erased_at = _erasures(erased)
    document = {
        "export_id": export_id,
        "exported_at": now.isoformat(),
        "requested_as": requested_as,
        "about": "Everything fraudpipe holds about these cards, tokenized as stored: fraudpipe never stores a card "
        "number, only a keyed token, the BIN and the last four digits.",
        "cards": [_card(token, online(token), erased_at.get(digests[token])) for token in tokens],
        "transactions": transactions,
        "refused_payments": _rows(refused),
        "shadow_decisions": _rows(shadow),
    }
    written = {
        "subject-access.json": json.dumps(document, indent=2, default=str) + "\n",
        "subject-access.html": _access_page(document),
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, text in written.items():  # each file whole or not at all; the receipt only once both are there
        temporary = out / f".{name}.{uuid.uuid4().hex}.tmp"
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(out / name)
    receipt = AccessReceipt(
        export_id=export_id, exported_at=now, requested_as=requested_as, subjects=sorted(digests.values()),
        transactions=len(transactions),
        sections={"cards": len(tokens), "transactions": len(transactions),
                  "labels": sum(len(t["labels"]) for t in transactions),
                  "alerts": sum(t["alert"] is not None for t in transactions),
                  "refused_payments": refused.height, "shadow_decisions": shadow.height},
        files={name: hashlib.sha256(text.encode()).hexdigest() for name, text in written.items()}, by=by,
    )  # fmt: skip
    receipt.write(receipts)
    return receipt


def _card(token: str, held: dict[str, Any], erased_at: int | None) -> dict[str, Any]:
    """A card's part of the export: its online state and block as held, when it was last seen and erased."""
    latest = (held.get("online_state") or {}).get("pt")
    return {"card_token": token, **held, "latest_payment": _iso_micros(latest), "erased_at": _iso_micros(erased_at)}


def _iso_micros(value: float | None) -> str | None:
    return None if value is None else datetime.fromtimestamp(value / 1e6, tz=UTC).isoformat()


def _rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """A log's rows as plain values, without the file they came from."""
    return frame.drop("file", strict=False).to_dicts() if frame.height else []


def _access_page(document: Mapping[str, Any]) -> str:
    """The export as one self-contained HTML page: the cards, then each transaction's decision, reasons, alert and
    labels; the JSON beside it holds every field."""
    esc = html.escape

    def cell(value: Any) -> str:
        return "<td>" + esc("" if value is None else str(value)) + "</td>"

    cards = "".join(
        "<tr>" + cell(c["card_token"]) + cell(", ".join(c.get("blocked_by") or []) or "no")
        + cell(c.get("latest_payment")) + cell(c.get("erased_at") or "no") + "</tr>"
        for c in document["cards"]
    )  # fmt: skip
    rows = []
    for t in document["transactions"]:
        d, event = t["decision"], t["event"]
        reasons = "; ".join(
            f"rule {r['rule']}" if r.get("kind") == "rule" else f"{r.get('feature')} {r.get('direction', '')}"
            for r in d["reason_codes"]
        )  # fmt: skip
        sinks = ", ".join(f"{s['sink']} {s['outcome']}" for s in (t["alert"] or {}).get("sinks", []))
        labels = ", ".join(
            f"{'fraud' if row.get('is_fraud') else 'genuine'} ({row.get('source')})" for row in t["labels"]
        )
        rows.append("<tr>" + "".join(cell(v) for v in (
            t["txn_id"], event.get("event_time"), f"{event.get('amount')} {event.get('currency')}",
            event.get("merchant_name") or event.get("merchant_id"), d["decision"], d["score"], reasons,
            (t["alert"] or {}).get("alert_id"), sinks, labels,
        )) + "</tr>")  # fmt: skip
    refused = "".join(
        "<tr>" + "".join(cell(r.get(k)) for k in ("txn_id", "event_time", "amount", "refused_at")) + "</tr>"
        for r in document["refused_payments"]
    )
    head = ("<th>transaction</th><th>event time</th><th>amount</th><th>merchant</th><th>decision</th><th>score</th>"
            "<th>reasons</th><th>alert</th><th>deliveries</th><th>labels</th>")  # fmt: skip
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fraudpipe: subject access {esc(document["export_id"])}</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}</style></head><body>
<h1>What fraudpipe holds about you</h1>
<p>Export {esc(document["export_id"])}, made {esc(document["exported_at"])}, asked for by
{esc(document["requested_as"])}. {esc(document["about"])} Every field, including the features each decision was
made on, is in the JSON file delivered with this page.</p>
<h2>Cards</h2>
<table><tr><th>card token</th><th>blocked by a confirmed fraud on</th><th>latest payment seen</th><th>erased</th></tr>
{cards}</table>
<h2>Payments and decisions ({len(document["transactions"])})</h2>
<table><tr>{head}</tr>{"".join(rows)}</table>
<h2>Payments refused because their id had been used for another payment ({len(document["refused_payments"])})</h2>
<table><tr><th>transaction</th><th>event time</th><th>amount</th><th>refused at</th></tr>{refused}</table>
<p>Challenger decisions in shadow (never applied): {len(document["shadow_decisions"])}.</p>
</body></html>
"""
