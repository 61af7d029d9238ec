"""Readiness: named checks the daemon sets as it loads, and ``GET /readyz`` reports.

``Readiness(required=(...))`` starts every required check as not ready ("not checked yet"), so
a process is not ready until each one has been set; ``set(name, ok, detail)`` records a check
(the daemon sets ``database``, ``reference_store:<name>``, ``encoders``, ``calibration:<stream>``,
``scheduler``); ``probe(name, fn)`` registers a check run at every ``snapshot()`` (for things
that can go away, like the database), where ``fn`` returns ``(ok, detail)`` or raises (not ok).
``snapshot()`` gives ``(all ok, {name: {"ok": bool, "detail": str}})``; with no checks at all
the process counts as ready.

The daemon's ``database`` check is such a probe: :func:`database_check` (``SELECT 1``, and for
SQLite the free space and writability beside the file) wrapped in :class:`CachedProbe`, which
runs it at most once a second and gives it one second to answer, so ``/readyz`` stays cheap
and turns 503 within about two seconds of the database going away (and back when it returns).
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from monitor.errors import MonitorError
from monitor.store.engine import check_connection, sqlite_file

Probe = Callable[[], tuple[bool, str]]

# A SQLite database with less free space than this beside it is "full": writes are about to
# fail (SQLITE_FULL) while reads, and SELECT 1, still succeed.
MIN_FREE_BYTES = 1024 * 1024


class Readiness:
    """Thread-safe named readiness checks."""

    def __init__(self, required: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._checks: dict[str, tuple[bool, str]] = {
            name: (False, "not checked yet") for name in required
        }
        self._probes: dict[str, Probe] = {}

    def set(self, name: str, ok: bool, detail: str = "") -> None:
        with self._lock:
            self._checks[name] = (bool(ok), detail)

    def probe(self, name: str, check: Probe) -> None:
        with self._lock:
            self._probes[name] = check

    def snapshot(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        with self._lock:
            checks = dict(self._checks)
            probes = dict(self._probes)
        for name, check in probes.items():
            try:
                checks[name] = check()
            except Exception as exc:  # a failing probe is a not-ready answer, not a 500
                checks[name] = (False, f"{type(exc).__name__}: {exc}")
        body = {name: {"ok": ok, "detail": detail} for name, (ok, detail) in sorted(checks.items())}
        return all(ok for ok, _ in checks.values()), body


class CachedProbe:
    """``check`` run at most once per ``ttl`` seconds, in a thread of its own, given ``timeout``
    seconds to answer: a check that hangs (a server that accepts and never answers) makes the
    probe answer not ok instead of making ``/readyz`` hang, and never runs twice at once."""

    def __init__(
        self,
        check: Probe,
        *,
        ttl: float = 1.0,
        timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self._ttl = ttl
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._result: tuple[bool, str] | None = None
        self._answered_at = -math.inf
        self._asked_at = 0.0
        self._answered: threading.Event | None = None  # set while a check is in flight

    def __call__(self) -> tuple[bool, str]:
        with self._lock:
            if self._result is not None and self._clock() - self._answered_at < self._ttl:
                return self._result
            if self._answered is None:
                self._answered = threading.Event()
                self._asked_at = self._clock()
                threading.Thread(
                    target=self._run, args=(self._answered,), name="readiness-probe", daemon=True
                ).start()
            answered, asked_at = self._answered, self._asked_at
        answered.wait(max(0.0, asked_at + self._timeout - self._clock()))
        with self._lock:
            if answered.is_set() and self._result is not None:
                return self._result
            waited = self._clock() - asked_at
        return False, f"no answer within {self._timeout:g} s (asked {waited:.1f} s ago)"

    def _run(self, answered: threading.Event) -> None:
        try:
            result = self._check()
        except Exception as exc:  # a failing check is a not-ready answer
            result = (False, f"{type(exc).__name__}: {exc}")
        with self._lock:
            self._result = (bool(result[0]), str(result[1]))
            self._answered_at = self._clock()
            self._answered = None
        answered.set()


def database_check(engine: Engine, *, min_free_bytes: int = MIN_FREE_BYTES) -> Probe:
    """The ``database`` readiness check: the database answers ``SELECT 1``; a SQLite database
    also needs its directory writable and ``min_free_bytes`` free there (a full disk fails
    every write while reads still succeed)."""
    path = sqlite_file(engine.url)

    def check() -> tuple[bool, str]:
        try:
            check_connection(engine)
        except MonitorError as exc:
            return False, str(exc)
        if path is not None:
            problem = sqlite_disk_problem(path, min_free_bytes)
            if problem is not None:
                return False, problem
        return True, "answers"

    return check


def sqlite_disk_problem(path: Path, min_free_bytes: int) -> str | None:
    """Why SQLite at ``path`` cannot write (a read-only or full disk), or None."""
    directory = path.parent
    for target in (path, directory):
        if target.exists() and not os.access(target, os.W_OK):
            return f"database {path} is not writable ({target} is read-only)"
    try:
        free = shutil.disk_usage(directory).free
    except OSError as exc:
        return f"cannot read the free space beside database {path}: {exc.strerror}"
    if free < min_free_bytes:
        return f"disk full: {free} bytes free beside database {path} (needs {min_free_bytes})"
    return None
