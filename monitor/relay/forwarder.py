"""Batches from the spool to the central records API (``POST /v1/records``), in order.

    Forwarder(relay_settings, spool, metrics, lose)
        .start()          the forwarding task, in the running event loop
        .wake()           the spool has new lines
        .aclose(grace)    forward what is spooled for ``grace`` seconds at most, then stop

One batch at a time, oldest lines first: up to ``[relay] batch_size`` lines and
``max_batch_bytes`` (one larger line goes alone). A batch shorter than ``batch_size`` waits up
to ``flush_interval`` for more. The batch leaves the spool once its fate is known:

* 2xx: forwarded (``relay_records{outcome="forwarded"}``, the last-forward gauge);
* 429, 502, 503, 504, a connection failure or a timeout: sent again, forever, after an
  exponential backoff with jitter from ``min_backoff`` up to ``max_backoff``, and never before
  the ``Retry-After`` the central API asked for (capped at ``max_backoff``); each retry is
  counted in ``relay_retries{reason}``. Meanwhile new exchanges wait in the spool, and once it
  is full they are dropped and counted (``proxy_fail_open{reason="spool_full"}``);
* 400, 413, 422 (the content was refused; the records API refuses a batch whole): the batch is
  split in halves and each is sent again, down to the single records that are refused, which
  are dropped and counted ``proxy_fail_open{reason="rejected"}``, with a warning;
* any other answer (401, 403, 404, 500 ...: the same for every record, so no split helps):
  the whole batch is dropped, counted ``rejected``, with a warning. Never retried forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx

from monitor.config import RelaySettings
from monitor.metrics import RelayMetrics
from monitor.relay.spool import Spool

log = logging.getLogger("monitor.relay")

RECORDS_PATH = "/v1/records"
_RETRIED = {429: "too_many_requests", 502: "unavailable", 503: "unavailable", 504: "unavailable"}
# Refusals that depend on the content: splitting the batch finds the records refused.
_SPLIT = frozenset({400, 413, 422})


def backoff_seconds(
    attempt: int,
    retry_after: float | None,
    *,
    minimum: float,
    maximum: float,
    rng: random.Random,
) -> float:
    """The wait before retry ``attempt`` (0 first): ``minimum * 2**attempt`` capped at
    ``maximum``, jittered down to half of it (relays that failed together do not retry
    together), and at least ``retry_after`` (itself capped at ``maximum``)."""
    ceiling = min(maximum, minimum * 2.0 ** min(attempt, 62))
    delay = rng.uniform(ceiling / 2.0, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, maximum))
    return delay


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A Retry-After header in seconds (delta-seconds or an HTTP date); None when absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class _StopRequestedError(Exception):
    """A retry interrupted by shutdown: the batch stays in the spool."""


class Forwarder:
    """The forwarding task: spool -> central records API, with retries."""

    def __init__(
        self,
        relay: RelaySettings,
        spool: Spool,
        metrics: RelayMetrics,
        lose: Callable[[str, str, int], None],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.spool = spool
        self.metrics = metrics
        self._lose = lose
        self._batch_size = relay.batch_size
        self._max_batch_bytes = relay.max_batch_bytes
        self._flush_interval = relay.flush_interval.total_seconds()
        self._min_backoff = relay.min_backoff.total_seconds()
        self._max_backoff = relay.max_backoff.total_seconds()
        self._rng = rng or random.Random()
        headers = {"content-type": "application/json"}
        if relay.token:
            headers["authorization"] = f"Bearer {relay.token}"
        self._client = httpx.AsyncClient(
            base_url=relay.central_url.rstrip("/"),
            headers=headers,
            timeout=relay.request_timeout.total_seconds(),
            transport=transport,
            trust_env=False,
        )
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._handled = 0  # lines of the current batch whose fate is known (a prefix)
        self.last_forward_at: float | None = None  # Unix time the central API last accepted
        self.publish()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def wake(self) -> None:
        self._wake.set()

    def publish(self) -> None:
        """Show the spool's depth in the gauges."""
        self.metrics.relay_spool_records.set(self.spool.records)
        self.metrics.relay_spool_bytes.set(self.spool.bytes)

    async def aclose(self, grace: float = 5.0) -> None:
        """Forward what is spooled for ``grace`` seconds at most (no retries), then stop. What
        is left stays in an on-disk spool; a memory-only spool loses it (counted ``unsent``)."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), grace)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        left = self.spool.records
        if left and self.spool.directory is None:
            self._lose("unsent", "the relay stopped with records in its memory-only spool", left)
            self.spool.ack(left)
        elif left:
            log.info("relay: records left in the spool for the next start", extra={"records": left})
        self.publish()
        self.spool.close()
        await self._client.aclose()

    # -- the task ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while await self._batch_wanted():
            batch = self.spool.peek(self._batch_size, self._max_batch_bytes)
            self._handled = 0
            try:
                await self._deliver(batch)
            except _StopRequestedError:
                return
            except Exception:  # a bug must not stop forwarding for good; the batch is kept
                log.exception("relay: forwarding a batch failed")
                if await self._stopping_during(self._max_backoff):
                    return
            finally:
                self.spool.ack(self._handled)
                self.publish()

    async def _batch_wanted(self) -> bool:
        """Wait for lines (and, short of a full batch, up to flush_interval for more); False
        once stopping with nothing left."""
        while not self.spool.records:
            if self._stopping.is_set():
                return False
            self._wake.clear()
            await self._wake.wait()
        deadline = time.monotonic() + self._flush_interval
        while (
            self.spool.records < self._batch_size
            and self.spool.bytes < self._max_batch_bytes
            and not self._stopping.is_set()
        ):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)
        return True

    async def _deliver(self, lines: list[bytes]) -> None:
        """Send ``lines`` until accepted or refused (splitting content refusals), in order."""
        attempt = 0
        while True:
            status, retry_reason, retry_after, detail = await self._post(lines)
            if 200 <= status < 300:
                self._handled += len(lines)
                self.metrics.relay_records.labels(outcome="forwarded").inc(len(lines))
                self.last_forward_at = time.time()
                self.metrics.relay_last_forward_timestamp_seconds.set(self.last_forward_at)
                return
            if retry_reason is None:
                if status in _SPLIT and len(lines) > 1:
                    half = len(lines) // 2
                    await self._deliver(lines[:half])
                    await self._deliver(lines[half:])
                    return
                log.warning(
                    "relay: the central records API refused %d record(s): %s %s",
                    len(lines),
                    status,
                    detail,
                )
                self._handled += len(lines)
                self._lose("rejected", f"{status} {detail}", len(lines))
                return
            self.metrics.relay_retries.labels(reason=retry_reason).inc()
            if self._stopping.is_set():
                raise _StopRequestedError
            delay = backoff_seconds(
                attempt,
                retry_after,
                minimum=self._min_backoff,
                maximum=self._max_backoff,
                rng=self._rng,
            )
            log.debug("relay: retrying in %.2f s (%s %s)", delay, retry_reason, detail)
            if await self._stopping_during(delay):
                raise _StopRequestedError
            attempt += 1

    async def _post(self, lines: list[bytes]) -> tuple[int, str | None, float | None, str]:
        """(status, retry reason or None, Retry-After, detail); status 0 when no answer."""
        body = b'{"records":[' + b",".join(lines) + b"]}"
        try:
            response = await self._client.post(RECORDS_PATH, content=body)
        except httpx.TimeoutException as exc:
            return 0, "timeout", None, repr(exc)
        except httpx.TransportError as exc:
            return 0, "connection", None, repr(exc)
        status = response.status_code
        detail = response.text[:300] if status >= 300 else ""
        reason = _RETRIED.get(status)
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        return status, reason, retry_after, detail

    async def _stopping_during(self, seconds: float) -> bool:
        """Sleep; True (at once) when the relay is stopping meanwhile."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True


__all__ = ["RECORDS_PATH", "Forwarder", "backoff_seconds", "retry_after_seconds"]
