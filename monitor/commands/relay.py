"""``mllm-monitor relay``: the sidecar's proxy, forwarding sampled exchanges to central
replicas (no database, no encoders: see :mod:`monitor.relay`)."""

from __future__ import annotations

import typer

from monitor.commands._common import ConfigOption
from monitor.config import load_settings


def relay(config: ConfigOption = None) -> None:
    """Run the thin sidecar: proxy to the upstream, forward sampled exchanges centrally.

    Proxies \\[proxy] upstream like `serve` does, samples the chat exchanges, and forwards
    them in batches to the records API of \\[relay] central_url. Needs no database, reference
    store or encoders. Fails open: while the central API is away, exchanges wait in a bounded
    spool (on disk with \\[relay] spool_dir); what does not fit is dropped and counted.
    Serves /healthz, /readyz and /metrics on \\[server] host:port.
    """
    from monitor.logs import configure_logging
    from monitor.relay.app import serve_relay

    settings = load_settings(config)
    configure_logging()
    serve_relay(settings)


def register(app: typer.Typer) -> None:
    """Add ``relay`` to the root app."""
    app.command("relay")(relay)
