"""The reference-model sampler: reference answers for live records from a configured model.

    ReferenceModel(settings, repository, metrics, *, client=None)
        .start() / .stop(timeout)     background threads ([reference_model] concurrency)
        .offer(record) -> bool        never blocks; True when the record was queued

When ``[reference_model] model_url`` and ``model`` are set, the embedding workers offer every record
they stored without a reference. A fraction of them (``fraction``, chosen deterministically by
record id, so a replay asks for the same records) is sent, within a budget of
``max_per_minute`` requests in any 60 seconds, to that OpenAI-compatible endpoint (chat
completions, the record's prompt and image, temperature 0). The answer is kept as a late
reference for the record (``Repository.add_late_reference``), which the workers embed and join
like one posted to ``POST /v1/references``.

Nothing here can slow or fail ingestion: requests run on their own threads from a bounded
queue, and every outcome is counted in ``mllm_monitor_reference_requests_total{outcome}``:
``succeeded``, ``failed`` (an error status, a bad answer, a refused connection), ``timeout``
(``[reference_model] timeout``), ``budget_skipped`` (over ``max_per_minute``, or the queue full).

``model_url`` is a base URL as OpenAI clients take it (``http://host:8000/v1``); a URL that
already ends in ``/chat/completions`` is used as it is, and one without ``/v1`` gets it.
"""

from __future__ import annotations

import base64
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from monitor.config import Settings
from monitor.errors import ConfigError
from monitor.ingest.sampling import sampling_fraction
from monitor.metrics import MonitorMetrics
from monitor.records import TrafficRecord
from monitor.store.repository import Repository

log = logging.getLogger("monitor.ingest.reference_model")

_STOP = None  # queue sentinel


def chat_completions_url(model_url: str) -> str:
    base = model_url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if base.endswith("/v1"):
        return f"{base}/chat/completions"
    return f"{base}/v1/chat/completions"


def is_selected(record_id: str, fraction: float) -> bool:
    """Whether the record is in the fraction sent to the reference model (deterministic, and
    independent of the sampling decision, which uses the bare id)."""
    if fraction >= 1.0:
        return True
    return sampling_fraction(f"reference-model:{record_id}") < fraction


class MinuteBudget:
    """At most ``per_minute`` grants in any 60 seconds (a sliding window); thread-safe."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._granted: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = self._clock()
            while self._granted and now - self._granted[0] >= 60.0:
                self._granted.popleft()
            if len(self._granted) >= self.per_minute:
                return False
            self._granted.append(now)
            return True


class ReferenceModel:
    """Asks the configured reference model for reference answers, off the ingestion path."""

    def __init__(
        self,
        settings: Settings,
        repository: Repository,
        metrics: MonitorMetrics,
        *,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        cfg = settings.reference_model
        if not (cfg.model_url and cfg.model):
            raise ConfigError("[reference_model] model_url and model must both be set")
        url = httpx.URL(cfg.model_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(
                f"[reference_model] model_url must be an http(s) URL: {cfg.model_url!r}"
            )
        self.settings = settings
        self.repository = repository
        self.metrics = metrics
        self.url = chat_completions_url(cfg.model_url)
        self.model = cfg.model
        self.fraction = cfg.fraction
        self.budget = MinuteBudget(cfg.max_per_minute, clock=clock)
        self._own_client = client is None
        headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        self.client = client or httpx.Client(
            timeout=cfg.timeout.total_seconds(), headers=headers, trust_env=False
        )
        self._queue: queue.Queue[TrafficRecord | None] = queue.Queue(maxsize=cfg.queue_size)
        self._threads: list[threading.Thread] = []
        self._concurrency = cfg.concurrency
        self._max_tokens = cfg.max_tokens

    def start(self) -> None:
        if self._threads:
            return
        for n in range(self._concurrency):
            thread = threading.Thread(target=self._loop, name=f"reference-model-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float) -> None:
        """Stop after the requests in flight (queued records are dropped: they are optional)."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        for _ in self._threads:
            self._queue.put(_STOP)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []
        if self._own_client:
            self.client.close()

    def offer(self, record: TrafficRecord) -> bool:
        """Queue ``record`` for a reference answer if it is in the fraction and the budget
        allows; never blocks, never raises for the caller's sake."""
        if record.reference is not None or not is_selected(record.id, self.fraction):
            return False
        if not self.budget.take():
            self._count("budget_skipped")
            return False
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._count("budget_skipped")
            return False
        return True

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every queued record was answered or given up (tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    def _loop(self) -> None:
        while True:
            record = self._queue.get()
            try:
                if record is _STOP:
                    return
                self._count(self.ask(record))
            except Exception:  # a bug here must not kill the thread
                log.exception("reference model: asking failed")
                self._count("failed")
            finally:
                self._queue.task_done()

    def ask(self, record: TrafficRecord) -> str:
        """Request a reference for ``record`` and keep it; returns the outcome."""
        try:
            response = self.client.post(self.url, json=self.request_body(record))
        except httpx.TimeoutException:
            log.info("reference model timed out", extra={"record_id": record.id})
            return "timeout"
        except httpx.HTTPError as exc:
            log.warning("reference model unreachable: %s", exc)
            return "failed"
        if response.status_code != 200:
            log.warning(
                "reference model answered %s", response.status_code, extra={"record_id": record.id}
            )
            return "failed"
        answer = _answer_text(response)
        if not answer:
            return "failed"
        self.repository.add_late_reference(record.id, answer)
        return "succeeded"

    def request_body(self, record: TrafficRecord) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if record.prompt:
            content.append({"type": "text", "text": record.prompt})
        if record.image is not None:
            data = base64.b64encode(record.image).decode("ascii")
            url = f"data:{_image_mime(record.image)};base64,{data}"
            content.append({"type": "image_url", "image_url": {"url": url}})
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": 0,
            "max_tokens": self._max_tokens,
            "stream": False,
        }

    def _count(self, outcome: str) -> None:
        self.metrics.reference_requests.labels(outcome=outcome).inc()


def _answer_text(response: httpx.Response) -> str | None:
    try:
        data = response.json()
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) and content.strip() else None


_SIGNATURES = (
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
)


def _image_mime(data: bytes) -> str:
    for signature, mime in _SIGNATURES:
        if data.startswith(signature):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


__all__ = ["MinuteBudget", "ReferenceModel", "chat_completions_url", "is_selected"]
