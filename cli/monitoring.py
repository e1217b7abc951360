"""Commands that watch the served model and close the loop: ``monitor`` (live quality as labels mature, drift,
automatic rollback) and ``retrain`` (a challenger from the decision log, promoted only if it beats the champion);
both can repeat on a schedule (``--every``)."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cli._apps import app
from cli._common import (
    CliError,
    FairnessBoundOption,
    FairnessColumnOption,
    FairnessOption,
    RateOption,
    RoundsOption,
    SeedOption,
    TunedOption,
    _constraint,
    _fmt,
    _latest,
    _registry,
    _segment_file,
    _served_logs,
    _settings,
    _training,
    _training_segments,
    err,
)
from fraudpipe.settings import Settings


@app.command()
def monitor(
    as_of: Annotated[
        str | None, typer.Option(help="Judge as of this time (ISO 8601); default: the stream's latest decision time.")
    ] = None,
    days: Annotated[int, typer.Option(min=1, help="Show the last N event days.")] = 14,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write quality and drift as JSON here.")] = None,
    every: Annotated[
        float | None, typer.Option(min=1.0, help="Repeat every N seconds, serving the numbers as Prometheus gauges.")
    ] = None,
    fail_on_breach: Annotated[bool, typer.Option(help="Exit 3 when a drift breach is found (for schedulers).")] = False,
) -> None:
    """Live quality per day and model version (as labels mature) and drift of the served features and scores."""
    import time

    settings = _settings()
    if every is not None and settings.monitor.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.monitor.metrics_port, addr=settings.metrics.bind)
    while True:
        if every is None:
            if _monitor_once(settings, as_of, days, json_out) and fail_on_breach:
                raise typer.Exit(3)
            return
        _repeating(lambda: _monitor_once(settings, as_of, days, json_out))
        time.sleep(every)


@app.command()
def retrain(
    as_of: Annotated[
        str | None, typer.Option(help="Judge as of this time (ISO 8601); default: the stream's latest decision time.")
    ] = None,
    every: Annotated[float | None, typer.Option(min=1.0, help="Run every N seconds (scheduled).")] = None,
    only_on_breach: Annotated[
        bool,
        typer.Option(
            help="Train only when the champion's served features or scores breach the drift bound (triggered)."
        ),
    ] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the run's report here.")] = None,
    seed: SeedOption = None,
    rounds: RoundsOption = None,
    learning_rate: RateOption = None,
    tuned: TunedOption = None,
    fairness_constraint: FairnessOption = None,
    fairness_column: FairnessColumnOption = None,
    fairness_bound: FairnessBoundOption = None,
) -> None:
    """Train a challenger from the decision log and matured labels; promote it only if it beats the champion.
    With --fairness-constraint (or governance.fairness_constraint) it is trained under that constraint.

    Exit codes: 0 promoted (or nothing to do), 3 the training data failed validation, 4 the gate kept the champion.
    """
    import time

    settings = _settings()
    training = _training(settings, seed, rounds, learning_rate, tuned)
    asked = (fairness_constraint, fairness_column, fairness_bound)
    _constraint(settings, *asked, _training_segments(settings, None))  # a bad option fails now, not at each pass
    once = partial(_retrain_once, settings, as_of, only_on_breach, json_out, training, asked)
    while True:
        if every is None:
            if code := once():
                raise typer.Exit(code)
            return
        _repeating(once)
        time.sleep(every)


def _repeating(run: Any) -> None:
    """One pass of a scheduled (``--every``) command: an expected failure (no decisions yet, Kafka away) is printed
    and the schedule goes on; the next pass tries again."""
    try:
        run()
    except CliError as error:
        err.print(f"[yellow]skipped this pass[/]: {error}", highlight=False, soft_wrap=True)


def _retrain_once(settings: Settings, as_of_text: str | None, only_on_breach: bool, json_out: Path | None,
                  training: tuple[Any, dict[str, Any] | None],
                  asked: tuple[str | None, str | None, float | None]) -> int:  # fmt: skip
    """One retraining pass; the segment table read again each pass (a scheduled retrain sees the cards added since),
    ``asked`` the fairness constraint's options (:func:`_constraint`)."""
    import json
    from datetime import UTC

    from models.registry import RegistryError
    from models.retrain import DataValidationError
    from models.retrain import retrain as run

    out = Console(soft_wrap=True)
    r = settings.retrain
    reach = r.train_days + r.valid_days + r.holdout_days + settings.monitor.maturity_days + 1
    decisions, labels, as_of = _served_logs(settings, reach, as_of_text)
    registry = _registry()
    segments = _training_segments(settings, None)
    constraint = _constraint(settings, *asked, segments)
    champion = registry.aliases().get("champion")
    if only_on_breach and champion is not None:
        reasons = _retrain_reasons(settings, registry, champion, decisions, labels, as_of)
        if not reasons:
            out.print(f"no drift breach or decay for champion {champion}: nothing to retrain", highlight=False)
            return 0
        out.print(f"{'; '.join(reasons)}: retraining", highlight=False)
    try:
        outcome = run(decisions, labels, registry, as_of=as_of, maturity=timedelta(days=settings.monitor.maturity_days),
                      settings=settings.retrain, training=training[0], tuning=training[1], k=settings.monitor.k,
                      segments=segments, governance=settings.governance, costs=settings.cost,
                      scoring=settings.scoring, constraint=constraint)  # fmt: skip
    except DataValidationError as error:
        out.print("[red]training data failed validation, nothing trained:[/red]")
        for failure in error.failures:
            out.print(f"  - {failure}", highlight=False)
        return 3
    except (ValueError, RegistryError) as error:
        raise CliError(str(error)) from None
    report = outcome.report()
    text = json.dumps(report, indent=2) + "\n"
    # Every run's verdict is kept, promoted or not. Not 'retrain': a folder named like a module of the models package
    # would shadow it when models_dir is ./models under an editable install.
    runs = settings.paths.models_dir / "retrain-runs"
    runs.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (runs / f"{stamp}-{outcome.challenger}.json").write_text(text)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(text)
    for name, numbers in outcome.metrics.items():
        out.print(f"{name:<10} on the holdout: " + "  ".join(f"{k} {v:.4f}" for k, v in numbers.items()
                                                            if isinstance(v, float)), highlight=False)  # fmt: skip
    if not outcome.promoted:  # a promotion was announced by the registry (streams.model_events)
        _announce_refusal(settings, outcome)
    if outcome.promoted:
        out.print(f"promoted {outcome.challenger} to champion (was {outcome.champion}); workers swap it in",
                  highlight=False)  # fmt: skip
        return 0
    refusals = "; ".join(outcome.refusals)
    out.print(f"kept champion {outcome.champion}; challenger {outcome.challenger} refused: {refusals}", highlight=False)
    return 4


def _watch_fairness(settings: Settings, decisions: Any, labels: Any, as_of: datetime, out: Console) -> None:
    """With ``governance.segments_path``: each segment's false-positive-rate ratio to its reference over the matured
    decisions read, printed and exported as gauges, with the number of ratios clearly outside the bound among
    segments large enough to judge (:func:`models.fairness.disparity_breaches`). Not watched: no sample at all."""
    import polars as pl

    from models.fairness import disparity_breaches, fairness, judged_decisions, segments_of
    from streams import metrics

    g = settings.governance
    card, judged = None, pl.DataFrame()
    if g.segments_path is not None:  # judged only when watched: the join is the pass's dearest part
        judged = judged_decisions(
            decisions, labels, as_of=as_of, maturity=timedelta(days=settings.monitor.maturity_days)
        )
    if g.segments_path is not None and judged.is_empty():
        out.print("fairness: no matured decision yet", highlight=False)
    elif g.segments_path is not None:
        try:
            segments = segments_of(_segment_file(g.segments_path), g.segment_key, g.segment_columns)
            card = fairness(judged, segments, bound=g.disparity_bound, min_decisions=g.min_segment_decisions).to_dict()
        except (CliError, ValueError) as error:
            out.print(f"[yellow]fairness not watched[/]: {g.segments_path}: {error}", highlight=False)
    metrics.SEGMENT_FPR_RATIO.clear()  # only this pass's segments, set once measured: what the dashboard draws
    metrics.FAIRNESS_BREACHES.clear()
    if card is None:
        return
    breaches, ratios = [], []
    for column in card["columns"]:
        found = disparity_breaches(card | {"columns": [column]}, ["fpr"], min_frauds=g.min_segment_frauds,
                                   min_false_positives=g.min_segment_false_positives,
                                   confidence=g.breach_confidence,
                                   where=f"over {judged.height:,} matured decisions")  # fmt: skip
        metrics.FAIRNESS_BREACHES.labels(column["column"]).set(len(found))
        breaches += found
        for segment in column["segments"]:
            if (ratio := segment["ratios"]["fpr"]) is not None:
                metrics.SEGMENT_FPR_RATIO.labels(column["column"], segment["value"]).set(ratio)
                ratios.append(f"{column['column']}={segment['value']} {ratio:.2f}")
    out.print(f"fairness of {judged.height:,} matured decisions, false-positive-rate ratio to the reference "
              f"segment: {', '.join(ratios) or 'none measurable'}; {len(breaches)} clearly outside the bound",
              highlight=False)  # fmt: skip
    for breach in breaches:
        out.print(f"[yellow]warning[/]: {breach}", highlight=False)


def _auto_rollback(settings: Settings, registry: Any, quality: Any, out: Console) -> None:
    """Roll the champion back when its matured AP fell below the previous champion's (``monitor`` settings;
    :func:`models.monitor.rollback_due` decides)."""
    from models.monitor import rollback_due

    cfg = settings.monitor
    assert cfg.rollback_margin_ap is not None
    due = rollback_due(registry.history(), quality, margin=cfg.rollback_margin_ap, min_days=cfg.rollback_min_days)
    if due is None:
        return
    current, _, reason = due
    back = registry.rollback(by="fraudpipe monitor", why=f"automatic rollback: {reason}")
    out.print(f"[red]rolled the champion back from {current} to {back}:[/red] {reason}", highlight=False)


def _retrain_reasons(settings: Settings, registry: Any, champion: str, decisions: Any, labels: Any,
                     as_of: datetime) -> list[str]:  # fmt: skip
    """What calls for retraining the champion (:func:`models.monitor.retrain_reasons` decides)."""
    from models.monitor import live_quality, retrain_reasons

    cfg = settings.monitor
    manifest = registry.manifest(champion)
    windows = _drift(settings, decisions, {champion: manifest.reference})
    quality = live_quality(decisions, labels, as_of=as_of, maturity=timedelta(days=cfg.maturity_days), k=cfg.k)
    return retrain_reasons(champion, windows, quality, manifest.metrics.get("ap"), days=settings.retrain.holdout_days,
                           max_drop=cfg.decay_ap_drop)  # fmt: skip


def _announce_refusal(settings: Settings, outcome: Any) -> None:
    """Tell ``model-events.v1`` that the gates refused the retrained challenger (the champion stays)."""
    from datetime import UTC

    from fraudpipe.contracts import ModelEvent
    from streams.model_events import publish

    topic = settings.topics.full(settings.topics.registry_events)
    event = ModelEvent(action="refuse", alias="champion", version=outcome.challenger, previous=outcome.champion,
                       by="fraudpipe retrain", why="refused by the promotion gates", at=datetime.now(UTC),
                       refusals=[text[:2_000] for text in outcome.refusals[:64]])  # fmt: skip
    problem = publish(settings.kafka, topic, event)
    if problem is not None:
        err.print(f"warning: model event not published to {topic}: {problem}", highlight=False, markup=False,
                  soft_wrap=True)  # fmt: skip


def _drift(settings: Settings, decisions: Any, references: dict[str, Any]) -> Any:
    """Drift of the decisions made in the monitor's window before the latest one, per model version."""
    from models.monitor import live_drift

    cfg = settings.monitor
    since = _latest(decisions, "decided_at") - timedelta(hours=cfg.drift_window_hours)
    return live_drift(decisions, references, since=since, moderate=cfg.psi_moderate, breach=cfg.psi_breach,
                      min_decisions=cfg.drift_min_decisions)  # fmt: skip


_GAUGED = ("precision", "model_precision", "recall", "ap", "cp_at_k", "alert_rate", "label_coverage", "amount_recall",
           "expected_cost", "saving_vs_rules_only", "reviews", "review_capacity", "fraud_amount_caught",
           "fraud_amount_missed", "false_declines", "false_decline_amount")  # fmt: skip
"""The quality and money columns the monitor exports as gauges (the latest matured day per model version)."""


def _saving_line(quality: Any) -> str:
    """The matured days' money in one sentence: what the policy cost against the rules alone (served models only)."""
    import polars as pl

    served = quality.filter(pl.col("matured") & ~pl.col("model_version").str.ends_with("(shadow)"))
    if served.is_empty():
        return "no matured day yet: the saving against the rules alone is not known"
    cost, baseline = served.get_column("expected_cost").sum(), served.get_column("rules_only_cost").sum()
    caught, missed = served.get_column("fraud_amount_caught").sum(), served.get_column("fraud_amount_missed").sum()
    saving = f"{1 - cost / baseline:.1%}" if baseline else "n/a"
    return (f"over {served.get_column('day').n_unique()} matured days: expected cost {cost:,.2f} against "
            f"{baseline:,.2f} for the rules alone — a saving against the rules alone of {saving}; fraud amount "
            f"caught {caught:,.2f}, missed {missed:,.2f}")  # fmt: skip


def _monitor_once(settings: Settings, as_of_text: str | None, days: int, json_out: Path | None) -> int:
    """One pass of ``fraudpipe monitor``: print, export, write; the number of drift breaches."""
    import json

    import polars as pl

    from fraudpipe.logstore import DayLog
    from models.drift import JUDGED
    from models.monitor import live_quality
    from models.registry import RegistryError
    from streams import metrics

    cfg = settings.monitor
    decisions, labels, as_of = _served_logs(settings, days, as_of_text)
    maturity = timedelta(days=cfg.maturity_days)
    quality = live_quality(decisions, labels, as_of=as_of, maturity=maturity, k=cfg.k, costs=settings.cost)
    first_day = as_of.date() - timedelta(days=days)
    shadow = DayLog(settings.paths.data_dir / "shadow", "event_time").read(
        (first_day, as_of.date() + timedelta(days=1))
    )
    if not shadow.is_empty():  # the challenger's would-be decisions, judged on the same labels
        judged = live_quality(shadow, labels, as_of=as_of, maturity=maturity, k=cfg.k, costs=settings.cost)
        judged = judged.with_columns(model_version=pl.col("model_version") + " (shadow)")
        quality = pl.concat([quality, judged]).sort("day", "model_version")
    first = as_of.date() - timedelta(days=days - 1)
    quality = quality.filter(pl.col("day") >= first) if not quality.is_empty() else quality
    references = {}
    registry = _registry()
    for version in decisions.get_column("model_version").drop_nulls().unique().to_list():
        try:
            references[version] = registry.manifest(version).reference
        except RegistryError:
            continue
    windows = _drift(settings, decisions, references)

    table = Table("day", "model", "matured", "decisions", "alert rate", "by model", "by rule", "blocked", "frauds",
                  "caught", "precision", "recall", "AP", f"CP@{cfg.k}", "labelled", box=None)  # fmt: skip
    money = Table("day", "model", "reviews", "fraud caught", "fraud missed", "false declines", "expected cost",
                  "rules alone", "saving", box=None, title="money (cost model: FRAUD_COST__*)")  # fmt: skip
    for row in quality.iter_rows(named=True):
        rates = [_fmt(row[name]) for name in ("precision", "recall", "ap", "cp_at_k", "label_coverage")]
        table.add_row(str(row["day"]), row["model_version"], "yes" if row["matured"] else "no",
                      f"{row['decisions']:,}", _fmt(row["alert_rate"]), f"{row['model_alerts']:,}",
                      f"{row['rule_alerts']:,}", f"{row['blocked_declines']:,}", str(row["frauds"]),
                      str(row["caught"]), *rates)  # fmt: skip
        money.add_row(str(row["day"]), row["model_version"], f"{row['reviews']:,} / {row['review_capacity']:,}",
                      f"{row['fraud_amount_caught']:,.2f}", f"{row['fraud_amount_missed']:,.2f}",
                      f"{row['false_declines']:,} ({row['false_decline_amount']:,.2f})",
                      f"{row['expected_cost']:,.2f}", f"{row['rules_only_cost']:,.2f}",
                      _fmt(row["saving_vs_rules_only"]))  # fmt: skip
    out = Console(soft_wrap=True)
    out.print(f"as of {as_of.isoformat()} (days matured after {cfg.maturity_days} days)", highlight=False)
    out.print(table)
    out.print(money)
    out.print(_saving_line(quality), highlight=False)
    breaches = 0
    metrics.DRIFT_PSI.clear()  # only this pass's judged columns: what the dashboard and Grafana draw
    metrics.DRIFT_BREACHES.clear()
    for window in windows:
        columns = [d for d in window.drift if d.level in JUDGED]
        top = sorted(columns, key=lambda d: d.psi, reverse=True)[:5]
        worst = ", ".join(f"{d.name} {d.psi:.3f} ({d.level})" for d in top)
        unjudged = (f"too few to judge (fewer than {cfg.drift_min_decisions:,})" if not columns
                    else f"{len(window.breaches)} breaches; highest PSI: {worst}")  # fmt: skip
        out.print(f"drift of model {window.model_version} over {window.decisions:,} decisions in the last "
                  f"{cfg.drift_window_hours:g} h: {unjudged} (calendar features are not judged)",
                  highlight=False)  # fmt: skip
        breaches += len(window.breaches)
        metrics.DRIFT_BREACHES.labels(window.model_version).set(len(window.breaches))
        for drift in columns:
            metrics.DRIFT_PSI.labels(window.model_version, drift.name).set(drift.psi)
    _watch_fairness(settings, decisions, labels, as_of, out)
    if cfg.rollback_margin_ap is not None:
        _auto_rollback(settings, registry, quality, out)
    matured = quality.filter(pl.col("matured")) if not quality.is_empty() else quality
    for (version,), group in matured.group_by("model_version") if not matured.is_empty() else []:
        latest = group.sort("day").row(-1, named=True)
        for name in _GAUGED:
            if latest[name] is not None:
                metrics.LIVE_QUALITY.labels(str(version), name).set(latest[name])
    if json_out is not None:
        payload = {
            "as_of": as_of.isoformat(),
            "quality": [{**row, "day": str(row["day"])} for row in quality.iter_rows(named=True)],
            "drift": [{"model_version": w.model_version, "decisions": w.decisions,
                       "columns": [{"name": d.name, "psi": d.psi, "kl": d.kl, "level": d.level} for d in w.drift]}
                      for w in windows],
        }  # fmt: skip
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(payload, indent=2) + "\n")
    return breaches
