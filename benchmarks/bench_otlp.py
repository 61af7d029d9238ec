"""OTLP traces benchmark: spans/s accepted by POST /v1/traces on loopback (SQLite inbox), and the
share of a GenAI-instrumented application's spans that became records.

Run: python benchmarks/bench_otlp.py [--traces 20000] [--batch 512] [--concurrency 2]

The traffic: each trace is what an instrumented RAG-style request writes: an HTTP server span,
a database query, an embeddings call (a GenAI span that is no chat exchange), the LLM call
(written in turn the GenAI-events, GenAI-messages, OpenLLMetry and OpenInference ways, about
300 characters of prompt and answer; one in ten without message content, as instrumentations
write it with content capture off) and an outgoing HTTP span. Spans are made with the real
OpenTelemetry SDK in a separate process (so client and server do not share a GIL), then sent
two ways: ``exporter``, the real OTLPSpanExporter (protobuf, one request per ``--batch``
spans, as a BatchSpanProcessor sends them); ``protobuf``, the same requests pre-encoded and
POSTed by ``--concurrency`` httpx clients. The app (create_app) runs in this process under
uvicorn; sample rate 1.0, so every LLM span with content is in the durable inbox before its
200; no embedding. Each mode starts from an empty database. Not a test: numbers depend on the
machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from monitor.config import IngestSettings, Settings
from monitor.ingest.app import create_app
from monitor.metrics import MonitorMetrics
from monitor.store import migrate
from monitor.store.engine import create_db_engine
from monitor.store.repository import Repository

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' support modules

from tests.integration.ingest.conftest import serve
from tests.support import otlp_spans
from tests.support.otlp_spans import WRITERS, Recorder

PROMPT = (
    "Look at the chart in the image and tell me which quarter had the highest revenue, and by "
    "how much it exceeded the quarter before it; answer in one sentence. Request {i}."
)
ANSWER = "The fourth quarter had the highest revenue, about 12% above the third quarter."


def write_traces(traces: int) -> list[Any]:
    """The finished spans of ``traces`` instrumented requests (five spans each)."""
    recorder = Recorder(service_name="rag-api")
    writers = [WRITERS[name] for name in sorted(WRITERS)]
    for i in range(traces):
        otlp_spans.http_span(recorder.tracer)
        otlp_spans.db_span(recorder.tracer)
        otlp_spans.embedding_span(recorder.tracer)
        if i % 10 == 9:
            otlp_spans.genai_span_without_content(recorder.tracer)
        else:
            writers[i % len(writers)](recorder.tracer, PROMPT.format(i=i), ANSWER)
        otlp_spans.http_span(recorder.tracer, "/v1/chat/completions")
    return recorder.spans()


def make_requests(traces: int, batch: int) -> tuple[list[bytes], int]:
    """Serialized ExportTraceServiceRequests of ``batch`` spans, and the span count."""
    spans = write_traces(traces)
    bodies = [
        otlp_spans.encode(spans[start : start + batch]).SerializeToString()
        for start in range(0, len(spans), batch)
    ]
    return bodies, len(spans)


def exporter_load(url: str, traces: int, batch: int, out: Any) -> None:
    """Child process: the real exporter sends the traces' spans ``batch`` at a time."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    spans = write_traces(traces)
    exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces", timeout=60)
    started = time.perf_counter()
    failures = 0
    for start in range(0, len(spans), batch):
        if exporter.export(spans[start : start + batch]) != SpanExportResult.SUCCESS:
            failures += 1
    out.put((len(spans), time.perf_counter() - started, failures))


def protobuf_load(url: str, traces: int, batch: int, concurrency: int, out: Any) -> None:
    """Child process: pre-encoded requests POSTed by ``concurrency`` threads."""
    bodies, count = make_requests(traces, batch)
    failures: list[int] = []
    headers = {"content-type": "application/x-protobuf"}

    def send(mine: list[bytes]) -> None:
        with httpx.Client(timeout=60) as client:
            for body in mine:
                answer = client.post(f"{url}/v1/traces", content=body, headers=headers)
                if answer.status_code != 200:
                    failures.append(answer.status_code)

    threads = [
        threading.Thread(target=send, args=(bodies[k::concurrency],)) for k in range(concurrency)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put((count, time.perf_counter() - started, len(failures)))


def run(mode: str, args: argparse.Namespace) -> None:
    settings = Settings(ingest=IngestSettings(max_inbox_depth=10_000_000))
    with tempfile.TemporaryDirectory(prefix="bench-otlp-") as tmp:
        engine = create_db_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        migrate.upgrade(engine)
        repository = Repository(engine)
        metrics = MonitorMetrics(CollectorRegistry(), [s.name for s in settings.streams])
        with serve(create_app(settings, repository, metrics)) as url:
            out: Any = multiprocessing.get_context("spawn").Queue()
            if mode == "exporter":
                target: Any = exporter_load
                child_args: tuple[Any, ...] = (url, args.traces, args.batch, out)
            else:
                target = protobuf_load
                child_args = (url, args.traces, args.batch, args.concurrency, out)
            child = multiprocessing.get_context("spawn").Process(target=target, args=child_args)
            child.start()
            spans, seconds, failures = out.get()
            child.join()
        records = repository.inbox_depth()
        repository.close()
    skipped = {
        reason: int(
            metrics.registry.get_sample_value(
                "mllm_monitor_otlp_spans_skipped_total", {"reason": reason}
            )
            or 0
        )
        for reason in ("not_llm", "no_prompt", "unknown_stream", "invalid")
    }
    llm = spans - skipped["not_llm"]
    print(
        f"{mode:9s} spans={spans:,} batch={args.batch} "
        f"{'' if mode == 'exporter' else f'concurrency={args.concurrency} '}"
        f"time={seconds:.2f}s spans/s={spans / seconds:,.0f} records/s={records / seconds:,.0f} "
        f"failed_requests={failures}"
    )
    print(
        f"          records={records:,} share_of_spans={records / spans:.1%} "
        f"share_of_llm_spans={records / llm:.1%} skipped={skipped}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["exporter", "protobuf"])
    args = parser.parse_args()
    print(f"python {platform.python_version()}, {platform.machine()}, traces of 5 spans")
    for mode in args.modes:
        run(mode, args)


if __name__ == "__main__":
    main()
