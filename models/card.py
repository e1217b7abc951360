"""Model cards: what a registered version is for, what it was trained on, how well it does — overall and per
customer segment — and what it cannot be trusted with. Markdown, pure: a manifest in, text out.

The registry writes ``card.md`` next to every new version (:meth:`models.registry.Registry.register`), with the
per-segment metrics and fairness summary its trainer computed (:func:`models.fairness.card_segments`) when
segment data was at hand, and says so when it was not. ``fraudpipe model card REF`` prints a version's card, or
renders one from its manifest for a version registered before cards existed.

Sections, in order: details, intended use, out of scope, training data, features, metrics, metrics per segment,
fairness summary, known limitations.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from models.fairness import RATIOS, UNKNOWN
from models.manifest import Manifest

__all__ = ["render_card"]

INTENDED_USE = """\
Scores card payments (card-present and e-commerce) as they happen, for the probability that the payment is fraud;
the serving policy turns the score into approve / review / decline with the thresholds below (review sends the
payment to an analyst queue, decline stops it). Built for a card issuer's or acquirer's fraud operations, who
watch it with `fraudpipe monitor` and `fraudpipe fairness`."""
OUT_OF_SCOPE = """\
- Any decision about a person rather than a payment: credit, pricing, access to accounts, eligibility.
- Payments of other instruments, or card payments of markets or periods unlike the training data.
- Declining without human recourse: a declined customer must be able to reach the issuer and be heard."""
LIMITATIONS = """\
- Labels arrive late and incomplete (chargebacks in weeks, some never): an unlabelled payment counts as genuine,
  so recall is overestimated and precision underestimated until labels mature.
- The validation window is short and recent; the fraud mix changes (new campaigns), so quality decays: watch the
  drift and matured quality (`fraudpipe monitor`) and retrain.
- Scores are calibrated to the training period's fraud rate; the thresholds were chosen for the least expected cost
  under the cost model below on validation, and hold only while the fraud mix, the amounts and the costs stay alike.
- No protected attribute or customer segment is a feature (a guard test holds the feature list apart from them),
  but features can stand in for one: places, terminals and merchants follow geography, spending habits follow age.
  Look at the segment metrics, not only at the feature list.
- Segment rates with few payments or few frauds are noise; the fairness summary flags only segments large enough.
- Trained on the data its fingerprint names; when that is simulated data, these numbers say nothing about a real
  portfolio."""


def render_card(manifest: Manifest, segment_metrics: Mapping[str, Any] | None = None) -> str:
    """The card of ``manifest`` as Markdown; ``segment_metrics`` as :func:`models.fairness.card_segments` gives
    them, or ``None`` (the card then says no segment data was supplied)."""
    m = manifest
    spans = {name: span for name, span in m.windows.items() if isinstance(span, Mapping) and "transactions" in span}
    measured_on = "holdout" if "holdout" in spans else "validation"
    details = [
        ("version", m.version),
        ("created", f"{m.created_at:%Y-%m-%d %H:%M} UTC by {m.created_by}"),
        (
            "model",
            f"LightGBM {m.lightgbm_version} text model, {m.rounds} rounds, binary log-loss"
            + (" with a fairness penalty" if m.fairness_constraint.get("strength") else ""),
        ),
        ("model SHA-256", f"`{m.model_sha256}`"),
        ("training data fingerprint", f"`{m.data_fingerprint}`"),
        ("notes", m.notes or "—"),
    ]
    metrics = [(name, value) for name, value in m.metrics.items() if not isinstance(value, list | dict | None)]
    lines = [
        f"# Model card: fraudpipe {m.version}",
        "",
        _table(["", ""], details),
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        "## Out of scope",
        "",
        OUT_OF_SCOPE,
        "",
        "## Training data",
        "",
        *_training_data(m.windows, spans, measured_on),
        f"## Features ({len(m.features)})",
        "",
        ", ".join(f"`{name}`" for name in m.features),
        "",
        f"## Metrics ({measured_on} window)",
        "",
        _table(["metric", "value"], metrics),
        "",
        _thresholds(m.thresholds),
        *_money(m.metrics.get("policy")),
        *_scenarios(m.metrics.get("scenario_recall_at_1pct_fpr")),
        "",
        *_constraint(m.fairness_constraint),
        *(_segments(segment_metrics) if segment_metrics else _no_segments()),
        "## Known limitations",
        "",
        LIMITATIONS,
        "",
    ]
    return "\n".join(lines)


def _training_data(windows: Mapping[str, Any], spans: Mapping[str, Mapping[str, Any]], measured_on: str) -> list[str]:
    trained = [spans[name] for name in ("history", "train") if name in spans]
    size = sum(int(span.get("transactions") or 0) for span in trained)
    frauds = sum(int(span.get("frauds") or 0) for span in trained)
    rate = f" ({frauds / size:.2%} fraud)" if size else ""
    rows = [(name, s.get("from"), s.get("to"), s.get("transactions"), s.get("frauds"), s.get("cards"))
            for name, s in spans.items()]  # fmt: skip
    table = _table(["window", "from", "to", "payments", "frauds", "cards"], rows) if rows else "No windows recorded."
    others = [f"- {name}: {value}" for name, value in windows.items() if name not in spans]
    return [f"Trained on {size:,} payments with {frauds:,} frauds{rate}; measured on the {measured_on} window.", "",
            table, "", *others, *([""] if others else [])]  # fmt: skip


def _thresholds(thresholds: Mapping[str, Any]) -> str:
    if "review" not in thresholds:
        return "No thresholds recorded."
    text = f"Thresholds: review at a score of {_cell(thresholds['review'])}, decline at {_cell(thresholds['decline'])}"
    cost = thresholds.get("cost")
    if isinstance(cost, Mapping):
        text += (f", chosen on validation for the least expected cost ({thresholds['expected_cost_per_day']:,.2f} a "
                 f"day) when a missed fraud costs its amount plus {cost['chargeback_fee']:,.2f}, a review "
                 f"{cost['review_cost']:,.2f}, a false decline {cost['false_decline_share']:.0%} of its amount, with "
                 f"at most {cost['review_capacity']:,} reviews a day")  # fmt: skip
    rules = thresholds.get("rules")
    if isinstance(rules, list) and rules:
        text += ". The serving rules it was chosen with, in order: " + ", ".join(
            f"`{r['id']}`" + ("" if r.get("threshold") is None else f" from {r['threshold']:g}")
            + f" → at least {r['at_least']}" for r in rules
        )  # fmt: skip
    return text + "."


_MONEY = (("payments", "payments"), ("alert_rate", "analyst alerts per payment"), ("model_alerts", "alerts by the "
          "model's score"), ("rule_alerts", "alerts by a rule alone"), ("blocked_declines", "declines of blocked "
          "cards (no alert)"), ("reviews_per_day", "reviews a day"), ("amount_recall", "fraud amount caught (share)"),
          ("fraud_amount_missed", "fraud amount missed"), ("false_declines", "false declines"),
          ("false_decline_amount", "false decline amount"), ("expected_cost_per_day", "expected cost a day"),
          ("saving_vs_rules_only", "saving against the rules alone"))  # fmt: skip


def _money(policy: object) -> list[str]:
    if not isinstance(policy, Mapping):
        return []
    return ["", "The policy on the same window (the model's thresholds and the serving rules):", "",
            _table(["figure", "value"], [(label, policy.get(key)) for key, label in _MONEY])]  # fmt: skip


def _scenarios(recall: object) -> list[str]:
    if not isinstance(recall, Mapping) or not recall:
        return []
    return ["", "Recall per fraud scenario at a 1 % false-positive rate:", "",
            _table(["scenario", "recall"], sorted(recall.items()))]  # fmt: skip


def _constraint(record: Mapping[str, Any]) -> list[str]:
    """The fairness constraint it was trained under (:func:`models.constraint.constrain`): the model trained without
    it and each strength tried — AP on the validation window, ratios on the training window (where the constraint
    is held) and on validation."""
    if not record:
        return []
    low, high = record["band"]
    chosen = record["strength"]
    verdict = (
        f"kept the penalty of strength {chosen:g}"
        if chosen
        else "kept the model trained without the penalty (no stronger one did better within the AP allowed)"
    )
    if not record["tried"]:
        verdict = "the model trained without the penalty was already within the band: kept"
    rows = [("none (baseline)", record["baseline"]), *((f"{t['strength']:g}", t) for t in record["tried"])]
    return [
        "## Fairness constraint",
        "",
        f"Trained under `{record['kind']}` on `{record['column']}`: each segment's ratio to `"
        f"{record['baseline']['reference']}` held within [{low:.2f}, {high:.2f}] on the {record['window']} window "
        "(where a segment is large enough to judge), "
        f"losing at most {record['max_ap_loss']:g} AP; {verdict}. The column trained the model only: it is not an "
        "input, and no decision sees it.",
        "",
        _table(["penalty strength", "validation AP", "worst ratio: training", "validation", "ratios (training)"],
               [(name, r["ap"], r["worst_ratio"], r["validation"]["worst_ratio"], "; ".join(f"{metric} " + ", ".join(
                   f"{segment} {value:.2f}" for segment, value in by.items()) for metric, by in r["ratios"].items()))
                for name, r in rows]),
        "",
    ]  # fmt: skip


def _no_segments() -> list[str]:
    return [
        "## Metrics per segment",
        "",
        "No segment data supplied: this version was registered without a segment table (train on a simulator",
        "folder, which has `customers.parquet`, or set `FRAUD_GOVERNANCE__SEGMENTS_PATH`). `fraudpipe fairness`",
        "judges the decisions it serves.",
        "",
        "## Fairness summary",
        "",
        "Not assessed (no segment data).",
        "",
    ]


def _segments(metrics: Mapping[str, Any]) -> list[str]:
    bound = float(metrics["bound"])
    unmatched = metrics.get("unmatched") or 0
    without = f" ({unmatched:,} payments without a segment row are `{UNKNOWN}`)" if unmatched else ""
    source = metrics.get("source") or "a segment table"
    lines = [
        "## Metrics per segment",
        "",
        f"On the {metrics.get('window', 'validation')} window; an alert is a score at or above the review threshold "
        "(the serving policy's rules for cards with a known fraud and large amounts come on top, alike for every "
        f"segment). Segments from `{source}` by `{metrics.get('key')}`{without}.",
        "",
    ]
    overall = metrics["overall"]
    header = ["segment", "payments", "frauds", "alert rate", "FPR", "precision", "recall", "AUC", "AP",
              *(name.split(" (")[0] for name in RATIOS.values())]  # fmt: skip
    for column in metrics["columns"]:
        rows = [_segment_row(overall, "all")]
        for s in column["segments"]:
            mark = " (reference)" if s["reference"] else (" ⚑" if s["flags"] else "")
            rows.append(_segment_row(s, f"{s['value']}{mark}"))
        lines += [f"### {column['column']} (reference {column['reference']})", "", _table(header, rows), ""]
    flags = metrics.get("flags") or []
    lines += [
        "## Fairness summary",
        "",
        f"Ratios of each segment to its column's reference segment; a ratio outside [{bound:.2f}, {1 / bound:.2f}] "
        f"is flagged when both hold at least {metrics['min_decisions']:,} payments.",
        "",
    ]
    if flags:
        lines += [f"{len(flags)} ratios outside the bound:", "", *(f"- {flag['message']}" for flag in flags)]
    else:
        lines.append("No ratio outside the bound.")
    return [*lines, ""]


def _segment_row(s: Mapping[str, Any], name: str) -> list[object]:
    ratios = s.get("ratios") or {}
    return [name, s["decisions"], s["frauds"], s["alert_rate"], s["fpr"], s["precision"], s["recall"], s["auc"],
            s["ap"], *(ratios.get(metric) for metric in RATIOS)]  # fmt: skip


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    """Floats to 4 decimals, integers with thousands separators, nothing as a dash; ``|`` escaped."""
    if value is None:
        text = "—"
    elif isinstance(value, bool):
        text = str(value)
    elif isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, float):
        text = f"{value:.4f}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")
