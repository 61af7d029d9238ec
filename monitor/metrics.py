"""Every Prometheus metric of mllm-monitor, built on a registry that is passed in.

Naming rule (the Prometheus conventions that ``promtool check metrics`` enforces):

* every name starts with ``mllm_monitor_``; words are ``snake_case``;
* a counter ends in ``_total``; a quantity with a unit ends in its base unit
  (``_seconds``, ``_bytes``, ``_nats``); a share in ``[0, 1]`` ends in ``_ratio``; a point in
  time ends in ``_timestamp_seconds``; a dimensionless statistic (a JSD, a p-value, a risk
  level) carries no unit;
* labels are few and bounded: ``stream`` (only configured streams, plus ``_other`` for
  records rejected before a stream is known), ``term`` (:data:`WINDOW_TERMS`), ``outcome``,
  ``form``, ``side``, ``route``, ``reason``. Every label combination is created up front, so a
  ``{outcome="rejected"}`` series exists (at 0) before the first rejection and dashboards and
  ``rate()`` see it from the first scrape;
* a window gauge that has no value (no references yet, a term not computable) is NaN, never 0:
  NaN compares false, so an alert rule on it stays quiet instead of reading a fake zero.

Nothing here is global: :class:`MonitorMetrics` registers its metrics on the
``CollectorRegistry`` given to it, so tests and several apps in one process stay apart.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from monitor import __version__
from monitor.records import WINDOW_TERMS, WindowResult

PREFIX = "mllm_monitor"
_NEVER = datetime.min.replace(tzinfo=UTC)

#: What happens to a record offered to the monitor.
RECORD_OUTCOMES: tuple[str, ...] = (
    "sampled",
    "skipped",
    "rejected",
    "dropped",
    "failed",
    "duplicate",  # a record id already waiting or embedded: not stored again
    "unavailable",  # refused with 503 while storage was down (the sender should retry)
)
#: The two forms of the EMID upper bound (entropy-scaled, and scale-adjusted: H = 1, no factor 4).
BOUND_FORMS: tuple[str, ...] = ("scale_adjusted", "entropy_scaled")
#: Stream label for records rejected before their stream is known (or naming an unknown one).
OTHER_STREAM = "_other"
#: Sidecar routes, by what happens to them.
PROXY_ROUTES: tuple[str, ...] = ("chat_completions", "completions", "models", "other")
#: Why the sidecar gave up sampling an exchange (the client never notices: it fails open).
FAIL_OPEN_REASONS: tuple[str, ...] = (
    "queue_full",  # the sidecar's in-memory sampling queue (the database is slower than traffic)
    "inbox_full",
    "storage_error",
    "invalid",
    "internal_error",
    "too_large",  # request or (decoded) answer over [proxy] max_sample_bytes
    "aborted",  # the client or the upstream broke the exchange off
)
#: Why the relay lost an exchange: the sidecar's reasons that apply without a local inbox,
#: plus a full spool and a permanent refusal by the central records API (a 4xx but 429).
RELAY_FAIL_OPEN_REASONS: tuple[str, ...] = (
    *(r for r in FAIL_OPEN_REASONS if r not in ("inbox_full", "storage_error")),
    "spool_full",
    "rejected",  # refused by the central records API (a 4xx but 429, or a 500)
    "unsent",  # left in a memory-only spool at shutdown
    "unreadable",  # a torn or invalid line of an on-disk spool read back
)
#: What happened to exchanges the relay sampled: spooled (waiting to be forwarded), skipped
#: (the stream's sampling or rate cap), forwarded (accepted by the central records API).
RELAY_OUTCOMES: tuple[str, ...] = ("spooled", "skipped", "forwarded")
#: Why the relay retried a batch: 429, 503 (or another 5xx), a connection failure, a timeout.
RELAY_RETRY_REASONS: tuple[str, ...] = ("too_many_requests", "unavailable", "connection", "timeout")
#: Why a span received on POST /v1/traces became no record.
OTLP_SKIP_REASONS: tuple[str, ...] = (
    "not_llm",  # not an LLM call (HTTP, database, tool, embedding, agent, chain spans)
    "no_prompt",  # an LLM span without prompt content (content capture is off)
    "unknown_stream",  # its stream attribute names no stream and [otlp] unknown_stream = "skip"
    "invalid",  # its content breaks a records API rule (size, image, time, model name)
)
#: Outcomes of asking the reference model for a reference answer.
REFERENCE_OUTCOMES: tuple[str, ...] = ("succeeded", "failed", "timeout", "budget_skipped")
#: Window statuses.
WINDOW_STATUSES: tuple[str, ...] = ("ok", "insufficient")

_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SLOW_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


def _proxy_metrics(r: CollectorRegistry) -> tuple[Counter, Histogram, Counter]:
    """The proxy's metrics, the same for the full sidecar and the relay (one dashboard)."""
    proxy_requests = Counter(
        _name("proxy_requests"),
        "Requests forwarded by the sidecar to the upstream inference server, by route.",
        ["route"],
        registry=r,
    )
    added_latency = Histogram(
        _name("proxy_added_latency_seconds"),
        "Latency the sidecar adds before the upstream's response starts (time to first "
        "byte minus the upstream's own time to first byte).",
        buckets=_FAST_BUCKETS,
        registry=r,
    )
    fail_open = Counter(
        _name("proxy_fail_open"),
        "Exchanges the sidecar passed through but could not sample, by reason. The client "
        "got the upstream's answer unchanged.",
        ["reason"],
        registry=r,
    )
    return proxy_requests, added_latency, fail_open


class MonitorMetrics:
    """The monitor's metrics for a fixed set of streams, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry, streams: Sequence[str]) -> None:
        self.registry = registry
        self.streams: tuple[str, ...] = tuple(streams)
        r = registry

        # -- build and process --------------------------------------------------------------
        self.build_info = Info(_name("build"), "Version of mllm-monitor serving.", registry=r)
        self.build_info.info({"version": __version__, "python": platform.python_version()})

        # -- ingest (step 5) -----------------------------------------------------------------
        self.records = Counter(
            _name("records"),
            "Records offered to the monitor, by what happened to them: sampled (durable in the "
            "inbox), skipped (sampling or rate cap), rejected (invalid, 4xx), dropped (lost: "
            "inbox full or storage down on the fail-open sidecar path), failed (could not be "
            "embedded, moved aside), duplicate (an id already waiting or embedded: not stored "
            "again), unavailable (refused with 503 while storage was down; the sender retries).",
            ["stream", "outcome"],
            registry=r,
        )
        self.inbox_depth = Gauge(
            _name("inbox_depth"), "Records waiting in the durable inbox to be embedded.", registry=r
        )
        self.embed_batch_seconds = Histogram(
            _name("embed_batch_seconds"),
            "Time to embed one inbox batch and write its samples.",
            buckets=_SLOW_BUCKETS,
            registry=r,
        )
        self.embedded_records = Counter(
            _name("embedded_records"),
            "Records embedded and stored as samples.",
            ["stream"],
            registry=r,
        )
        self.images_dropped = Counter(
            _name("images_dropped"),
            "Images of accepted records dropped unread because no image encoder is configured "
            '([encoders.image] kind = "none"): the record counts, its image does not.',
            ["stream"],
            registry=r,
        )
        self.late_references = Counter(
            _name("late_references"),
            "Reference answers received after their record, by outcome (joined, pending, unknown).",
            ["outcome"],
            registry=r,
        )
        self.proxy_requests, self.proxy_added_latency_seconds, self.proxy_fail_open = (
            _proxy_metrics(r)
        )
        self.otlp_spans = Counter(
            _name("otlp_spans"),
            "Spans received on POST /v1/traces (OTLP); the LLM spans among them become records.",
            registry=r,
        )
        self.otlp_spans_skipped = Counter(
            _name("otlp_spans_skipped"),
            "Spans received on POST /v1/traces that became no record, by reason: not_llm, "
            "no_prompt (an LLM span without prompt content), unknown_stream, invalid.",
            ["reason"],
            registry=r,
        )
        self.reference_requests = Counter(
            _name("reference_requests"),
            "Requests to the reference model for reference answers, by outcome.",
            ["outcome"],
            registry=r,
        )

        # -- windows and risk (step 6) -------------------------------------------------------
        sw = ["stream"]
        st = ["stream", "term"]
        self.window_jsd = Gauge(
            _name("window_jsd"), "JSD of the last window's term against ID data.", st, registry=r
        )
        self.window_jsd_threshold = Gauge(
            _name("window_jsd_threshold"),
            "Null threshold of the term's JSD at the configured false-alarm rate.",
            st,
            registry=r,
        )
        self.window_p_value = Gauge(
            _name("window_p_value"),
            "p-value of the last window's term under the ID-vs-ID null.",
            st,
            registry=r,
        )
        self.upper_bound = Gauge(
            _name("upper_bound"),
            "EMID upper bound of the last window (form: scale_adjusted or entropy_scaled).",
            ["stream", "form"],
            registry=r,
        )
        self.upper_bound_threshold = Gauge(
            _name("upper_bound_threshold"),
            "Null threshold of the scale-adjusted bound at the configured false-alarm rate.",
            sw,
            registry=r,
        )
        self.upper_bound_p_value = Gauge(
            _name("upper_bound_p_value"),
            "p-value of the last window's scale-adjusted bound under the ID-vs-ID null.",
            sw,
            registry=r,
        )
        self.upper_bound_budget = Gauge(
            _name("upper_bound_budget"),
            "Configured budget on the scale-adjusted bound (NaN when 'auto').",
            sw,
            registry=r,
        )
        self.detector_statistic = Gauge(
            _name("detector_statistic"),
            "Statistic of the stream's sequential drift detector after the last sufficient "
            "window (a capped CUSUM of window scores); critical while it is alarmed. NaN "
            "without a detector.",
            sw,
            registry=r,
        )
        self.detector_threshold = Gauge(
            _name("detector_threshold"),
            "Threshold the detector statistic pages over (calibrated for [alerts] "
            "false_page_interval). NaN without a detector.",
            sw,
            registry=r,
        )
        self.emi_nats = Gauge(
            _name("emi_nats"),
            "Effective mutual information of the last window (side: live) and of ID data "
            "(side: id), in nats. NaN without reference answers.",
            ["stream", "side"],
            registry=r,
        )
        self.emid_nats = Gauge(
            _name("emid_nats"),
            "EMI drop from ID to the last window, in nats (positive: worse on live data).",
            sw,
            registry=r,
        )
        self.emid_interval_nats = Gauge(
            _name("emid_interval_nats"),
            "Bootstrap interval of EMID (edge: lower or upper), in nats.",
            ["stream", "edge"],
            registry=r,
        )
        self.emid_budget_nats = Gauge(
            _name("emid_budget_nats"), "Configured EMID budget, in nats.", sw, registry=r
        )
        self.risk_level = Gauge(
            _name("risk_level"),
            "Risk level of the last window: 0 ok, 1 warning, 2 critical.",
            sw,
            registry=r,
        )
        self.window_samples = Gauge(
            _name("window_samples"), "Samples in the last window.", sw, registry=r
        )
        self.ood_ratio = Gauge(
            _name("ood_ratio"),
            "Share of the last window's samples flagged out-of-distribution by kNN.",
            sw,
            registry=r,
        )
        self.ood_ratio_threshold = Gauge(
            _name("ood_ratio_threshold"),
            "Calibrated threshold on the OOD share of a window of the last window's size.",
            sw,
            registry=r,
        )
        self.last_window_end_timestamp_seconds = Gauge(
            _name("last_window_end_timestamp_seconds"),
            "End (event time, Unix seconds) of the last computed window.",
            sw,
            registry=r,
        )
        self.window_size_seconds = Gauge(
            _name("window_size_seconds"),
            "Configured window length ([windows] size); the stale-monitor alert compares the age "
            "of the last window with it.",
            sw,
            registry=r,
        )
        self.window_lateness_seconds = Gauge(
            _name("window_lateness_seconds"),
            "Configured wait after a window's end before it is computed ([windows] lateness).",
            sw,
            registry=r,
        )
        self.windows = Counter(
            _name("windows"), "Windows computed, by status.", ["stream", "status"], registry=r
        )
        self.window_compute_seconds = Histogram(
            _name("window_compute_seconds"),
            "Time to compute one window (read, estimators, write).",
            sw,
            buckets=_SLOW_BUCKETS,
            registry=r,
        )
        self.calibrated = Gauge(
            _name("calibrated"),
            "1 when the stream's reference store has a calibration (p-values exist), else 0.",
            sw,
            registry=r,
        )
        self.scheduler_leader = Gauge(
            _name("scheduler_leader"),
            "1 while this process holds the lock that lets it compute windows, else 0.",
            registry=r,
        )
        self.scheduler_streams_led = Gauge(
            _name("scheduler_streams_led"),
            "Streams whose windows this process computes now (per-stream leadership shares "
            "the streams among replicas; a single leader leads every stream).",
            registry=r,
        )

        # Per stream: the start of the window the window gauges show, and the latest window end.
        self._shown: dict[str, datetime] = {}
        self._last_end: dict[str, datetime] = {}
        self._create_label_values()

    def _create_label_values(self) -> None:
        """Create every series up front (counters at 0, window gauges at NaN)."""
        for stream in (*self.streams, OTHER_STREAM):
            for outcome in RECORD_OUTCOMES:
                self.records.labels(stream=stream, outcome=outcome)
        for outcome in ("joined", "pending", "unknown"):
            self.late_references.labels(outcome=outcome)
        for route in PROXY_ROUTES:
            self.proxy_requests.labels(route=route)
        for reason in FAIL_OPEN_REASONS:
            self.proxy_fail_open.labels(reason=reason)
        for outcome in REFERENCE_OUTCOMES:
            self.reference_requests.labels(outcome=outcome)
        for reason in OTLP_SKIP_REASONS:
            self.otlp_spans_skipped.labels(reason=reason)
        for stream in self.streams:
            self.embedded_records.labels(stream=stream)
            self.images_dropped.labels(stream=stream)
            self.window_compute_seconds.labels(stream=stream)
            for status in WINDOW_STATUSES:
                self.windows.labels(stream=stream, status=status)
            for term in WINDOW_TERMS:
                for gauge in (self.window_jsd, self.window_jsd_threshold, self.window_p_value):
                    gauge.labels(stream=stream, term=term).set(math.nan)
            for form in BOUND_FORMS:
                self.upper_bound.labels(stream=stream, form=form).set(math.nan)
            for side in ("live", "id"):
                self.emi_nats.labels(stream=stream, side=side).set(math.nan)
            for edge in ("lower", "upper"):
                self.emid_interval_nats.labels(stream=stream, edge=edge).set(math.nan)
            for gauge in (
                self.upper_bound_threshold,
                self.upper_bound_p_value,
                self.upper_bound_budget,
                self.detector_statistic,
                self.detector_threshold,
                self.emid_nats,
                self.emid_budget_nats,
                self.window_samples,
                self.ood_ratio,
                self.ood_ratio_threshold,
                self.last_window_end_timestamp_seconds,
                self.window_size_seconds,
                self.window_lateness_seconds,
            ):
                gauge.labels(stream=stream).set(math.nan)
            self.risk_level.labels(stream=stream).set(0)
            self.calibrated.labels(stream=stream).set(0)

    def stream_label(self, stream: str | None) -> str:
        """The ``stream`` label for a record: its stream if configured, else ``_other``."""
        return stream if stream in self.streams else OTHER_STREAM

    def set_window_settings(self, size_seconds: float, lateness_seconds: float) -> None:
        """Publish the window length and lateness of every stream (the daemon calls this once)."""
        for stream in self.streams:
            self.window_size_seconds.labels(stream=stream).set(size_seconds)
            self.window_lateness_seconds.labels(stream=stream).set(lateness_seconds)

    def count_records(self, stream: str | None, outcome: str, amount: int = 1) -> None:
        if amount:
            self.records.labels(stream=self.stream_label(stream), outcome=outcome).inc(amount)

    def note_window_end(self, stream: str, end: datetime) -> None:
        """Move the stream's last-window-end gauge forward to ``end`` (never back: an older
        window recomputed later does not make the stream look stale)."""
        if end > self._last_end.get(stream, _NEVER):
            self._last_end[stream] = end
            self.last_window_end_timestamp_seconds.labels(stream=stream).set(end.timestamp())

    def publish_window(
        self, result: WindowResult, *, bound_budget: float | None, emid_budget: float
    ) -> bool:
        """Show a sufficient window in the stream's window gauges (None -> NaN), unless they
        already show a newer one (a recomputed older window). Returns whether it was shown."""
        stream = result.key.stream
        if result.status != "ok" or result.key.start < self._shown.get(stream, _NEVER):
            return False
        self._shown[stream] = result.key.start
        for term in WINDOW_TERMS:
            labels = {"stream": stream, "term": term}
            self.window_jsd.labels(**labels).set(gauge_value(getattr(result.jsd, term)))
            self.window_p_value.labels(**labels).set(gauge_value(getattr(result.p_values, term)))
            self.window_jsd_threshold.labels(**labels).set(
                gauge_value(getattr(result.thresholds, term))
            )
        bound = self.upper_bound
        bound.labels(stream=stream, form="scale_adjusted").set(
            gauge_value(result.bound_scale_adjusted)
        )
        bound.labels(stream=stream, form="entropy_scaled").set(
            gauge_value(result.bound_entropy_scaled)
        )
        low, high = result.emid_interval or (None, None)
        reading = result.detector
        for gauge, value in (
            (self.upper_bound_p_value, result.bound_p_value),
            (self.upper_bound_threshold, result.bound_threshold),
            (self.upper_bound_budget, bound_budget),
            (self.emid_nats, result.emid),
            (self.emid_budget_nats, emid_budget),
            (self.risk_level, int(result.risk_level)),
            (self.window_samples, result.n),
            (self.ood_ratio, result.ood_fraction),
            (self.ood_ratio_threshold, result.ood_threshold),
            (self.detector_statistic, reading.statistic if reading is not None else None),
            (self.detector_threshold, reading.threshold if reading is not None else None),
        ):
            gauge.labels(stream=stream).set(gauge_value(value))
        self.emi_nats.labels(stream=stream, side="live").set(gauge_value(result.emi_live))
        self.emi_nats.labels(stream=stream, side="id").set(gauge_value(result.emi_id))
        self.emid_interval_nats.labels(stream=stream, edge="lower").set(gauge_value(low))
        self.emid_interval_nats.labels(stream=stream, edge="upper").set(gauge_value(high))
        return True


class RelayMetrics:
    """The relay's metrics (``mllm-monitor relay``): the proxy's, the spool's, the forwarding's;
    nothing of windows or the inbox, which the central replicas publish."""

    def __init__(self, registry: CollectorRegistry, streams: Sequence[str]) -> None:
        self.registry = registry
        self.streams: tuple[str, ...] = tuple(streams)
        r = registry
        self.build_info = Info(_name("build"), "Version of mllm-monitor serving.", registry=r)
        self.build_info.info({"version": __version__, "python": platform.python_version()})
        self.proxy_requests, self.proxy_added_latency_seconds, self.proxy_fail_open = (
            _proxy_metrics(r)
        )
        self.relay_records = Counter(
            _name("relay_records"),
            "Sampled exchanges of the relay, by outcome: spooled (waiting to be forwarded), "
            "skipped (the stream's sampling or rate cap), forwarded (accepted by the central "
            "records API). Losses are in proxy_fail_open.",
            ["outcome"],
            registry=r,
        )
        self.relay_retries = Counter(
            _name("relay_retries"),
            "Batches the relay sent again after a 429, a 5xx, a connection failure or a timeout.",
            ["reason"],
            registry=r,
        )
        self.relay_spool_records = Gauge(
            _name("relay_spool_records"), "Records waiting in the relay's spool.", registry=r
        )
        self.relay_spool_bytes = Gauge(
            _name("relay_spool_bytes"), "JSON size of the records in the relay's spool.", registry=r
        )
        self.relay_last_forward_timestamp_seconds = Gauge(
            _name("relay_last_forward_timestamp_seconds"),
            "When the central records API last accepted a batch (Unix seconds; 0: never).",
            registry=r,
        )
        for route in PROXY_ROUTES:
            self.proxy_requests.labels(route=route)
        for reason in RELAY_FAIL_OPEN_REASONS:
            self.proxy_fail_open.labels(reason=reason)
        for outcome in RELAY_OUTCOMES:
            self.relay_records.labels(outcome=outcome)
        for reason in RELAY_RETRY_REASONS:
            self.relay_retries.labels(reason=reason)


def gauge_value(value: float | None) -> float:
    """A window value as a gauge sample: None (absent) becomes NaN, never 0."""
    return math.nan if value is None else float(value)


def metric_names(registry: CollectorRegistry) -> Iterable[str]:
    """Every sample name the registry exposes (``_total``, ``_bucket`` ... included)."""
    for family in registry.collect():
        for sample in family.samples:
            yield sample.name
