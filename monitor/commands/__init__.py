"""The SRE commands of ``mllm-monitor``: backfill, replay, report, windows explain, config example.

One module per command group; each exposes ``register(...)`` that adds its commands to the
typer apps of :mod:`monitor.cli`. The commands are thin: they call the same services the daemon
runs (``parse_record`` + ``IngestService`` + ``EmbeddingWorkers.run_once`` for ingest,
``WindowPipeline.compute`` for windows), never a second implementation.

Modules here do not import :mod:`monitor.cli` (which imports this package at its end): errors
are raised as :class:`~monitor.errors.MonitorError` and the root group of the CLI turns them
into one line and the documented exit code.
"""

from __future__ import annotations

import typer


def register_commands(
    app: typer.Typer, *, config_app: typer.Typer, windows_app: typer.Typer
) -> None:
    """Add every command of this package to the CLI's apps."""
    from monitor.commands import backfill, config_example, explain, replay, report

    backfill.register(app)
    replay.register(app)
    report.register(app)
    explain.register(windows_app)
    config_example.register(config_app)
