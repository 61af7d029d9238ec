"""`serve` refuses, with one line, a calibration whose trials cannot resolve the configured
false-alarm rate (one lowered after calibrating): every window would otherwise fail on it."""

from __future__ import annotations

from typer.testing import CliRunner

from monitor.cli import app
from tests.integration.commands.conftest import Workspace


def test_serve_refuses_a_calibration_too_coarse_for_the_false_alarm_rate(
    workspace: Workspace,
) -> None:
    # The workspace calibrated at 0.05 (100 trials); 0.01 over 5 tests needs 500.
    result = CliRunner().invoke(
        app,
        ["serve", "--config", str(workspace.config)],
        env={"MLLM_MONITOR_ALERTS__FALSE_ALARM_RATE": "0.01"},
    )
    assert result.exit_code == 1, result.output
    # (besides the start-up log lines)
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    assert "calibrated with 100 trials" in lines[0]
    assert "false_alarm_rate = 0.01 needs at least 500" in lines[0]
    assert "mllm-monitor calibrate --reference default" in lines[0]
