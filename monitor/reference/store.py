"""A built reference store on disk: load, verify, and query it.

Layout of ``<root>/<name>/`` (written atomically by :mod:`monitor.reference.build`)::

    manifest.json        format, encoder fingerprints, counts, dims, index parameters,
                         sha256 of every other file, OOD threshold, calibration status
    records.json         record ids and which records have an image / a reference
    <kind>.npy           float16 embeddings (kinds: image, prompt, query, response, reference)
    <kind>.faiss         the FAISS index of that kind (query: the L2-normalised fused x)
    calibration.json     null distributions (after ``mllm-monitor calibrate``)
    estimator.pt         the CLUB estimator (after ``estimator train`` or ``import``)

Loading verifies every checksum and, when expected fingerprints are given, refuses a store
built with other encoders. Errors name the file.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from monitor.errors import FingerprintMismatchError, ReferenceStoreError
from monitor.estimators.knn import kth_neighbour_distance
from monitor.files import atomic_writer
from monitor.reference.index import IndexParams, read_index, search

STORE_FORMAT = "mllm-monitor/reference-store@1"
KINDS = ("image", "prompt", "query", "response", "reference")
MANIFEST = "manifest.json"
RECORDS = "records.json"
CALIBRATION = "calibration.json"
ESTIMATOR = "estimator.pt"
Rows = npt.NDArray[np.float32]


class ReferenceStore:
    """A loaded store. Embedding rows of kind k belong to the records listed by ``rows_of(k)``."""

    def __init__(self, path: Path, manifest: dict[str, Any], records: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.ids: list[str] = list(records["ids"])
        self.has_image = np.asarray(records["has_image"], dtype=bool)
        self.has_reference = np.asarray(records["has_reference"], dtype=bool)
        self._indexes: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def kinds(self) -> list[str]:
        return [k for k in KINDS if self.manifest["counts"].get(k)]

    @property
    def ood(self) -> dict[str, Any]:
        return dict(self.manifest["ood"])

    def rows_of(self, kind: str) -> npt.NDArray[np.intp]:
        """Record positions that kind ``kind``'s embedding rows belong to, in row order."""
        self._require(kind)
        if kind == "image":
            return np.flatnonzero(self.has_image)
        if kind == "reference":
            return np.flatnonzero(self.has_reference)
        return np.arange(len(self.ids))

    def embeddings(self, kind: str) -> Rows:
        """The rows of one kind as float32 (a fresh array each call)."""
        self._require(kind)
        rows: Rows = np.load(self.path / f"{kind}.npy").astype(np.float32)
        return rows

    def index(self, kind: str) -> Any:
        self._require(kind)
        if kind not in self._indexes:
            params = IndexParams(**self.manifest["index"][kind])
            self._indexes[kind] = read_index(self.path / f"{kind}.faiss", params)
        return self._indexes[kind]

    def knn_scores(
        self, queries: Rows, *, k: int | None = None, kind: str = "query"
    ) -> npt.NDArray[np.float64]:
        """kNN OOD score per row: cosine distance to the k-th nearest ID neighbour."""
        k = k or int(self.manifest["ood"]["k"])
        rows = np.asarray(queries, dtype=np.float32)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        sims, _ = search(self.index(kind), rows / np.maximum(norms, 1e-12), k)
        return kth_neighbour_distance(sims, min(k, sims.shape[1]))

    def ood_flags(self, queries: Rows) -> npt.NDArray[np.bool_]:
        flags: npt.NDArray[np.bool_] = self.knn_scores(queries) > float(self.ood["threshold"])
        return flags

    @cached_property
    def calibration(self) -> dict[str, Any] | None:
        path = self.path / CALIBRATION
        if not path.is_file():
            return None
        _verify_file(path, self.manifest["files"].get(CALIBRATION))
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def _require(self, kind: str) -> None:
        if kind not in self.kinds:
            raise ReferenceStoreError(
                f"reference store {self.name!r} has no {kind!r} embeddings (it has "
                f"{', '.join(self.kinds)})",
                path=self.path / MANIFEST,
            )


def store_path(root: Path, name: str) -> Path:
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise ReferenceStoreError(f"invalid reference store name {name!r}")
    return root / name


def load_store(
    root: Path,
    name: str,
    *,
    expect_fingerprints: dict[str, str | None] | None = None,
    verify: bool = True,
) -> ReferenceStore:
    """Open ``<root>/<name>``; verify checksums, format, and (if given) encoder fingerprints."""
    path = store_path(root, name)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ReferenceStoreError(
            f"no reference store {name!r} under {root} (missing {manifest_path}); build one "
            "with `mllm-monitor reference build`",
            path=manifest_path,
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReferenceStoreError(
            f"corrupt store manifest {manifest_path}: {exc}", path=manifest_path
        ) from exc
    if manifest.get("format") != STORE_FORMAT:
        raise ReferenceStoreError(
            f"{manifest_path} has format {manifest.get('format')!r}, expected {STORE_FORMAT!r}",
            path=manifest_path,
        )
    if expect_fingerprints is not None:
        check_fingerprints(manifest, expect_fingerprints, manifest_path)
    if verify:
        for relative, digest in manifest["files"].items():
            _verify_file(path / relative, digest)
    records = json.loads((path / RECORDS).read_text())
    return ReferenceStore(path, manifest, records)


def check_fingerprints(
    manifest: dict[str, Any], expected: dict[str, str | None], where: Path
) -> None:
    built = manifest["encoders"]
    for modality, fingerprint in expected.items():
        if built.get(modality) != fingerprint:
            raise FingerprintMismatchError(
                f"reference store {manifest['name']!r} was built with {modality} encoder "
                f"{built.get(modality)!r}, but the configured one is {fingerprint!r}; rebuild "
                "the store with the configured encoders or configure the ones it was built with",
                path=where,
            )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify_file(path: Path, expected: str | None) -> None:
    if not path.is_file():
        raise ReferenceStoreError(f"reference store file missing: {path}", path=path)
    if expected is not None and file_sha256(path) != expected:
        raise ReferenceStoreError(
            f"reference store file {path} does not match its checksum (altered or truncated); "
            "rebuild the store",
            path=path,
        )


def write_json_atomic(path: Path, data: Any) -> None:
    with atomic_writer(path) as fh:
        fh.write(json.dumps(data, indent=1, sort_keys=True).encode())


def update_manifest(store: ReferenceStore, **changes: Any) -> None:
    """Record a new or changed file (and other keys) in the manifest, atomically."""
    files = changes.pop("files", {})
    store.manifest.update(changes)
    store.manifest["files"].update(files)
    write_json_atomic(store.path / MANIFEST, store.manifest)
    store.__dict__.pop("calibration", None)
