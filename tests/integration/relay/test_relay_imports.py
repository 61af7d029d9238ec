"""The relay stays thin: starting its app imports neither torch, transformers nor FAISS, nor
the monitor's embedding, reference, store or estimator modules (checked in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "faiss", "sqlalchemy", "numpy")
HEAVY_MONITOR = ("monitor.embedding", "monitor.reference", "monitor.store", "monitor.estimators")

_SCRIPT = """
import json, sys
import monitor.cli
from monitor.config import Settings
from monitor.relay.app import create_relay_app
create_relay_app(Settings.model_validate({"proxy": {"upstream": "http://127.0.0.1:9"},
                                         "relay": {"central_url": "http://127.0.0.1:9"}}))
print(json.dumps(sorted(sys.modules)))
"""


def test_the_relay_app_and_the_cli_import_nothing_heavy() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=120, check=True
    )
    modules = json.loads(result.stdout)
    assert "monitor.relay.app" in modules and "monitor.ingest.proxy" in modules
    heavy = [m for m in modules if m.split(".")[0] in HEAVY or m.startswith(HEAVY_MONITOR)]
    # numpy: monitor.cli pulls it in (window records); the relay alone does not (next test).
    assert [m for m in heavy if not m.startswith("numpy")] == []


def test_the_relay_app_alone_does_not_import_numpy() -> None:
    script = _SCRIPT.replace("import monitor.cli\n", "")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    modules = json.loads(result.stdout)
    assert not [m for m in modules if m.split(".")[0] in HEAVY or m.startswith(HEAVY_MONITOR)]
