"""The ``fraudpipe`` command line: one entry point, one subcommand group per concern.

The entry layer: it may import every package below it (``streams`` → ``models`` → ``features`` → ``fraudpipe``,
held by import-linter's contract in pyproject.toml, ``make lint``), and nothing imports it but ``python -m
fraudpipe``. Each command reads the settings once, calls into the library and prints a short result; the layers
below are imported inside the commands that need them, so ``fraudpipe --help`` starts fast. Expected failures
(bad settings, unreachable broker) print one line to stderr and exit non-zero; they never end in a traceback.

The commands live in modules by concern and register themselves on ``app`` (``_apps``) when imported; this module
imports them in the order ``fraudpipe --help`` lists the commands:

- ``data``: ``simulate``, ``replay``, ``features backfill|show``
- ``ops``: ``worker``, ``serve``, ``topics create|grant``, ``config show|table|env-example``
- ``model``: ``train``, ``evaluate``, ``model list|show|promote|rollback|history|card``
- ``monitoring``: ``monitor``, ``retrain``
- ``local``: ``demo``, ``bench``
- ``governance``: ``fairness``, ``audit show|verify``, ``privacy erase|retain``
- ``logs``: ``logs compact``

What they share (the consoles, ``CliError``, settings, parsing helpers) is in ``_common``.
"""

from __future__ import annotations

# isort: off
from cli._apps import app
from cli._common import CliError, _fail

# The command modules register their commands on import: this order is the order of ``fraudpipe --help``.
from cli import data, ops, model, monitoring, local, governance, logs  # noqa: F401
# isort: on

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except CliError as error:
        _fail(str(error))
