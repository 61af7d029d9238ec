"""Sections about the traffic the monitor takes in: the sidecar proxy, the relay, the
reference model, the streams, the records API and OTLP traces."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from monitor.config._types import NAME_PATTERN, Duration, Section


class ProxySettings(Section):
    # Inference server root URL (the request path, /v1/..., is appended); empty: no sidecar
    # routes.
    upstream: str = ""
    stream: str = "default"  # the configured stream that sidecar exchanges are sampled into
    # Longest wait for the upstream to send or take the next bytes. Generous by default: a long
    # generation may stream for minutes; the upstream's own limits should decide.
    timeout: Duration = timedelta(minutes=10)
    connect_timeout: Duration = timedelta(seconds=10)  # longest wait to connect to the upstream
    max_connections: int = Field(default=512, ge=1)  # pooled connections to the upstream
    sample_queue_size: int = Field(default=1000, ge=1)  # exchanges waiting to be sampled
    # A request or (decoded) answer larger than this is forwarded but not sampled (too_large).
    max_sample_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # Larger requests: 413. Bodies over max_sample_bytes are streamed to the upstream, not held,
    # so this bounds what a client may send, not the sidecar's memory.
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)


class RelaySettings(Section):
    """``mllm-monitor relay``: the sidecar's proxy and sampler only, forwarding the sampled
    exchanges to the records API of central replicas instead of embedding them itself."""

    central_url: str = ""  # root URL of the central replicas (POST /v1/records is appended)
    token: str = ""  # bearer token of the central records API ([server] token there)
    batch_size: int = Field(default=100, ge=1)  # records per POST (central max_batch_records)
    # Bytes per POST: keep under the central replicas' ingest max_body_bytes (one larger record
    # goes alone, and is refused there and dropped).
    max_batch_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    flush_interval: Duration = timedelta(seconds=1)  # a short batch waits at most this
    request_timeout: Duration = timedelta(seconds=30)  # one POST, connecting included
    spool_max_records: int = Field(default=10_000, ge=1)  # waiting records; more: dropped
    # JSON bytes of the waiting records; more: dropped.
    spool_max_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # A directory for the spool's JSONL segments, so a restart keeps what was accepted; unset:
    # the spool lives in memory only.
    spool_dir: Path | None = None
    min_backoff: Duration = timedelta(milliseconds=500)  # first retry of a 429/503/outage
    max_backoff: Duration = timedelta(seconds=30)  # retries back off up to this (Retry-After too)

    @field_validator("central_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if url and not re.match(r"^https?://[^/?#]+", url):
            raise ValueError("must be an http(s) URL, like http://mllm-monitor:8080")
        return url

    @model_validator(mode="after")
    def _backoff_order(self) -> RelaySettings:
        if self.min_backoff <= timedelta(0) or self.min_backoff > self.max_backoff:
            raise ValueError("min_backoff must be positive and at most max_backoff")
        return self


class ReferenceModelSettings(Section):
    """The reference-model sampler: a budgeted fraction of records is sent to a reference model
    (an OpenAI-compatible chat endpoint), whose answers give EMI and EMID. Formerly [references]."""

    # Base URL as OpenAI clients take it (http://host:8000/v1; /chat/completions is appended);
    # empty (or model empty): the sampler is off.
    model_url: str = ""
    model: str = ""  # model name sent in each request; empty: the sampler is off
    # Share of stored records without a reference that are sent, chosen by record id (a replay
    # asks for the same records); 0 to 1.
    fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    # Requests in any 60 seconds; records over it are skipped (0: none is sent).
    max_per_minute: int = Field(default=60, ge=0)
    api_key: str = ""  # sent as a bearer token to model_url
    # Longest wait to connect, and for the answer; past it the record keeps no reference.
    timeout: Duration = timedelta(seconds=60)
    concurrency: int = Field(default=2, ge=1)  # requests in flight at once
    max_tokens: int = Field(default=512, ge=1)  # each request's max_tokens: longest answer asked
    queue_size: int = Field(default=100, ge=1)  # records waiting for a reference; more: skipped


class StreamSettings(Section):
    # The stream records name in their "stream" field; labels its windows and metrics.
    name: str = Field(default="default", pattern=NAME_PATTERN)
    # Name of the reference store (under reference.root) the stream's windows are compared with.
    reference: str = Field(default="default", pattern=NAME_PATTERN)
    # Share of the stream's records kept, chosen by a hash of the record id (the same on every
    # replica and replay); a kept record stands for 1 / sample_rate records. 0 < rate <= 1.
    sample_rate: float = Field(default=1.0, gt=0.0, le=1.0)
    # Rate cap on sampled records (token bucket, burst of one second); 0 = no cap.
    max_records_per_second: float = Field(default=0.0, ge=0.0)


class IngestSettings(Section):
    """Limits of the records API, the inbox, and image URL fetching (monitor.ingest)."""

    # Largest request body of the records, references and traces routes, in bytes, inflated
    # size too when gzipped (413 over it); also the longest line `backfill` reads. The default
    # fits one max-size image in base64.
    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    # Records, references, or OTLP LLM spans in one request; more: 413.
    max_batch_records: int = Field(default=1000, ge=1)
    max_references_per_record: int = Field(default=8, ge=1)  # late references kept per record id
    max_text_chars: int = Field(default=200_000, ge=1)  # prompt, response, reference, message
    max_messages: int = Field(default=256, ge=1)  # OpenAI messages (and parts of one message)
    max_future: Duration = timedelta(hours=1)  # timestamps later than now + this are refused
    max_inbox_depth: int = Field(default=100_000, ge=1)  # 429 once the inbox holds this many
    retry_after: Duration = timedelta(seconds=5)  # Retry-After of a 429 (full) or 503 (storage)
    # http(s) image URLs are fetched only from these hosts ("cdn.example.com", "*.example.com");
    # empty = never. Private, loopback, link-local and metadata addresses are refused anyway.
    image_url_hosts: list[str] = Field(default_factory=list)
    image_url_timeout: Duration = timedelta(seconds=10)  # whole fetch, redirects included
    # Redirects followed per image URL, each target checked like the first; 0: none followed.
    image_url_max_redirects: int = Field(default=3, ge=0)


class OtlpSettings(Section):
    """OTLP/HTTP traces (POST /v1/traces): the stream each LLM span's record goes to. The value
    of ``stream_attribute`` (on the span, else on its resource) is looked up in
    ``stream_map``; a value that is not mapped but names a configured stream is that stream."""

    # Attribute (on the span, else on its resource) whose value chooses the stream.
    stream_attribute: str = Field(default="service.name", min_length=1)
    # "value=stream" pairs, like "checkout-api=vision": attribute values to configured streams.
    stream_map: list[str] = Field(default_factory=list)
    # The stream of spans without the attribute; empty: the first [[streams]] entry.
    default_stream: str = ""
    # A value that names no stream (after stream_map): "default" sends the span to
    # default_stream, "skip" skips it (counted as otlp_spans_skipped{reason="unknown_stream"}).
    unknown_stream: Literal["default", "skip"] = "default"

    @field_validator("stream_map")
    @classmethod
    def _pairs(cls, pairs: list[str]) -> list[str]:
        for pair in pairs:
            value, sep, stream = pair.partition("=")
            if not sep or not value.strip() or not stream.strip():
                raise ValueError(f'{pair!r} is not "value=stream"')
        return pairs

    @property
    def stream_by_value(self) -> dict[str, str]:
        """``stream_map`` as a dict (attribute value -> stream name)."""
        pairs = (pair.partition("=") for pair in self.stream_map)
        return {value.strip(): stream.strip() for value, _, stream in pairs}
