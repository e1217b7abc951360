"""Where the dashboard reads from: Prometheus endpoints (workers, ``fraudpipe monitor``), this process's own
metrics, and the Redis alert stream the ``redis_stream`` sink writes. Each port has an in-memory twin for tests.

Exception tree::

    SourceError          a metrics endpoint did not answer, or not with exposition text
    FeedUnavailableError the alert stream could not be read (Redis down or slow)
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Protocol

import redis
from prometheus_client import CollectorRegistry, generate_latest

from fraudpipe.settings import Settings

__all__ = [
    "AlertFeed",
    "FeedUnavailableError",
    "HttpSource",
    "MemoryAlertFeed",
    "MetricSource",
    "ProcessSource",
    "RedisAlertFeed",
    "SourceError",
    "StaticSource",
    "default_metrics_urls",
    "stream_id",
]

MAX_METRICS_BYTES = 8 * 1024 * 1024
LAST_ID = (2**64 - 1, 2**64 - 1)


class SourceError(Exception):
    """A metrics endpoint did not answer, or not with exposition text."""


class FeedUnavailableError(Exception):
    """The alert stream could not be read."""


class MetricSource(Protocol):
    name: str

    def read(self) -> str:
        """The endpoint's exposition text.

        Raises:
            SourceError: it did not answer within its timeout, or answered with an error.
        """
        ...


class HttpSource:
    """A ``/metrics`` URL (http or https), read with a short timeout and without proxies (metrics endpoints are
    on the local network)."""

    def __init__(self, url: str, timeout_s: float = 1.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"a metrics URL must be http:// or https://, not {url!r}")
        self.name, self.url, self.timeout_s = url, url, timeout_s
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def read(self) -> str:
        request = urllib.request.Request(self.url, headers={"Accept": "text/plain"})  # noqa: S310 (scheme checked)
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                body: bytes = response.read(MAX_METRICS_BYTES + 1)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
            reason = getattr(error, "reason", None) or error
            raise SourceError(f"{self.url}: {reason}") from None
        if len(body) > MAX_METRICS_BYTES:
            raise SourceError(f"{self.url}: more than {MAX_METRICS_BYTES} bytes")
        return body.decode("utf-8", errors="replace")


class ProcessSource:
    """This process's own metrics (the API's decisions and refusals)."""

    def __init__(self, registry: CollectorRegistry, name: str = "this API") -> None:
        self.registry, self.name = registry, name

    def read(self) -> str:
        return generate_latest(self.registry).decode()


class StaticSource:
    """The in-memory twin: answers ``text`` (settable), or fails when it is ``None``."""

    def __init__(self, name: str, text: str | None) -> None:
        self.name, self.text = name, text

    def read(self) -> str:
        if self.text is None:
            raise SourceError(f"{self.name}: connection refused")
        return self.text


def _host(bind: str) -> str:
    host = "127.0.0.1" if bind in ("", "0.0.0.0") else "::1" if bind == "::" else bind  # noqa: S104 (a bind, read)
    return f"[{host}]" if ":" in host else host


def default_metrics_urls(settings: Settings) -> list[str]:
    """The endpoints of this host's worker (``metrics.port``) and ``fraudpipe monitor --every``
    (``monitor.metrics_port``) on ``metrics.bind``; a port set to 0 is off and left out."""
    host = _host(settings.metrics.bind)
    ports = (settings.metrics.port, settings.monitor.metrics_port)
    return [f"http://{host}:{port}/metrics" for port in dict.fromkeys(p for p in ports if p)]


class AlertFeed(Protocol):
    def latest(self, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        """Up to ``limit`` entries (stream id, Alert JSON), newest first, only those after the stream id ``after``
        when given.

        Raises:
            ValueError: ``after`` is not a stream id (:func:`stream_id`).
            FeedUnavailableError: the stream could not be read.
        """
        ...


def stream_id(text: str) -> tuple[int, int]:
    """A complete Redis stream id ``<ms>-<seq>`` as (milliseconds, sequence).

    Raises:
        ValueError: not of that form, or a part beyond 2**64 - 1.
    """
    millis, dash, sequence = text.partition("-")
    if not (dash and millis.isdigit() and sequence.isdigit() and millis.isascii() and sequence.isascii()):
        raise ValueError(f"{text[:40]!r} is not a stream id like 1712345678901-0")
    parts = int(millis), int(sequence)
    if max(parts) > LAST_ID[0]:
        raise ValueError(f"{text[:40]!r}: a stream id's parts are at most 2**64 - 1")
    return parts


class RedisAlertFeed:
    """The capped Redis stream of :class:`streams.sinks.RedisStreamSink` (field ``alert``: the Alert JSON)."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client, self.key = client, key

    def latest(self, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        if after is not None and stream_id(after) == LAST_ID:
            return []  # nothing can come after the last id (and Redis refuses the interval)
        try:
            entries = self.client.xrevrange(self.key, "+", f"({after}" if after else "-", count=limit)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            raise FeedUnavailableError(f"redis: {str(error)[:200]}") from None
        except redis.ResponseError as error:  # the key holds something that is not a stream
            raise FeedUnavailableError(f"redis: {self.key}: {str(error)[:200]}") from None
        found: list[tuple[str, bytes]] = []
        for entry_id, fields in entries or []:
            raw = (fields or {}).get(b"alert", b"")
            found.append((_text(entry_id), raw if isinstance(raw, bytes) else raw.encode()))
        return found


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else value or ""


class MemoryAlertFeed:
    """The in-memory twin: ``entries`` (stream id, Alert JSON) in the order they were added."""

    def __init__(self, entries: Sequence[tuple[str, bytes]] = ()) -> None:
        self.entries = list(entries)
        self.down = False

    def latest(self, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        if self.down:
            raise FeedUnavailableError("redis: connection refused")
        newer = [e for e in self.entries if after is None or stream_id(e[0]) > stream_id(after)]
        return newer[::-1][:limit]
