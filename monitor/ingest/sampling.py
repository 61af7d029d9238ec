"""Which records are kept: deterministic sampling on the record id, and a per-stream rate cap.

Sampling hashes the record id (SHA-256, first 8 bytes as an integer / 2**64) to a number
uniform in [0, 1) and keeps the record when that number is below the stream's ``sample_rate``.
The same id is therefore always in or always out, whichever replica sees it and however often
it is retried or replayed; and a record kept at rate r is also kept at every rate above r. A kept
record carries the sampling weight ``1 / sample_rate`` (it stands for that many records).

The rate cap is a token bucket per stream (``max_records_per_second``, a burst of one
second's worth): sampled records beyond it are skipped and counted. It protects the inbox from
a traffic spike; unlike sampling it is not deterministic and does not change the weight.

The window terms do not read the weight, and need not. It is one value per stream (the
stream's rate), so within a window every record carries the same w; a weighted second moment
sum_i w x_i x_i^T / sum_i w is then the unweighted one, and the JSD terms, which normalise it by
its trace anyway, are unchanged (benchmarks/bench_sampling_weights.py checks this to 1e-9). The
cap does bias a window: it keeps quiet periods whole and thins bursts. Measured there on MiniLM
embeddings of MMBench traffic (quiet at 2 records/s, 6 s bursts at 50/s of which 20% are MME,
a cap of 5/s, 100 windows of 30 s with ~350 records each), MME is 17.1% of the traffic and 8.3%
of the ~82 kept records; the detector's score on them has a mean z of 3.75 (past 2.33 in 93% of
windows) against 5.96 (100%) on a uniform sample of the same size. At 5% MME in bursts: 4.3%
against 2.5% kept, 1.38 (24%) against 2.21 (49%). Weighting the kept records by arrived / kept
restores the share (17.4%) but not the power, as their effective size halves (~42): against
the calibration's nulls at the kept count the weighted terms score past 2.33 in 97% of windows
without MME (importance resampling: 100%); at the effective size the text term goes blind
(median p 0.9 to 1); against nulls drawn with each window's own weights (valid: 0% of ID
windows past 2.33) the score is no better than unweighted (4.12, 97% of 30 windows; at 5%,
1.35, 27%). Records the cap drops are lost either way: a ``sample_rate`` that keeps the sampled
rate under the cap is what keeps a window representative.
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
