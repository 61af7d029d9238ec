"""Commands that print a URL from the settings mask its secrets: ``config check`` (text and
JSON) and the ``db`` commands, through the installed ``mllm-monitor`` entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SECRET = "s3cr3tVALUE"


def run_entry_point(*args: str, cwd: Path) -> tuple[int, str, str]:
    entry = shutil.which("mllm-monitor", path=str(Path(sys.executable).parent))
    assert entry, "the mllm-monitor entry point is not installed next to this interpreter"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLLM_MONITOR_")}
    done = subprocess.run(
        [entry, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120, check=False
    )
    return done.returncode, done.stdout, done.stderr


def test_config_check_masks_database_and_model_url_secrets(tmp_path: Path) -> None:
    """Neither the text nor the JSON form shows a secret of [database] url or [reference_model]
    model_url; the parameters that are no secret stay readable."""
    config = tmp_path / "m.toml"
    config.write_text(
        "[database]\n"
        f'url = "postgresql+psycopg://mon:{SECRET}1@db:5432/m'
        f'?sslmode=verify-full&sslpassword={SECRET}2"\n'
        "[reference_model]\n"
        f'model_url = "https://models.example/v1?sv=2024&sig={SECRET}3'
        f'&X-Amz-Signature={SECRET}4#access_token={SECRET}5"\n'
        'model = "m"\n'
    )
    for extra in ([], ["--json"]):
        code, out, err = run_entry_point("config", "check", "-c", str(config), *extra, cwd=tmp_path)
        assert code == 0, out + err
        assert SECRET not in out + err, out + err
        assert "sslmode=verify-full" in out and "sv=2024" in out
    shown = json.loads(out)
    assert shown["database"]["url"] == (
        "postgresql+psycopg://mon:***@db:5432/m?sslmode=verify-full&sslpassword=***"
    )
    assert shown["reference_model"]["model_url"] == (
        "https://models.example/v1?sv=2024&sig=***&X-Amz-Signature=***#access_token=***"
    )


def test_db_commands_mask_secret_url_parameters(tmp_path: Path) -> None:
    """``db upgrade`` and ``db current`` print the database URL: a secret query parameter (a
    driver's sslpassword here; SQLite ignores it, with a warning that names only the key) is
    masked like the password."""
    config = tmp_path / "m.toml"
    config.write_text(f'[database]\nurl = "sqlite:///./m.db?sslpassword={SECRET}&timeout=5"\n')
    for command in (["db", "upgrade"], ["db", "current"]):
        code, out, err = run_entry_point(*command, "-c", str(config), cwd=tmp_path)
        assert code == 0, out + err
        assert SECRET not in out + err, out + err
        assert "sslpassword=***&timeout=5" in out, out
