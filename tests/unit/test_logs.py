"""The monitor's log handler writes to stderr as it is at each record: a command run inside
another program (a test runner's CLI invocation swaps stderr for a buffer and closes it) must
not leave a handler bound to the closed buffer, on which every later record fails with a
'--- Logging error ---' traceback."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from monitor.logs import configure_logging


def test_records_go_to_the_current_stderr_not_the_one_at_set_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        at_set_up = io.StringIO()
        monkeypatch.setattr(sys, "stderr", at_set_up)
        configure_logging(logging.WARNING, json_logs=False)
        at_set_up.close()  # as CliRunner does once its invocation is over
        later = io.StringIO()
        monkeypatch.setattr(sys, "stderr", later)
        logging.getLogger("monitor.test").warning("risk level changed")
        assert "WARNING monitor.test: risk level changed" in later.getvalue()
        assert "Logging error" not in later.getvalue()
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
