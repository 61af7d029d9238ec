"""The YAML, JSON and TOML files under deploy/, each parsed once per test session.

Tests read parsed deploy files from here instead of parsing them again; each call returns a
fresh copy, so a test that edits what it got (to shorten a rule, say) cannot change what the
next test reads.
"""

from __future__ import annotations

import copy
import json
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.integration.deploy.prometheus_server import DEPLOY

PARSED_SUFFIXES = frozenset({".yml", ".yaml", ".json", ".toml"})


def deploy_files() -> list[Path]:
    """Every file under deploy/ that has a structured format, sorted."""
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in PARSED_SUFFIXES)


@cache
def _parsed(path: Path) -> tuple[Any, ...]:
    text = path.read_text()
    if path.suffix == ".json":
        return (json.loads(text),)
    if path.suffix == ".toml":
        return (tomllib.loads(text),)
    # A YAML file may hold several documents (Kubernetes manifests); empty ones parse as None.
    return tuple(yaml.safe_load_all(text))


def documents(path: Path | str) -> list[Any]:
    """The documents of a deploy file (``path`` absolute, or relative to deploy/)."""
    return copy.deepcopy(list(_parsed(DEPLOY / path)))


def document(path: Path | str) -> Any:
    """The one document of a single-document deploy file."""
    (only,) = [d for d in documents(path) if d is not None]
    return only
