"""Sections about where the service keeps its data, how it listens, and how its replicas share
the work: database, retention, server, workers, compute threads, scheduler."""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from monitor.config._types import Duration, Section


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class DatabaseSettings(Section):
    # sqlite:///PATH (one machine) or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB (needed by
    # several replicas); postgresql:// means psycopg 3 too.
    url: str = "sqlite:///./mllm-monitor.db"
    # Give up connecting after this long (an unreachable server is one clear error, not a hang).
    connect_timeout: Duration = timedelta(seconds=5)
    echo: bool = False  # log every SQL statement (SQLAlchemy's echo): debugging only, verbose

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if not url.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return url

    @property
    def is_postgresql(self) -> bool:
        return self.url.startswith("postgresql")


class RetentionSettings(Section):
    """Raw prompts, answers and images are not stored unless ``store_raw`` is switched on."""

    # Keep raw prompts, answers, reference texts and images in the database for raw_ttl; off:
    # none is written, and the retention job deletes any kept earlier.
    store_raw: bool = False
    # How long raw content is kept; also how long a late reference waits for its record before
    # the retention job deletes it.
    raw_ttl: Duration = timedelta(days=7)


class ServerSettings(Section):
    # Address the HTTP server (serve, or relay) listens on; any non-loopback address needs token.
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)  # TCP port; 0 = a free port, logged at start
    # Bearer token the monitor's own routes (records, references, traces, windows) require;
    # empty = none, allowed on a loopback host only. Health, readiness, metrics and the proxied
    # routes never need it.
    token: str = ""

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ServerSettings:
        if not self.token and not _is_loopback(self.host):
            raise ValueError(
                f"server.token must be set when server.host ({self.host}) is not a loopback "
                "address: anyone who reaches the port could write records"
            )
        return self


class WorkerSettings(Section):
    """In-process embedding workers: claim inbox batches, embed, score, store, acknowledge."""

    count: int = Field(default=1, ge=0)  # 0: this replica ingests but never embeds
    batch_size: int = Field(default=32, ge=1)  # records claimed and embedded together
    # A claimed batch's lease, renewed every third of it while the batch is in hand: a worker
    # that dies (SIGKILL) holds its records this long at most, a slow batch is never stolen.
    lease: Duration = timedelta(seconds=30)
    max_attempts: int = Field(default=5, ge=1)  # claims of one record before it is moved aside
    poll_interval: Duration = timedelta(milliseconds=500)  # wait when the inbox is empty


class ComputeSettings(Section):
    """CPU threads of torch, FAISS and BLAS; applied once at start-up (monitor.compute)."""

    # 0 = automatic: min(4, max(1, usable cores // 2)), so that a monitor next to an inference
    # server never spins a thread on every core (see monitor/compute.py for the measurements).
    threads: int = Field(default=0, ge=0, le=1024)


class SchedulerSettings(Section):
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
