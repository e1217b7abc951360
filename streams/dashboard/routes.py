"""The dashboard's routes on the API: one self-contained page and the two JSON endpoints it polls.

- ``GET /dashboard``: the page (HTML, with ``/dashboard/app.js`` and ``/dashboard/style.css``; nothing from
  elsewhere, so it works offline). ``GET /`` redirects to it.
- ``GET /v1/dashboard/alerts?after=<stream id>&limit=<1..500>``: the latest alerts of the Redis alert stream, newest
  first, each with its reason codes (``503`` with a reason when Redis does not answer).
- ``GET /v1/dashboard/summary``: model in force and promotion history (the registry), decisions by outcome,
  throughput and latency charts, dead letters and drift per feature (the Prometheus endpoints of workers and
  ``fraudpipe monitor``, plus this process's own metrics). An endpoint that does not answer leaves its part empty
  with a note; the summary itself always answers.

A query parameter out of its range gets ``422`` with ``{"reason": "invalid_request", "detail": ...}`` naming the
parameter and the rule, never the value sent. Alerts carry the card token and last four digits only: no PAN
reaches the page.

**Keys** (:mod:`streams.auth`): the page shell (``/dashboard``, its script and style) loads without one; every data
route needs a key with the ``read:alerts`` scope (alerts show card tokens, last four digits and amounts; the
reports show transaction ids and thresholds). The page asks for the key once, keeps it in the tab's
``sessionStorage`` and sends ``Authorization: Bearer``. A link cannot carry that header, so the reports also accept
a ticket: ``GET /v1/dashboard/ticket?path=/reports/champion`` (with the key) answers ``{"url": path?ticket=...}``,
valid for a minute.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response

from fraudpipe.clock import Clock
from fraudpipe.codec import DecodeError, decode
from fraudpipe.contracts import Alert
from fraudpipe.settings import MonitorSettings
from models.registry import Registry, RegistryError
from streams.auth import Keys, Refused, Tickets, answer, guard
from streams.dashboard.figures import Series, Snapshot, combine, parse, update
from streams.dashboard.sources import AlertFeed, FeedUnavailableError, MetricSource, SourceError, stream_id

__all__ = ["Dashboard", "mount"]

log = logging.getLogger(__name__)

STREAM_ID = r"^\d{1,20}-\d{1,20}$"
OUTCOMES = ("approve", "review", "decline")
_ERROR = {
    "type": "object",
    "properties": {"reason": {"type": "string"}, "detail": {"type": "string"}},
    "required": ["reason", "detail"],
}
_REFUSED: dict[int | str, dict[str, Any]] = {
    401: {"description": "No API key, or an unknown one", "content": {"application/json": {"schema": _ERROR}}},
    403: {"description": "The key lacks the read:alerts scope", "content": {"application/json": {"schema": _ERROR}}},
    422: {"description": "Refused query", "content": {"application/json": {"schema": _ERROR}}},
}
_REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
"""Reports are self-contained HTML with inline CSS and SVG, and no script."""
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class Dashboard:
    """What the page shows, gathered on request. The chart series lives in memory between requests: a point is
    taken when a page asks for the summary (at most one a second, whatever the number of pages), so the charts
    cover the time a page has been open since the process started.

    Args:
        feed: the alert stream.
        sources: Prometheus endpoints (workers, monitor, this process).
        registry: the model registry.
        monitor: drift bounds (PSI moderate and breach).
        clock: "now" for chart points.
        serving: the (version, SHA-256) this process serves, if any.
        disparity_bound: a segment's false-positive-rate ratio outside [bound, 1 / bound] is drawn as a breach.
    """

    def __init__(self, feed: AlertFeed, sources: Sequence[MetricSource], registry: Registry,
                 monitor: MonitorSettings, clock: Clock,
                 serving: Callable[[], tuple[str, str] | None] = lambda: None, *,
                 disparity_bound: float = 0.8) -> None:  # fmt: skip
        self.feed, self.sources, self.registry = feed, list(sources), registry
        self.monitor, self.clock, self.serving = monitor, clock, serving
        self.disparity_bound = disparity_bound
        self.series = Series()

    def alerts(self, after: str | None, limit: int) -> dict[str, Any]:
        """``{"alerts": [{"id": stream id, "alert": Alert as JSON}, ...] newest first, "last_id": the newest id (or
        ``after``), "skipped": entries that are not valid alerts}``.

        Raises:
            ValueError: ``after`` is not a stream id.
            FeedUnavailableError: Redis did not answer.
        """
        entries = self.feed.latest(after, limit)
        shown: list[dict[str, Any]] = []
        for entry_id, raw in entries:
            try:
                alert = decode(raw, Alert)
            except DecodeError:
                continue
            shown.append({"id": entry_id, "alert": alert.model_dump(mode="json")})
        last = entries[0][0] if entries else after
        return {"alerts": shown, "last_id": last, "skipped": len(entries) - len(shown)}

    async def summary(self) -> dict[str, Any]:
        """The page's panels as JSON (see the module docstring); never raises for a source that is down."""
        read = await asyncio.gather(*(asyncio.to_thread(_scrape, source) for source in self.sources))
        model = await asyncio.to_thread(self._model)
        answered = {name: snapshot for name, snapshot, _ in read if snapshot is not None}
        now = self.clock.now()
        self.series = update(self.series, now.timestamp(), answered)
        total = combine(answered.values())
        sources = [{"name": name, "up": snapshot is not None, "error": error} for name, snapshot, error in read]
        model["workers"] = [{"version": v, "sha256": s} for v, s in total.models]
        return {
            "now": now.isoformat(),
            "model": model,
            "sources": sources,
            **_metrics_view(total, self.series, self.monitor, self.disparity_bound),
            "notes": _notes(sources, total),
        }

    def _model(self) -> dict[str, Any]:
        serving = self.serving()
        view: dict[str, Any] = {
            "serving": None if serving is None else {"version": serving[0], "sha256": serving[1]},
            "champion": None,
            "challenger": None,
            "history": [],
            "note": None,
        }
        try:
            aliases = self.registry.aliases()
            view["challenger"] = aliases.get("challenger")
            view["history"] = [
                {key: entry.get(key) for key in ("at", "alias", "version", "previous", "action", "by", "why")}
                for entry in self.registry.history()[::-1][:20]
            ]
            if aliases.get("champion") is None:
                view["note"] = "no champion in the registry yet"
                return view
            manifest = self.registry.manifest("champion")
        except (RegistryError, OSError, ValueError) as error:
            view["note"] = f"registry: {str(error)[:200]}"
            return view
        metrics = {key: manifest.metrics.get(key) for key in ("auc", "ap", "cp_at_k")}
        view["champion"] = {
            "version": manifest.version,
            "sha256": manifest.model_sha256,
            "created_at": manifest.created_at.isoformat(),
            "created_by": manifest.created_by,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)},
        }
        return view


def _scrape(source: MetricSource) -> tuple[str, Snapshot | None, str | None]:
    try:
        return source.name, parse(source.read()), None
    except SourceError as error:
        return source.name, None, str(error)[:300]
    except Exception as error:  # whatever one endpoint sends, the summary still answers
        log.warning("dashboard source %s unreadable: %r", source.name, error)
        return source.name, None, f"{source.name}: not Prometheus text ({str(error)[:200]})"


def _metrics_view(total: Snapshot, series: Series, monitor: MonitorSettings, bound: float) -> dict[str, Any]:
    """decisions, dead letters, charts, drift and fairness as the page draws them."""
    outcomes = [*OUTCOMES, *sorted(set(total.decisions) - set(OUTCOMES))]
    drift: list[dict[str, Any]] = []
    for version in sorted({version for version, _ in total.drift_psi}):
        columns = sorted(((c, psi) for (v, c), psi in total.drift_psi.items() if v == version), key=lambda x: -x[1])
        drift.append({
            "version": version,
            "breaches": int(total.drift_breaches.get(version, 0)),
            "columns": [{"column": c, "psi": psi, "level": _level(psi, monitor)} for c, psi in columns],
        })  # fmt: skip
    return {
        "decisions": {
            "by_outcome": {outcome: int(total.decisions.get(outcome, 0)) for outcome in outcomes},
            "degraded": int(total.degraded),
        },
        "throughput": [{"at": p.at, "per_s": p.decisions_per_s} for p in series.points],
        "latency": [{"at": p.at, "p50_ms": p.p50_ms, "p99_ms": p.p99_ms} for p in series.points],
        "dead_letters": [
            {"topic": topic, "reason": reason, "count": int(count)}
            for (topic, reason), count in sorted(total.dead_letters.items(), key=lambda x: -x[1])
        ],
        "sink_dead_letters": [{"sink": s, "count": int(n)} for s, n in sorted(total.sink_dead_letters.items())],
        "drift": drift,
        "psi_bounds": {"moderate": monitor.psi_moderate, "breach": monitor.psi_breach},
        "fairness": {
            "breaches": int(sum(total.fairness_breaches.values())) if total.fairness_breaches else None,
            "band": [bound, 1 / bound],
            "segments": [
                {
                    "column": column,
                    "segment": segment,
                    "fpr_ratio": ratio,
                    "level": "stable" if bound <= ratio <= 1 / bound else "moderate",
                }
                for (column, segment), ratio in sorted(total.fpr_ratios.items())
            ],
        },
        "money": [
            {"version": version, **{metric: value for (v, metric), value in total.quality.items() if v == version}}
            for version in sorted({version for version, _ in total.quality})
        ],
    }


def _level(psi: float, monitor: MonitorSettings) -> str:
    return "breach" if psi >= monitor.psi_breach else "moderate" if psi >= monitor.psi_moderate else "stable"


def _notes(sources: list[dict[str, Any]], total: Snapshot) -> list[str]:
    notes = [f"not answering: {source['error']}" for source in sources if not source["up"]]
    if not total.models:
        notes.append("no scoring worker answered: throughput and latency stay empty (its endpoint: FRAUD_METRICS__*)")
    if not total.drift_psi:
        notes.append("no drift gauges: `fraudpipe monitor --every 60` exports them")
    return notes


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by ``None`` (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _asset(name: str) -> str:
    return files("streams.dashboard").joinpath(name).read_text(encoding="utf-8")


async def _refused(_: Request, error: Exception) -> Response:
    """``422`` naming each refused parameter (where it was and its declared name: ``query.limit``) and the rule it
    broke; never the value, and never a name the client made up (only the first two parts of the location)."""
    problems = error.errors() if isinstance(error, RequestValidationError) else []
    detail = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[:2])}: {_rule(e)}" for e in problems)
    return JSONResponse({"reason": "invalid_request", "detail": detail[:500] or "invalid request"}, status_code=422)


def _rule(problem: dict[str, Any]) -> str:
    """Pydantic's message for the rules a query parameter can break (bounds, pattern, type); else its code."""
    kind = str(problem.get("type", "invalid"))
    safe = kind in {"greater_than_equal", "less_than_equal", "int_parsing", "string_pattern_mismatch", "missing",
                    "literal_error"}  # fmt: skip
    return str(problem.get("msg", kind)) if safe else kind


def mount(app: FastAPI, dashboard: Dashboard, reports: Path | None = None, *, keys: Keys) -> None:
    """Add the dashboard's routes to ``app``; a request whose parameters fail validation gets ``422`` with
    ``{"reason": "invalid_request", "detail": ...}`` (the API's error shape). ``/reports/champion`` serves the
    champion's training report, ``/reports/demo`` the latest ``fraudpipe demo`` summary in ``reports``. Data routes
    ask ``keys`` for the ``read:alerts`` scope (:class:`streams.auth.Refused` when refused: the caller's handler
    answers it; one is added here if ``app`` has none)."""
    page, script, style = _asset("page.html"), _asset("app.js"), _asset("style.css")
    app.add_exception_handler(RequestValidationError, _refused)
    if Refused not in app.exception_handlers:
        app.add_exception_handler(Refused, answer)
    needs_reader = guard(keys, "read:alerts")
    reader = Depends(needs_reader)
    tickets = Tickets()

    async def reader_or_ticket(request: Request) -> None:
        """A report: the key, or a ticket minted for this very path that has not expired."""
        if not tickets.valid(request.query_params.get("ticket"), request.url.path, dashboard.clock.now().timestamp()):
            await needs_reader(request)

    headers = {"Content-Security-Policy": _CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse("/dashboard")

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard_page() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    @app.get("/dashboard/app.js", include_in_schema=False)
    async def dashboard_script() -> Response:
        return Response(script, media_type="text/javascript; charset=utf-8", headers=headers)

    @app.get("/dashboard/style.css", include_in_schema=False)
    async def dashboard_style() -> Response:
        return Response(style, media_type="text/css; charset=utf-8", headers=headers)

    report_headers = {"Content-Security-Policy": _REPORT_CSP, "X-Content-Type-Options": "nosniff",
                      "Cache-Control": "no-store"}  # fmt: skip

    @app.get("/v1/dashboard/ticket", dependencies=[reader], responses=_REFUSED)
    def dashboard_ticket(path: Annotated[Literal["/reports/champion", "/reports/demo"], Query()]) -> Response:
        """A link to a report that works without the key for a minute: ``{"url": "<path>?ticket=<ticket>"}``."""
        ticket = tickets.mint(path, dashboard.clock.now().timestamp())
        return JSONResponse({"url": f"{path}?ticket={ticket}"}, headers={"Cache-Control": "no-store"})

    @app.get("/reports/champion", include_in_schema=False, dependencies=[Depends(reader_or_ticket)])
    def champion_report() -> Response:
        registry = dashboard.registry
        version = registry.aliases().get("champion")
        path = registry.versions_dir / version / "report.html" if version else None
        if path is None or not path.is_file():
            return JSONResponse({"reason": "no_report", "detail": "the champion has no report"}, status_code=404)
        return Response(path.read_bytes(), media_type="text/html; charset=utf-8", headers=report_headers)

    @app.get("/reports/demo", include_in_schema=False, dependencies=[Depends(reader_or_ticket)])
    def demo_report() -> Response:
        found = sorted(reports.glob("demo-*.html")) if reports is not None and reports.is_dir() else []
        if not found:
            return JSONResponse({"reason": "no_report", "detail": "no fraudpipe demo has finished yet"},
                                status_code=404)  # fmt: skip
        return Response(found[-1].read_bytes(), media_type="text/html; charset=utf-8", headers=report_headers)

    @app.get("/v1/dashboard/alerts", dependencies=[reader],
             responses={**_REFUSED, 503: {"description": "Redis does not answer"}})  # fmt: skip
    def dashboard_alerts(
        after: Annotated[str | None, Query(pattern=STREAM_ID, description="Only alerts after this stream id")] = None,
        limit: Annotated[int, Query(ge=1, le=500, description="At most this many alerts")] = 50,
    ) -> Response:
        """The latest alerts of the Redis alert stream, newest first, with their reason codes."""
        try:
            stream_id(after or "0-0")
        except ValueError:  # the message holds the value: not sent back
            detail = "query.after: not a stream id <ms>-<seq> with parts at most 2**64 - 1"
            return JSONResponse({"reason": "invalid_request", "detail": detail}, status_code=422)
        try:
            return JSONResponse(_finite(dashboard.alerts(after, limit)))
        except FeedUnavailableError as error:
            return JSONResponse({"reason": "redis_unavailable", "detail": str(error)}, status_code=503)

    @app.get("/v1/dashboard/summary", dependencies=[reader])
    async def dashboard_summary() -> Response:
        """Model and promotion history, decisions by outcome, throughput, latency, dead letters, drift."""
        return JSONResponse(_finite(await dashboard.summary()))
