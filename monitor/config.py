"""The settings tree: one TOML file plus ``MLLM_MONITOR_*`` environment overrides.

This module is the only reader of files and environment variables for settings; everything else
receives a :class:`Settings` (or a part of it) as an argument.

Where the file comes from, first match wins: the path given by the caller (``--config``), the
``MLLM_MONITOR_CONFIG`` variable, ``./mllm-monitor.toml`` if it exists, else embedded defaults.
Environment overrides beat the file: nested keys are joined by ``__``, so
``MLLM_MONITOR_DATABASE__URL`` sets ``[database] url``. Unknown keys are errors, so a typo is
reported instead of silently ignored; that includes environment variables: any
``MLLM_MONITOR_*`` variable that names no setting is an error, except the few that are not
settings (:data:`NON_SETTING_VARIABLES`).

Numbers must be finite (``inf`` and ``nan`` are refused everywhere) and durations at most
:data:`MAX_DURATION`, so later arithmetic on them cannot overflow.
"""

from __future__ import annotations

import difflib
import ipaddress
import itertools
import math
import os
import re
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from monitor.errors import ConfigError

ENV_PREFIX = "MLLM_MONITOR_"
CONFIG_PATH_ENV = "MLLM_MONITOR_CONFIG"
DEFAULT_CONFIG_FILE = Path("mllm-monitor.toml")
# MLLM_MONITOR_* variables that are not settings, so the unknown-variable check lets them be:
# the config file's path, the PostgreSQL URL the test suite uses, and the demo token that
# deploy/compose.yaml reads on the host (often exported in the shell that runs the CLI too).
NON_SETTING_VARIABLES = frozenset(
    {
        CONFIG_PATH_ENV,
        "MLLM_MONITOR_TEST_POSTGRES_URL",
        "MLLM_MONITOR_SOAK_MINUTES",
        "MLLM_MONITOR_TOKEN",
    }
)
# Kubernetes injects service links for a Service named mllm-monitor (deploy/k8s) into every
# pod of its namespace: MLLM_MONITOR_SERVICE_HOST, MLLM_MONITOR_PORT_8080_TCP_ADDR, ...
KUBERNETES_SERVICE_VARIABLE = re.compile(
    r"MLLM_MONITOR_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)?)"
)
# Names of reference stores and streams: they become directory names, metric labels and log
# fields, so no separators, no control characters, no leading dot.
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$"
# Longest duration accepted anywhere: far beyond any sensible window or TTL, and small enough
# that adding it to any timestamp of this century cannot overflow.
MAX_DURATION = timedelta(days=3650)
# Largest integer any setting may hold (2**53 - 1: exact as a float, fits every int64).
MAX_INTEGER = 2**53 - 1

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> object:
    """'90s', '5m', '1h', '1d' (or seconds as a number) to a timedelta; others pass through."""
    if isinstance(value, bool):  # an int to Python, never a duration
        raise ValueError("invalid duration: a boolean; use a number and a unit, like '5m'")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an integer beyond float range
            seconds = math.inf
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(
                f"invalid duration {value[:40]!r}: use a number and a unit, like '5m' or '30s'"
            )
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    else:
        return value
    if not math.isfinite(seconds) or abs(seconds) > MAX_DURATION.total_seconds():
        raise ValueError(
            f"duration out of range: at most {format_duration(MAX_DURATION)} "
            f"({MAX_DURATION.days} days)"
        )
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest exact form: 300 s -> '5m', 90 s -> '90s'."""
    seconds = value.total_seconds()
    for unit in ("d", "h", "m", "s"):
        count = seconds / _UNIT_SECONDS[unit]
        if count == int(count):
            return f"{int(count)}{unit}"
    return f"{round(seconds * 1000)}ms"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _sane_scalars(cls, value: object) -> object:
        # TOML integers are unbounded in Python; a C or SQL integer downstream is not.
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER:
            raise ValueError(f"too large: at most {MAX_INTEGER:,}")
        # A NUL byte is never meant, and paths, URLs and C libraries choke on it later.
        if isinstance(value, str | Path) and "\x00" in str(value):
            raise ValueError("contains a NUL character")
        return value


class DatabaseSettings(_Section):
    url: str = "sqlite:///./mllm-monitor.db"
    # Give up connecting after this long (an unreachable server is one clear error, not a hang).
    connect_timeout: Duration = timedelta(seconds=5)
    echo: bool = False

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if not url.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return url

    @property
    def is_postgresql(self) -> bool:
        return self.url.startswith("postgresql")


class RetentionSettings(_Section):
    """Raw prompts, answers and images are not stored unless ``store_raw`` is switched on."""

    store_raw: bool = False
    raw_ttl: Duration = timedelta(days=7)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    token: str = ""

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ServerSettings:
        if not self.token and not _is_loopback(self.host):
            raise ValueError(
                f"server.token must be set when server.host ({self.host}) is not a loopback "
                "address: anyone who reaches the port could write records"
            )
        return self


# The image limits' defaults, here once: monitor.embedding.images.ImageLimits uses them too.
IMAGE_MAX_BYTES = 20 * 1024 * 1024  # encoded image size
IMAGE_MAX_PIXELS = 40_000_000  # decoded width * height


class ImageEncoderSettings(_Section):
    kind: Literal["clip_vision", "none"] = "clip_vision"
    model: str = "openai/clip-vit-base-patch32"
    revision: str = ""  # hub revision (branch, tag or commit) to pin; empty = default branch
    max_bytes: int = Field(default=IMAGE_MAX_BYTES, gt=0)  # encoded image size limit
    max_pixels: int = Field(default=IMAGE_MAX_PIXELS, gt=0)  # decoded width * height limit


class TextEncoderSettings(_Section):
    kind: Literal["xlmr_embedding_layer", "hf_mean_pool"] = "xlmr_embedding_layer"
    model: str = "xlm-roberta-base"
    revision: str = ""
    max_tokens: int = Field(default=512, ge=2)
    # Padded tokens per forward pass, texts sorted by length (0: batches of batch_size texts).
    batch_tokens: int = Field(default=512, ge=0)
    # "torch_int8": int8 dynamic quantisation of hf_mean_pool's Linear layers on CPU; faster,
    # slightly other rows and another fingerprint (stores built with "torch" refuse it).
    backend: Literal["torch", "torch_int8"] = "torch"


class EncoderSettings(_Section):
    image: ImageEncoderSettings = ImageEncoderSettings()
    text: TextEncoderSettings = TextEncoderSettings()
    device: str = "cpu"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    fusion: Literal["mean", "concat"] = "mean"
    batch_size: int = Field(default=32, ge=1)
    local_files_only: bool = False  # never reach the hub (HF_HUB_OFFLINE=1 also honoured)
    cache_size: int = Field(default=4096, ge=0)  # embeddings kept by content hash; 0 = off

    @model_validator(mode="before")
    @classmethod
    def _threads_moved(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "threads" in data:
            raise ValueError(
                "'threads' was replaced by compute.threads (one thread count for the encoders, "
                "the estimators and FAISS): move the value to [compute] threads"
            )
        return data

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not re.fullmatch(r"cpu|auto|cuda(:\d+)?|mps", device):
            raise ValueError("must be 'cpu', 'auto', 'cuda', 'cuda:N' or 'mps'")
        return device


class ReferenceStoreSettings(_Section):
    root: Path = Path("./references")


class ProxySettings(_Section):
    upstream: str = ""  # inference server root URL (the request path, /v1/..., is appended)
    stream: str = "default"  # the configured stream that sidecar exchanges are sampled into
    # Generous by default: a long generation may stream for minutes; the upstream's own limits
    # should decide, not the sidecar's.
    timeout: Duration = timedelta(minutes=10)
    connect_timeout: Duration = timedelta(seconds=10)
    max_connections: int = Field(default=512, ge=1)  # pooled connections to the upstream
    sample_queue_size: int = Field(default=1000, ge=1)  # exchanges waiting to be sampled
    max_sample_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)  # larger: passed, unsampled
    # Larger requests: 413. Bodies over max_sample_bytes are streamed to the upstream, not held,
    # so this bounds what a client may send, not the sidecar's memory.
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)


class RelaySettings(_Section):
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
    spool_max_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)  # their JSON size
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


class ReferenceModelSettings(_Section):
    """The reference-model sampler: a budgeted fraction of records is sent to a reference model
    (an OpenAI-compatible chat endpoint), whose answers give EMI and EMID. Formerly [references]."""

    model_url: str = ""
    model: str = ""
    fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    max_per_minute: int = Field(default=60, ge=0)
    api_key: str = ""  # sent as a bearer token to model_url
    timeout: Duration = timedelta(seconds=60)
    concurrency: int = Field(default=2, ge=1)  # requests in flight at once
    max_tokens: int = Field(default=512, ge=1)
    queue_size: int = Field(default=100, ge=1)  # records waiting for a reference; more: skipped


class WorkerSettings(_Section):
    """In-process embedding workers: claim inbox batches, embed, score, store, acknowledge."""

    count: int = Field(default=1, ge=0)  # 0: this replica ingests but never embeds
    batch_size: int = Field(default=32, ge=1)  # records claimed and embedded together
    # A claimed batch's lease, renewed every third of it while the batch is in hand: a worker
    # that dies (SIGKILL) holds its records this long at most, a slow batch is never stolen.
    lease: Duration = timedelta(seconds=30)
    max_attempts: int = Field(default=5, ge=1)  # claims of one record before it is moved aside
    poll_interval: Duration = timedelta(milliseconds=500)  # wait when the inbox is empty


class StreamSettings(_Section):
    name: str = Field(default="default", pattern=NAME_PATTERN)
    reference: str = Field(default="default", pattern=NAME_PATTERN)  # a store's name
    sample_rate: float = Field(default=1.0, gt=0.0, le=1.0)
    # Rate cap on sampled records (token bucket, burst of one second); 0 = no cap.
    max_records_per_second: float = Field(default=0.0, ge=0.0)


class IngestSettings(_Section):
    """Limits of the records API, the inbox, and image URL fetching (monitor.ingest)."""

    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)  # one max-size image in base64
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
    image_url_max_redirects: int = Field(default=3, ge=0)


class OtlpSettings(_Section):
    """OTLP/HTTP traces (POST /v1/traces): the stream each LLM span's record goes to. The value
    of ``stream_attribute`` (on the span, else on its resource) is looked up in
    ``stream_map``; a value that is not mapped but names a configured stream is that stream."""

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


class WindowSettings(_Section):
    size: Duration = timedelta(minutes=5)
    lateness: Duration = timedelta(minutes=1)
    min_samples: int = Field(default=50, ge=2)
    # A window with more samples is computed on a uniform random subset of this many (seeded by
    # the window, so a recomputation agrees): memory and time stay bounded at any traffic.
    # n and the OOD fraction always count every sample.
    max_compute_samples: int = Field(default=10_000, ge=100)

    @model_validator(mode="after")
    def _positive(self) -> WindowSettings:
        if self.size <= timedelta(0):
            raise ValueError("windows.size must be positive")
        if self.lateness < timedelta(0):
            raise ValueError("windows.lateness must not be negative")
        return self


def _auto_or_positive(value: object) -> object:
    """'auto', or a finite positive number: one clear message instead of one per union arm."""
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("must be 'auto' or a positive number")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise ValueError("must be 'auto' or a positive number") from None
    if not math.isfinite(number) or number <= 0.0:
        raise ValueError("must be 'auto' or a finite positive number")
    return number


class ComputeSettings(_Section):
    """CPU threads of torch, FAISS and BLAS; applied once at start-up (monitor.compute)."""

    # 0 = automatic: min(4, max(1, usable cores // 2)), so that a monitor next to an inference
    # server never spins a thread on every core (see monitor/compute.py for the measurements).
    threads: int = Field(default=0, ge=0, le=1024)


class AlertSettings(_Section):
    """When a window warns or pages. By default a sequential detector (a capped one-sided CUSUM
    of window scores from the bound's and the answers' p-values) decides criticals: it pages
    when its statistic passes the calibrated threshold and
    clears when the statistic falls to the clear level or below."""

    false_alarm_rate: float = Field(default=0.01, gt=0.0, lt=0.5)
    bound_budget: Annotated[Literal["auto"] | float, BeforeValidator(_auto_or_positive)] = "auto"
    emid_budget: float = Field(default=0.0, ge=0.0)  # nats; finite (no inf/nan anywhere)
    # Mean time between false criticals per stream on ID traffic, at the configured window
    # size: the detector's threshold is calibrated for it (rerun `mllm-monitor calibrate` after
    # changing it or [windows] size).
    false_page_interval: Duration = timedelta(days=90)
    # Empty: the sequential detector decides criticals. "k/m": the older rule instead, critical
    # when the bound is significant in k of the last m sufficient windows (like "2/3").
    hysteresis: str = ""

    @field_validator("hysteresis")
    @classmethod
    def _k_of_m(cls, value: str) -> str:
        if not value.strip():
            return ""
        match = re.fullmatch(r"\s*(\d{1,4})\s*/\s*(\d{1,4})\s*", value)
        if not match or not 1 <= int(match[1]) <= int(match[2]) <= 100:
            raise ValueError(
                "must be 'k/m' with 1 <= k <= m <= 100, like '2/3', or empty (the detector)"
            )
        return f"{int(match[1])}/{int(match[2])}"

    @field_validator("false_page_interval")
    @classmethod
    def _positive_interval(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be positive")
        return value

    @property
    def hysteresis_k_of_m(self) -> tuple[int, int] | None:
        """(k, m) of the k-of-m rule; None when the detector decides criticals."""
        if not self.hysteresis:
            return None
        k, m = self.hysteresis.split("/")
        return int(k), int(m)

    @property
    def trials_hysteresis(self) -> tuple[int, int]:
        """The rule's (k, m) as ``minimum_trials`` takes it: (1, 1), one window, for the
        detector (its per-window scores need the bound resolved at the false-alarm rate)."""
        return self.hysteresis_k_of_m or (1, 1)


class SchedulerSettings(_Section):
    """Window jobs: which replica runs them (one at a time, by lock) and how often it looks."""

    enabled: bool = True  # false: this replica ingests and embeds, never computes windows
    # File lock used with SQLite; default: beside the database file (<db>.scheduler.lock).
    lock_path: Path | None = None
    # A replica that is not the leader retries the lock this often; a dead leader is replaced
    # within about this long (PostgreSQL frees a dead session's advisory lock).
    lock_timeout: Duration = timedelta(seconds=15)
    check_interval: Duration = timedelta(seconds=10)  # how often due windows are looked for
    catch_up: bool = True  # on start, compute windows missed while no leader ran
    max_catch_up: int = Field(default=10_000, ge=1)  # most windows one pass computes per stream
    # Who computes which windows. "per_stream" (PostgreSQL): each stream has a lock of its own
    # and the replicas share the streams evenly, so N replicas compute N streams' windows at
    # once. "single": one leader computes every stream. "auto": per_stream on PostgreSQL,
    # single otherwise (SQLite is one machine: one file lock).
    leadership: Literal["auto", "single", "per_stream"] = "auto"


class Settings(BaseSettings):
    """Every setting of the monitor (``mllm-monitor config example`` prints each, with its
    meaning)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
    )

    database: DatabaseSettings = DatabaseSettings()
    retention: RetentionSettings = RetentionSettings()
    server: ServerSettings = ServerSettings()
    encoders: EncoderSettings = EncoderSettings()
    compute: ComputeSettings = ComputeSettings()
    reference: ReferenceStoreSettings = ReferenceStoreSettings()
    proxy: ProxySettings = ProxySettings()
    relay: RelaySettings = RelaySettings()
    reference_model: ReferenceModelSettings = ReferenceModelSettings()
    streams: list[StreamSettings] = Field(default_factory=lambda: [StreamSettings()])
    windows: WindowSettings = WindowSettings()
    alerts: AlertSettings = AlertSettings()
    ingest: IngestSettings = IngestSettings()
    otlp: OtlpSettings = OtlpSettings()
    workers: WorkerSettings = WorkerSettings()
    scheduler: SchedulerSettings = SchedulerSettings()

    _source: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> Path | None:
        """The TOML file these settings were read from; None for embedded defaults."""
        return self._source

    @field_validator("streams")
    @classmethod
    def _unique_streams(cls, streams: list[StreamSettings]) -> list[StreamSettings]:
        names = [s.name for s in streams]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"stream names must be unique, repeated: {', '.join(duplicates)}")
        if not streams:
            raise ValueError("at least one [[streams]] entry is needed")
        return streams

    @model_validator(mode="after")
    def _per_stream_needs_postgres(self) -> Settings:
        if self.scheduler.leadership == "per_stream" and not self.database.is_postgresql:
            raise ValueError(
                'scheduler.leadership = "per_stream" needs PostgreSQL (several replicas on '
                'one database); with SQLite one process computes every stream: use "auto"'
            )
        return self

    @property
    def per_stream_leadership(self) -> bool:
        """Whether each stream has a leader lock of its own (see ``scheduler.leadership``)."""
        leadership = self.scheduler.leadership
        return leadership == "per_stream" or (leadership == "auto" and self.database.is_postgresql)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs; the environment overrides it.
        return (env_settings, init_settings)

    def redacted(self) -> dict[str, Any]:
        """The settings as plain data with every secret masked, for display (see redact)."""
        redacted: dict[str, Any] = redact(self.model_dump(mode="json"))
        return redacted

    @model_validator(mode="after")
    def _otlp_streams_configured(self) -> Settings:
        names = {s.name for s in self.streams}
        named = [self.otlp.default_stream] if self.otlp.default_stream else []
        unknown = sorted((set(named) | set(self.otlp.stream_by_value.values())) - names)
        if unknown:
            raise ValueError(
                f"otlp names streams that are not configured: {', '.join(unknown)} "
                f"(configured: {', '.join(sorted(names))})"
            )
        return self

    @property
    def otlp_default_stream(self) -> str:
        """The stream of OTLP spans without the stream attribute (see ``[otlp]``)."""
        return self.otlp.default_stream or self.streams[0].name


# A key whose value is a secret: any part of its snake_case name is one of these words.
_SECRET_WORDS = frozenset(
    {"token", "password", "passwd", "passphrase", "secret", "apikey", "privatekey", "credential"}
    | {"passwords", "secrets", "apikeys", "credentials"}
)
SECRET_MASK = "***"


def is_secret_key(key: str) -> bool:
    """True for names like token, api_key, openai_api_key, db_password, client_secret."""
    parts = re.split(r"[^a-z0-9]+", key.lower())
    joined = {a + b for a, b in itertools.pairwise(parts)}  # api_key -> apikey
    return bool(_SECRET_WORDS & (set(parts) | joined))


# A URL query or fragment parameter whose value is a credential: its name contains one of
# these (case-insensitively). Broader than is_secret_key on purpose: signed-URL and driver
# parameters (sig, X-Amz-Signature, sslpassword, pwd, jwt, AWSAccessKeyId) hide the secret in
# a longer name, and masking a harmless value in a message costs nothing.
_SECRET_PARAM = re.compile(r"key|token|secret|sig|auth|pass|pwd|jwt|credential", re.IGNORECASE)


def _mask_params(text: str, *, every: bool) -> str:
    """``name=value`` pairs (separated by '&' or ';') with secret values masked; ``every``
    masks every value (a fragment: it never reaches a server, so it holds only client data
    such as an OAuth access token)."""
    pairs = re.split(r"([&;])", text)
    for i in range(0, len(pairs), 2):
        name, eq, _ = pairs[i].partition("=")
        if eq and (every or _SECRET_PARAM.search(unquote(name))):
            pairs[i] = f"{name}={SECRET_MASK}"
    return "".join(pairs)


def _split_userinfo(rest: str) -> tuple[str, str]:
    """``rest`` (after ``scheme://``) as (userinfo, what follows its '@'); userinfo is empty
    when there is none. Passwords are often written unescaped, so a '?' or '#' after a
    ``user:`` does not end the authority: the userinfo runs to the last '@' before the path."""
    head = rest.split("/", 1)[0]
    if "@" not in head:
        return "", rest
    userinfo = head.rsplit("@", 1)[0]
    stop = min((i for i in map(userinfo.find, "?#") if i >= 0), default=len(userinfo))
    if stop < len(userinfo) and ":" not in userinfo[:stop]:
        return "", rest  # an '@' in a query value or fragment of a URL with no path
    return userinfo, rest[len(userinfo) + 1 :]


def mask_url(value: str) -> str:
    """A URL with its userinfo password (or a bare userinfo, often a token), the value of any
    query parameter whose name looks secret (:data:`_SECRET_PARAM`) and every fragment value
    masked; other strings unchanged."""
    scheme, sep, rest = value.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return value
    userinfo, rest = _split_userinfo(rest)
    if userinfo:
        user, colon, _ = userinfo.partition(":")
        userinfo = f"{user}:{SECRET_MASK}@" if colon else f"{SECRET_MASK}@"
    rest, hash_, fragment = rest.partition("#")
    path, qmark, query = rest.partition("?")
    if qmark:
        query = _mask_params(query, every=False)
    if hash_:
        fragment = _mask_params(fragment, every=True)
    return f"{scheme}://{userinfo}{path}{qmark}{query}{hash_}{fragment}"


def redact(data: Any, key: str = "") -> Any:
    """Plain data (dicts, lists, scalars) with every secret masked: the values of secret-named
    keys (:func:`is_secret_key`) and credentials inside any URL (:func:`mask_url`). Generic by
    name so that settings added later are covered without a list to maintain."""
    if isinstance(data, Mapping):
        return {k: redact(v, str(k)) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [redact(v, key) for v in data]
    if isinstance(data, str):
        if data and is_secret_key(key):
            return SECRET_MASK
        return mask_url(data)
    return data


def resolve_config_path(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The file to read: explicit path, then $MLLM_MONITOR_CONFIG, then ./mllm-monitor.toml."""
    if path is not None:
        return Path(path)
    from_env = os.environ.get(CONFIG_PATH_ENV)
    if from_env:
        return Path(from_env)
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


#: Sections renamed since an earlier release: old name -> new name. A file or variable that
#: uses an old name is refused with the new one, never silently ignored (a secret in it would
#: be lost).
RENAMED_SECTIONS: dict[str, str] = {"references": "reference_model"}


def _renamed_section_problems(data: Mapping[str, Any]) -> list[str]:
    return [
        f"[{old}] is now [{new}]: rename the section (its keys are unchanged)"
        for old, new in RENAMED_SECTIONS.items()
        if old in data
    ]


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read, merge and validate the settings; any problem raises one :class:`ConfigError`."""
    source = resolve_config_path(path)
    data: dict[str, Any] = {}
    if source is not None:
        try:
            with source.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {source}", path=source) from exc
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {source}: {exc}", path=source) from exc
    where = f"config file {source}" if source else "settings"
    renamed = _renamed_section_problems(data)
    if renamed:
        raise ConfigError(f"invalid {where}:", problems=renamed, path=source)
    unknown = unknown_environment_variables(os.environ)
    if unknown:
        raise ConfigError(f"invalid environment for {where}:", problems=unknown, path=source)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(
            f"invalid {where} (environment overrides included):",
            problems=[_describe(err) for err in exc.errors()],
            path=source,
        ) from exc
    except SettingsError as exc:  # a complex value (a list, a section) that is not JSON
        variable = _variable_of(str(exc))
        raise ConfigError(
            f"invalid environment for {where}:",
            problems=[f"{variable}: not valid JSON (lists and sections are given as JSON)"],
            path=source,
        ) from exc
    settings._source = source
    return settings


def unknown_environment_variables(environ: Mapping[str, str]) -> list[str]:
    """One problem line per ``MLLM_MONITOR_*`` variable that names no setting.

    Names are matched as pydantic-settings matches them (case-insensitive, sections joined by
    ``__``); :data:`NON_SETTING_VARIABLES` and Kubernetes service links are allowed.
    """
    allowed = {name.upper() for name in NON_SETTING_VARIABLES}
    problems = []
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith(ENV_PREFIX) or upper in allowed:
            continue
        if KUBERNETES_SERVICE_VARIABLE.fullmatch(upper):
            continue
        path = upper[len(ENV_PREFIX) :].lower().split("__")
        if path[0] in RENAMED_SECTIONS:
            new = f"{ENV_PREFIX}{'__'.join([RENAMED_SECTIONS[path[0]], *path[1:]]).upper()}"
            problems.append(
                f"{variable}: [{path[0]}] is now [{RENAMED_SECTIONS[path[0]]}]: use {new}"
            )
            continue
        fields: dict[str, Any] | None = Settings.model_fields
        for depth, part in enumerate(path):
            if fields is None or part not in fields:
                known = sorted(fields or {})
                guess = difflib.get_close_matches(part, known, n=1)
                hint = f"; did you mean {guess[0]!r}?" if guess else ""
                where = ".".join(path[:depth]) or "the top level"
                problems.append(
                    f"{variable}: unknown setting {part!r} in {where} (environment variables "
                    f"must name a documented key{hint})"
                )
                break
            annotation = fields[part].annotation
            is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
            fields = annotation.model_fields if is_section else None
    return problems


def _variable_of(message: str) -> str:
    match = re.search(r'field "([^"]+)"', message)
    return f"{ENV_PREFIX}{match[1].upper()}" if match else "an MLLM_MONITOR_* variable"


def _describe(err: Any) -> str:
    loc = ".".join(str(part) for part in err["loc"] if not str(part).startswith("function-"))
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key (check the spelling against the documented keys)"
    elif err["type"] == "string_pattern_mismatch" and err["ctx"]["pattern"] == NAME_PATTERN:
        message = (
            "must be 1 to 64 letters, digits, '_', '.', ':' or '-', starting with a letter, "
            f"digit or '_' (got {str(err['input'])[:80]!r})"
        )
    return f"{loc or '(top level)'}: {message}"
