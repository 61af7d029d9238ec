"""``mllm-monitor replay FILE --url U``: send JSONL traffic to a running monitor's records API.

For demos, load tests and incident drills. Lines are sent in batches to ``POST /v1/records``
at ``--rate`` records per second or as fast as the monitor accepts, exactly once: each record
carries an id (its own, or one from its content as ``backfill --from-jsonl`` gives it), so a
batch sent again after a 429, a 503, a connection error or a timeout (at most
``--max-retries`` times, each said on stderr) is the same batch; invalid lines are reported
with their line numbers and skipped. :mod:`monitor.backfill.replay` does the sending.

The bearer token of the settings (``[server] token``) goes only to the configured server's own
host and port; any other ``--url`` gets a token only when ``--token`` gives one.

``--shift-time`` sets each record's timestamp to the moment its batch is sent (the content id
is taken before, so reruns keep their ids).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from monitor.backfill.replay import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, Replayer, same_server
from monitor.commands._common import (
    PROGRESS_LINE_EVERY,
    ConfigOption,
    JsonOption,
    load,
    notice,
    one_line,
    progress_bar,
    stage_reporter,
)
from monitor.files import input_file


def base_url(url: str) -> str:
    """``url`` if it can be the monitor's base URL (http(s), a host, a port that exists, no
    query or fragment: /v1/records is appended), else a usage error saying why."""
    import httpx

    def bad(why: str) -> typer.BadParameter:
        return typer.BadParameter(f"{one_line(repr(url[:200]))}: {why}", param_hint="--url")

    if not url.startswith(("http://", "https://")):
        raise bad("must start with http:// or https://")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise bad(f"not a URL ({exc})") from exc
    host = parsed.host
    if not host or any(not c.isprintable() or c.isspace() for c in host):
        raise bad("no valid host")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise bad(f"port {parsed.port} does not exist")
    if parsed.query or parsed.fragment:
        raise bad("a base URL has no query or fragment")
    return url


def register(app: typer.Typer) -> None:
    @app.command("replay")
    def replay(
        file: Annotated[
            Path, typer.Argument(help="JSONL traffic, one record a line.", dir_okay=False)
        ],
        url: Annotated[
            str | None,
            typer.Option(
                "--url",
                "-u",
                help="The monitor's base URL, like http://127.0.0.1:8080 (default: [server] "
                "host and port of the settings).",
            ),
        ] = None,
        rate: Annotated[
            float,
            typer.Option(
                min=0.0,
                max=1_000_000.0,
                help="Records per second (0: as fast as the monitor accepts).",
            ),
        ] = 0.0,
        stream: Annotated[
            str | None, typer.Option("--stream", "-s", help="Stream of lines that name none.")
        ] = None,
        shift_time: Annotated[
            bool,
            typer.Option("--shift-time", help="Set each record's timestamp to when it is sent."),
        ] = False,
        token: Annotated[
            str | None,
            typer.Option(
                "--token",
                help="Bearer token. Default: [server] token of the settings, sent only to the "
                "configured server's own host and port.",
            ),
        ] = None,
        max_retries: Annotated[
            int,
            typer.Option(
                "--max-retries",
                min=0,
                max=1000,
                help="Times one batch is sent again after a 429, a 503, a connection error or "
                "no answer, before the run stops.",
            ),
        ] = DEFAULT_MAX_RETRIES,
        timeout: Annotated[
            float,
            typer.Option(
                "--timeout",
                min=0.1,
                max=3600.0,
                help="Seconds one request may take, from sending to the end of the answer.",
            ),
        ] = DEFAULT_TIMEOUT,
        config: ConfigOption = None,
        batch_size: Annotated[
            int, typer.Option("--batch-size", min=1, max=1000, help="Records per request.")
        ] = 100,
        as_json: JsonOption = False,
    ) -> None:
        """Send JSONL traffic to a running monitor (POST /v1/records), exactly once.

        429 / 503 and Retry-After are honoured (the same batch is sent again, at most
        --max-retries times, said on stderr); invalid lines are reported with their line
        number and skipped (exit 1 at the end).
        """
        settings = load(config)
        host, port = settings.server.host, settings.server.port
        if url is None:
            url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        url = base_url(url)
        if token is None:  # the settings' token is the configured server's, no one else's
            token = settings.server.token if same_server(url, host, port) else ""
        input_file(file, "replay file")
        replayer = Replayer(
            url,
            token=token,
            rate=rate,
            batch=batch_size,
            stream=stream,
            shift_time=shift_time,
            timeout=timeout,
            max_retries=max_retries,
            max_line_bytes=settings.ingest.max_body_bytes,
            notify=notice,
        )
        with progress_bar(log_every=PROGRESS_LINE_EVERY) as bar:
            summary = replayer.run(file, stage_reporter(bar))
        if as_json:
            data = asdict(summary)
            data["records_per_second"] = summary.rate
            typer.echo(json.dumps(data, indent=2))
        else:
            typer.echo(
                f"{summary.lines:,} lines: {summary.accepted:,} accepted ({summary.sampled:,} "
                f"sampled, {summary.duplicates:,} already there), {summary.invalid:,} invalid, "
                f"{summary.retries:,} retries, "
                f"{summary.seconds:.1f} s ({summary.rate:.0f} records/s)"
            )
        if summary.invalid:
            raise typer.Exit(1)
