"""The relay's ASGI app and its server.

    create_relay_app(settings, *, registry=None, transport=None, central_transport=None)
    serve_relay(settings)     what ``mllm-monitor relay`` runs

Routes: the proxy's (``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET
/v1/models``, see :mod:`monitor.ingest.proxy`), ``GET /healthz``, ``GET /readyz`` and ``GET
/metrics``. Readiness does not depend on the central API: the relay fails open, so it is ready
once it serves; ``/readyz`` shows the spool depth and when a batch was last accepted, as the
``relay_spool_records`` and ``relay_last_forward_timestamp_seconds`` gauges do.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from monitor.config import Settings
from monitor.errors import ConfigError, MonitorError
from monitor.ingest.proxy import SidecarProxy
from monitor.metrics import RelayMetrics
from monitor.relay.forwarder import Forwarder
from monitor.relay.records import ExchangeRecords
from monitor.relay.sampler import RelaySampler
from monitor.relay.spool import Spool

log = logging.getLogger("monitor.relay")


def create_relay_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    central_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The relay app; ``app.state.proxy`` is its :class:`SidecarProxy` (``.sampler`` the
    :class:`RelaySampler`). ``transport`` / ``central_transport``: for tests."""
    relay = settings.relay
    if not relay.central_url:
        raise ConfigError("[relay] central_url is empty: there is nowhere to forward records to")
    metrics = RelayMetrics(registry or CollectorRegistry(), [s.name for s in settings.streams])
    records = ExchangeRecords(settings)
    try:
        spool = Spool(relay.spool_max_records, relay.spool_max_bytes, relay.spool_dir)
    except OSError as exc:
        raise MonitorError(f"[relay] spool_dir {relay.spool_dir}: {exc.strerror}") from exc
    sampler: RelaySampler | None = None

    def lose(reason: str, detail: str, count: int) -> None:
        assert sampler is not None
        sampler.lose(reason, detail, count)

    forwarder = Forwarder(relay, spool, metrics, lose, transport=central_transport)
    sampler = RelaySampler(records, spool, forwarder, metrics, settings.proxy.sample_queue_size)
    sampler.lose("unreadable", "torn line in the on-disk spool", spool.unreadable)
    sampler.lose("spool_full", "spooled records beyond the bounds", spool.overflow)
    proxy = SidecarProxy(settings, None, metrics, transport=transport, sampler=sampler)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        forwarder.start()
        async with proxy.router.lifespan_context(_app):  # drains sampling, stops forwarding
            yield

    async def healthz(_request: Request) -> Response:
        """Liveness: 200 while the process answers."""
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> Response:
        """Always 200; the checks show the spool's size and the last batch accepted centrally."""
        last = forwarder.last_forward_at
        checks = {
            "proxy": "ok",
            "spool": f"{spool.records} records, {spool.bytes} bytes",
            "central": f"last batch accepted at {last:.0f}" if last else "no batch accepted yet",
        }
        return JSONResponse({"ready": True, "checks": checks})

    async def metrics_endpoint(_request: Request) -> Response:
        """Prometheus metrics of the relay's own registry."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app = FastAPI(
        title="mllm-monitor relay",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.router.routes.extend(
        [
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            *proxy.router.routes,
        ]
    )
    app.state.proxy = proxy
    app.state.metrics = metrics
    return app


def serve_relay(settings: Settings) -> None:
    """Serve the relay on ``[server] host:port`` until SIGTERM / SIGINT (uvicorn's handlers:
    stop accepting, finish requests, then forward what is spooled for a few seconds)."""
    import uvicorn

    app = create_relay_app(settings)
    host, port = settings.server.host, settings.server.port
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise MonitorError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(2048)
    bound_host, bound_port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=10
    )
    log.info("relay listening", extra={"host": bound_host, "port": bound_port})
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


__all__ = ["create_relay_app", "serve_relay"]
