"""Deterministic sampling on the record id, and the token bucket of the rate cap."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from monitor.ingest.sampling import (
    TokenBucket,
    is_sampled,
    sampling_fraction,
    sampling_weight,
)


def test_the_decision_is_pinned_and_the_same_in_every_process() -> None:
    # Pinned: replicas, restarts and replays must agree, so the hash may never change.
    assert sampling_fraction("rec-1") == pytest.approx(0.6553840272, abs=1e-9)
    ids = [f"id-{i}" for i in range(100)]
    here = [is_sampled(i, 0.3) for i in ids]
    assert here == [sampling_fraction(i) < 0.3 for i in ids] and 10 < sum(here) < 50
    # Another interpreter with another string-hash seed (Python's hash() would differ there).
    script = (
        "from monitor.ingest.sampling import is_sampled\n"
        f"print(''.join('1' if is_sampled(i, 0.3) else '0' for i in {ids!r}))"
    )
    other = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert other == "".join("1" if kept else "0" for kept in here)


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5, 0.9])
def test_rate_within_binomial_error(rate: float) -> None:
    n = 20_000
    kept = sum(is_sampled(f"record-{i}", rate) for i in range(n))
    sigma = math.sqrt(n * rate * (1 - rate))
    assert abs(kept - n * rate) < 4 * sigma


def test_kept_at_a_rate_means_kept_at_every_higher_rate() -> None:
    ids = [f"x{i}" for i in range(2000)]
    low = {i for i in ids if is_sampled(i, 0.2)}
    high = {i for i in ids if is_sampled(i, 0.6)}
    assert low < high
    assert all(is_sampled(i, 1.0) for i in ids)


def test_weight_is_the_inverse_rate() -> None:
    assert sampling_weight(0.25) == 4.0
    assert sampling_weight(1.0) == 1.0
    with pytest.raises(ValueError, match="sample_rate"):
        sampling_weight(0.0)


def test_token_bucket_burst_refill_and_give_back() -> None:
    now = [0.0]
    bucket = TokenBucket(5, clock=lambda: now[0])
    assert bucket.take(8) == 5
    assert bucket.take(1) == 0
    now[0] = 0.4
    assert bucket.take(10) == 2
    bucket.give_back(2)
    assert bucket.take(10) == 2
    now[0] = 100.0
    assert bucket.take(100) == 5  # never more than the burst
    slow = TokenBucket(0.5, clock=lambda: now[0])
    assert slow.take(3) == 1  # burst of at least one record
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0)
