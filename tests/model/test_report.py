"""The HTML model report on synthetic data: parses, holds its five pictures, shows sklearn's numbers, escapes text."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from models.evaluation import recall_at_fpr
from models.report import ReportData, render_report, write_report

HOSTILE = "<script>alert(1)</script>"
DOLLARS = "spend_$us_vs_$eu"  # two "$" would make matplotlib typeset it as mathtext
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def report_data() -> ReportData:
    """2,000 transactions, about 2 % fraud, scores that rank frauds higher but not perfectly."""
    rng = np.random.default_rng(20240301)
    truth = (rng.random(2000) < 0.02).astype(np.int8)
    scores = 1 / (1 + np.exp(-(rng.normal(size=truth.size) + 2.5 * truth - 3.5)))
    importance = {f"feature_{i:02d}": float(i * 10) for i in range(30)} | {HOSTILE: 5000.0, DOLLARS: 4000.0}
    reasons = [
        {"feature": HOSTILE, "value": 3.0, "contribution": 1.25, "direction": "raises"},
        {"feature": "card_amount_mean_7d", "value": None, "contribution": -0.4, "direction": "lowers"},
    ]
    return ReportData(
        title=f"fraudpipe model v0003 {HOSTILE}",
        metrics={"auc": float(roc_auc_score(truth, scores)), "k": 100, "n_test": 58000, "note": "synthetic"},
        truth=truth,
        scores=scores,
        cp_per_day=[(f"2024-03-{day:02d}", 0.1 + day / 100) for day in range(1, 15)],
        k=100,
        importance=importance,
        explanations=[{"txn_id": "txn-000042", "score": 0.93, "reasons": reasons}],
        windows={"train": {"from": "2024-01-01", "to": "2024-02-01", "transactions": 120000, "frauds": 900}},
    )


@pytest.fixture(scope="module")
def document() -> str:
    """The report of ``report_data()``, rendered once: a render takes about a second."""
    return render_report(report_data())


def figure(document: str, name: str) -> str:
    """The ``<figure id=name>`` element of the document, SVG and all."""
    found = re.search(rf'<figure id="{name}">.*?</figure>', document, flags=re.DOTALL)
    assert found, f"no figure {name}"
    return found.group(0)


class TagBalance(HTMLParser):
    """Counts start tags and records every end tag that does not close the innermost open element."""

    def __init__(self) -> None:
        super().__init__()
        self.started: Counter[str] = Counter()
        self.open: list[str] = []
        self.mismatches: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.started[tag] += 1
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.started[tag] += 1

    def handle_endtag(self, tag: str) -> None:
        if self.open and self.open[-1] == tag:
            self.open.pop()
        else:
            self.mismatches.append(f"</{tag}> with {self.open[-3:]} open")


def test_the_document_parses_with_balanced_tags_and_five_pictures(document: str) -> None:
    parser = TagBalance()
    parser.feed(document)
    parser.close()
    assert parser.mismatches == []
    assert parser.open == []
    assert parser.started["svg"] == document.count("<svg") == 5
    assert parser.started["table"] == 3  # metrics, windows, one alert
    assert document.startswith("<!DOCTYPE html>")


def test_no_external_resources_and_unique_ids(document: str) -> None:
    assert not re.search(r"""(?:src|href)=["'](?!#)""", document)  # every reference points inside the page
    ids = re.findall(r'\bid="([^"]+)"', document)
    assert [name for name, count in Counter(ids).items() if count > 1] == []


def test_the_curves_show_sklearns_numbers(document: str) -> None:
    data = report_data()
    roc, pr = figure(document, "roc"), figure(document, "pr")
    assert re.findall(r"AUC = (\d\.\d{4})", roc) == [f"{roc_auc_score(data.truth, data.scores):.4f}"]
    assert re.findall(r"AP = (\d\.\d{4})", pr) == [f"{average_precision_score(data.truth, data.scores):.4f}"]
    assert f"FPR 1 %: TPR {recall_at_fpr(data.truth, data.scores, 0.01):.3f}" in roc
    assert f"base rate {data.truth.mean():.4f}" in pr
    assert f"mean {np.mean([value for _, value in data.cp_per_day]):.3f}" in figure(document, "cp")


def test_importance_shows_the_top_twenty_by_gain(document: str) -> None:
    importance = figure(document, "importance")
    shown = {name for name in (f"feature_{i:02d}" for i in range(30)) if f">{name}<" in importance}
    assert shown == {f"feature_{i:02d}" for i in range(12, 30)}  # 18 plus the hostile and the dollar names


def test_labels_are_typeset_as_written(document: str) -> None:
    assert f">{DOLLARS}</text>" in figure(document, "importance")  # not mathtext
    log_ticks = re.findall(r"<text[^>]*>(.*?)</text>", figure(document, "scores"), flags=re.DOTALL)
    assert any(label.count("<tspan") >= 3 for label in log_ticks)  # 10^n typeset glyph by glyph ...
    assert not any("$" in label for label in log_ticks)  # ... not printed as raw mathtext source


def test_every_text_is_escaped(document: str) -> None:
    assert "<script" not in document.lower()
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert escaped in figure(document, "importance")
    assert f"<td>{escaped}</td>" in document  # the explanation row
    assert f"<title>fraudpipe model v0003 {escaped}</title>" in document


def test_tables_format_numbers_and_colour_directions(document: str) -> None:
    data = report_data()
    assert f'<td class="num">{data.metrics["auc"]:.4f}</td>' in document
    assert '<td class="num">58,000</td>' in document
    assert '<td class="num">120,000</td>' in document  # windows: train transactions
    assert re.search(r'<tr class="raises"><td>[^<]*script[^<]*</td><td class="num">3\.0000</td>', document)
    assert '<tr class="lowers"><td>card_amount_mean_7d</td><td>—</td><td class="num">-0.4000</td>' in document


def test_write_report_replaces_the_file_and_leaves_no_temp_file(tmp_path: Path, document: str) -> None:
    path = tmp_path / "report.html"
    path.write_text("old")
    write_report(report_data(), path)
    assert path.read_text(encoding="utf-8") == document  # also: the same data renders the same document
    assert list(tmp_path.iterdir()) == [path]


def test_the_written_file_gets_the_usual_permissions(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.touch()  # what the umask gives any new file
    write_report(report_data(), tmp_path / "report.html")
    assert (tmp_path / "report.html").stat().st_mode == probe.stat().st_mode


def test_a_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.mkdir()  # os.replace cannot put a file over a folder
    with pytest.raises(OSError, match="directory"):
        write_report(report_data(), target)
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("label", [0, 1])
def test_a_one_class_window_gets_a_note_instead_of_curves(label: int) -> None:
    data = report_data()
    document = render_report(replace(data, truth=np.full_like(data.truth, label)))
    assert "No ROC or precision-recall curve" in document
    assert 'id="roc"' not in document
    assert 'id="pr"' not in document
    assert document.count("<svg") == 3  # scores, CP@k per day, importance


def test_missing_optional_parts_render_as_notes() -> None:
    data = replace(report_data(), cp_per_day=[], importance={}, explanations=[], windows={})
    document = render_report(data)
    assert document.count("<svg") == 3  # ROC, precision-recall, scores
    for note in ("No days.", "No features.", "No alerts explained.", "No windows given."):
        assert f'<p class="note">{note}</p>' in document


def test_truth_and_scores_must_line_up() -> None:
    data = report_data()
    with pytest.raises(ValueError, match="2000 entries but scores 1999"):
        render_report(replace(data, scores=data.scores[:-1]))


def test_the_policy_s_money_has_its_own_section_when_there_is_one(document: str) -> None:
    assert "Decisions and money" not in document  # no policy given: no section
    data = dataclasses.replace(report_data(), policy={"alert_rate": 0.009, "saving_vs_rules_only": 0.83})
    page = render_report(data)
    assert "<h2>Decisions and money</h2>" in page and "saving_vs_rules_only" in page and "0.83" in page
    assert page.index("Decisions and money") < page.index("<h2>Ranking</h2>")
