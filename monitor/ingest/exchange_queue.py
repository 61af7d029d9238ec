"""A bounded queue of complete exchanges and the task that hands them on in batches: what the
sidecar's sampler and the relay's both put between the request path and their work.

    ExchangeQueue(size, handle, lose, log)
        .offer(exchange)   queue one exchange; never raises, never waits (a full queue is lost)
        .drain(timeout)    wait until every queued exchange has been handled
        .aclose()          handle what is queued (a few seconds at most), then stop the task

The queue and its task are made in the event loop that first offers (an app served again gets a
new loop). The task takes up to ``BATCH`` exchanges at a time, waiting up to ``LINGER_SECONDS``
for a short batch to fill: each hand-off to a thread costs the event loop (and the requests it
relays) far more CPU than parsing one more exchange. ``handle`` counts its own losses; an
exception out of it is a bug, logged and counted ``internal_error`` for the whole batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from monitor.ingest.proxy_body import Exchange

BATCH = 64  # most exchanges handed on at once
LINGER_SECONDS = 0.05  # how long a short batch waits for more exchanges

Handle = Callable[[list[Exchange]], Awaitable[None]]
Lose = Callable[[str, str, int], None]  # (reason, detail, count)


class ExchangeQueue:
    def __init__(self, size: int, handle: Handle, lose: Lose, log: logging.Logger) -> None:
        self.size = size
        self._handle = handle
        self._lose = lose
        self._log = log
        self._queue: asyncio.Queue[Exchange] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def offer(self, exchange: Exchange) -> None:
        """Queue a complete exchange; never raises, never waits."""
        try:
            self._ensure_consumer().put_nowait(exchange)
        except asyncio.QueueFull:
            self._lose("queue_full", "the sampling queue is full", 1)
        except Exception:  # a monitor bug must not reach the client
            self._log.exception("offering an exchange failed")
            self._lose("internal_error", "offering failed", 1)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until every queued exchange has been handled (tests, shutdown)."""
        if self._queue is not None and self._loop is asyncio.get_running_loop():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout)

    async def aclose(self) -> None:
        """Handle what is queued (a few seconds at most), then stop the task."""
        await self.drain(5.0)
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._consumer
            self._consumer = None

    def _ensure_consumer(self) -> asyncio.Queue[Exchange]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop:
            self._queue = asyncio.Queue(maxsize=self.size)
            self._loop = loop
            self._consumer = None
        if self._consumer is None or self._consumer.done():
            self._consumer = loop.create_task(self._consume(self._queue))
        return self._queue

    async def _consume(self, queue: asyncio.Queue[Exchange]) -> None:
        while True:
            batch = [await queue.get()]
            if queue.qsize() < BATCH - 1 and self.size >= 2 * BATCH:
                await asyncio.sleep(LINGER_SECONDS)
            while len(batch) < BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._handle(batch)
            except Exception:  # handle counts its own losses; this is a last resort
                self._log.exception("handling a batch of exchanges failed")
                self._lose("internal_error", "handling a batch failed", len(batch))
            finally:
                for _ in batch:
                    queue.task_done()
