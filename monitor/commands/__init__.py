"""The commands of ``mllm-monitor`` but ``config check`` (in :mod:`monitor.cli`).

One module per command group: ``db``, ``reference``, ``estimator`` (with ``calibrate``),
``serve`` (with ``quickstart``), ``windows``, and the SRE commands ``backfill``, ``replay``,
``report``, ``windows explain`` and ``config example``; each exposes ``register(...)`` that adds
its commands to the typer apps of :mod:`monitor.cli`. The commands are thin: they call the same
services the daemon runs (``parse_record`` + ``IngestService`` + ``EmbeddingWorkers.run_once``
for ingest, ``WindowPipeline.compute`` for windows), never a second implementation. Heavy
imports (torch, FAISS, the database) stay inside the command functions, so ``--help`` is fast.

Modules here do not import :mod:`monitor.cli` (which imports this package): errors are raised
as :class:`~monitor.errors.MonitorError` and the root group of the CLI turns them into one line
and the documented exit code. What several modules share is in :mod:`monitor.commands._common`.
"""

from __future__ import annotations

import typer

# What the CLI's root (monitor.cli) shares with the commands: exit codes, --config, one-line
# error text.
from monitor.commands._common import (
    EXIT_ERROR,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    ConfigOption,
    one_line,
)

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "ConfigOption",
    "one_line",
    "register_commands",
]


def register_commands(app: typer.Typer, *, config_app: typer.Typer) -> None:
    """Add every command of this package to the CLI's apps (in the order ``--help`` lists
    them: commands in the order added, then groups in the order added)."""
    from monitor.commands import (
        backfill,
        config_example,
        db,
        estimator,
        explain,
        reference,
        relay,
        replay,
        report,
        serve,
        windows,
    )

    db.register(app)
    reference.register(app)
    estimator.register(app)
    serve.register(app)
    relay.register(app)
    windows_app = windows.register(app)
    backfill.register(app)
    replay.register(app)
    report.register(app)
    explain.register(windows_app)
    config_example.register(config_app)
