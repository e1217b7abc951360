"""Erasure (GDPR art. 17 / CCPA deletion) of one data subject: their cards, everywhere fraudpipe keeps them.

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
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
import redis

from fraudpipe.clock import Clock, micros_of
from fraudpipe.logstore import Logs

_DAY_US = 86_400_000_000
"""A day in µs: the feature store keeps applied-markers in one hash per event day (``features.plan``)."""

__all__ = ["ErasureList", "Receipt", "customer_cards", "erase", "retain", "subject_digest"]

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
        return cls(lambda: client.hgetall(f"{prefix}erased"), key, poll_s=poll_s, clock=clock)

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
        self.erased = {k.decode() if isinstance(k, bytes) else k: int(v) for k, v in found.items()}
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


@dataclass(frozen=True, slots=True)
class Receipt:
    """What an erasure did, without personal data (``subjects``: digests of the cards erased)."""

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
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.erasure_id}.json"
        body = asdict(self) | {"erased_at": self.erased_at.isoformat()}
        path.write_text(json.dumps(body, indent=2) + "\n")
        return path


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
          by: str) -> Receipt:  # fmt: skip
    """Erase every trace of ``cards`` (module docstring); returns the receipt, written under ``receipts``."""
    tokens = sorted(set(cards))
    now = clock.now()
    digests = [subject_digest(key, token) for token in tokens]
    if digests:
        client.hset(f"{prefix}erased", mapping=dict.fromkeys(digests, micros_of(now)))
        time.sleep(settle_s)  # every worker re-reads the list within one poll: nothing is written back after this
    txns: set[str] = set()
    for name, day_log in logs.all().items():
        if name == "conflicts":  # a refused payment's id is another payment's: its keys are not the subject's
            continue
        rows = day_log.find("card_token", tokens)
        if rows.height:
            txns.update(rows["txn_id"].to_list())
    names = [f"{prefix}{kind}:{token}" for token in tokens for kind in ("card", "cardlog", "blocked")]  # features.plan
    for token in tokens:  # the card's apply-once markers, one hash per block of days
        pattern = f"{prefix}applied:{_glob_escaped(token)}:*"
        names += [name.decode() for name in client.scan_iter(match=pattern, count=10_000)]
    for txn in sorted(txns):
        names += [f"{prefix}{kind}:{txn}" for kind in ("label", "decision")]  # streams.pipeline.DecisionMemory
        names += [f"{prefix}sunk:{sink}:alert:{txn}" for sink in ("redis_stream", "webhook")]  # streams.sinks
    deleted = sum(int(client.delete(*names[i : i + 1_000])) for i in range(0, len(names), 1_000))
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


def _glob_escaped(text: str) -> str:
    """``text`` matched literally in a Redis SCAN pattern."""
    return "".join("\\" + c if c in "*?[]\\^" else c for c in text)


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
