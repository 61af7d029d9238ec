"""The sidecar's sampler: complete exchanges to inbox records, off the request path.

    ProxySampler(settings, ingest, metrics)
        .offer(exchange)          queue one complete exchange; never raises, never waits
        .lose(reason, detail)     count an exchange that passed through unsampled
        .drain(timeout)           wait until every queued exchange has been submitted
        .aclose()                 submit what is queued (a few seconds at most), stop the task
        .exchange_to_record(exchange)   the record of one exchange

The relay (:mod:`monitor.ingest.proxy`) offers each complete exchange (request body, answer
bytes) once the response has been relayed. It goes on a bounded in-memory queue (``[proxy]
sample_queue_size``, :class:`~monitor.ingest.exchange_queue.ExchangeQueue`) that a background
task, started on the first offer in the running event loop, drains into
``IngestService.submit`` in a thread, in batches (up to 64 exchanges, gathered for up to 50 ms:
one hand-off to the thread per batch, not per exchange).

Sampling fails open: a full queue, a full inbox, a database outage or a monitor bug never
reaches the client. Each loss is counted in ``proxy_fail_open{reason}`` and as a ``dropped``
record (``invalid`` exchanges, which cannot become a record, count as ``rejected``). An
exchange whose request or (inflated) answer is over ``[proxy] max_sample_bytes`` is not
sampled, counted ``too_large``: a compressed answer is inflated with that cap, never whole.

Sample ids: the upstream's completion id while it is new, so that a late reference can be
posted under the id the client saw; a completion id the sidecar has seen recently (it keeps the
last 16,384) gets an id of the sidecar's own, ``<completion id>~<8 hex digits>``; so does one
that the inbox reports as a duplicate (stored before this process began remembering ids: it is
counted ``duplicate`` once, then sampled under the new id). An upstream that reuses ids never
merges exchanges.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from monitor.config import Settings
from monitor.errors import (
    ConfigError,
    InboxFullError,
    InvalidInputError,
    PayloadTooLargeError,
    StorageError,
)
from monitor.ingest.exchange_queue import ExchangeQueue
from monitor.ingest.parsing import parse_record
from monitor.ingest.proxy_body import (
    Exchange,
    assemble_json,
    assemble_sse,
    decoded,
    json_object,
)
from monitor.ingest.recent_ids import RecentIds
from monitor.ingest.service import IngestService
from monitor.metrics import MonitorMetrics
from monitor.records import TrafficRecord

log = logging.getLogger("monitor.ingest.proxy")

# Completion ids remembered to tell a reused one (an upstream answering chatcmpl-CONSTANT).
_RECENT_IDS = 16_384


class ProxySampler:
    """The sampling queue of the sidecar, the task that drains it, and the count of what it
    could not sample."""

    def __init__(self, settings: Settings, ingest: IngestService, metrics: MonitorMetrics) -> None:
        proxy = settings.proxy
        streams = [s.name for s in settings.streams]
        if proxy.stream not in streams:
            raise ConfigError(
                f"[proxy] stream {proxy.stream!r} is not a configured stream ({', '.join(streams)})"
            )
        self.settings = settings
        self.ingest = ingest
        self.metrics = metrics
        self.stream = proxy.stream
        self._max_sample_bytes = proxy.max_sample_bytes
        self._recent_ids = RecentIds(_RECENT_IDS)
        self._queue = ExchangeQueue(proxy.sample_queue_size, self._sample, self.lose, log)

    # -- lifecycle -------------------------------------------------------------------------

    def offer(self, exchange: Exchange) -> None:
        """Queue a complete exchange for sampling; never raises, never waits."""
        self._queue.offer(exchange)

    def lose(self, reason: str, detail: str, count: int = 1) -> None:
        """Count ``count`` exchanges that passed through unsampled, for ``reason``."""
        self.metrics.proxy_fail_open.labels(reason=reason).inc(count)
        outcome = "rejected" if reason == "invalid" else "dropped"
        self.metrics.count_records(self.stream, outcome, count)
        log.debug("sidecar: exchange not sampled (%s): %s", reason, detail)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until every queued exchange has been submitted (tests, shutdown)."""
        await self._queue.drain(timeout)

    async def aclose(self) -> None:
        """Submit what is queued (a few seconds at most), then stop the consumer task."""
        await self._queue.aclose()

    # -- one batch -------------------------------------------------------------------------

    async def _sample(self, exchanges: Sequence[Exchange]) -> None:
        """Turn exchanges into records and submit them (one thread hand-off), then fetch the
        allowed image URLs of the others and submit those; every loss is counted, nothing is
        raised."""
        with_urls = await asyncio.to_thread(self._parse_and_submit, exchanges)
        records: list[TrafficRecord] = []
        for record in with_urls:
            try:
                records.append((await self.ingest.resolve_images([record]))[0])
            except InvalidInputError as exc:  # refused or failed fetch
                self.lose("invalid", str(exc))
            except Exception:
                log.exception("sidecar: fetching an image URL failed")
                self.lose("internal_error", "image fetch failed")
        if records:
            await asyncio.to_thread(self._submit, records)

    def _parse_and_submit(self, exchanges: Sequence[Exchange]) -> list[TrafficRecord]:
        """Submit the records that need nothing fetched; return those with image URLs."""
        parsed = self._parse_all(exchanges)
        ready = [record for record in parsed if record.image_url is None]
        if ready:
            self._submit(ready)
        return [record for record in parsed if record.image_url is not None]

    def _parse_all(self, exchanges: Sequence[Exchange]) -> list[TrafficRecord]:
        records: list[TrafficRecord] = []
        for exchange in exchanges:
            # Parsing holds the GIL, and the event loop waiting for it would otherwise wait
            # until the whole batch is parsed (or the 5 ms switch interval passes): let it in
            # between exchanges, so sampling delays no relayed request by more than one parse.
            time.sleep(0)
            try:
                records.append(self.exchange_to_record(exchange))
            except PayloadTooLargeError as exc:
                self.lose("too_large", str(exc))
            except InvalidInputError as exc:
                self.lose("invalid", str(exc))
            except Exception:
                log.exception("sidecar: reading an exchange failed")
                self.lose("internal_error", "reading the exchange failed")
        return records

    def _submit(self, records: list[TrafficRecord], *, again: bool = True) -> None:
        try:
            result = self.ingest.submit(records)
        except InboxFullError:
            self.lose("inbox_full", "the inbox is full", len(records))
        except StorageError as exc:
            log.warning("sidecar: sampling lost to a storage error: %s", exc)
            self.lose("storage_error", str(exc), len(records))
        except InvalidInputError as exc:
            self.lose("invalid", str(exc), len(records))
        except Exception:
            log.exception("sidecar: submitting sampled exchanges failed")
            self.lose("internal_error", "submit failed", len(records))
        else:
            if result.duplicate_ids and again:
                self._submit(self._own_ids(records, set(result.duplicate_ids)), again=False)

    def _own_ids(self, records: list[TrafficRecord], taken: set[str]) -> list[TrafficRecord]:
        """The records whose completion id was stored already (an upstream that reused it
        before this process began remembering ids), under ids of the sidecar's own."""
        return [
            replace(record, id=self._recent_ids.own(record.id))
            for record in records
            if record.id in taken
        ]

    def exchange_to_record(self, exchange: Exchange) -> TrafficRecord:
        """The record of an exchange: the request's messages, the assembled answer.

        Its id is the upstream's completion id while that is new (a late reference can be
        posted under the id the client saw); an id seen among the last few thousand exchanges
        gets a suffix of the sidecar's own, ``<completion id>~<8 hex>``, so an upstream that
        reuses ids never merges two exchanges into one sample."""
        request = json_object(exchange.request_body, "request")
        body = decoded(exchange.response_body, exchange.content_encoding, self._max_sample_bytes)
        if exchange.content_type.startswith("text/event-stream"):
            answer, meta = assemble_sse(body)
        else:
            answer, meta = assemble_json(body)
        record: dict[str, Any] = {
            "stream": self.stream,
            "model": meta.get("model") or request.get("model"),
            "messages": request.get("messages"),
            "response": answer,
        }
        if isinstance(meta.get("id"), str) and meta["id"]:
            record["id"] = self._recent_ids.unique(meta["id"])
        return parse_record(record, settings=self.settings, now=exchange.received_at)


__all__ = ["Exchange", "ProxySampler"]
