"""A real Prometheus server on loopback for tests, with the shipped alert rules loaded.

Reusable by any integration test (the daemon's end-to-end test scrapes ``mllm-monitor serve``
with it)::

    from tests.integration.deploy.prometheus_server import PrometheusServer

    with PrometheusServer(tmp_path, targets=["127.0.0.1:8080"]) as prometheus:
        alert = prometheus.wait_for_alert("MllmMonitorCriticalDrift", {"stream": "shifted"})
        assert prometheus.alerts_named("MllmMonitorCriticalDrift", {"stream": "id"}) == []

Scrape and rule evaluation run every second. The rules are the shipped
``deploy/prometheus/alerts.yml`` with every ``for:`` shortened (:func:`shortened_rules`, 1 s by
default): a test cannot wait the production minutes, and what is under test is that the
expressions fire on the right series, not Prometheus's pending timer (``promtool test rules``
checks the real ``for:`` durations on synthetic series). The scrape job is named
``mllm-monitor``, as in the shipped ``prometheus.yml``.

The binary is ``prometheus`` on PATH or ``/usr/bin/prometheus`` (Debian package ``prometheus``,
installed by ``.ci/run``); :func:`prometheus_binary` skips the calling test where it is absent,
which fails the run under ``CI=true``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
JOB = "mllm-monitor"


def tool_path(name: str) -> str:
    """Path of a Prometheus tool (``prometheus``, ``promtool``); skips the test without it."""
    found = shutil.which(name) or (
        f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
    )
    if found is None:
        pytest.skip(f"{name} not installed (Debian package 'prometheus'; .ci/run installs it)")
    return found


def prometheus_binary() -> str:
    return tool_path("prometheus")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def shortened_rules(dest: Path, *, for_: str = "1s", source: Path = ALERTS) -> Path:
    """Write ``source`` to ``dest`` with every rule's ``for:`` set to ``for_``; returns ``dest``."""
    doc = yaml.safe_load(source.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = for_
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


class PrometheusServer:
    """``prometheus`` scraping ``targets`` every second with ``rule_file`` loaded."""

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str],
        *,
        rule_file: Path | None = None,
        interval: str = "1s",
        metrics_path: str = "/metrics",
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.rule_file = rule_file or shortened_rules(workdir / "alerts.fast.yml")
        self.config_file = workdir / "prometheus.yml"
        self.config_file.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": interval, "evaluation_interval": interval},
                    "rule_files": [str(self.rule_file)],
                    "scrape_configs": [
                        {
                            "job_name": JOB,
                            "metrics_path": metrics_path,
                            "static_configs": [{"targets": list(targets)}],
                        }
                    ],
                }
            )
        )
        self.log_file = workdir / "prometheus.log"
        self._process: subprocess.Popen[bytes] | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        with self.log_file.open("wb") as log:
            self._process = subprocess.Popen(
                [
                    prometheus_binary(),
                    f"--config.file={self.config_file}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"prometheus exited at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"prometheus not ready within {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    # -- HTTP API -------------------------------------------------------------------------------
    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>`` and its ``data``; raises on a non-success answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as response:
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus API {path}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query: the result vector."""
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing), as ``/api/v1/alerts`` lists them."""
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def alerts_named(
        self, name: str, labels: Mapping[str, str] | None = None, *, state: str | None = None
    ) -> list[dict[str, Any]]:
        """Active alerts called ``name`` whose labels include ``labels`` (and in ``state``)."""
        return [
            alert
            for alert in self.alerts()
            if alert["labels"].get("alertname") == name
            and all(alert["labels"].get(k) == v for k, v in (labels or {}).items())
            and (state is None or alert["state"] == state)
        ]

    def targets_up(self) -> bool:
        """Whether every scrape target answered its last scrape."""
        active = self.api("targets")["activeTargets"]
        return bool(active) and all(target["health"] == "up" for target in active)

    def wait_for_alert(
        self,
        name: str,
        labels: Mapping[str, str] | None = None,
        *,
        state: str = "firing",
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """The first alert ``name`` with ``labels`` in ``state``; fails after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.alerts_named(name, labels, state=state)
            if found:
                return found[0]
            time.sleep(0.25)
        raise AssertionError(
            f"alert {name} {dict(labels or {})} not {state} within {timeout} s; active: "
            f"{[(a['labels'], a['state']) for a in self.alerts()]}\n{self.log_tail()}"
        )
