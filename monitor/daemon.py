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
import importlib
import logging
import signal
import socket
import threading
from collections.abc import Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from monitor.compute import apply_compute_settings
from monitor.config import Settings
from monitor.errors import MonitorError
from monitor.metrics import MonitorMetrics

if TYPE_CHECKING:  # the store package pulls in faiss and torch: loaded by load()
    from monitor.reference.store import ReferenceStore

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
        self.repository: Any = None
        self.encoders: Any = None
        self.stores: dict[str, Any] = {}  # by stream name
        self.readiness: Any = None
        self.ingest: Any = None
        self.workers: Any = None
        self.scheduler: Any = None
        self.app: Any = None
        self._server: Any = None
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
        from monitor.store.repository import open_repository

        settings = self.settings
        applied = apply_compute_settings(settings.compute)
        log.info("compute threads", extra={"threads": applied.threads, "auto": applied.automatic})
        self.repository = open_repository(settings)
        ingest_app, ingest_service, readiness_mod = _import_ingest()
        self.readiness = readiness_mod.Readiness()
        # Probed at each /readyz (cached ~1 s): a database that goes away must turn it 503.
        check = readiness_mod.database_check(self.repository.engine)
        self.readiness.probe("database", readiness_mod.CachedProbe(check))

        self.encoders = encoders_from_settings(settings.encoders)
        self.readiness.set(
            "encoders",
            True,
            f"text {settings.encoders.text.kind}, image {settings.encoders.image.kind}",
        )
        self.stores = self._load_stores()

        self.ingest = ingest_service.IngestService(settings, self.repository, self.metrics)
        self.workers = self._build_workers()
        self.scheduler = self._build_scheduler()
        routers = self._routers()
        self.app = ingest_app.create_app(
            settings,
            self.repository,
            self.metrics,
            readiness=self.readiness,
            ingest=self.ingest,
            routers=routers,
        )

    def _load_stores(self) -> dict[str, ReferenceStore]:
        """The reference stores by stream (:func:`monitor.services.stream_stores`), each
        store's readiness and each stream's calibration checked as it comes."""
        from monitor.detection.calibrate import check_supports
        from monitor.detection.selfcheck import failure_line
        from monitor.pipeline import check_detector_settings
        from monitor.services import stream_stores

        by_stream: dict[str, ReferenceStore] = {}
        for stream, store, first in stream_stores(self.settings, self.encoders):
            name = stream.reference
            if first:
                self.readiness.set(f"reference_store:{name}", True, "checksums and encoders match")
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
                self.readiness.set(f"calibration:{stream.name}", True, f"store {name!r}")
            else:
                detail = (
                    f"reference store {name!r} has no calibration: windows get values but no "
                    f"p-values or alerts; run `mllm-monitor calibrate --reference {name}`"
                )
                self.readiness.set(f"calibration:{stream.name}", False, detail)
                log.warning("calibration missing", extra={"stream": stream.name, "store": name})
        return by_stream

    def _build_workers(self) -> Any:
        try:
            EmbeddingWorkers = _module("monitor.ingest.worker").EmbeddingWorkers
        except ImportError as exc:
            detail = f"embedding workers unavailable ({exc}); records stay in the inbox"
            self.readiness.set("workers", False, detail)
            log.error("embedding workers unavailable", extra={"error": str(exc)})
            return None
        reference_model = _reference_model(self.settings, self.repository, self.metrics)
        workers = EmbeddingWorkers(
            self.settings,
            self.repository,
            self.encoders,
            self.stores,
            self.metrics,
            reference_model=reference_model,
        )
        self.readiness.set("workers", True, "")
        return workers

    def _build_scheduler(self) -> Any:
        if not self.settings.scheduler.enabled:
            self.readiness.set("scheduler", True, "disabled on this replica")
            return None
        from monitor.scheduler import WindowScheduler

        return WindowScheduler(
            self.settings,
            self.repository,
            self.stores,
            self.metrics,
            readiness=self.readiness,
        )

    def _routers(self) -> list[Any]:
        routers: list[Any] = []
        if self.settings.proxy.upstream:
            try:
                build_proxy_router = _module("monitor.ingest.proxy").build_proxy_router
            except ImportError as exc:
                raise MonitorError(
                    f"[proxy] upstream is set but the sidecar is unavailable: {exc}"
                ) from exc
            routers.append(build_proxy_router(self.settings, self.ingest, self.metrics))
        from monitor.ingest.windows_api import build_windows_router

        routers.append(
            build_windows_router(self.repository, [s.name for s in self.settings.streams])
        )
        return routers

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


def _import_ingest() -> tuple[Any, Any, Any]:
    """The ingest app's modules, or one clear error when they are not there."""
    try:
        return (
            _module("monitor.ingest.app"),
            _module("monitor.ingest.service"),
            _module("monitor.ingest.readiness"),
        )
    except ImportError as exc:
        raise MonitorError(f"the ingest app is unavailable in this install: {exc}") from exc


def _module(name: str) -> Any:
    """Import a part that a deployment may lack; an ImportError names it."""
    return importlib.import_module(name)


def _reference_model(settings: Settings, repository: Any, metrics: MonitorMetrics) -> Any:
    """The reference-model sampler when ``[reference_model] model_url`` and ``model`` are set."""
    if not (settings.reference_model.model_url and settings.reference_model.model):
        return None
    try:
        ReferenceModel = _module("monitor.ingest.reference_model").ReferenceModel
    except ImportError as exc:
        raise MonitorError(
            f"[reference_model] model_url is set but the reference-model sampler is unavailable: {exc}"
        ) from exc
    return ReferenceModel(settings, repository, metrics)


def _install_stop_handlers(stop: Any) -> Mapping[int, Any]:
    """SIGTERM / SIGINT ask for a graceful stop. uvicorn installs its own handlers while it
    serves and re-raises the signal once it has stopped; it then lands here, harmlessly."""
    previous: dict[int, Any] = {}
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
