"""What the command modules share: the consoles, the one-line error, settings, parsing and common lookups.

``CliError`` is an expected failure: ``main`` prints its message on one line (``_fail``) and exits with status 1.
``_settings`` turns a bad setting into such an error. The rest are helpers more than one command module uses:
parsing of durations, days and ``--as-of`` times, the first line of an error, the training options shared by
``train``, ``evaluate`` and ``retrain``, the model registry, the segment table and the served decision logs.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console

from fraudpipe.settings import Settings, get_settings

out = Console()
err = Console(stderr=True)


class CliError(Exception):
    """An expected failure: its message is printed on one line and the command exits with status 1."""


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as error:
        first = error.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise CliError(f"invalid setting {where or '(settings)'}: {first['msg']}") from None


def _first_line(error: Exception) -> str:
    """The useful line of an error: pydantic's "N validation errors" header is skipped."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and "validation error" in lines[0]:
        return f"{lines[1]}: {lines[2]}" if len(lines) > 2 else lines[1]
    return lines[0] if lines else type(error).__name__


def _duration(text: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "d")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise CliError(f"--label-delay expects a duration like 7d, 12h, 30m or 45s; got {text!r}") from None
    if seconds < 0:
        raise CliError(f"--label-delay must not be negative; got {text!r}")
    return timedelta(seconds=seconds)


SeedOption = Annotated[int | None, typer.Option(help="Training seed [settings: training.seed].")]
RoundsOption = Annotated[int | None, typer.Option(min=1, help="Boosting rounds at most [settings: training.rounds].")]
RateOption = Annotated[
    float | None, typer.Option(min=1e-6, max=1.0, help="Learning rate [settings: training.learning_rate].")
]
SinceOption = Annotated[
    str | None, typer.Option(help="Only payments at or after this ISO date or time (UTC unless it names a zone).")
]
UntilOption = Annotated[
    str | None, typer.Option(help="Only payments before this ISO date or time (UTC unless it names a zone).")
]
TrainDaysOption = Annotated[int, typer.Option(min=1, help="Days of each training window.")]
DelayDaysOption = Annotated[int, typer.Option(min=0, help="Gap after training whose labels are not known yet.")]
TestDaysOption = Annotated[int, typer.Option(min=1, help="Days of each test week.")]


Window = tuple[datetime | None, datetime | None]
"""``--since`` / ``--until`` parsed: aware times, ``None`` for an open end."""


def _window(since: str | None, until: str | None) -> Window:
    """``--since`` / ``--until`` as :func:`fraudpipe.files.open_source` takes them; a malformed one is a one-line
    error."""
    from fraudpipe.files import SourceError, parse_time

    try:
        return (None if since is None else parse_time(since, "--since"),
                None if until is None else parse_time(until, "--until"))  # fmt: skip
    except SourceError as error:
        raise CliError(str(error)) from None


def _day(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise CliError(f"{option} expects a date YYYY-MM-DD; got {text!r}") from None


TunedOption = Annotated[
    Path | None, typer.Option(help="A fraudpipe tune report: train with its chosen parameters [training.tuned].")
]
FairnessOption = Annotated[
    str | None,
    typer.Option("--fairness-constraint", help="Train under it: false_positive_rate_parity, equalized_odds or none "
                 "[governance.fairness_constraint]."),
]  # fmt: skip
FairnessColumnOption = Annotated[
    str | None, typer.Option(help="The segment column the constraint evens out [governance.fairness_column].")
]
FairnessBoundOption = Annotated[
    float | None,
    typer.Option(min=0.01, max=1.0, help="Ratios held within [bound, 1/bound] [governance.disparity_bound]."),
]


def _constraint(settings: Settings, kind: str | None, column: str | None, bound: float | None,
                segments: Any) -> Any:  # fmt: skip
    """The fairness constraint to train under (:class:`models.constraint.Constraint`), or ``None``; it needs
    ``segments`` (:func:`_training_segments`) holding its column."""
    from models.constraint import Constraint

    try:
        constraint = Constraint.of(settings.governance, kind, column, bound)
    except ValueError as error:
        raise CliError(str(error)) from None
    if constraint is None:
        return None
    if segments is None or constraint.column not in segments.columns:
        raise CliError(f"the fairness constraint needs a segment table with a {constraint.column!r} column: train on "
                       "a simulator folder (its customers.parquet) or set FRAUD_GOVERNANCE__SEGMENTS_PATH, with the "
                       "column among FRAUD_GOVERNANCE__SEGMENT_COLUMNS")  # fmt: skip
    return constraint


def _training(settings: Settings, seed: int | None, rounds: int | None, learning_rate: float | None,
              tuned: Path | None = None) -> tuple[Any, dict[str, Any] | None]:  # fmt: skip
    """The training settings: the settings', then a tune report's chosen parameters (``tuned``, else
    ``training.tuned``), then the options given; and the study's summary for the manifest (``None`` untuned)."""
    training = settings.training
    path = tuned or training.tuned
    study = None
    if path is not None:
        import json

        from models.tune import summary, tuned_settings  # optuna (~0.6 s to import) only for a tuned run

        try:
            report = json.loads(Path(path).read_text())
            training, study = tuned_settings(training, report), summary(report)
        except OSError as error:
            raise CliError(f"--tuned: cannot read {path}: {error.strerror}") from None
        except (ValueError, KeyError, TypeError) as error:
            what = _first_line(error) if isinstance(error, ValueError) else "not a fraudpipe tune report"
            raise CliError(f"--tuned: {path}: {what}") from None
        study = {**study, "report": str(path)}
    changes = {"seed": seed, "rounds": rounds, "learning_rate": learning_rate}
    return training.model_copy(update={k: v for k, v in changes.items() if v is not None}), study


def _as_of(text: str) -> datetime:
    from datetime import UTC

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"--as-of: not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _served_logs(settings: Settings, days: int, as_of_text: str | None) -> tuple[Any, Any, datetime]:
    """The decision and label logs of the ``days`` event days up to ``as_of`` (default: the latest decision's event
    time), read by day partition so a long log is never read whole; and ``as_of``."""
    from fraudpipe.logstore import DayLog

    log = DayLog(settings.paths.data_dir / "decisions", "event_time")
    available = log.days()
    if not available:
        raise CliError(f"no decisions under {settings.paths.data_dir / 'decisions'} yet (is a worker running?)")
    end = available[-1] if as_of_text is None else _as_of(as_of_text).date()
    span = (end - timedelta(days=days), end + timedelta(days=1))
    decisions = log.read(span)
    if decisions.is_empty():
        raise CliError(f"no decisions between {span[0]} and {end}")
    labels = DayLog(settings.paths.data_dir / "labels", "event_time").read(span)
    as_of = _latest(decisions, "event_time") if as_of_text is None else _as_of(as_of_text)
    return decisions, labels, as_of


def _latest(frame: Any, column: str) -> datetime:
    value = frame.get_column(column).max()
    assert isinstance(value, datetime)
    return value


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _registry() -> Any:
    """The registry of the settings; every alias change made through it is announced on ``model-events.v1``
    (:mod:`streams.model_events`; a broker that does not take it is a warning)."""
    from models.registry import Registry
    from streams.model_events import announcer

    settings = _settings()
    return Registry(settings.paths.models_dir, on_change=announcer(settings, lambda text: err.print(
        f"warning: {text}", highlight=False, markup=False, soft_wrap=True)))  # fmt: skip


def _segment_file(path: Path) -> Any:
    """The segment table at ``path`` (.csv read as text, or .parquet).

    Raises:
        CliError: missing, of another kind, or unreadable.
    """
    import polars as pl

    if not path.is_file():
        raise CliError(f"segment table {path} not found")
    if path.suffix.lower() not in {".csv", ".parquet"}:
        raise CliError(f"segment table {path}: expected a .csv or .parquet file")
    try:
        return pl.read_csv(path, infer_schema=False) if path.suffix.lower() == ".csv" else pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as error:
        raise CliError(f"cannot read segment table {path}: {_first_line(error)}") from None


def _training_segments(settings: Settings, source: Path | None) -> Any:
    """The segments a new version's model card is measured by: ``governance.segments_path``, else a simulator
    folder's ``customers.parquet``; ``None`` (with a warning when one was expected) if there are none to use."""
    from models.fairness import segments_of

    g = settings.governance
    folder_table = source / "customers.parquet" if source is not None and source.is_dir() else None
    path = g.segments_path or (folder_table if folder_table is not None and folder_table.is_file() else None)
    if path is None:
        return None
    if g.segment_key != "card_token":  # training rows know their card only
        err.print(f"warning: model card without segment metrics: training rows have no {g.segment_key!r} column "
                  "(FRAUD_GOVERNANCE__SEGMENT_KEY); they are joined by card_token", highlight=False,
                  soft_wrap=True)  # fmt: skip
        return None
    try:
        table = _segment_file(path)
        columns = [name for name in g.segment_columns if name in table.columns]
        absent = [name for name in g.segment_columns if name not in table.columns]
        if absent:
            err.print(f"warning: segment table {path} has no column {', '.join(absent)}", highlight=False,
                      soft_wrap=True)  # fmt: skip
        return segments_of(table, g.segment_key, columns, source=str(path))
    except (CliError, ValueError) as error:
        err.print(f"warning: model card without segment metrics: {error}", highlight=False, soft_wrap=True)
        return None


def _fail(message: str) -> NoReturn:
    from rich.markup import escape

    err.print(f"[red]error[/]: {escape(message)}", highlight=False, soft_wrap=True)
    raise SystemExit(1)
