"""The package's import graph keeps its layers: no cycle between packages, no private name or
private module used outside its home, and the CLI layer (``monitor.commands``, ``monitor.cli``)
imported by nothing below it. Every import counts, the lazy ones inside functions too."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import monitor

ROOT = Path(monitor.__file__).parent


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # the module imported (or whose name is imported)
    name: str | None  # the name taken from it, for ``from target import name``
    line: int

    def __str__(self) -> str:
        what = f"{self.target}.{self.name}" if self.name else self.target
        return f"{self.importer}:{self.line} imports {what}"


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = modules()


def imports() -> Iterator[Import]:
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] != "monitor":
                    continue
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    if submodule in MODULES:  # ``from monitor.x import module``
                        yield Import(name, submodule, None, node.lineno)
                    else:
                        yield Import(name, node.module, alias.name, node.lineno)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "monitor":
                        yield Import(name, alias.name, None, node.lineno)
            elif isinstance(node, ast.ImportFrom) and node.level:
                pytest.fail(f"{name}:{node.lineno}: relative import (the package uses absolute)")


IMPORTS = list(imports())


def package_of(module: str) -> str:
    """The unit the layering is judged on: a subpackage (``monitor.store``) or a top-level
    module (``monitor.pipeline``)."""
    return ".".join(module.split(".")[:2])


def is_private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def within(module: str, home: str) -> bool:
    return module == home or module.startswith(home + ".")


def test_the_scan_sees_the_package() -> None:
    # A broken walk would make every rule below pass vacuously.
    assert {"monitor.pipeline", "monitor.store.repository", "monitor.cli"} <= set(MODULES)
    assert any(i.importer == "monitor.daemon" and i.target == "monitor.config" for i in IMPORTS)


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for found in IMPORTS:
        source, target = package_of(found.importer), package_of(found.target)
        if source != target and target != "monitor":  # monitor/__init__: the version only
            graph.setdefault(source, set()).add(target)

    def reaches(start: str, goal: str, seen: set[str]) -> list[str] | None:
        for step in sorted(graph.get(start, ())):
            if step == goal:
                return [start, step]
            if step not in seen:
                seen.add(step)
                path = reaches(step, goal, seen)
                if path:
                    return [start, *path]
        return None

    cycles = {" -> ".join(path) for p in graph if (path := reaches(p, p, set()))}
    assert not cycles, "\n".join(sorted(cycles))


def test_no_private_name_or_module_is_used_outside_its_home() -> None:
    problems = []
    for found in IMPORTS:
        parts = found.target.split(".")
        for depth, part in enumerate(parts):
            home = ".".join(parts[:depth])  # a private module's package
            if is_private(part) and not within(found.importer, home):
                problems.append(f"{found} (private module of {home})")
        if found.name and is_private(found.name) and found.importer != found.target:
            problems.append(f"{found} (private name)")
    assert not problems, "\n".join(problems)


def test_only_the_cli_layer_imports_the_commands() -> None:
    outside = [
        str(found)
        for found in IMPORTS
        if within(found.target, "monitor.commands")
        and not within(found.importer, "monitor.commands")
        and found.importer != "monitor.cli"
    ]
    assert not outside, "\n".join(outside)
