"""Demo traffic for the compose stack: chat completions through the sidecar (standard library).

    python traffic.py --base-url http://monitor:8080 --examples DIR [--rate 1] [--phase 10m]

Sends one OpenAI chat completion at a time, RATE a second, to BASE_URL/v1/chat/completions,
cycling through phases of PHASE each: prompts of ``mmbench_heldout.jsonl`` (in distribution:
the reference store is built from ``mmbench_id.jsonl``), then prompts of ``mme_shift.jsonl``
(a domain shift: other questions, yes/no answers), then again. Within a few windows of a
shift phase the monitor's risk goes to warning, then critical, and the alerts fire.
``--count N`` stops after N requests (tests). Prints one line per phase and per error.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PHASES = (("in-distribution", "mmbench_heldout.jsonl"), ("shift", "mme_shift.jsonl"))


def prompts(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["prompt"] for line in lines if line.strip()]


def chat(base_url: str, prompt: str, *, stream: bool, timeout: float) -> int:
    """Send one chat completion; returns the HTTP status (the body is read to the end)."""
    body = {
        "model": "llava-v1.5-13b",
        "messages": [{"role": "user", "content": prompt}],
        "stream": stream,
    }
    request = urllib.request.Request(
        base_url.rstrip("/") + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def parse_duration(text: str) -> float:
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="demo traffic through the sidecar")
    parser.add_argument("--base-url", default="http://127.0.0.1:8080")
    parser.add_argument("--examples", type=Path, required=True, help="directory of the .jsonl")
    parser.add_argument("--rate", type=float, default=1.0, help="requests a second")
    parser.add_argument("--phase", type=parse_duration, default=600.0, help="e.g. 10m")
    parser.add_argument("--count", type=int, default=0, help="stop after N requests (0: never)")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    pools = [(name, prompts(args.examples / file)) for name, file in PHASES]
    sent = failed = 0
    for name, pool in itertools.cycle(pools):
        print(f"phase {name}: {len(pool)} prompts for {args.phase:.0f} s", flush=True)
        phase_end = time.monotonic() + args.phase
        while time.monotonic() < phase_end:
            started = time.monotonic()
            try:
                status = chat(
                    args.base_url, rng.choice(pool), stream=rng.random() < 0.5, timeout=args.timeout
                )
            except OSError as exc:
                status = 0
                print(f"request failed: {exc}", flush=True)
            sent += 1
            if status != 200:
                failed += 1
                print(f"status {status}", flush=True)
            if args.count and sent >= args.count:
                print(f"sent {sent}, failed {failed}", flush=True)
                return 1 if failed else 0
            time.sleep(max(0.0, 1.0 / args.rate - (time.monotonic() - started)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
