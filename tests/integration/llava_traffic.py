"""Real llava-v1.5-13b traffic (text side of MMBench, MME, MM-Vet) as records and JSONL files,
for the tests that run the commands on it."""

from __future__ import annotations

import json
import random
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LLAVA_TEXT = ROOT.parent / "shared" / "data" / "llava-eval-text"


def read(name: str, seed: int) -> list[dict[str, Any]]:
    """The rows of one file of LLAVA_TEXT, shuffled by ``seed``."""
    rows = [json.loads(line) for line in (LLAVA_TEXT / name).read_text().splitlines() if line]
    random.Random(seed).shuffle(rows)
    return rows


def rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
