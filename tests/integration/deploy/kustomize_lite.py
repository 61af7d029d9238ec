"""Enough of kustomize to render deploy/k8s/ overlays without the binary.

Supports what deploy/k8s uses and refuses anything else (so a new kustomize feature in the
manifests fails the tests instead of being silently ignored): ``resources`` (files, possibly
multi-document, and directories with a kustomization.yaml), ``namespace`` and ``images``
(newName / newTag). test_k8s_manifests.py also compares the result with ``kustomize build``
(``kubectl kustomize``) wherever such a binary is installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

SUPPORTED_KEYS = frozenset({"apiVersion", "kind", "resources", "namespace", "images"})
# Kinds whose pod template's containers the images transformer rewrites.
POD_TEMPLATE_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job"})


class UnsupportedKustomizationError(ValueError):
    pass


def build(directory: Path) -> list[dict[str, Any]]:
    """The objects kustomize would render for ``directory`` (order of the resources)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED_KEYS
    if unknown:
        raise UnsupportedKustomizationError(f"{directory}: unsupported keys {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        if path.is_dir():
            objects.extend(build(path))
        else:
            objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    namespace = kustomization.get("namespace")
    if namespace:
        for obj in objects:
            obj.setdefault("metadata", {})["namespace"] = namespace
    for image in kustomization.get("images", []):
        for container in containers(objects):
            _retag(container, image)
    return objects


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj.get("kind") not in POD_TEMPLATE_KINDS:
        return None
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def containers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every container and init container of every pod template."""
    found: list[dict[str, Any]] = []
    for obj in objects:
        spec = pod_spec(obj)
        if spec is not None:
            found.extend(spec.get("initContainers", []))
            found.extend(spec.get("containers", []))
    return found


def _retag(container: dict[str, Any], image: dict[str, Any]) -> None:
    current = container.get("image", "")
    name, _, tag = current.partition(":")
    if name != image["name"]:
        return
    name = image.get("newName", name)
    tag = str(image.get("newTag", tag))
    container["image"] = f"{name}:{tag}" if tag else name


def kustomize_binary() -> list[str] | None:
    """The command that renders a kustomization with the real kustomize, if one is installed."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        probe = subprocess.run(
            ["kubectl", "kustomize", "--help"], capture_output=True, timeout=60, check=False
        )
        if probe.returncode == 0:
            return ["kubectl", "kustomize"]
    return None


def key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]
