"""What the project ships (README, docs, deploy files, the package, mkdocs.yml) points at nothing
outside the project: no internal design document, no test-data folder beside the checkout."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("README.md", "mkdocs.yml", "pyproject.toml", "docs", "deploy", "monitor", "migrations")
TEXT_SUFFIXES = {".md", ".py", ".toml", ".yaml", ".yml", ".json", ".txt", ".html", ".ini", ".cfg"}
# A design document of the developers, or a path out of the checkout into the test-data folder.
OUTSIDE = re.compile(r"DESIGN\.md|\bDESIGN\b|\.\./shared|/work/shared|shared/data/")


def shipped_files() -> list[Path]:
    files: list[Path] = []
    for name in SHIPPED:
        path = ROOT / name
        if path.is_file():
            files.append(path)
        else:
            files += sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts
            )
    return files


def test_the_walk_finds_the_shipped_files() -> None:
    names = {str(p.relative_to(ROOT)) for p in shipped_files()}
    assert {"README.md", "docs/index.md", "deploy/README.md", "monitor/cli.py"} <= names


def test_points_at_nothing_outside_the_project() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in shipped_files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
        if OUTSIDE.search(line)
    ]
    assert not found, "\n".join(found)
