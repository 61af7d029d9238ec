"""Every benchmark's headline ratio in one run, side by side, written to docs/benchmarks.md.

Runs each benchmark script as a subprocess with reduced sizes and a time limit, parses the
lines it prints, and prints one table (part, figure, value, seconds, status). A part that
fails or runs out of time is reported as failed in the table, never left out. Sizes are
smaller than each script's defaults, so the figures are noisier than the recorded ones in
deploy/README.md (Sizing) and benchmarks/README.md; they are measured in the same run, on the
same machine, which is what makes them comparable with each other.

    python benchmarks/run_all.py [--quick] [--out docs/benchmarks.md]

Time it under an exclusive lock on a shared machine: `flock /tmp/bench.lock python ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ENV = "MLLM_MONITOR_TEST_POSTGRES_URL"

Figures = list[tuple[str, str]]


@dataclass(frozen=True)
class Part:
    """One benchmark invocation: its arguments (full and quick), time limit and parser."""

    name: str
    script: str
    full_args: list[str]
    quick_args: list[str]
    timeout_s: float
    parse: Callable[[str], Figures]


@dataclass
class Outcome:
    part: Part
    args: list[str]
    seconds: float
    figures: Figures = field(default_factory=list)
    error: str = ""


def _search(pattern: str, text: str) -> re.Match[str]:
    match = re.search(pattern, text, re.MULTILINE)
    if match is None:
        raise ValueError(f"no line matching {pattern!r} in the output")
    return match


def _json_tail(text: str) -> dict[str, Any]:
    start = text.find("\n{") + 1 if not text.startswith("{") else 0
    if start == 0 and not text.startswith("{"):
        raise ValueError("no JSON object in the output")
    parsed: dict[str, Any] = json.loads(text[start:])
    return parsed


def parse_estimators_speed(text: str) -> Figures:
    rows = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x", text, re.MULTILINE)
    if not rows:
        raise ValueError("no CLUB speed rows in the output")
    out = [(f"CLUB O(nd) vs pairwise speed-up, n = {n}", f"{float(x):.0f}x") for n, _, _, x in rows]
    big = _search(r"CLUB at n = ([\d,]+): O\(nd\) estimate ([\d.]+) s", text)
    out.append((f"CLUB O(nd) estimate at n = {big[1]}", f"{big[2]} s"))
    return out


def parse_contention(text: str) -> Figures:
    worst = _search(r"worst slowdown with the default \((\d+) threads\): ([\d.]+)x", text)
    floor = _search(r"^pure-Python loop.*?([\d.]+)x$", text)
    return [
        (f"worst slowdown, one core busy elsewhere ({worst[1]} threads)", f"{worst[2]}x"),
        ("pure-Python loop slowdown (machine floor)", f"{floor[1]}x"),
    ]


def parse_embedding(text: str) -> Figures:
    layer = _search(r"full forward ([\d.]+) ms, embedding layer only ([\d.]+) ms -> (\d+)x", text)
    clip = _search(
        r"bare forward ([\d.]+) img/s, full pipeline.*? ([\d.]+) img/s -> ratio ([\d.]+)", text
    )
    return [
        ("XLM-R embedding layer vs full forward", f"{layer[3]}x faster"),
        ("CLIP pipeline / bare forward throughput", f"{clip[3]} ({clip[2]} vs {clip[1]} img/s)"),
    ]


def parse_workers(text: str) -> Figures:
    result = _json_tail(text)
    return [
        (
            "embedding workers / bare MiniLM throughput (median)",
            f"{result['ratio_median']:.2f} ({result['median_workers']} vs "
            f"{result['median_bare']} records/s)",
        )
    ]


def parse_ingest(text: str) -> Figures:
    rows = re.findall(
        r"^(sqlite|postgresql)\s+([\d,]+)\s+([\d.]+)\s+([\d,]+)\s+([\d.]+)", text, re.M
    )
    if not rows:
        raise ValueError("no backend rows in the output")
    return [
        (f"records API ingest, {b}", f"{rate} records/s (p50 {p50} ms)")
        for b, _, _, rate, p50 in rows
    ]


def parse_proxy(text: str) -> Figures:
    result = _json_tail(text)
    return [
        (
            f"sidecar added latency p50 / p99, {mode.upper()}",
            f"{result[mode]['added_p50_ms']:.2f} / {result[mode]['added_p99_ms']:.2f} ms",
        )
        for mode in ("json", "sse")
    ]


def parse_knn(text: str) -> Figures:
    rows = re.findall(
        r"^\s*([\d,]+)\s+\w+\s+ivf\s+(nlist=\d+ nprobe=\d+) \(default\)"
        r"\s+[\d.]*\s+[\d.]+\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s+([\d.]+)",
        text,
        re.MULTILINE,
    )
    if not rows:
        raise ValueError("no default IVF row in the output")
    return [
        (
            f"FAISS IVF vs exact, N = {n} ({params})",
            f"{single}x single, {batch}x batched, recall@10 {recall}",
        )
        for n, params, single, batch, recall in rows
    ]


def parse_windows(text: str) -> Figures:
    rows = re.findall(r"^\s+(\d+)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s+(\d+)\s+\d+$", text, re.M)
    if not rows:
        raise ValueError("no window rows in the output")
    out = [
        (f"window compute, n = {int(n):,}", f"{total} s (peak {peak} MiB)")
        for n, total, peak in rows
    ]
    tick = re.search(r"scheduler tick with (\d+) idle streams: ([\d.]+) ms", text)
    if tick:
        out.append((f"scheduler tick, {tick[1]} idle streams", f"{tick[2]} ms"))
    return out


def parse_permutation(text: str) -> Figures:
    cases = re.findall(
        r"^window (\d+) vs comparison (\d+), .*?, ([^,]+), (\d+) permutations", text, re.M
    )
    quiet = re.findall(r"^\s+quiet\s+([\d.]+) s", text, re.M)
    ratios = re.findall(r"shifted / quiet: ([\d.]+)x", text)
    if not quiet:
        raise ValueError("no permutation timings in the output")
    return [
        (
            f"permutation test, window {n} vs {m}, {terms}, {trials} perms",
            f"{q} s quiet, shifted {r}x",
        )
        for (n, m, terms, trials), q, r in zip(cases, quiet, ratios, strict=False)
    ]


def parse_backfill(text: str) -> Figures:
    out: Figures = []
    jsonl = re.search(r"backfill --from-jsonl, ([\d,]+) records .*?= ([\d.]+) records/s", text)
    ratio = re.search(r"end to end / bare throughput = ([\d.]+)x", text)
    if jsonl:
        out.append((f"backfill --from-jsonl, {jsonl[1]} records", f"{jsonl[2]} records/s"))
    if ratio:
        out.append(("backfill end to end / bare encoder throughput", f"{ratio[1]}x"))
    ranged = re.search(r"range backfill, ([\d,]+) stored samples.*?([\d.]+) windows/s", text)
    if ranged:
        out.append((f"range backfill, {ranged[1]} stored samples", f"{ranged[2]} windows/s"))
    if not out:
        raise ValueError("no backfill figures in the output")
    return out


PARTS = [
    Part(
        "estimators",
        "bench_estimators.py",
        ["--parts", "speed", "--repeats", "2"],
        ["--parts", "speed", "--repeats", "1"],
        120,
        parse_estimators_speed,
    ),
    Part(
        "embedding",
        "bench_embedding.py",
        ["--images", "64", "--repeats", "2"],
        ["--images", "32", "--repeats", "1"],
        150,
        parse_embedding,
    ),
    Part(
        "workers",
        "bench_workers.py",
        ["--records", "128", "--rounds", "5"],
        ["--records", "64", "--rounds", "2"],
        120,
        parse_workers,
    ),
    Part(
        "ingest",
        "bench_ingest.py",
        ["--records", "10000"],
        ["--records", "1000"],
        120,
        parse_ingest,
    ),
    Part(
        "proxy", "bench_proxy.py", ["--requests", "1000"], ["--requests", "100"], 120, parse_proxy
    ),
    Part(
        "knn",
        "bench_knn.py",
        ["--quick", "--queries", "512", "--single", "200"],
        ["--sizes", "20000", "--queries", "256", "--single", "100"],
        240,
        parse_knn,
    ),
    Part(
        "windows",
        "bench_windows.py",
        ["--sizes", "1000,10000", "--idle-streams", "20"],
        ["--sizes", "1000", "--idle-streams", "10"],
        240,
        parse_windows,
    ),
    Part(
        "permutation",
        "bench_permutation.py",
        ["--trials", "300"],
        ["--trials", "50"],
        300,
        parse_permutation,
    ),
    Part(
        "backfill",
        "bench_backfill.py",
        ["--records", "4000", "--stored", "20000", "--id-records", "200"],
        ["--records", "500", "--stored", "2000", "--id-records", "100"],
        240,
        parse_backfill,
    ),
    Part(
        "contention",
        "bench_estimators.py",
        ["--parts", "contention", "--repeats", "2"],
        ["--parts", "contention", "--repeats", "1"],
        150,
        parse_contention,
    ),
]


def run_part(part: Part, quick: bool, budget_s: float) -> Outcome:
    args = part.quick_args if quick else part.full_args
    limit = min(part.timeout_s, budget_s)
    if limit < 10:
        return Outcome(part, args, 0.0, error="not run: the run's time budget was spent")
    command = [sys.executable, str(ROOT / "benchmarks" / part.script), *args]
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=limit, check=False
        )
    except subprocess.TimeoutExpired:
        return Outcome(
            part, args, time.perf_counter() - start, error=f"timed out after {limit:.0f} s"
        )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        return Outcome(part, args, seconds, error=f"exit {done.returncode}: {last[:160]}")
    try:
        return Outcome(part, args, seconds, figures=part.parse(done.stdout))
    except (ValueError, KeyError, json.JSONDecodeError) as exc:
        return Outcome(part, args, seconds, error=f"unparsed output: {exc}")


def table(outcomes: list[Outcome]) -> list[str]:
    lines = ["| part | figure | value | s | status |", "|---|---|---|---:|---|"]
    for o in outcomes:
        if o.error:
            lines.append(
                f"| {o.part.name} | | | {o.seconds:.0f} | FAILED: {o.error.replace('|', '/')} |"
            )
            continue
        for i, (label, value) in enumerate(o.figures):
            seconds = f"{o.seconds:.0f}" if i == 0 else ""
            lines.append(
                f"| {o.part.name if i == 0 else ''} | {label} | {value} | {seconds} | ok |"
            )
    return lines


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_lines(command: str, started: datetime, total_s: float, quick: bool) -> list[str]:
    import torch  # only for its version; imported late so the parts' own imports stay theirs

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"- Run: {'QUICK run (--quick: smallest sizes, for trying)' if quick else 'full run'}, "
        f"started {started:%Y-%m-%d %H:%M} UTC, {total_s:.0f} s in all",
        f"- Command: `{command}`",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores, load average at the end {load}",
        f"- Python {platform.python_version()}, torch {torch.__version__}; "
        f"PostgreSQL: {'yes' if os.environ.get(POSTGRES_ENV) else 'not set, SQLite only'}",
    ]


def page(outcomes: list[Outcome], header: list[str]) -> str:
    args = "\n".join(f"| {o.part.name} | `{o.part.script} {' '.join(o.args)}` |" for o in outcomes)
    return (
        "# Benchmarks\n\n"
        "Written by `benchmarks/run_all.py`: every benchmark's headline figure, measured side by\n"
        "side in one run on one machine. Sizes are reduced so that the whole run fits in about a\n"
        "quarter of an hour on 2 cores, so single figures are noisier than the recorded ones in\n"
        "the benchmarks' own README and the deployment guide's sizing table; read them as orders\n"
        "of magnitude. A part that failed or ran out of time says so in the table.\n\n"
        + "\n".join(header)
        + "\n\n"
        + "\n".join(table(outcomes))
        + "\n\nArguments each part ran with (scripts in `benchmarks/`):\n\n"
        "| part | command |\n|---|---|\n" + args + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smallest sizes (a few minutes)")
    parser.add_argument("--out", type=Path, default=None, help="write the page here")
    parser.add_argument(
        "--budget", type=float, default=840.0, help="seconds for the whole run (default 840)"
    )
    parser.add_argument("--only", nargs="+", choices=[p.name for p in PARTS], default=None)
    args = parser.parse_args()
    command = "python benchmarks/run_all.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    outcomes = []
    for part in PARTS:
        if args.only and part.name not in args.only:
            continue
        print(f"... {part.name}", file=sys.stderr, flush=True)
        outcomes.append(run_part(part, args.quick, args.budget - (time.perf_counter() - t0)))
    total = time.perf_counter() - t0
    header = machine_lines(command.strip(), started, total, args.quick)
    print("\n".join(header))
    print("\n".join(table(outcomes)))
    if args.out:
        args.out.write_text(page(outcomes, header))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
