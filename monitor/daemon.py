"""The daemon: wiring and lifecycle of ``mllm-monitor serve``.

:class:`Daemon` loads everything first and refuses to start with one clear
:class:`~monitor.errors.MonitorError` on any problem: invalid settings, a database at another
schema revision (the message names ``mllm-monitor db upgrade``), a missing or altered
reference store, a store built with other encoders, encoder dims that cannot fuse. Then it
runs, in one process:

* the ASGI app (``monitor.ingest.app.create_app``: records, references, health, readiness,
  metrics, the sidecar router when ``[proxy] upstream`` is set, and ``GET /v1/windows``),
  served by uvicorn on ``[server] host:port``;
* the embedding workers (``monitor.ingest.worker.EmbeddingWorkers``);
* the window scheduler (``monitor.scheduler.WindowScheduler``), which computes windows only
  while this process holds the leader lock.

SIGTERM or SIGINT: uvicorn stops accepting connections and finishes in-flight requests, then
the workers drain their batch, the scheduler finishes its window and releases the lock, and the
database connections close. Readiness checks set here: ``database`` (probed while serving:
it answers, and for SQLite has disk space), ``encoders``, ``reference_store:<name>``,
``calibration:<stream>``, ``scheduler``, ``workers``.

Logging is set up by :mod:`monitor.logs` (JSON lines unless stderr is a terminal).
"""

from __future__ import annotations

import gc
import logging
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from monitor.compute import apply_compute_settings
from monitor.config import Settings
from monitor.errors import MonitorError
from monitor.metrics import MonitorMetrics

if TYPE_CHECKING:  # these pull in torch, faiss, SQLAlchemy and FastAPI: imported by load()
    import uvicorn
    from fastapi import APIRouter, FastAPI

    from monitor.embedding import EncoderSet
    from monitor.ingest.readiness import Readiness
    from monitor.ingest.reference_model import ReferenceModel
    from monitor.ingest.service import IngestService
    from monitor.ingest.worker import EmbeddingWorkers
    from monitor.reference.store import ReferenceStore
    from monitor.scheduler import WindowScheduler
    from monitor.store.repository import Repository

log = logging.getLogger("monitor.daemon")


class Daemon:
    """API, embedding workers and window scheduler in one process, built from ``settings``.

    ``load()`` builds everything and raises a MonitorError on any problem; ``run()`` serves
    until SIGTERM / SIGINT (or :meth:`request_stop`) and then shuts down in order.
    """

    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = MonitorMetrics(self.registry, [s.name for s in settings.streams])
        # Set by load(); None until then (and the repository again after close()).
        self.repository: Repository | None = None
        self.encoders: EncoderSet | None = None
        self.stores: dict[str, ReferenceStore] = {}  # by stream name
        self.readiness: Readiness | None = None
        self.ingest: IngestService | None = None
        self.workers: EmbeddingWorkers | None = None
        self.scheduler: WindowScheduler | None = None
        self.app: FastAPI | None = None
        self._server: uvicorn.Server | None = None
        self._stop = threading.Event()

    # -- loading ---------------------------------------------------------------------------

    def load(self) -> None:
        """Open the database, load encoders and reference stores, build the app; raise on any
        problem (nothing is left running)."""
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    def _load(self) -> None:
        from monitor.embedding import encoders_from_settings
        from monitor.ingest.readiness import CachedProbe, Readiness, database_check
        from monitor.store.repository import open_repository

        settings = self.settings
        applied = apply_compute_settings(settings.compute)
        log.info("compute threads", extra={"threads": applied.threads, "auto": applied.automatic})
        self.repository = repository = open_repository(settings)
        self.readiness = readiness = Readiness()
        # Probed at each /readyz (cached ~1 s): a database that goes away must turn it 503.
        readiness.probe("database", CachedProbe(database_check(repository.engine)))

        self.encoders = encoders = encoders_from_settings(settings.encoders)
        readiness.set(
            "encoders",
            True,
            f"text {settings.encoders.text.kind}, image {settings.encoders.image.kind}",
        )
        self.stores = self._load_stores(readiness, encoders)

        self.workers = self._build_workers(repository, encoders, readiness)
        self.scheduler = self._build_scheduler(repository, readiness)
        self.app, self.ingest = serving_app(settings, repository, self.metrics, readiness=readiness)

    def _load_stores(self, readiness: Readiness, encoders: EncoderSet) -> dict[str, ReferenceStore]:
        """The reference stores by stream (:func:`monitor.services.stream_stores`), each
        store's readiness and each stream's calibration checked as it comes."""
        from monitor.detection.calibrate import check_supports
        from monitor.detection.selfcheck import failure_line
        from monitor.pipeline import check_detector_settings
        from monitor.services import stream_stores

        by_stream: dict[str, ReferenceStore] = {}
        for stream, store, first in stream_stores(self.settings, encoders):
            name = stream.reference
            if first:
                readiness.set(f"reference_store:{name}", True, "checksums and encoders match")
                failed = failure_line(name, store.calibration)
                if failed:  # the stream still runs; its alerts are less trustworthy
                    log.warning(failed, extra={"store": name})
            by_stream[stream.name] = store
            calibration = store.calibration
            self.metrics.calibrated.labels(stream=stream.name).set(0 if calibration is None else 1)
            if calibration is not None:
                alerts = self.settings.alerts
                check_supports(calibration, alerts.false_alarm_rate, alerts.trials_hysteresis, name)
                check_detector_settings(self.settings, store, name)
                readiness.set(f"calibration:{stream.name}", True, f"store {name!r}")
            else:
                detail = (
                    f"reference store {name!r} has no calibration: windows get values but no "
                    f"p-values or alerts; run `mllm-monitor calibrate --reference {name}`"
                )
                readiness.set(f"calibration:{stream.name}", False, detail)
                log.warning("calibration missing", extra={"stream": stream.name, "store": name})
        return by_stream

    def _build_workers(
        self, repository: Repository, encoders: EncoderSet, readiness: Readiness
    ) -> EmbeddingWorkers:
        from monitor.ingest.worker import EmbeddingWorkers

        workers = EmbeddingWorkers(
            self.settings,
            repository,
            encoders,
            self.stores,
            self.metrics,
            reference_model=_reference_model(self.settings, repository, self.metrics),
        )
        readiness.set("workers", True, "")
        return workers

    def _build_scheduler(
        self, repository: Repository, readiness: Readiness
    ) -> WindowScheduler | None:
        if not self.settings.scheduler.enabled:
            readiness.set("scheduler", True, "disabled on this replica")
            return None
        from monitor.scheduler import WindowScheduler

        return WindowScheduler(
            self.settings, repository, self.stores, self.metrics, readiness=readiness
        )

    # -- running ---------------------------------------------------------------------------

    def bind(self) -> socket.socket:
        """Bind the listening socket (port 0 picks a free port); logs where it listens."""
        host, port = self.settings.server.host, self.settings.server.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError as exc:
            sock.close()
            raise MonitorError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        # Listen now: connections made while uvicorn starts wait in the backlog instead of
        # being refused, so "listening" in the log is true when it is written.
        sock.listen(2048)
        return sock

    def run(self) -> None:
        """Serve until SIGTERM / SIGINT, then shut down in order. Call :meth:`load` first."""
        import uvicorn

        if self.app is None:
            raise MonitorError("Daemon.run() before Daemon.load()")
        sock = self.bind()
        host, port = sock.getsockname()[:2]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=10,
        )
        self._server = uvicorn.Server(config)
        # Everything loaded so far (torch, the encoders, the stores: ~480k objects with MiniLM)
        # lives as long as the process: move it out of the collector's reach. A full collection
        # otherwise pauses the event loop, and every proxied request with it, for ~225 ms; after
        # the freeze it takes well under 1 ms (measured here).
        gc.collect()
        gc.freeze()
        previous = _install_stop_handlers(self.request_stop)
        try:
            if self.workers is not None:
                self.workers.start()
            if self.scheduler is not None:
                self.scheduler.start()
            log.info("listening", extra={"host": host, "port": port, "url": _url(host, port)})
            if not self._stop.is_set():
                self._server.run(sockets=[sock])
        finally:
            sock.close()
            self.shutdown()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def request_stop(self) -> None:
        """Ask the server to stop (what SIGTERM does)."""
        self._stop.set()
        if self._server is not None:
            self._server.should_exit = True

    def shutdown(self, timeout: float = 30.0) -> None:
        """Drain the workers, stop the scheduler (releasing the lock), close the database."""
        log.info("shutting down")
        if self.workers is not None:
            try:
                self.workers.stop(timeout)
            except Exception:
                log.exception("stopping the embedding workers failed")
        if self.scheduler is not None:
            try:
                self.scheduler.stop(timeout)
            except Exception:
                log.exception("stopping the scheduler failed")
        self.close()
        log.info("stopped")

    def close(self) -> None:
        if self.repository is not None:
            self.repository.close()
            self.repository = None


def _reference_model(
    settings: Settings, repository: Repository, metrics: MonitorMetrics
) -> ReferenceModel | None:
    """The reference-model sampler when ``[reference_model] model_url`` and ``model`` are set."""
    if not (settings.reference_model.model_url and settings.reference_model.model):
        return None
    from monitor.ingest.reference_model import ReferenceModel

    return ReferenceModel(settings, repository, metrics)


def _install_stop_handlers(stop: Callable[[], None]) -> Mapping[int, Any]:
    """SIGTERM / SIGINT ask for a graceful stop. uvicorn installs its own handlers while it
    serves and re-raises the signal once it has stopped; it then lands here, harmlessly."""
    previous: dict[int, Any] = {}  # signal.signal's own handler union
    if threading.current_thread() is not threading.main_thread():
        return previous

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, handler)
    return previous


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(settings: Settings) -> None:
    """What ``mllm-monitor serve`` runs: load (raising MonitorError on any problem), serve,
    shut down."""
    daemon = Daemon(settings)
    daemon.load()
    daemon.run()


def serving_app(
    settings: Settings,
    repository: Repository,
    metrics: MonitorMetrics,
    *,
    readiness: Readiness | None = None,
) -> tuple[FastAPI, IngestService]:
    """The app ``serve`` runs, and its ingest service: the ingest app with
    :func:`serving_routers` (also what the generated HTTP reference and the route tests build)."""
    from monitor.ingest.app import create_app
    from monitor.ingest.service import IngestService

    ingest = IngestService(settings, repository, metrics)
    routers = serving_routers(settings, repository, ingest, metrics)
    app = create_app(
        settings, repository, metrics, readiness=readiness, ingest=ingest, routers=routers
    )
    return app, ingest


def serving_routers(
    settings: Settings, repository: Repository, ingest: IngestService, metrics: MonitorMetrics
) -> list[APIRouter]:
    """The routers ``serve`` adds to the ingest app: the sidecar when ``[proxy] upstream`` is
    set, and the windows API (also what the generated HTTP reference and the route tests list)."""
    from monitor.ingest.windows_api import build_windows_router

    routers: list[APIRouter] = []
    if settings.proxy.upstream:
        from monitor.ingest.proxy import build_proxy_router

        routers.append(build_proxy_router(settings, ingest, metrics))
    routers.append(build_windows_router(repository, [s.name for s in settings.streams]))
    return routers
