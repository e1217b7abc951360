"""The demo's views from the dashboard's JSON: headline numbers, the terminal view, the summary report."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from streams.demo_report import Samples, render_html, render_live, totals


def _summary(approve: int, review: int, decline: int, per_s: float | None) -> dict[str, Any]:
    return {
        "decisions": {"by_outcome": {"approve": approve, "review": review, "decline": decline}, "degraded": 2},
        "throughput": [] if per_s is None else [{"at": 1.0, "per_s": per_s}],
        "latency": [] if per_s is None else [{"at": 1.0, "p50_ms": 12.0, "p99_ms": 80.0}],
        "dead_letters": [{"topic": "t", "reason": "invalid_json", "count": 3}],
        "model": {"champion": {"version": "v0001"}, "workers": [{"version": "v0001", "sha256": "ab"}]},
        "drift": [{"version": "v0001", "breaches": 1, "columns": [{"column": "amount", "psi": 0.3,
                                                                     "level": "breach"}]}],
    }  # fmt: skip


ALERT = {"id": "1-0", "alert": {"raised_at": "2026-11-29T08:00:01Z", "decision": "decline", "score": 0.97,
                                "amount": 950.0, "currency": "EUR", "card_last4": "1111", "txn_id": "t-1",
                                "reason_codes": [{"feature": "card_amount_ratio_30d", "value": 7.8,
                                                  "contribution": 1.92, "direction": "raises"}]}}  # fmt: skip


def test_totals_read_the_headline_numbers() -> None:
    t = totals(_summary(90, 8, 2, 42.0))
    assert t["decisions"] == 100 and t["by_outcome"] == {"approve": 90, "review": 8, "decline": 2}
    assert (t["per_s"], t["p99_ms"], t["dead_letters"], t["breaches"]) == (42.0, 80.0, 3, 1)
    assert t["champion"] == "v0001" and t["workers"] == ["v0001"]
    assert totals({})["decisions"] == 0 and totals({})["per_s"] is None


def test_the_terminal_view_shows_numbers_and_reason_codes() -> None:
    console = Console(record=True, width=160)
    console.print(render_live(_summary(90, 8, 2, None), [ALERT], "http://127.0.0.1:8000/dashboard", 12.0))
    text = console.export_text()
    assert "decline" in text and "card_amount_ratio_30d=7.8 (+1.92)" in text and "•••• 1111" in text
    assert "p99" in text and "http://127.0.0.1:8000/dashboard" in text


def test_the_summary_report_has_plots_numbers_and_alerts() -> None:
    samples = Samples()
    for i in range(5):
        samples.add(float(i), _summary(10 * i, i, 1, 5.0 + i), [ALERT])
    page = render_html(samples, {"champion": "v0001", "rate (tx/s)": 100})
    assert page.count("<svg") == 3 and "card_amount_ratio_30d" in page and "latest alerts (1 seen)" in page
    assert render_html(Samples(), {}).count("<svg") == 3  # an empty run still renders
