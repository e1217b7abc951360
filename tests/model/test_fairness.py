"""Fairness per segment: exact numbers on a hand-made log, then ``fraudpipe fairness`` on the decisions a champion
trained on a simulated history took for its later days, segmented by the simulator's customers."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from fraudpipe.logstore import DayLog
from models.fairness import UNKNOWN, disparity_breaches, fairness, judged_decisions, ratio_interval, segments_of
from models.fairness_report import render_fairness
from tests.model.conftest import SERVED_FROM, run_cli

D = datetime(2024, 5, 1, 10, tzinfo=UTC)
AS_OF = D + timedelta(days=40)
MATURITY = timedelta(days=30)  # days before 2024-05-11 are matured by AS_OF


def _decision(txn: str, card: str, decision: str, score: float, when: datetime = D,
              decided: datetime | None = None) -> dict[str, Any]:  # fmt: skip
    return {"txn_id": txn, "card_token": card, "event_time": when, "decided_at": decided or when, "score": score,
            "decision": decision, "model_version": "v0001"}  # fmt: skip


def _label(txn: str, fraud: bool, known: datetime, version: int = 1) -> dict[str, Any]:
    return {"txn_id": txn, "is_fraud": fraud, "known_at": known, "label_version": version}


def hand_made() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Decisions, labels and segments. north: 10 decisions, 4 alerts, frauds n0 and n1 (both alerted). south: 5
    decisions, s0 alerted and a fraud, s1 a missed fraud. One alert on a card without a segment row."""
    decisions = [
        _decision("n0", "tok_n0", "decline", 0.95),
        _decision("n0", "tok_n0", "decline", 0.95, decided=D + timedelta(seconds=3)),  # a redelivery
        _decision("n1", "tok_n1", "review", 0.70),
        _decision("n2", "tok_n2", "review", 0.60),  # labelled fraud, then overturned: genuine
        _decision("n3", "tok_n3", "decline", 0.80),
        *(_decision(f"n{i}", f"tok_n{i}", "approve", 0.05 * i) for i in range(4, 10)),  # n4's label comes too late
        _decision("s0", "tok_s0", "review", 0.65),
        _decision("s1", "tok_s1", "approve", 0.30),
        *(_decision(f"s{i}", f"tok_s{i}", "approve", 0.01 * i) for i in range(2, 5)),
        _decision("u0", "tok_u0", "review", 0.50),  # no segment row
        _decision("late", "tok_n5", "decline", 0.99, when=D + timedelta(days=10)),  # 2024-05-11: not matured
        _decision("old", "tok_n5", "decline", 0.99, when=D - timedelta(days=30)),  # before the window of 20 days
    ]
    labels = [
        _label("n0", True, D + timedelta(days=2)),
        _label("n1", True, D + timedelta(days=20)),
        _label("n2", True, D + timedelta(days=1)),
        _label("n2", False, D + timedelta(days=5), version=2),
        _label("n4", True, AS_OF + timedelta(seconds=1)),
        _label("s0", True, D + timedelta(days=3)),
        _label("s1", True, D + timedelta(days=9)),
        _label("late", True, D + timedelta(days=11)),
        _label("old", True, D - timedelta(days=29)),
    ]
    cards = [f"tok_n{i}" for i in range(10)] + [f"tok_s{i}" for i in range(5)]
    segments = pl.DataFrame({
        "card_token": cards,
        "region": ["north"] * 10 + ["south"] * 5,
        "band": ["young"] * 3 + ["old"] * 7 + ["young"] * 5,
        "score_band": ["x"] * 15,  # a column the report is not asked for
    })  # fmt: skip
    return pl.DataFrame(decisions), pl.DataFrame(labels), segments


@pytest.fixture
def judged() -> pl.DataFrame:
    decisions, labels, _ = hand_made()
    return judged_decisions(decisions, labels, as_of=AS_OF, maturity=MATURITY, days=20)


def test_judged_decisions_keep_matured_days_one_decision_each_and_labels_known_by_then(judged: pl.DataFrame) -> None:
    assert judged.height == 16  # n0..n9, s0..s4, u0: no redelivery, no unmatured day, nothing before the window
    assert sorted(judged.get_column("txn_id").to_list()) == sorted([f"n{i}" for i in range(10)] +
                                                                   [f"s{i}" for i in range(5)] + ["u0"])  # fmt: skip
    frauds = set(judged.filter(pl.col("fraud")).get_column("txn_id").to_list())
    assert frauds == {"n0", "n1", "s0", "s1"}  # n2 overturned, n4 known only after as_of
    assert judged.get_column("alert").sum() == 6  # n0, n1, n2, n3, s0, u0
    everything = judged_decisions(*hand_made()[:2], as_of=AS_OF, maturity=MATURITY)
    assert set(everything.get_column("txn_id")) - set(judged.get_column("txn_id")) == {"old"}


def test_rates_ratios_and_flags_by_hand(judged: pl.DataFrame) -> None:
    segments = segments_of(hand_made()[2], "card_token", ["region", "band"])
    report = fairness(judged, segments, bound=0.8, min_decisions=5)
    o = report.overall
    assert (o.decisions, o.alerts, o.frauds, o.true_positives, o.false_positives) == (16, 6, 4, 3, 3)
    assert (o.fpr, o.precision, o.recall) == pytest.approx((3 / 12, 3 / 6, 3 / 4))
    region = report.columns[0]
    assert (region.column, region.reference) == ("region", "north")  # the largest
    north, south, unknown = region.segments
    assert (north.value, south.value, unknown.value) == ("north", "south", UNKNOWN)
    assert (north.decisions, north.alerts, north.frauds, north.true_positives, north.false_positives) == (
        10,
        4,
        2,
        2,
        2,
    )
    assert (north.alert_rate, north.fpr, north.precision, north.recall) == pytest.approx((0.4, 0.25, 0.5, 1.0))
    assert (south.decisions, south.alerts, south.frauds, south.true_positives) == (5, 1, 2, 1)
    assert (south.alert_rate, south.fpr, south.precision, south.recall) == pytest.approx((0.2, 0.0, 1.0, 0.5))
    assert south.auc == pytest.approx(roc_auc_score([1, 1, 0, 0, 0], [0.65, 0.30, 0.02, 0.03, 0.04]))
    assert south.ratios == pytest.approx({"alert_rate": 0.5, "fpr": 0.0, "recall": 0.5, "approval_rate": 0.8 / 0.6})
    assert south.flags == ("alert_rate", "fpr", "recall", "approval_rate")
    assert north.reference and not north.flags and north.ratios == pytest.approx(dict.fromkeys(north.ratios, 1.0))
    assert (unknown.decisions, unknown.alerts, unknown.flaggable, unknown.flags) == (1, 1, False, ())
    assert report.unmatched == 1
    band = report.columns[1]
    assert band.reference == "young" and [s.decisions for s in band.segments] == [7, 8, 1]  # old, young, unknown
    assert [(f.column, f.segment, f.metric) for f in report.flags][:4] == [("region", "south", m) for m in south.flags]
    assert "region=south: recall ratio (equal opportunity) 0.500 to north" in report.flags[2].message(0.8)


def test_small_segments_are_reported_never_flagged_and_the_bound_is_inclusive(judged: pl.DataFrame) -> None:
    segments = segments_of(hand_made()[2], "card_token", ["region"])
    small = fairness(judged, segments, bound=0.8, min_decisions=6)
    assert small.columns[0].segments[1].decisions == 5 and not small.flags
    wide = fairness(judged, segments, bound=0.5, min_decisions=5)  # [0.5, 2.0]: 0.5 and 1.333 are inside
    assert [f.metric for f in wide.flags] == ["fpr"]


def test_a_named_reference_segment(judged: pl.DataFrame) -> None:
    segments = segments_of(hand_made()[2], "card_token", ["region"])
    report = fairness(judged, segments, bound=0.8, min_decisions=5, reference={"region": "south"})
    north = report.columns[0].segments[0]
    assert report.columns[0].reference == "south"
    assert north.ratios == pytest.approx({"alert_rate": 2.0, "fpr": None, "recall": 2.0, "approval_rate": 0.75})
    assert north.flags == ("alert_rate", "recall", "approval_rate")  # no FPR ratio against a reference FPR of 0
    with pytest.raises(ValueError, match="region=west has no decisions"):
        fairness(judged, segments, bound=0.8, min_decisions=5, reference={"region": "west"})


def _segment_rows(region: str, genuine: int, false_positives: int, frauds: int, caught: int) -> pl.DataFrame:
    alert = (
        [True] * false_positives + [False] * (genuine - false_positives) + [True] * caught + [False] * (frauds - caught)
    )
    return pl.DataFrame({"card_token": [f"tok_{region}{i}" for i in range(genuine + frauds)], "alert": alert,
                         "fraud": [False] * genuine + [True] * frauds, "region": region})  # fmt: skip


def test_the_gate_counts_a_ratio_only_when_it_is_clearly_outside_the_band() -> None:
    """north (the reference, the largest): FPR 48/1200 = 0.04, recall 80/100. south: FPR 0.12 (ratio 3.0, clearly
    out), recall 0.78 (in). east: FPR 0.056 (ratio 1.4: outside [0.8, 1.25], but its 95 % interval reaches into
    it — a fair model shows as much on 56 false positives), recall 0.4 (ratio 0.5, clearly out). west: FPR 0.04,
    no fraud caught."""
    rows = pl.concat([_segment_rows("north", 1200, 48, 100, 80), _segment_rows("south", 1000, 120, 100, 78),
                      _segment_rows("east", 1000, 56, 100, 40), _segment_rows("west", 1000, 40, 100, 0)])  # fmt: skip
    segments = segments_of(rows.select("card_token", "region"), "card_token", ["region"])
    card = fairness(rows.drop("region"), segments, bound=0.8, min_decisions=200).to_dict()
    assert card["columns"][0]["reference"] == "north"
    found = disparity_breaches(card, ["fpr", "recall"], min_frauds=30, min_false_positives=30)
    assert [line.split(" (")[0] for line in found] == [
        "fairness: region=east recall ratio",
        "fairness: region=south false-positive-rate ratio 3.000",
        "fairness: region=west recall ratio",  # none of 100 frauds caught: half an event, still clearly out
    ]
    assert "to north outside [0.80, 1.25] on the holdout (120 against 48 false positives)" in found[1]
    east = next(s for s in card["columns"][0]["segments"] if s["value"] == "east")
    north = next(s for s in card["columns"][0]["segments"] if s["value"] == "north")
    low, high = ratio_interval("fpr", east, north, 0.95)  # type: ignore[misc]
    assert low < 1.25 < 1.4 < high  # outside the band, not clearly
    south = next(s for s in card["columns"][0]["segments"] if s["value"] == "south")
    spread = 1.959964 * math.sqrt((1 - 0.12) / 120 + (1 - 0.04) / 48)  # by hand: (1 - rate) / events, each side
    assert ratio_interval("fpr", south, north, 0.95) == pytest.approx((3 * math.exp(-spread), 3 * math.exp(spread)))
    assert disparity_breaches(card, ["fpr"], min_frauds=30, min_false_positives=121) == []  # too few to judge
    loose = disparity_breaches(card, ["fpr"], min_frauds=30, min_false_positives=30, confidence=0.01)
    assert len(loose) == 2  # an interval as narrow as the point: east's 1.4 counts too (west's 1.0 does not)
    small = fairness(rows.drop("region"), segments, bound=0.8, min_decisions=1200).to_dict()  # only north flaggable
    assert disparity_breaches(small, ["fpr", "recall"], min_frauds=1, min_false_positives=1) == []


@pytest.mark.parametrize(
    ("change", "columns", "message"),
    [
        (lambda t: t, ["shoe_size"], "no column shoe_size"),
        (lambda t: pl.concat([t, t.head(2)]), ["region"], "2 repeated values of its key"),
        (lambda t: t.rename({"region": "score"}), ["score"], "segment column score: a name fairness uses"),
        (lambda t: t, ["card_token"], "the key 'card_token' cannot also be a segment column"),
    ],
)
def test_bad_segment_tables_are_refused(change: Any, columns: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        segments_of(change(hand_made()[2]), "card_token", columns)


class _Parser(HTMLParser):
    """Keeps the elements left open: none in a well-formed document."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag not in {"meta", "br", "hr", "img", "link"}:  # HTML's void elements met here
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.open and self.open[-1] == tag:
            self.open.pop()


def test_the_html_report_is_deterministic_self_contained_and_escaped(judged: pl.DataFrame) -> None:
    hostile = "<script>alert(1)</script>"
    table = hand_made()[2].with_columns(pl.col("region").replace({"south": hostile, "north": "$a$ and $b$"}))
    report = fairness(judged, segments_of(table, "card_token", ["region", "band"]), bound=0.8, min_decisions=5)
    context = {"as of": AS_OF.isoformat(), "segments": hostile}
    document = render_fairness(report, title="fairness", context=context)
    assert document == render_fairness(report, title="fairness", context=context)
    assert document.count("<svg") == 2 and "http://" not in document.replace("http://www.w3.org", "")
    assert hostile not in document and "&lt;script&gt;" in document
    assert "$a$ and $b$" in document  # a name with "$" is not typeset as mathematics
    flagged = [s for column in report.columns for s in column.segments if s.flags]
    assert len(flagged) == 2 and document.count('class="flagged"') == 2 * len(flagged)  # in both tables of a column


# --- fraudpipe fairness on a simulated stream ------------------------------------------------------------------

AS_OF_SIM = "2018-06-14T00:00:00+00:00"
"""A month after small_sim's last day: every served day has matured (30 days), as of then."""


def _fairness(data: Path, models: Path, *args: str, **env: str) -> Any:
    return run_cli("fairness", *args, cwd=data.parent, FRAUD_PATHS__DATA_DIR=str(data),
                   FRAUD_PATHS__MODELS_DIR=str(models), **env)  # fmt: skip


def _truth(data: Path, customers: pl.DataFrame) -> pl.DataFrame:
    """Decisions, one per transaction, with their alert, truth (latest label known by AS_OF_SIM) and segments:
    computed here without models.fairness."""
    as_of = datetime.fromisoformat(AS_OF_SIM)
    labels = (
        DayLog(data / "labels", "event_time").read().filter(pl.col("known_at") <= as_of)
        .sort("label_version", "known_at").group_by("txn_id").agg(pl.col("is_fraud").last())
    )  # fmt: skip
    return (
        DayLog(data / "decisions", "event_time").read().unique("txn_id")
        .join(labels, on="txn_id", how="left").join(customers, on="card_token", how="left")
        .with_columns(alert=pl.col("decision") != "approve", fraud=pl.col("is_fraud").fill_null(False))
    )  # fmt: skip


def test_fairness_of_served_decisions_writes_json_and_html(served_sim: Path, trained_sim: Path, small_sim: Path,
                                                           tmp_path: Path) -> None:  # fmt: skip
    json_out, html_out = tmp_path / "out" / "fairness.json", tmp_path / "fairness.html"
    customers = small_sim / "customers.parquet"
    result = _fairness(served_sim, trained_sim, "--segments", str(customers), "--as-of", AS_OF_SIM,
                       "--json", str(json_out), "--html", str(html_out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(json_out.read_text())
    served_days = DayLog(served_sim / "decisions", "event_time").days()
    assert report["window"] == {"from": str(SERVED_FROM), "to": str(served_days[-1]), "days": 30}
    truth = _truth(served_sim, pl.read_parquet(customers))
    overall = report["overall"]
    assert overall["decisions"] == truth.height and report["unmatched"] == 0
    assert overall["alerts"] == truth.get_column("alert").sum() and overall["frauds"] == truth.get_column("fraud").sum()
    assert [c["column"] for c in report["columns"]] == ["home_country", "age_band"]  # the settings' default
    for column in report["columns"]:
        expected = truth.group_by(column["column"]).agg(
            decisions=pl.len(), alerts=pl.col("alert").sum(), caught=(pl.col("alert") & pl.col("fraud")).sum()
        )
        got = {s["value"]: (s["decisions"], s["alerts"], s["true_positives"]) for s in column["segments"]}
        assert got == {row[0]: tuple(row[1:]) for row in expected.iter_rows()}
        largest = expected.sort("decisions", descending=True).row(0)[0]
        assert column["reference"] == largest
    assert 0 < overall["recall"] <= 1 and 0 < overall["alert_rate"] < 1
    document = html_out.read_text()
    assert document.count("<svg") == 2 and "By home_country (reference" in document and "By age_band" in document
    parser = _Parser()
    parser.feed(document)
    assert parser.open == []
    assert f"{truth.height:,} decisions on matured days {SERVED_FROM} .. {served_days[-1]}" in result.stdout
    assert "by home_country (reference" in result.stdout


def test_flags_follow_the_bound_and_fail_the_run_when_asked(served_sim: Path, trained_sim: Path, small_sim: Path,
                                                            tmp_path: Path) -> None:  # fmt: skip
    segments = {"FRAUD_GOVERNANCE__SEGMENTS_PATH": str(small_sim / "customers.parquet")}
    strict = _fairness(served_sim, trained_sim, "--as-of", AS_OF_SIM, "--json", str(tmp_path / "strict.json"),
                       "--fail-on-flag", FRAUD_GOVERNANCE__DISPARITY_BOUND="0.99", **segments)  # fmt: skip
    assert strict.returncode == 3, strict.stderr
    flags = json.loads((tmp_path / "strict.json").read_text())["flags"]
    assert len(flags) >= 4 and {f["column"] for f in flags} == {"home_country", "age_band"}
    warnings = [line for line in strict.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == len(flags) and "outside [0.99, 1.01]" in warnings[0]
    lenient = _fairness(served_sim, trained_sim, "--as-of", AS_OF_SIM, "--bound", "0.05", "--fail-on-flag",
                        "--json", str(tmp_path / "lenient.json"), FRAUD_GOVERNANCE__DISPARITY_BOUND="0.99",
                        **segments)  # fmt: skip
    assert lenient.returncode == 0, lenient.stderr
    assert json.loads((tmp_path / "lenient.json").read_text())["flags"] == [] and "warning" not in lenient.stderr
    unflaggable = _fairness(served_sim, trained_sim, "--as-of", AS_OF_SIM, "--min-decisions", "1000000",
                            "--fail-on-flag", FRAUD_GOVERNANCE__DISPARITY_BOUND="0.99", **segments)  # fmt: skip
    assert unflaggable.returncode == 0 and "small" in unflaggable.stdout


def test_users_name_their_own_segment_columns_and_reference(served_sim: Path, trained_sim: Path, small_sim: Path,
                                                            tmp_path: Path) -> None:  # fmt: skip
    customers = pl.read_parquet(small_sim / "customers.parquet")
    tiers = customers.select(
        "card_token",
        tier=pl.when(pl.col("mean_amount") >= pl.col("mean_amount").median())
        .then(pl.lit("high"))
        .otherwise(pl.lit("low")),
    ).head(900)  # 100 cards have no row: their decisions are "(unknown)"
    path = tmp_path / "tiers.csv"
    tiers.write_csv(path)
    out = tmp_path / "tiers.json"
    result = _fairness(served_sim, trained_sim, "--segments", str(path), "--by", "tier", "--reference", "tier=low",
                       "--as-of", AS_OF_SIM, "--json", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    (column,) = report["columns"]
    assert (column["column"], column["reference"]) == ("tier", "low")
    assert [s["value"] for s in column["segments"]] == ["high", "low", "(unknown)"]
    decisions = DayLog(served_sim / "decisions", "event_time").read().unique("txn_id")
    missing = decisions.filter(~pl.col("card_token").is_in(tiers.get_column("card_token").implode())).height
    assert missing > 0 and report["unmatched"] == missing == column["segments"][2]["decisions"]
    assert column["segments"][2]["flags"] == [] and not column["segments"][2]["flaggable"]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {}, "no segment table: pass --segments"),
        (["--segments", "nowhere.parquet"], {}, "segment table nowhere.parquet not found"),
        (["--segments", "{customers}", "--by", "shoe_size"], {}, "no column shoe_size"),
        (["--segments", "{customers}", "--reference", "age_band"], {}, "--reference expects COLUMN=VALUE"),
        (["--segments", "{customers}", "--reference", "age_band=99+", "--as-of", AS_OF_SIM], {},
         "age_band=99+ has no decisions"),
        (["--segments", "{customers}", "--bound", "1.5"], {}, "--bound must be in (0, 1]"),
        ([], {"FRAUD_GOVERNANCE__SEGMENTS_PATH": "{customers}", "FRAUD_MONITOR__MATURITY_DAYS": "60"},
         "no decisions on matured days"),
    ],
)  # fmt: skip
def test_bad_arguments_get_one_line(args: list[str], env: dict[str, str], message: str, served_sim: Path,
                                    trained_sim: Path, small_sim: Path) -> None:  # fmt: skip
    customers = str(small_sim / "customers.parquet")
    args = [arg.replace("{customers}", customers) for arg in args]
    env = {name: value.replace("{customers}", customers) for name, value in env.items()}
    result = _fairness(served_sim, trained_sim, *args, **env)
    assert result.returncode == 1, result.stdout
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_days_before_the_window_are_left_out(served_sim: Path, trained_sim: Path, small_sim: Path,
                                             tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "week.json"
    result = _fairness(served_sim, trained_sim, "--segments", str(small_sim / "customers.parquet"), "--as-of",
                       AS_OF_SIM, "--days", "7", "--json", str(out), FRAUD_MONITOR__MATURITY_DAYS="32")  # fmt: skip
    assert result.returncode == 0, result.stderr
    window = json.loads(out.read_text())["window"]
    assert window == {"from": str(date(2018, 5, 6)), "to": str(date(2018, 5, 12)), "days": 7}  # 05-13 not matured
