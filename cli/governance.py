"""Commands for accountability: ``audit show|verify`` (one transaction's chain, the logs' seals), ``privacy
erase|export|retain`` (a data subject's erasure and right of access, retention) and the per-segment ``fairness``
report."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cli._apps import app, audit_app, privacy_app
from cli._common import CliError, _as_of, _day, _fmt, _segment_file, _served_logs, _settings, err, out
from fraudpipe import keys
from fraudpipe.settings import Settings


def _audit_key(settings: Settings) -> bytes:
    return settings.privacy.audit_key.get_secret_value().encode()


def _registered(settings: Settings) -> Callable[[str], str | None]:
    """The registry's model file SHA-256 of a version (``None``: a version it does not know), for model checks."""
    from models.registry import Registry, RegistryError

    registry = Registry(settings.paths.models_dir)

    def registered(version: str) -> str | None:
        try:
            return registry.manifest(version).model_sha256
        except RegistryError:
            return None

    return registered


@audit_app.command("show")
def audit_show(
    txn_id: Annotated[str, typer.Argument(help="Transaction id.")],
    day: Annotated[str | None, typer.Option(help="Its event day (YYYY-MM-DD), to search one day only.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the trail as JSON.")] = False,
) -> None:
    """A transaction's full chain: event (tokenized), features as served, model and hash, score, thresholds,
    decision, reason codes, alert and sinks, labels, payments refused for reusing its id — and whether the log files
    it came from are intact."""
    import json

    from fraudpipe.audit import trail
    from fraudpipe.logstore import Logs

    settings = _settings()
    days = None
    if day is not None:
        first = _day(day, "--day")
        days = (first, first + timedelta(days=1))
    found = trail(txn_id, Logs.under(settings.paths.data_dir), registered=_registered(settings),
                  key=_audit_key(settings), days=days)  # fmt: skip
    if found is None:
        raise CliError(f"no decision for transaction {txn_id} in {settings.paths.data_dir / 'decisions'}")
    if json_out:
        out.print_json(json.dumps(found, default=str))
        return
    decision = found["decision"]
    say = partial(out.print, highlight=False, soft_wrap=True)
    say(f"[bold]{txn_id}[/]")
    say("event: " + ", ".join(f"{k}={v}" for k, v in found["event"].items() if v is not None))
    say(
        f"decision: [bold]{decision['decision']}[/] at {decision['decided_at']} — score {_fmt(decision['score'])}, "
        f"thresholds review {decision['review_threshold']} / decline {decision['decline_threshold']}, model "
        f"{decision['model_version'] or '-'} ({decision['model_check']}), latency {decision['latency_ms']:.1f} ms"
        + (", DEGRADED" if decision["degraded"] else "")
        + (f", {decision['redeliveries']} redelivered copies" if decision["redeliveries"] else ""),
    )
    for code in decision["reason_codes"]:
        if code["kind"] == "rule":
            tested = "" if code.get("value") is None else f": {code['value']} (fires at {code.get('threshold')})"
            if code["rule"] == "card_blocked":
                tested = " (the card was blocked: a fraud on it had been confirmed; no alert was raised)"
            say(f"  reason: rule {code['rule']}{tested}")
            continue
        say(f"  reason: {code['feature']} = {code['value']} {code['direction']} the score by "
            f"{abs(code['contribution']):.3f}")  # fmt: skip
    served = ", ".join(f"{k}={_fmt(v)}" for k, v in decision["features"].items())
    say(f"features as served: {served}")
    if found["alert"] is not None:
        sinks = ", ".join(f"{s['sink']} {s['outcome']} {s['at']}" for s in found["alert"]["sinks"]) or "none yet"
        say(f"alert {found['alert']['alert_id']}: {sinks}")
    for label in found["labels"] or [{}]:
        say("label: " + (", ".join(f"{k}={v}" for k, v in label.items()) or "none received"))
    for refused in found["conflicts"]:
        say("[bold red]refused, reused id[/] (txn_id_conflict): "
            + ", ".join(f"{k}={v}" for k, v in refused.items() if v is not None))  # fmt: skip
    for name, state in found["seals"].items():
        say(f"seal {name}: {state}")


@audit_app.command("verify")
def audit_verify() -> None:
    """Check every sealed log file (decisions, labels, deliveries, shadow); exit 3 if any was altered."""
    from fraudpipe.logstore import Logs

    settings = _settings()
    logs = Logs.under(settings.paths.data_dir, _audit_key(settings))
    table = Table("log", "files", "rows", "broken", box=None)
    broken_files = 0
    for name, day_log in logs.all().items():
        rows, broken = day_log.verify()
        broken_files += len(broken)
        table.add_row(name, str(len(day_log.files())), f"{rows:,}", str(len(broken)))
        for path, problem in broken:
            err.print(f"[red]altered[/]: {path} — row {problem.row}: {problem.why}", highlight=False, soft_wrap=True)
    out.print(table)
    if broken_files:
        raise SystemExit(3)
    out.print("every log file is intact")


@privacy_app.command("erase")
def privacy_erase(
    card: Annotated[str | None, typer.Option("--card", help="Card token (tok_...).")] = None,
    pan: Annotated[str | None, typer.Option("--pan", help="Card number: tokenized here, never stored.")] = None,
    customer: Annotated[str | None, typer.Option("--customer", help="Customer id: every card of theirs.")] = None,
) -> None:
    """Erase a data subject everywhere fraudpipe keeps them, block later replays of their old events, and write a
    receipt without personal data."""
    import getpass

    import redis as redis_lib

    from features.store import redis_client
    from fraudpipe.clock import SystemClock
    from fraudpipe.logstore import Logs
    from fraudpipe.privacy import erase
    from streams.pipeline import DecisionMemory

    settings = _settings()
    logs = Logs.under(settings.paths.data_dir, _audit_key(settings))
    tokens, asked = _subject(settings, logs, card, pan, customer)
    client = redis_client(settings.redis)
    try:
        receipt = erase(
            tokens, requested_as=asked, client=client, prefix=settings.redis.key_prefix, key=_audit_key(settings),
            logs=logs, alert_stream=settings.sinks.redis_stream_key,
            alert_file=settings.sinks.jsonl_path if "jsonl" in settings.sinks.enabled else None,
            receipts=settings.paths.data_dir / "privacy" / "receipts", clock=SystemClock(),
            settle_s=settings.privacy.erasure_poll_s + settings.logs.flush_interval_s + 1.0, by=getpass.getuser(),
            forget_decisions=DecisionMemory.of(client, settings).forget,
        )  # fmt: skip
    except redis_lib.RedisError as error:
        raise CliError(f"Redis: {error} (is Redis running at {settings.redis.address}?); no file was changed") from None
    rows = ", ".join(f"{n} {c}" for n, c in receipt.log_rows.items())
    out.print(
        f"erased {len(receipt.subjects)} card(s), {receipt.transactions} transaction(s): {receipt.redis_keys} Redis "
        f"keys, {receipt.alert_stream_entries} alert-stream entries, log rows ({rows}), "
        f"{receipt.alert_file_lines} alert-file lines; receipt {receipt.erasure_id}",
        highlight=False,
    )


def _subject(settings: Settings, logs: Any, card: str | None, pan: str | None,
             customer: str | None) -> tuple[list[str], str]:  # fmt: skip
    """The card tokens a privacy request is about, and what it was asked by (``card``, ``pan``, ``customer``)."""
    from fraudpipe.pan import InvalidPanError, is_pan, tokenize_pan
    from fraudpipe.privacy import customer_cards

    if sum(x is not None for x in (card, pan, customer)) != 1:
        raise CliError("give exactly one of --card, --pan, --customer")
    if card is not None:
        if is_pan(card):
            raise CliError("--card takes a card token; give a card number with --pan")
        return [card], "card"
    if pan is not None:
        try:
            key = settings.privacy.tokenization_key.get_secret_value().encode()
            return [tokenize_pan(pan, key).token], "pan"
        except InvalidPanError as error:
            raise CliError(str(error)) from None
    assert customer is not None
    path = settings.governance.segments_path
    tokens = customer_cards(customer, logs, _segment_file(path) if path is not None else None)
    if not tokens:
        raise CliError("no card of this customer in the decision log or the segments table")
    return tokens, "customer"


@privacy_app.command("export")
def privacy_export(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the export to (not inside data_dir).")],
    card: Annotated[str | None, typer.Option("--card", help="Card token (tok_...).")] = None,
    pan: Annotated[str | None, typer.Option("--pan", help="Card number: tokenized here, never stored.")] = None,
    customer: Annotated[str | None, typer.Option("--customer", help="Customer id: every card of theirs.")] = None,
) -> None:
    """Export everything fraudpipe holds about a data subject (right of access): decisions with the features as
    served, reason codes, alerts and deliveries, labels, refused payments, the cards' online state and blocks —
    tokenized as stored — as JSON and HTML, with a receipt without personal data."""
    import getpass

    import redis as redis_lib

    from features.store import RedisFeatureStore, StoreUnavailableError, redis_client
    from fraudpipe.clock import SystemClock
    from fraudpipe.logstore import Logs
    from fraudpipe.privacy import access

    settings = _settings()
    data_dir = settings.paths.data_dir.resolve()
    if out_dir.resolve() == data_dir or data_dir in out_dir.resolve().parents:
        raise CliError(f"--out {out_dir} is inside data_dir: an export is handed over, never kept by fraudpipe")
    logs = Logs.under(settings.paths.data_dir, _audit_key(settings))
    tokens, asked = _subject(settings, logs, card, pan, customer)
    client = redis_client(settings.redis)
    store = RedisFeatureStore(client, settings.redis.key_prefix)

    def online(token: str) -> dict[str, Any]:
        return {"online_state": store.card_state(token), "blocked_by": list(store.blocked(token))}

    try:
        erased = client.hgetall(keys.erased(settings.redis.key_prefix))
        receipt = access(tokens, requested_as=asked, logs=logs, online=online, erased=erased,
                         registered=_registered(settings),
                         key=_audit_key(settings), out=out_dir,
                         receipts=settings.paths.data_dir / "privacy" / "access-receipts", clock=SystemClock(),
                         by=getpass.getuser())  # fmt: skip
    except (StoreUnavailableError, redis_lib.RedisError) as error:
        raise CliError(f"Redis: {error} (is Redis running at {settings.redis.address}?); nothing exported") from None
    except OSError as error:
        raise CliError(f"cannot write the export to {out_dir}: {error}") from None
    sections = ", ".join(f"{name} {count}" for name, count in receipt.sections.items())
    out.print(f"exported {sections} to {out_dir} (subject-access.json, subject-access.html); receipt "
              f"{receipt.export_id}", highlight=False, soft_wrap=True)  # fmt: skip


@privacy_app.command("retain")
def privacy_retain(
    as_of: Annotated[str | None, typer.Option(help="Apply retention as of this UTC time [now].")] = None,
) -> None:
    """Enforce the retention settings (``FRAUD_PRIVACY__RETAIN_*``): drop log days, trim alert copies."""
    import redis as redis_lib

    from features.store import redis_client
    from fraudpipe.logstore import Logs
    from fraudpipe.privacy import retain

    settings = _settings()
    p = settings.privacy
    keep = {"decisions": p.retain_decisions_days, "labels": p.retain_labels_days,
            "deliveries": p.retain_deliveries_days, "shadow": p.retain_shadow_days,
            "conflicts": p.retain_decisions_days}  # fmt: skip
    client = redis_client(settings.redis) if "redis_stream" in settings.sinks.enabled else None
    from datetime import UTC

    moment = _as_of(as_of) if as_of else datetime.now(UTC)
    try:
        removed = retain(Logs.under(settings.paths.data_dir, _audit_key(settings)), keep, as_of=moment,
                         client=client, alert_stream=settings.sinks.redis_stream_key,
                         alert_file=settings.sinks.jsonl_path if "jsonl" in settings.sinks.enabled else None,
                         alert_days=p.retain_alerts_days)  # fmt: skip
    except redis_lib.RedisError as error:
        raise CliError(f"Redis: {error} (is Redis running at {settings.redis.address}?)") from None
    out.print("removed: " + ", ".join(f"{name} {count}" for name, count in removed.items()), highlight=False)


def _pairs_of(values: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not name or not setting:
            raise CliError(f"{option} expects COLUMN=VALUE; got {value!r}")
        pairs[name] = setting
    return pairs


@app.command()
def fairness(
    segments: Annotated[
        Path | None, typer.Option(help="Segment table, .csv or .parquet (settings: governance.segments_path).")
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="Column joining decisions to segments (settings: governance.segment_key).")
    ] = None,
    by: Annotated[
        list[str], typer.Option("--by", help="Segment column (repeatable; settings: governance.segment_columns).")
    ] = [],  # noqa: B006
    reference: Annotated[
        list[str], typer.Option(help="COLUMN=VALUE: a column's reference segment (repeatable; default: the largest).")
    ] = [],  # noqa: B006
    as_of: Annotated[
        str | None, typer.Option(help="Judge as of this time (ISO 8601); default: the stream's latest decision time.")
    ] = None,
    days: Annotated[int, typer.Option(min=1, help="Judge the last N matured event days.")] = 30,
    bound: Annotated[
        float | None, typer.Option(help="Flag ratios outside bound..1/bound (settings: governance.disparity_bound).")
    ] = None,
    min_decisions: Annotated[
        int | None, typer.Option(min=1, help="Smaller segments are never flagged (governance.min_segment_decisions).")
    ] = None,
    html: Annotated[Path | None, typer.Option(help="Write the HTML report (plots and tables) here.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.")] = None,
    fail_on_flag: Annotated[bool, typer.Option(help="Exit 3 when a ratio is flagged (for schedulers).")] = False,
) -> None:
    """Alert rate, false-positive rate, precision and recall of matured decisions per customer segment, their
    ratios to a reference segment, and a warning for each ratio outside the bound (the four-fifths rule)."""
    import json

    from models.fairness import fairness as judge
    from models.fairness import judged_decisions, segments_of
    from models.fairness_report import render_fairness
    from models.report import write_html

    settings = _settings()
    g = settings.governance
    path = segments or g.segments_path
    if path is None:
        raise CliError("no segment table: pass --segments PATH (.csv or .parquet) or set "
                       "FRAUD_GOVERNANCE__SEGMENTS_PATH")  # fmt: skip
    chosen = bound if bound is not None else g.disparity_bound
    if not 0.0 < chosen <= 1.0:
        raise CliError(f"--bound must be in (0, 1]; got {chosen}")
    try:
        table = segments_of(_segment_file(path), key or g.segment_key, by or g.segment_columns, source=str(path))
    except ValueError as error:
        raise CliError(f"{path}: {error}") from None
    references = _pairs_of(reference, "--reference")
    unknown = sorted(set(references) - set(table.columns))
    if unknown:
        raise CliError(f"--reference names {', '.join(unknown)}, not a reported column ({', '.join(table.columns)})")
    maturity = timedelta(days=settings.monitor.maturity_days)
    decisions, labels, moment = _served_logs(settings, days + settings.monitor.maturity_days + 1, as_of)
    judged = judged_decisions(decisions, labels, as_of=moment, maturity=maturity, days=days)
    if judged.is_empty():
        raise CliError(f"no decisions on matured days as of {moment.isoformat()} (a day matures "
                       f"{settings.monitor.maturity_days} days after it ends: FRAUD_MONITOR__MATURITY_DAYS; or a "
                       "later --as-of)")  # fmt: skip
    try:
        report = judge(judged, table, bound=chosen, min_decisions=min_decisions or g.min_segment_decisions,
                       reference=references)  # fmt: skip
    except ValueError as error:
        raise CliError(str(error)) from None
    span = (str(judged.get_column("day").min()), str(judged.get_column("day").max()))
    context = {"as of": moment.isoformat(), "matured days": f"{span[0]} .. {span[1]}",
               "maturity (days)": settings.monitor.maturity_days, "segments": str(path), "key": table.key}  # fmt: skip
    _print_fairness(report, context)
    if json_out is not None:
        payload = {"as_of": moment.isoformat(), "window": {"from": span[0], "to": span[1], "days": days},
                   "maturity_days": settings.monitor.maturity_days, "segments": str(path), "key": table.key,
                   **report.to_dict()}  # fmt: skip
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(payload, indent=2) + "\n")
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        write_html(render_fairness(report, title="fraudpipe fairness report", context=context), html)
    if report.flags and fail_on_flag:
        raise typer.Exit(3)


def _print_fairness(report: Any, context: dict[str, Any]) -> None:
    """The headline, a table per segment column (each rate with its ratio to the reference), a warning per flag."""
    o = report.overall
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 132)
    console.print(
        f"{o.decisions:,} decisions on matured days {context['matured days']} (as of {context['as of']}): alert rate "
        f"{_fmt(o.alert_rate)}, false-positive rate {_fmt(o.fpr)}, precision {_fmt(o.precision)}, recall "
        f"{_fmt(o.recall)}; {report.unmatched:,} without a segment row; bound [{report.bound:.2f}, "
        f"{1 / report.bound:.2f}] for segments of {report.min_decisions:,}+ decisions",
        highlight=False,
    )
    for column in report.columns:
        title = f"by {column.column} (reference {column.reference})"
        table = Table("segment", "decisions", "frauds", "alert rate", "ratio", "FPR", "ratio", "recall", "ratio",
                      "precision", "", box=None, title=title)  # fmt: skip
        for s in column.segments:
            ratio = {name: "-" if value is None else f"{value:.2f}" for name, value in (s.ratios or {}).items()}
            mark = "reference" if s.reference else ("[red]flagged[/]" if s.flags else ("" if s.flaggable else "small"))
            table.add_row(s.value, f"{s.decisions:,}", f"{s.frauds:,}", _fmt(s.alert_rate), ratio["alert_rate"],
                          _fmt(s.fpr), ratio["fpr"], _fmt(s.recall), ratio["recall"], _fmt(s.precision),
                          mark)  # fmt: skip
        console.print(table)
    for flag in report.flags:
        err.print(f"[yellow]warning[/]: {flag.message(report.bound)}", highlight=False, soft_wrap=True)
