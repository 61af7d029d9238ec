"""Which records are kept: deterministic sampling on the record id, and a per-stream rate cap.

Sampling hashes the record id (SHA-256, first 8 bytes as an integer / 2**64) to a number
uniform in [0, 1) and keeps the record when that number is below the stream's ``sample_rate``.
The same id is therefore always in or always out, whichever replica sees it and however often
it is retried or replayed; and a record kept at rate r is also kept at every rate above r. A kept
record carries the sampling weight ``1 / sample_rate`` (it stands for that many records).

The rate cap is a token bucket per stream (``max_records_per_second``, a burst of one
second's worth): sampled records beyond it are skipped and counted. It protects the inbox from
a traffic spike; unlike sampling it is not deterministic and does not change the weight.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

_SCALE = float(2**64)


def sampling_fraction(record_id: str) -> float:
    """The record id's position in [0, 1): uniform over ids, the same on every machine."""
    digest = hashlib.sha256(record_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def is_sampled(record_id: str, sample_rate: float) -> bool:
    """Whether a record with this id is kept at this rate (deterministic)."""
    if sample_rate >= 1.0:
        return True
    return sampling_fraction(record_id) < sample_rate


def sampling_weight(sample_rate: float) -> float:
    """How many records one kept record stands for."""
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    return 1.0 / sample_rate


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``; thread-safe.

    ``take(n)`` grants as many of ``n`` as there are whole tokens; ``give_back(n)`` returns
    tokens that were granted but not used (a batch that was then refused as a whole)."""

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self.burst = max(1.0, rate if burst is None else burst)
        self._clock = clock
        self._tokens = self.burst
        self._updated = clock()
        self._lock = threading.Lock()

    def take(self, wanted: int) -> int:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            granted = min(wanted, int(self._tokens))
            self._tokens -= granted
            return granted

    def give_back(self, count: int) -> None:
        with self._lock:
            self._tokens = min(self.burst, self._tokens + count)
