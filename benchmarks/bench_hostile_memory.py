"""Sidecar memory benchmark: resident memory of a real ``mllm-monitor serve`` through the loads
that once took it to gigabytes, with a hostile upstream on loopback.

Run (from the repository root): python benchmarks/bench_hostile_memory.py [--bomb-mib 1024]
    [--requests 5] [--request-mb 100] [--images 30] [--megapixels 36]

Two processes besides this one: the hostile upstream
(``tests/integration/ingest/hostile_upstream.py``) and ``serve`` in front of it (SQLite, the
MiniLM text encoder, ``[encoders.image] kind = "none"``, one embedding worker, ``[proxy]
max_body_bytes`` raised to 256 MiB so that 100 MB requests pass through). After a warm-up
(relayed and embedded traffic), serve's RSS is read at idle, then around each case:

* gzip bomb: one chat answer of ~1 MB gzip inflating to BOMB_MIB MiB (sampled? it must not be
  inflated past [proxy] max_sample_bytes);
* N x 100 MB: REQUESTS concurrent chat requests of REQUEST_MB MB each (streamed through, not
  sampled), until the embedding worker is idle again;
* 30 images: one records-API request of IMAGES records, each with a PNG of MEGAPIXELS Mpx
  (one image, base64, repeated), until the inbox is empty again.

Reported per case: RSS before, after, and peak (sampled every 5 ms, and the kernel's VmHWM
after resetting it), each case's peak and after as deltas over idle, and pass (both <= 200 MB).
Not a test (tests/integration/ingest/test_proxy_memory.py asserts the bound for the first two
cases): numbers depend on the machine, the allocator and Python's version.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' support modules

from tests.integration.ingest.hostile_serve import (
    MIB,
    Measured,
    RssProbe,
    big_requests,
    gzip_bomb,
    hostile_serve,
    large_images,
    large_png,
    rss_bytes,
    wait_embedded,
    warm_up,
)

BOUND = 200 * MIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bomb-mib", type=int, default=1024)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--request-mb", type=int, default=100)
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--megapixels", type=int, default=36)
    args = parser.parse_args()
    png = large_png(args.megapixels)
    with (
        tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp,
        hostile_serve(Path(tmp)) as running,
    ):
        warm_up(running)
        time.sleep(1)
        idle = rss_bytes(running.pid)
        probe = RssProbe(running.pid)
        statuses: dict[str, str] = {}
        cases: list[Measured] = [
            probe.measure(
                f"gzip bomb (~1 MB -> {args.bomb_mib} MiB)",
                lambda: gzip_bomb(running, args.bomb_mib),
                lambda: None,
            ),
            probe.measure(
                f"{args.requests} x {args.request_mb} MB chat requests",
                lambda: big_requests(
                    running, count=args.requests, size=args.request_mb * 1000 * 1000
                ),
                lambda: wait_embedded(running),
            ),
        ]
        name = f"{args.images} PNGs x {args.megapixels} Mpx ({len(png) // 1024} KiB each)"

        def images() -> None:
            statuses[name] = str(large_images(running, count=args.images, png=png))

        cases.append(probe.measure(name, images, lambda: wait_embedded(running)))
    print(
        f"python {platform.python_version()}, {platform.machine()}, serve idle RSS "
        f"{idle / MIB:.0f} MiB (after warm-up)"
    )
    header = (
        f"{'case':<44} {'before':>8} {'after':>8} {'peak':>8} {'peak-idle':>10} "
        f"{'after-idle':>11} {'secs':>6}  pass"
    )
    print(header)
    print("-" * len(header))
    for case in cases:
        ok = case.peak - idle <= BOUND and case.after - idle <= BOUND
        label = case.case + (f" [{statuses[case.case]}]" if case.case in statuses else "")
        print(
            f"{label:<44} {case.before / MIB:>7.0f}M {case.after / MIB:>7.0f}M "
            f"{case.peak / MIB:>7.0f}M {(case.peak - idle) / MIB:>9.0f}M "
            f"{(case.after - idle) / MIB:>10.0f}M {case.seconds:>6.1f}  {'yes' if ok else 'NO'}"
        )
    print(f"(MiB; pass: peak and after within {BOUND // MIB} MiB of idle)")


if __name__ == "__main__":
    main()
