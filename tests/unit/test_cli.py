"""The CLI as users meet it: one-line errors, never a traceback."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import typer
from typer.testing import CliRunner

from cli import app

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, env: dict[str, str] | None = None, cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")}
    return subprocess.run(
        [sys.executable, "-m", "fraudpipe", *args],
        env={**clean, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_unreachable_broker_is_one_clear_line(tmp_path: Path) -> None:
    result = _run(
        "topics",
        "create",
        "--timeout",
        "1",
        env={"FRAUD_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{_closed_port()}"},
        cwd=tmp_path,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: Kafka at 127.0.0.1:"), result.stderr
    assert "Traceback" not in result.stderr


def test_bad_setting_is_one_clear_line(tmp_path: Path) -> None:
    result = _run("config", "show", env={"FRAUD_SCORING__BATCH_SIZE": "many"}, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: invalid setting scoring.batch_size")
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_argument_is_a_usage_error_not_a_traceback(tmp_path: Path) -> None:
    result = _run("topics", "create", "--partitions", "zero", cwd=tmp_path)
    assert result.returncode == 2
    assert "Invalid value for '--partitions'" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    result = _run("config", "show", env={"FRAUD_PRIVACY__TOKENIZATION_KEY": "do-not-print-me-" * 3}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "do-not-print-me" not in result.stdout
    assert "**********" in result.stdout


def test_env_example_command_matches_the_file(tmp_path: Path) -> None:
    result = _run("config", "env-example", cwd=tmp_path)
    assert result.stdout == (ROOT / ".env.example").read_text()


def test_the_documented_configuration_tables_are_the_generated_ones(tmp_path: Path) -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    shown = page.split("<!-- settings-table -->\n", 1)[1].split("<!-- /settings-table -->", 1)[0]
    assert shown == _run("config", "table", cwd=tmp_path).stdout


def _commands() -> list[tuple[list[str], Any]]:
    """Every ``fraudpipe`` command and group, with its path."""
    found, todo = [], [([], typer.main.get_command(app))]
    while todo:
        path, command = todo.pop()
        found.append((path, command))
        if hasattr(command, "list_commands"):
            ctx = click.Context(command)
            todo += [([*path, name], command.get_command(ctx, name)) for name in command.list_commands(ctx)]
    return found


def test_every_help_shows_its_texts_whole() -> None:
    """Each option's help renders with its bracketed parts (``[settings: training.seed]``), which rich markup would
    take for style tags and drop; every option says what it is; and no help line is left with a lone full stop."""
    runner = CliRunner()
    commands = _commands()
    assert len(commands) > 30
    for path, command in commands:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0, (path, result.output)
        text = " ".join(result.output.replace("│", " ").split())
        assert " . " not in text and not text.endswith(" ."), (path, result.output)
        for param in command.params:
            if getattr(param, "param_type_name", "") == "option":
                assert getattr(param, "help", None), (path, param.name, "an option without help")
            for bracketed in re.findall(r"\[[^\]]*\]", getattr(param, "help", None) or ""):
                assert " ".join(bracketed.split()) in text, (path, param.name, bracketed)


def test_a_bad_since_is_one_line(tmp_path: Path) -> None:
    result = _run("train", str(tmp_path), "--since", "last tuesday", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: --since expects an ISO date or date-time (2018-08-01, 2018-08-01T12:00); got 'last tuesday'"
    ]
