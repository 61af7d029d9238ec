"""Readiness: named checks the daemon sets as it loads, and ``GET /readyz`` reports.

``Readiness(required=(...))`` starts every required check as not ready ("not checked yet"), so
a process is not ready until each one has been set; ``set(name, ok, detail)`` records a check
(the daemon sets ``database``, ``reference_store:<name>``, ``encoders``, ``calibration:<stream>``,
``scheduler``); ``probe(name, fn)`` registers a check run at every ``snapshot()`` (for things
that can go away, like the database), where ``fn`` returns ``(ok, detail)`` or raises (not ok).
``snapshot()`` gives ``(all ok, {name: {"ok": bool, "detail": str}})``; with no checks at all
the process counts as ready.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

Probe = Callable[[], tuple[bool, str]]


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
