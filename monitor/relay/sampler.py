"""What the relay's proxy offers complete exchanges to: records into the spool, off the
request path.

    RelaySampler(records, spool, forwarder, metrics, queue_size)
        .offer(exchange)   queue one exchange; never raises, never waits
        .lose(reason, detail, count=1)   count exchanges lost (proxy_fail_open{reason})
        .drain(timeout)    wait until every queued exchange is spooled (tests, shutdown)
        .aclose()          spool what is queued, then stop forwarding (see Forwarder.aclose)

As the full sidecar's sampler does, it queues exchanges in memory (``[proxy]
sample_queue_size``, :class:`~monitor.ingest.exchange_queue.ExchangeQueue`), and a task turns
them into record lines in a worker thread in batches (parsing holds the GIL: one hand-off per
batch, not per exchange). The lines go to the spool;
what does not fit is dropped and counted ``spool_full``. Nothing here waits on the central API
or can fail a client's request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from monitor.errors import InvalidInputError, PayloadTooLargeError
from monitor.ingest.exchange_queue import ExchangeQueue
from monitor.ingest.proxy_body import Exchange
from monitor.metrics import RelayMetrics
from monitor.relay.forwarder import Forwarder
from monitor.relay.records import ExchangeRecords
from monitor.relay.spool import Spool

log = logging.getLogger("monitor.relay")


class RelaySampler:
    """The relay's sampling queue, the task that spools it, and the count of what is lost."""

    def __init__(
        self,
        records: ExchangeRecords,
        spool: Spool,
        forwarder: Forwarder,
        metrics: RelayMetrics,
        queue_size: int,
    ) -> None:
        self.records = records
        self.spool = spool
        self.forwarder = forwarder
        self.metrics = metrics
        self._queue = ExchangeQueue(queue_size, self._spool_batch, self.lose, log)
        self._spooled = metrics.relay_records.labels(outcome="spooled")
        self._skipped = metrics.relay_records.labels(outcome="skipped")

    def offer(self, exchange: Exchange) -> None:
        """Queue a complete exchange; never raises, never waits."""
        self._queue.offer(exchange)

    def lose(self, reason: str, detail: str, count: int = 1) -> None:
        if count:
            self.metrics.proxy_fail_open.labels(reason=reason).inc(count)
            log.debug("relay: %d exchange(s) lost (%s): %s", count, reason, detail)

    async def drain(self, timeout: float = 10.0) -> None:
        await self._queue.drain(timeout)

    async def aclose(self) -> None:
        await self._queue.aclose()
        await self.forwarder.aclose()

    async def _spool_batch(self, batch: list[Exchange]) -> None:
        lines = await asyncio.to_thread(self._lines, batch)
        taken = self.spool.append(lines)
        self._spooled.inc(taken)
        self.lose("spool_full", "the relay's spool is full", len(lines) - taken)
        if taken:
            self.forwarder.wake()
            self.forwarder.publish()

    def _lines(self, exchanges: Sequence[Exchange]) -> list[bytes]:
        lines: list[bytes] = []
        for exchange in exchanges:
            time.sleep(0)  # let the event loop in between exchanges (see ProxySampler)
            try:
                line = self.records.line(exchange)
            except PayloadTooLargeError as exc:
                self.lose("too_large", str(exc))
            except InvalidInputError as exc:
                self.lose("invalid", str(exc))
            except Exception:
                log.exception("relay: reading an exchange failed")
                self.lose("internal_error", "reading the exchange failed")
            else:
                if line is None:
                    self._skipped.inc()
                else:
                    lines.append(line)
        return lines


__all__ = ["RelaySampler"]
