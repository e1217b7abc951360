"""Commands for the Parquet logs under ``paths.data_dir``: ``logs compact`` merges each day's files into one sealed
file, once or on a schedule (``--every``: the demo's and docker compose's compactor)."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from cli._apps import logs_app
from cli._common import CliError, _day, _first_line, _settings, err, out
from fraudpipe.settings import Settings


class LogChoice(StrEnum):
    decisions = "decisions"
    labels = "labels"
    deliveries = "deliveries"
    shadow = "shadow"
    conflicts = "conflicts"
    all = "all"


@logs_app.command("compact")
def logs_compact(
    log: Annotated[LogChoice, typer.Option("--log", help="Which log.")] = LogChoice.all,
    before: Annotated[
        str | None, typer.Option(help="Only event days before this one, YYYY-MM-DD (default: every day).")
    ] = None,
    every: Annotated[float | None, typer.Option(min=1.0, help="Repeat every N seconds (scheduled).")] = None,
) -> None:
    """Merge each event day's files of a log into one file, sealed again (rows and their order kept).

    Every file's seals are checked first: a day holding an altered file is left as it is, and the file reported
    (exit 3; with --every, the schedule goes on).

    A day with new files is rewritten whole: on a log still written to, choose --every to match, or --before."""
    import time

    settings = _settings()
    until = _day(before, "--before") if before is not None else None
    while True:
        try:
            broken = _compact_once(settings, log, until, quiet=every is not None)
        except CliError as error:
            if every is None:
                raise
            err.print(f"[yellow]skipped this pass[/]: {error}", highlight=False, soft_wrap=True)
            broken = 0
        if every is None:
            if broken:
                raise typer.Exit(3)
            return
        time.sleep(every)


def _compact_once(settings: Settings, choice: LogChoice, before: date | None, *, quiet: bool) -> int:
    """One pass over the chosen logs; prints what it did (``quiet``: only if it rewrote or found something) and
    returns the number of altered files found."""
    from fraudpipe.logstore import Logs

    logs = Logs.under(settings.paths.data_dir, settings.privacy.audit_key.get_secret_value().encode())
    chosen = logs.all() if choice is LogChoice.all else {choice.value: logs.all()[choice.value]}
    table = Table("log", "days", "files before", "files after", "rows rewritten", "altered", box=None)
    altered = rewritten = 0
    for name, day_log in chosen.items():
        days = [day for day in day_log.days() if before is None or day < before]
        before_files = after_files = rows = found = 0
        for day in days:
            try:
                done = day_log.compact(day)
            except OSError as error:
                raise CliError(f"compacting {name} {day}: {_first_line(error)}") from None
            before_files += done.files
            after_files += 1 if done.into is not None else done.files
            rows += done.rows
            found += len(done.broken)
            for path, problem in done.broken:
                err.print(f"[red]altered[/]: {path} — row {problem.row}: {problem.why}; day {day} left as it is",
                          highlight=False, soft_wrap=True)  # fmt: skip
        altered, rewritten = altered + found, rewritten + rows
        table.add_row(name, str(len(days)), f"{before_files:,}", f"{after_files:,}", f"{rows:,}", str(found))
    if not quiet or altered or rewritten:
        out.print(table)
    return altered
