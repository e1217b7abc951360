"""What ``fraudpipe demo`` shows: the live terminal summary and the summary report, both from the dashboard's JSON.

Pure: the API's ``/v1/dashboard/summary`` and ``/v1/dashboard/alerts`` answers in, a rich renderable or one HTML
string out. :class:`Samples` keeps what the demo saw, one point per poll, for the report's plots.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import matplotlib as mpl
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from models.report import CSS, FRAUD, GENUINE, GREY, STYLE, html_table, new_axes, svg_figure

__all__ = ["Samples", "render_html", "render_live", "totals"]

OUTCOMES = ("approve", "review", "decline")


def totals(summary: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of one summary: decisions by outcome, degraded, dead letters, latest throughput and
    latency (``None`` until measured), model versions, drift breaches."""
    by_outcome = summary.get("decisions", {}).get("by_outcome", {})
    throughput = summary.get("throughput") or [{}]
    latency = summary.get("latency") or [{}]
    model = summary.get("model", {})
    return {
        "decisions": sum(by_outcome.values()),
        "by_outcome": {o: int(by_outcome.get(o, 0)) for o in OUTCOMES},
        "degraded": int(summary.get("decisions", {}).get("degraded", 0)),
        "dead_letters": sum(int(d["count"]) for d in summary.get("dead_letters", [])),
        "per_s": throughput[-1].get("per_s"),
        "p50_ms": latency[-1].get("p50_ms"),
        "p99_ms": latency[-1].get("p99_ms"),
        "champion": (model.get("champion") or {}).get("version"),
        "workers": sorted({w["version"] for w in model.get("workers", [])}),
        "breaches": sum(int(d.get("breaches", 0)) for d in summary.get("drift", [])),
        "drift": [(c["column"], c["psi"], c["level"]) for d in summary.get("drift", []) for c in d["columns"]][:5],
    }


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def money_facts(money: dict[str, Any]) -> dict[str, str]:
    """The run's workload and money (:func:`models.monitor.decided_money`) as the summary's lines."""
    return {
        "analysts' alerts": f"{money['alerts']:,} ({_share(money['alert_rate'])} of {money['payments']:,} payments; "
        f"{money['model_alerts']:,} by the model, {money['rule_alerts']:,} by a rule alone), precision "
        f"{_share(money['alert_precision'])}",
        "blocked cards' declines": f"{money['blocked_declines']:,} (no alert)",
        "reviews a day": f"{money['reviews_per_day']:,.0f} against a capacity of {money['review_capacity']:,}",
        "fraud caught": f"{_share(money['recall'])} of {money['frauds']:,} frauds; {_share(money['amount_recall'])} of "
        f"the amount ({money['fraud_amount_caught']:,.2f} caught, {money['fraud_amount_missed']:,.2f} missed)",
        "false declines": f"{money['false_declines']:,} ({money['false_decline_amount']:,.2f})",
        "expected cost": f"{money['expected_cost']:,.2f} ({money['rules_only_cost']:,.2f} with the rules alone)",
        "saving against the rules alone": _share(money["saving_vs_rules_only"]),
    }


def _number(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def render_live(summary: dict[str, Any], alerts: list[dict[str, Any]], url: str, elapsed_s: float,
                status: str = "") -> Group:  # fmt: skip
    """The terminal view: headline, outcomes, drift, and the latest alerts with their reason codes; ``status``
    (e.g. the replay has finished) under the headline."""
    t = totals(summary)
    head = Text.assemble(
        ("fraudpipe demo", "bold"), f"  · {elapsed_s:,.0f} s · champion {t['champion'] or '-'} · workers serve ",
        (", ".join(t["workers"]) or "-", "bold"), f" · dashboard {url}",
    )  # fmt: skip
    numbers = Table.grid(padding=(0, 3))
    numbers.add_row("throughput", _number(t["per_s"], "/s"), "latency p50", _number(t["p50_ms"], " ms", 0),
                    "p99", _number(t["p99_ms"], " ms", 0))  # fmt: skip
    numbers.add_row("decisions", f"{t['decisions']:,}", *(x for o in OUTCOMES for x in (o, f"{t['by_outcome'][o]:,}")))
    numbers.add_row("dead letters", f"{t['dead_letters']:,}", "degraded", f"{t['degraded']:,}", "drift breaches",
                    f"{t['breaches']:,}")  # fmt: skip
    drift = ", ".join(f"{c} {psi:.2f} ({level})" for c, psi, level in t["drift"]) or "no drift gauges yet"
    recent = Table("raised", "decision", "score", "amount", "card", "reason codes", box=None, pad_edge=False)
    for entry in alerts[:8]:
        alert = entry["alert"]
        reasons = "; ".join(_reason(r) for r in alert.get("reason_codes", [])[:3])
        recent.add_row(alert["raised_at"][11:19], alert["decision"], _number(alert.get("score"), "", 3),
                       f"{alert['amount']:,.2f} {alert['currency']}", f"•••• {alert.get('card_last4') or '????'}",
                       reasons or "-")  # fmt: skip
    lines: list[Text | Table] = [head, numbers, Text(f"top drift: {drift}", style="dim")]
    if status:
        lines.append(Text(status, style="yellow"))
    return Group(Panel(Group(*lines)),
                 Panel(recent, title="recent alerts"))  # fmt: skip


def _reason(code: dict[str, Any]) -> str:
    """One reason code as text: a rule by its id, a feature contribution with its value and log-odds."""
    if code.get("kind") == "rule":
        return f"rule {code['rule']}"
    return f"{code['feature']}={_short(code['value'])} ({code['contribution']:+.2f})"


def _short(value: Any) -> str:
    return "missing" if value is None else f"{value:,.4g}" if isinstance(value, float) else str(value)


@dataclass(slots=True)
class Samples:
    """One point per poll: seconds since the start, and the summary's headline numbers."""

    points: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, elapsed_s: float, summary: dict[str, Any], alerts: list[dict[str, Any]]) -> None:
        self.points.append((elapsed_s, totals(summary)))
        for entry in alerts:
            self.alerts.setdefault(entry["id"], entry["alert"])


def _series(samples: Samples, key: str) -> tuple[list[float], list[float]]:
    pairs = [(at, t[key]) for at, t in samples.points if t[key] is not None]
    return [a for a, _ in pairs], [v for _, v in pairs]


def render_html(samples: Samples, facts: dict[str, Any]) -> str:
    """The demo's summary report: what ran (``facts``), the final numbers, throughput, latency and outcomes over
    time, and the alerts seen with their reason codes."""
    with mpl.rc_context(STYLE):
        figures = []
        fig, ax = new_axes(5.5, 2.6)
        ax.plot(*_series(samples, "per_s"), color=GENUINE)
        ax.set(title="decisions per second", xlabel="seconds since start")
        figures.append(svg_figure("throughput", fig))
        fig, ax = new_axes(5.5, 2.6)
        ax.plot(*_series(samples, "p50_ms"), color=GENUINE, label="p50")
        ax.plot(*_series(samples, "p99_ms"), color=FRAUD, label="p99")
        ax.set(title="latency, event to decision (ms)", xlabel="seconds since start")
        ax.legend()
        figures.append(svg_figure("latency", fig))
        fig, ax = new_axes(5.5, 2.6)
        for outcome, colour in zip(OUTCOMES, (GENUINE, GREY, FRAUD), strict=True):
            ax.plot([at for at, _ in samples.points], [t["by_outcome"][outcome] for _, t in samples.points],
                    color=colour, label=outcome)  # fmt: skip
        ax.set(title="decisions by outcome (cumulative)", xlabel="seconds since start", yscale="symlog")
        ax.legend()
        figures.append(svg_figure("outcomes", fig))
    final = samples.points[-1][1] if samples.points else totals({})
    headline = html_table(["measure", "value"], [
        ("decisions", final["decisions"]), *((o, final["by_outcome"][o]) for o in OUTCOMES),
        ("dead letters", final["dead_letters"]), ("degraded", final["degraded"]),
        ("latency p50 (ms, last)", _number(final["p50_ms"], "", 0)),
        ("latency p99 (ms, last)", _number(final["p99_ms"], "", 0)),
        ("champion", final["champion"] or "-"), ("drift breaches", final["breaches"]),
    ], caption="final numbers")  # fmt: skip
    ran = html_table(["", ""], sorted(facts.items()), caption="what ran")
    alerts = html_table(
        ["raised", "decision", "score", "amount", "transaction", "reason codes"],
        [(a["raised_at"][:19], a["decision"], _number(a.get("score"), "", 3), f"{a['amount']:,.2f} {a['currency']}",
          a["txn_id"], "; ".join(_reason(r) for r in a.get("reason_codes", [])))
         for a in list(samples.alerts.values())[-25:]],
        caption=f"latest alerts ({len(samples.alerts):,} seen)",
    )  # fmt: skip
    body = "".join([headline, ran, *figures, alerts])
    note = html.escape("Numbers read from the API's dashboard endpoints while the demo ran.")
    head = f"<meta charset='utf-8'><title>fraudpipe demo summary</title><style>{CSS}</style>"
    body = f"<h1>fraudpipe demo: summary</h1>{body}<p>{note}</p>"
    return f"<!doctype html><html><head>{head}</head><body>{body}</body></html>"
