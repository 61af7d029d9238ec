"""Shared fixtures: where ../shared lives, and the golden arrays and values."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GOLDEN = SHARED / "golden"
PAPER_CLUB = SHARED / "checkpoints" / "club_paper_global.pt"
LLAVA_SHIFT = SHARED / "data" / "llava-bench-coco-shift"


@pytest.fixture(scope="session", autouse=True)
def one_compute_thread() -> None:
    """The tests run estimators the way a command does: with [compute] applied. Without it,
    torch and OpenBLAS take one thread per core, which on a shared 2-core runner made the JSD
    eigensolver 5-10 times slower (the oversubscription monitor/compute.py explains)."""
    from monitor.compute import apply_compute_settings
    from monitor.config import ComputeSettings

    apply_compute_settings(ComputeSettings(threads=1))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings as a command on a clean machine sees them: no MLLM_MONITOR_* variable from the
    caller's shell (the test database's URL excepted), and an empty working directory, so no
    stray ./mllm-monitor.toml is read. Modules use it with pytest.mark.usefixtures."""
    for name in list(os.environ):
        if name.startswith("MLLM_MONITOR_") and name != "MLLM_MONITOR_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def golden_arrays() -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "paper_parity.npz") as data:
        return {name: data[name] for name in data.files}


@pytest.fixture(scope="session")
def golden_values() -> dict[str, Any]:
    values: dict[str, Any] = json.loads((GOLDEN / "paper_parity_values.json").read_text())
    return values


def unit_rows(
    rng: np.random.Generator,
    n: int,
    d: int,
    *,
    scale: np.ndarray | None = None,
    mean: np.ndarray | None = None,
) -> np.ndarray:
    """n random L2-normalised rows in d dims, from an (optionally anisotropic, shifted) Gaussian."""
    x = rng.standard_normal((n, d))
    if scale is not None:
        x = x * scale
    if mean is not None:
        x = x + mean
    rows: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return rows


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI=true a skipped test is a failure: CI must have everything the tests need."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") == "true" and skipped and exitstatus == 0:
        if reporter:
            reporter.write_line(f"CI=true: {skipped} skipped test(s) count as failures", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
