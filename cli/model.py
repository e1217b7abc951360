"""Commands that make and manage models: ``train`` (and register) a version, ``evaluate`` under the published
protocol, ``tune`` its parameters on earlier folds, and the registry's
``model list|show|promote|rollback|history|card``."""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cli._apps import app, model_app
from cli._common import (
    CliError,
    DelayDaysOption,
    FairnessBoundOption,
    FairnessColumnOption,
    FairnessOption,
    RateOption,
    RoundsOption,
    SeedOption,
    SinceOption,
    TestDaysOption,
    TrainDaysOption,
    TunedOption,
    UntilOption,
    Window,
    _constraint,
    _day,
    _duration,
    _registry,
    _settings,
    _training,
    _training_segments,
    _window,
    err,
    out,
)
from fraudpipe.settings import Settings

if TYPE_CHECKING:
    from models.dataset import History

MapOption = Annotated[str | None, typer.Option("--map", help="target=column pairs, as for replay.")]
HistoryOption = Annotated[
    int | None, typer.Option(min=0, help="More training days before the window [a --tuned study's choice, else 0].")
]


def _history(source: Path, mapping: str | None, settings: Settings, label_delay: timedelta,
             window: Window = (None, None)) -> History:  # fmt: skip
    """``source`` read whole, or its ``window`` (:func:`cli._common._window`)."""
    from fraudpipe.files import SourceError, parse_mapping
    from models.dataset import load_history

    with err.status(f"reading {source}"):
        try:
            history = load_history(
                source,
                parse_mapping(mapping),
                key=settings.privacy.tokenization_key.get_secret_value().encode(),
                label_delay=label_delay,
                since=window[0],
                until=window[1],
            )
        except SourceError as error:
            raise CliError(str(error)) from None
    if history.rejected:
        err.print(f"{history.rejected:,} rows failed validation and were left out (fraudpipe replay lists them)")
    return history


def _fitting(total: int) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("rounds"), TimeElapsedColumn(),
        console=err, transient=True,
    )  # fmt: skip
    task = progress.add_task("train", total=total)
    return progress, lambda done, _: progress.update(task, completed=done)


@app.command()
def train(
    source: Annotated[Path, typer.Argument(help="Simulator output folder, or a .csv / .parquet / .jsonl file.")],
    mapping: MapOption = None,
    train_start: Annotated[str | None, typer.Option(help="First training day [latest that fits].")] = None,
    train_days: Annotated[int, typer.Option(min=1, help="Days of the training window.")] = 14,
    history_days: HistoryOption = None,
    delay_days: Annotated[int, typer.Option(min=0, help="Gap whose labels are not known yet.")] = 7,
    valid_days: Annotated[int, typer.Option(min=1, help="Validation days after the gap (early stopping).")] = 7,
    label_delay: Annotated[str, typer.Option(help="Delay of labels derived from a file's label column.")] = "7d",
    since: SinceOption = None,
    until: UntilOption = None,
    seed: SeedOption = None,
    rounds: RoundsOption = None,
    learning_rate: RateOption = None,
    tuned: TunedOption = None,
    promote: Annotated[bool, typer.Option(help="Make the new version the champion.")] = False,
    why: Annotated[str, typer.Option(help="Recorded with the promotion.")] = "trained with fraudpipe train",
    fairness_constraint: FairnessOption = None,
    fairness_column: FairnessColumnOption = None,
    fairness_bound: FairnessBoundOption = None,
) -> None:
    """Train a LightGBM model, register it (model, manifest, report) and optionally promote it. Its thresholds are
    the cheapest on the validation window under the cost model (FRAUD_COST__*: fees, review cost and capacity).
    With --fairness-constraint it is trained under that constraint on a segment column (models.constraint).
    --since / --until read only that slice of the source (the windows are then the latest that fit in it)."""
    from functools import partial

    from models.constraint import constrain
    from models.report import render_report, report_data
    from models.train import latest_windows, train_version

    settings = _settings()
    history = _history(source, mapping, settings, _duration(label_delay), _window(since, until))
    windows = latest_windows(history, train_days, delay_days, valid_days)
    if train_start is not None:
        windows = replace(windows, train_start=_day(train_start, "--train-start"))
    training, tuning = _training(settings, seed, rounds, learning_rate, tuned)
    windows = replace(windows, history_days=_history_days(history_days, tuning))
    segments = _training_segments(settings, source)
    constraint = _constraint(settings, fairness_constraint, fairness_column, fairness_bound, segments)
    refit = None if constraint is None else partial(
        constrain, settings=training, constraint=constraint, segments=segments, governance=settings.governance,
        costs=settings.cost, scoring=settings.scoring)  # fmt: skip
    progress, update = _fitting(training.rounds)
    with progress:
        try:
            trained = train_version(history, windows, training, costs=settings.cost, scoring=settings.scoring,
                                    tuning=tuning, progress=update, refit=refit)  # fmt: skip
        except ValueError as error:
            raise CliError(str(error)) from None
    registry = _registry()
    metrics = trained.fields["metrics"]
    report = render_report(report_data("fraudpipe model (validation window)", trained.fitted.booster,
                                        trained.valid, metrics, trained.fields["windows"]))  # fmt: skip
    segment_metrics = _card_segments(settings, segments, trained.valid, trained.fields["thresholds"])
    manifest = registry.register(trained.fitted.booster, trained.fields, report, segment_metrics=segment_metrics)
    if promote:
        registry.promote(manifest.version, why=why)
    thresholds = manifest.thresholds
    Console(soft_wrap=True).print(
        f"registered {manifest.version} ({trained.fitted.rounds} rounds, {metrics['train_seconds']:.1f} s) — "
        f"validation {windows.test[0]}..{windows.test[1] - timedelta(days=1)}: AUC {metrics['auc']:.3f}, "
        f"AP {metrics['ap']:.3f}, CP@{metrics['k']} {metrics['cp_at_k']:.3f}; thresholds review "
        f"{thresholds['review']:.3f} / decline {thresholds['decline']:.3f}, "
        f"expected cost {thresholds['expected_cost_per_day']:,.0f} a day ({_saving(metrics['policy'])})"
        + (" — now champion" if promote else "")
        + _constrained(trained.fields["fairness_constraint"])
        + f"\nreport: {registry.versions_dir / manifest.version / 'report.html'}",
        highlight=False,
    )


def _history_days(given: int | None, tuning: dict[str, Any] | None) -> int:
    """``--history-days`` as given, else a study's choice, else 0."""
    from models.tune import tuned_history_days

    if given is not None:
        return given
    return (tuned_history_days(tuning) if tuning is not None else None) or 0


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _saving(policy: dict[str, Any]) -> str:
    saving = policy.get("saving_vs_rules_only")
    return "rules alone cost nothing" if saving is None else f"{saving:.0%} less than the rules alone"


@app.command()
def evaluate(
    source: Annotated[Path, typer.Option("--input", help="Simulator folder or .csv / .parquet / .jsonl file.")],
    report: Annotated[Path, typer.Option(help="JSON report to write.")],
    train_start: Annotated[str | None, typer.Option(help="First training day, YYYY-MM-DD.")] = None,
    weeks: Annotated[int, typer.Option(min=1, max=52, help="Test weeks: the protocol slid a week at a time.")] = 1,
    starts: Annotated[
        str | None, typer.Option(help="First training days, comma-separated (instead of --train-start/--weeks).")
    ] = None,
    mapping: MapOption = None,
    train_days: TrainDaysOption = 7,
    delay_days: DelayDaysOption = 7,
    test_days: TestDaysOption = 7,
    history_days: HistoryOption = None,
    k: Annotated[int, typer.Option(min=1, help="Cards investigated per day (CP@k).")] = 100,
    html: Annotated[Path | None, typer.Option(help="HTML report to write.")] = None,
    seed: SeedOption = None,
    rounds: RoundsOption = None,
    learning_rate: RateOption = None,
    tuned: TunedOption = None,
    label_visibility: Annotated[
        str, typer.Option(help="When truth labels become visible: aligned (with the removal rule) or exact.")
    ] = "aligned",
) -> None:
    """Train and test under the published protocol (delay gap, known-compromised cards removed); write the report.
    With --weeks N (or --starts), the protocol runs on N consecutive test weeks and the report adds each week and
    their mean ± std. With --tuned, a fraudpipe tune study's parameters — refused if its folds reach a reported
    test week."""
    import json

    from models.evaluate import SUMMARIZED, VISIBILITY, weekly
    from models.evaluate import evaluate as run
    from models.protocol import Windows
    from models.report import report_data, write_report

    if starts is not None:
        firsts = [_day(text.strip(), "--starts") for text in starts.split(",") if text.strip()]
    elif train_start is not None:
        first = _day(train_start, "--train-start")
        firsts = [first + timedelta(days=7 * week) for week in range(weeks)]
    else:
        raise CliError("give --train-start (with --weeks) or --starts")
    if label_visibility not in VISIBILITY:
        raise CliError(f"--label-visibility must be one of {', '.join(VISIBILITY)}; got {label_visibility!r}")
    settings = _settings()
    training, tuning = _training(settings, seed, rounds, learning_rate, tuned)
    first_test = min(Windows(first, train_days, delay_days, test_days).test[0] for first in firsts)
    if tuning is not None and date.fromisoformat(tuning["until"]) > first_test:
        raise CliError(f"--tuned: the study's folds reach {tuning['until']}, past the test week from {first_test}: "
                       f"tune with --until {first_test} or earlier")  # fmt: skip
    history = _history(source, mapping, settings, timedelta(days=delay_days))
    before = _history_days(history_days, tuning)
    results = []
    for first in firsts:
        windows = Windows(first, train_days, delay_days, test_days, before)
        progress, update = _fitting(training.rounds)
        with progress:
            try:
                results.append(run(history, windows, training, k=k, costs=settings.cost, scoring=settings.scoring,
                                   visibility=label_visibility, progress=update))  # fmt: skip
            except ValueError as error:
                raise CliError(f"test week from {windows.test[0]}: {error}") from None
    result = results[0]
    written = weekly(results) if len(results) > 1 else result.report
    if tuning is not None:
        written = {**written, "tuning": tuning}
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(written, indent=2) + "\n")
    if html is not None:
        test = result.report["protocol"]["test_start"]
        more = f" (and {len(results) - 1} more)" if results[1:] else ""
        title = f"fraudpipe evaluate — test week from {test}{more}"
        data = report_data(title, result.booster, result.test, result.report, result.report["windows"])
        write_report(replace(data, weeks=written.get("weeks", [])), html)
    if results[1:]:
        mean, std = written["mean"], written["std"]
        Console(soft_wrap=True).print(
            "\n".join(f"test week from {w['test_start']}: " + "  ".join(f"{n} {_figure(w[n])}" for n in SUMMARIZED)
                      for w in written["weeks"])
            + "\nmean ± std over the weeks: "
            + "  ".join(f"{n} {_figure(mean[n])} ± {_figure(std[n])}" for n in SUMMARIZED),
            highlight=False,
        )  # fmt: skip
    r, p = result.report, result.report["policy"]
    auc, ap = (f"{r[key]:.3f}" if r[key] is not None else "n/a" for key in ("auc", "ap"))
    recall = "n/a" if p["amount_recall"] is None else f"{p['amount_recall']:.1%}"
    Console(soft_wrap=True).print(
        f"AUC {auc}  AP {ap}  CP@{k} {r['cp_at_k']:.3f}  ({r['n_test']:,} test transactions, "
        f"{r['n_test_fraud']:,} frauds) → {report}"
        + (f", {html}" if html else "")
        + f"\npolicy on all {p['payments']:,} test payments: {p['alert_rate']:.2%} analyst alerts, "
        f"{p['reviews_per_day']:,.0f} reviews a day (capacity {p['review_capacity']:,}), fraud amount caught "
        f"{recall}, {p['false_declines']:,} false declines, expected cost {p['expected_cost_per_day']:,.0f} a day, "
        f"{_saving(p)}",
        highlight=False,
    )


@app.command()
def tune(
    source: Annotated[Path, typer.Option("--input", help="Simulator folder or .csv / .parquet / .jsonl file.")],
    until: Annotated[str, typer.Option(help="First day no fold may see (YYYY-MM-DD): at most a report's test week's.")],
    report: Annotated[Path, typer.Option(help="JSON report to write (train / retrain / evaluate take it: --tuned).")],
    mapping: MapOption = None,
    folds: Annotated[int, typer.Option(min=1, max=26, help="Selection folds: test weeks back from --until.")] = 4,
    trials: Annotated[int, typer.Option(min=1, max=1_000, help="Parameter sets tried (the first: the settings).")] = 30,
    metric: Annotated[str, typer.Option(help="Maximised over the folds' mean: ap, auc or cp_at_k.")] = "ap",
    train_days: TrainDaysOption = 7,
    delay_days: DelayDaysOption = 7,
    test_days: TestDaysOption = 7,
    max_history_days: Annotated[
        int, typer.Option(min=0, help="The most history days before each training window the study may add.")
    ] = 21,
    k: Annotated[int, typer.Option(min=1, help="Cards investigated per day (CP@k).")] = 100,
    html: Annotated[Path | None, typer.Option(help="HTML report to write (the search's history plotted).")] = None,
    seed: SeedOption = None,
) -> None:
    """Choose LightGBM parameters with Optuna on selection folds that end before --until (the evaluation protocol
    slid back a week at a time); write the study and the chosen parameters."""
    import json

    from models.report import write_html
    from models.tune import METRICS, fold_windows
    from models.tune import folds as fold_rows
    from models.tune import tune as run
    from models.tune_report import render_tune

    if metric not in METRICS:
        raise CliError(f"--metric must be one of {', '.join(METRICS)}; got {metric!r}")
    end = _day(until, "--until")
    settings = _settings()
    training, tuning = _training(settings, seed, None, None)
    history = _history(source, mapping, settings, timedelta(days=delay_days))
    windows = fold_windows(end, folds, train_days, delay_days, test_days, max_history_days)
    with err.status(f"building the features of {folds} folds"):
        try:
            built = fold_rows(history, windows)
        except ValueError as error:
            raise CliError(str(error)) from None

    def said(done: int, total: int, best: float | None) -> None:
        err.print(f"trial {done}/{total}: best mean {metric} {_figure(best)}", highlight=False)

    study = run(built, training, trials=trials, until=end, metric=metric, k=k,
                history_days=_history_days(None, tuning), progress=said)  # fmt: skip
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(study, indent=2) + "\n")
    if html is not None:
        write_html(render_tune(study, title=f"fraudpipe tune — {folds} folds before {end}"), html)
    chosen = ", ".join(f"{name} {value:.4g}" for name, value in study["chosen"].items())
    Console(soft_wrap=True).print(
        f"mean {metric} over {folds} folds: {study['best']['value']:.4f} chosen (trial {study['best']['number']}) "
        f"against {study['current']['value']:.4f} with the settings — {chosen} → {report}"
        + (f", {html}" if html else ""),
        highlight=False,
    )


@model_app.command("list")
def model_list() -> None:
    """Every version with its validation metrics and aliases."""
    registry = _registry()
    aliases = registry.aliases()
    table = Table("version", "created", "AUC", "AP", "CP@k", "aliases")
    for version in registry.versions():
        m = registry.manifest(version)
        names = ", ".join(alias for alias, target in aliases.items() if target == version)
        auc, ap = (f"{m.metrics.get(key) or 0:.3f}" for key in ("auc", "ap"))
        table.add_row(version, f"{m.created_at:%Y-%m-%d %H:%M}", auc, ap, f"{m.metrics.get('cp_at_k', 0):.3f}", names)
    out.print(table)


@model_app.command("show")
def model_show(ref: Annotated[str, typer.Argument(help="Version (v0001) or alias (champion).")] = "champion") -> None:
    """A version's manifest (without its reference distributions), verified against its model file."""
    import json

    from models.registry import RegistryError

    registry = _registry()
    try:
        manifest = registry.load(ref).manifest
    except RegistryError as error:
        raise CliError(str(error)) from None
    shown = manifest.model_dump(mode="json", exclude={"reference"})
    Console(soft_wrap=True).print_json(json.dumps(shown))


@model_app.command("promote")
def model_promote(
    version: Annotated[str, typer.Argument(help="Version to promote.")],
    why: Annotated[str, typer.Option(help="Why (recorded).")],
    alias: Annotated[str, typer.Option(help="champion or challenger.")] = "champion",
) -> None:
    """Point an alias at a version (verified first)."""
    from models.registry import RegistryError

    try:
        _registry().promote(version, alias=alias, why=why)
    except RegistryError as error:
        raise CliError(str(error)) from None
    out.print(f"{alias} → {version}")


@model_app.command("rollback")
def model_rollback(
    why: Annotated[str, typer.Option(help="Why (recorded).")],
    alias: Annotated[str, typer.Option(help="champion or challenger.")] = "champion",
) -> None:
    """Point an alias back at the version it had before."""
    from models.registry import RegistryError

    try:
        version = _registry().rollback(alias=alias, why=why)
    except RegistryError as error:
        raise CliError(str(error)) from None
    out.print(f"{alias} → {version} (rolled back)")


@model_app.command("history")
def model_history() -> None:
    """Every alias change: when, what, who, why."""
    table = Table("at", "alias", "action", "version", "previous", "by", "why")
    for entry in _registry().history():
        table.add_row(entry["at"][:19], entry["alias"], entry["action"], entry["version"] or "-",
                      entry["previous"] or "-", entry["by"], entry["why"])  # fmt: skip
    out.print(table)


@model_app.command("card")
def model_card(
    ref: Annotated[str, typer.Argument(help="Version (v0001) or alias (champion).")] = "champion",
    out_path: Annotated[Path | None, typer.Option("--out", help="Write the card here instead of printing it.")] = None,
) -> None:
    """A version's model card (Markdown): intended use, training data, features, metrics overall and per segment,
    fairness summary, known limitations. Versions registered before cards get one rendered from their manifest."""
    from models.registry import RegistryError

    try:
        text = _registry().card(ref)
    except RegistryError as error:
        raise CliError(str(error)) from None
    if out_path is None:
        sys.stdout.write(text)
        return
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text)
    out.print(f"model card of {ref} → {out_path}", highlight=False)


def _constrained(record: dict[str, Any]) -> str:
    """A line on the fairness constraint a version was trained under (empty: none)."""
    if not record:
        return ""
    before, after = record["baseline"], record["chosen"]
    return (
        f"\n{record['kind']} on {record['column']} (training window): worst ratio {before['worst_ratio']:.2f} → "
        f"{after['worst_ratio']:.2f}, AP {before['ap']:.3f} → {after['ap']:.3f} (penalty strength "
        f"{record['strength']:g}, {len(record['tried'])} tried)"
    )


def _card_segments(settings: Settings, segments: Any, rows: Any, thresholds: dict[str, Any]) -> Any:
    """Per-segment metrics and fairness of a trained version on its scored validation ``rows``, for its card."""
    from models.fairness import card_segments

    if segments is None:
        return None
    g = settings.governance
    return card_segments(rows, thresholds, segments, window="validation", bound=g.disparity_bound,
                         min_decisions=g.min_segment_decisions)  # fmt: skip
