"""The Typer application and its subcommand groups, in one place so the command modules can register on them.

``app`` is the ``fraudpipe`` command; ``topics_app``, ``model_app``, ``config_app``, ``features_app``,
``audit_app``, ``privacy_app`` and ``logs_app`` are its groups, added here in the order ``fraudpipe --help`` lists
them. The command modules import these objects and this module imports no command module, so there is no import cycle.
Help texts are read as Markdown: docstrings are reflowed into paragraphs, and square brackets (``[settings: …]``,
``[default: …]``) stay text.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="fraudpipe",
    help="Real-time card-fraud detection pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",  # "rich" would read "[default: 7]" in a help text as a style tag and drop it
)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
features_app = typer.Typer(help="Online features (Redis).", no_args_is_help=True)
config_app = typer.Typer(help="Settings.", no_args_is_help=True)
model_app = typer.Typer(help="Model registry: versions and the champion / challenger aliases.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(model_app, name="model")
app.add_typer(config_app, name="config")
app.add_typer(features_app, name="features")
audit_app = typer.Typer(help="Audit trail: one transaction's chain, and the logs' seals.", no_args_is_help=True)
privacy_app = typer.Typer(help="A data subject's erasure and right of access, and retention.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(privacy_app, name="privacy")
logs_app = typer.Typer(help="The decision, label, delivery, shadow and conflict logs (Parquet).", no_args_is_help=True)
app.add_typer(logs_app, name="logs")
