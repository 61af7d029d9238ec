"""A built reference store on disk: open, verify, and query it.

Layout of ``<root>/<name>/`` (written atomically by :mod:`monitor.reference.build`)::

    manifest.json        format, encoder fingerprints, counts, dims, index parameters,
                         sha256 of every other file, OOD threshold, calibration status
    records.json         record ids and which records have an image / a reference
    <kind>.npy           float16 embeddings (kinds: image, prompt, query, response, reference)
    <kind>.faiss         the FAISS index of that kind (query: the L2-normalised fused x)
    calibration.json     null distributions (after ``mllm-monitor calibrate``)
    estimator.pt         the CLUB estimator (after ``estimator train`` or ``import``)

Every command and the daemon open a store through :func:`open_store`, which checks the
configured encoders' fingerprints (and fusion) before anything else, then the manifest's
structure, then every file: each one the store uses must be listed in the manifest with its
sha256, and a file present but not listed is refused (dot-files, the temporary files of
interrupted writes and the lock file, are never read and are ignored). ``calibration.json`` and
``estimator.pt`` are verified again each time they are read. Errors name the file.

Writers (build, estimator, calibration) hold ``<root>/.<name>.lock`` (:func:`store_lock`), so
two of them never interleave on one store; the second is refused at once.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from monitor.errors import (
    EmbeddingError,
    FingerprintMismatchError,
    InvalidInputError,
    ReferenceStoreError,
)
from monitor.estimators.arrays import l2_normalise
from monitor.estimators.knn import kth_neighbour_distance
from monitor.files import (
    check_name,
    exclusive_lock,
    file_sha256,
    sha256_hex,
    write_json_atomic,
)
from monitor.reference.index import IndexParams, read_index, search

STORE_FORMAT = "mllm-monitor/reference-store@1"
STORE_KINDS = ("image", "prompt", "query", "response", "reference")
MANIFEST = "manifest.json"
RECORDS = "records.json"
CALIBRATION = "calibration.json"
ESTIMATOR = "estimator.pt"
# Every file a store may hold besides its manifest; anything else listed is refused.
STORE_FILES = frozenset(
    {RECORDS, CALIBRATION, ESTIMATOR}
    | {f"{kind}.{ext}" for kind in STORE_KINDS for ext in ("npy", "faiss")}
)
Rows = npt.NDArray[np.float32]
Fingerprints = Mapping[str, str | None]


class _HasFingerprint(Protocol):
    @property
    def fingerprint(self) -> str: ...


class EncodersLike(Protocol):
    """What :func:`open_store` needs of an :class:`~monitor.embedding.EncoderSet`."""

    @property
    def image(self) -> _HasFingerprint | None: ...

    @property
    def text(self) -> _HasFingerprint: ...

    @property
    def fusion(self) -> str: ...


def encoder_fingerprints(encoders: EncodersLike) -> dict[str, str | None]:
    """The fingerprints a store built with ``encoders`` records, by modality."""
    return {
        "image": encoders.image.fingerprint if encoders.image is not None else None,
        "text": encoders.text.fingerprint,
    }


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
        return [k for k in STORE_KINDS if self.manifest["counts"].get(k)]

    @property
    def ood(self) -> dict[str, Any]:
        return dict(self.manifest["ood"])

    @property
    def estimator_holdout(self) -> npt.NDArray[np.intp]:
        """Record positions the store's CLUB was not trained on, for an out-of-sample EMI(ID).

        Empty without an estimator. A trained estimator holds out a seeded fraction of the
        records with a reference; an imported one was trained elsewhere, so every record with
        a reference counts (see :mod:`monitor.reference.estimator`).
        """
        estimator = self.manifest.get("estimator") or {}
        positions: npt.NDArray[np.intp] = np.asarray(
            estimator.get("id_holdout") or [], dtype=np.intp
        )
        return positions

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
        path = self.path / f"{kind}.npy"
        rows: Rows = _read_rows(path, self.manifest, kind, mmap=False).astype(np.float32)
        if not np.isfinite(rows).all():
            raise ReferenceStoreError(f"reference store file {path} holds NaN or inf", path=path)
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
        rows = np.asarray(queries)
        dim = self.manifest["dims"].get(kind)
        if rows.ndim != 2 or rows.shape[1] != dim:
            # FAISS would abort on a foreign width: say what was offered and what fits.
            raise EmbeddingError(
                f"reference store {self.name!r} has {dim}-d {kind!r} rows, got an array of "
                f"shape {rows.shape}; were the embeddings made by the store's encoders?",
                field=kind,
            )
        sims, _ = search(self.index(kind), l2_normalise(rows), k)
        return kth_neighbour_distance(sims, min(k, sims.shape[1]))

    def ood_flags(self, queries: Rows) -> npt.NDArray[np.bool_]:
        flags: npt.NDArray[np.bool_] = self.knn_scores(queries) > float(self.ood["threshold"])
        return flags

    @cached_property
    def calibration(self) -> dict[str, Any] | None:
        """The calibration, verified against the manifest's checksum as it is read."""
        if not self.manifest.get("calibrated"):
            return None
        path = self.path / CALIBRATION
        data = read_verified(path, self.manifest["files"].get(CALIBRATION))
        try:
            calibration = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ReferenceStoreError(f"corrupt calibration {path}: {exc}", path=path) from exc
        if not isinstance(calibration, dict):
            raise ReferenceStoreError(f"corrupt calibration {path}: not an object", path=path)
        return calibration

    def _require(self, kind: str) -> None:
        if kind not in self.kinds:
            raise ReferenceStoreError(
                f"reference store {self.name!r} has no {kind!r} embeddings (it has "
                f"{', '.join(self.kinds)})",
                path=self.path / MANIFEST,
            )


def store_path(root: Path, name: str) -> Path:
    """``root / name`` for a valid store name under a root that is (or can be) a directory."""
    try:
        check_name(name)
    except InvalidInputError as exc:
        raise ReferenceStoreError(str(exc)) from exc
    if root.exists() and not root.is_dir():
        raise ReferenceStoreError(
            f"reference.root {root} is not a directory; point it at a folder", path=root
        )
    return root / name


@contextmanager
def store_lock(root: Path, name: str) -> Iterator[None]:
    """Hold the writer lock of store ``name``; refused at once when another writer holds it."""
    store_path(root, name)
    lock = root / f".{name}.lock"
    try:
        with exclusive_lock(lock):
            yield
    except BlockingIOError as exc:
        raise ReferenceStoreError(
            f"reference store {name!r} is being built or changed by another process "
            f"({exc.strerror}); wait for it to finish and retry",
            path=lock,
        ) from exc


def open_store(root: Path, name: str, encoders: EncodersLike) -> ReferenceStore:
    """Open store ``name`` for use with ``encoders``: the one way commands and the daemon load.

    Refuses a store built with other encoders or another fusion (FingerprintMismatchError),
    then verifies the manifest and every file's checksum.
    """
    return load_store(
        root, name, expect_fingerprints=encoder_fingerprints(encoders), fusion=encoders.fusion
    )


def load_store(
    root: Path,
    name: str,
    *,
    expect_fingerprints: Fingerprints | None = None,
    fusion: str | None = None,
    verify: bool = True,
) -> ReferenceStore:
    """Open ``<root>/<name>`` and verify it; prefer :func:`open_store`, which always checks
    the encoders. Without ``expect_fingerprints`` (inspection, tests) encoders go unchecked;
    ``verify=False`` skips the checksums (never in the monitor's own paths)."""
    path = store_path(root, name)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ReferenceStoreError(
            f"no reference store {name!r} under {root} (missing {manifest_path}); build one "
            "with `mllm-monitor reference build`",
            path=manifest_path,
        )
    manifest = read_store_manifest(manifest_path, name)
    if expect_fingerprints is not None:
        check_fingerprints(manifest, expect_fingerprints, manifest_path, fusion=fusion)
    if verify:
        _check_listing(path, manifest)
        for relative, digest in manifest["files"].items():
            _verify_file(path / relative, digest)
        for kind in manifest["counts"]:
            _read_rows(path / f"{kind}.npy", manifest, kind, mmap=True)
    records = _read_records(path / RECORDS, manifest)
    return ReferenceStore(path, manifest, records)


def fingerprint_mismatches(
    manifest: Mapping[str, Any], expected: Fingerprints, *, fusion: str | None = None
) -> list[str]:
    """One line per difference between the store's encoders and the expected ones."""
    built = manifest["encoders"]
    lines = [
        f"{modality} encoder: built with {built.get(modality)!r}, configured {fingerprint!r}"
        for modality, fingerprint in expected.items()
        if built.get(modality) != fingerprint
    ]
    if fusion is not None and manifest["fusion"] != fusion:
        lines.append(f"fusion: built with {manifest['fusion']!r}, configured {fusion!r}")
    return lines


def check_fingerprints(
    manifest: Mapping[str, Any],
    expected: Fingerprints,
    where: Path,
    *,
    fusion: str | None = None,
) -> None:
    problems = fingerprint_mismatches(manifest, expected, fusion=fusion)
    if problems:
        raise FingerprintMismatchError(
            f"reference store {manifest['name']!r} was built with other encoders ("
            + "; ".join(problems)
            + "); rebuild the store with the configured encoders or configure the ones it "
            "was built with",
            path=where,
        )


def read_verified(path: Path, expected: str | None) -> bytes:
    """The bytes of a store file, refused unless they match the manifest's checksum."""
    if expected is None:
        raise ReferenceStoreError(
            f"reference store file {path} is not listed in its manifest; rebuild the store or "
            "re-run the command that writes it",
            path=path,
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ReferenceStoreError(f"reference store file missing: {path}", path=path) from exc
    if sha256_hex(data) != expected:
        raise ReferenceStoreError(
            f"reference store file {path} does not match its checksum (altered or truncated); "
            "rebuild the store",
            path=path,
        )
    return data


def update_manifest(
    store: ReferenceStore,
    *,
    files: Mapping[str, str] | None = None,
    staged: Mapping[str, Path] | None = None,
    **changes: Any,
) -> None:
    """Record new or changed files (and other keys) in the manifest, under the store's lock.

    ``staged`` maps store file names to finished files elsewhere in the store directory; they
    are hashed, renamed into place and listed in one step under the lock. ``files`` lists
    files the caller already wrote in place, with their sha256. The manifest is re-read under
    the lock, so concurrent writers do not lose each other's changes, and a store rebuilt
    since it was loaded is refused.
    """
    root, name = store.path.parent, store.name
    with store_lock(root, name):
        manifest_path = store.path / MANIFEST
        current = read_store_manifest(manifest_path, name)
        if current["created_at"] != store.manifest["created_at"]:
            raise ReferenceStoreError(
                f"reference store {name!r} was rebuilt since it was loaded; re-run the command",
                path=manifest_path,
            )
        listed = dict(files or {})
        for relative, source in (staged or {}).items():
            listed[relative] = file_sha256(source)
            source.replace(store.path / relative)
        unknown = sorted(set(listed) - STORE_FILES)
        if unknown:
            raise ReferenceStoreError(f"not a reference store file: {unknown}")
        current.update(changes)
        current["files"].update(listed)
        write_json_atomic(manifest_path, current)
    store.manifest = current
    store.__dict__.pop("calibration", None)


def write_store_json(store: ReferenceStore, name: str, data: Any, **changes: Any) -> None:
    """Write store file ``name`` (JSON) and list it in the manifest, both under the lock: a
    concurrent writer or a rebuild never sees a file its manifest does not vouch for."""
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=store.path) as tmp:
        staged = Path(tmp) / name
        write_json_atomic(staged, data)
        update_manifest(store, staged={name: staged}, **changes)


def read_store_manifest(path: Path, name: str) -> dict[str, Any]:
    """The manifest, parsed and checked field by field (a clear error, never a KeyError)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReferenceStoreError(f"corrupt store manifest {path}: {exc}", path=path) from exc

    def need(condition: bool, what: str) -> None:
        if not condition:
            raise ReferenceStoreError(
                f"corrupt store manifest {path}: {what}; rebuild the store", path=path
            )

    need(isinstance(data, dict), f"expected a JSON object, found {type(data).__name__}")
    if data.get("format") != STORE_FORMAT:
        raise ReferenceStoreError(
            f"{path} has format {data.get('format')!r}, expected {STORE_FORMAT!r}", path=path
        )
    for key in ("name", "files", "counts", "dims", "index", "encoders", "ood", "fusion"):
        need(key in data, f"missing {key!r}")
    need(data["name"] == name, f"'name' is {data['name']!r}, but the store folder is {name!r}")
    need(isinstance(data.get("created_at"), str), "'created_at' must be a string")
    need(isinstance(data["fusion"], str), "'fusion' must be a string")
    need(_is_count(data.get("records")) and data["records"] >= 2, "'records' must be >= 2")
    for key in ("counts", "dims"):
        table = data[key]
        need(
            isinstance(table, dict)
            and all(k in STORE_KINDS and _is_count(v) for k, v in table.items()),
            f"{key!r} must map kinds {list(STORE_KINDS)} to non-negative integers",
        )
    need(set(data["dims"]) == set(data["counts"]), "'dims' and 'counts' name other kinds")
    need(
        all(data["dims"][k] >= 1 for k in data["dims"]) and data["counts"].get("query"),
        "every kind needs a dim >= 1, and the store needs query rows",
    )
    index = data["index"]
    need(
        isinstance(index, dict)
        and set(index) == set(data["counts"])
        and all(_is_index_params(v) for v in index.values()),
        "'index' must give {kind, nlist, nprobe} for every kind",
    )
    encoders = data["encoders"]
    need(
        isinstance(encoders, dict)
        and isinstance(encoders.get("text"), str)
        and (encoders.get("image") is None or isinstance(encoders["image"], str)),
        "'encoders' must give a text fingerprint and an image fingerprint or null",
    )
    ood = data["ood"]
    need(
        isinstance(ood, dict)
        and _is_count(ood.get("k"))
        and ood["k"] >= 1
        and _is_finite(ood.get("threshold"))
        and _is_finite(ood.get("tpr")),
        "'ood' must give k >= 1 and finite threshold and tpr",
    )
    files = data["files"]
    need(
        isinstance(files, dict)
        and all(isinstance(k, str) and _is_sha256(v) for k, v in files.items()),
        "'files' must map file names to sha256 digests",
    )
    unknown = sorted(set(files) - STORE_FILES)
    need(not unknown, f"'files' lists {unknown}, which are not reference store files")
    need(isinstance(data.get("calibrated", False), bool), "'calibrated' must be true or false")
    estimator = data.get("estimator")
    need(estimator is None or isinstance(estimator, dict), "'estimator' must be an object")
    if estimator:
        holdout = estimator.get("id_holdout", [])
        need(
            isinstance(holdout, list)
            and all(_is_count(p) and p < data["records"] for p in holdout),
            "'estimator.id_holdout' must list record positions",
        )
    manifest: dict[str, Any] = data
    return manifest


def _check_listing(path: Path, manifest: Mapping[str, Any]) -> None:
    """Every file the store uses is listed, and every file present is."""
    listed = set(manifest["files"])
    needed = {RECORDS} | {f"{k}.{e}" for k in manifest["counts"] for e in ("npy", "faiss")}
    if manifest.get("calibrated"):
        needed.add(CALIBRATION)
    if manifest.get("estimator"):
        needed.add(ESTIMATOR)
    missing = sorted(needed - listed)
    if missing:
        raise ReferenceStoreError(
            f"store manifest {path / MANIFEST} does not list {missing}; rebuild the store",
            path=path / MANIFEST,
        )
    present = {p.name for p in path.iterdir() if not p.name.startswith(".")}
    unlisted = sorted(present - listed - {MANIFEST})
    if unlisted:
        raise ReferenceStoreError(
            f"reference store {path} holds files its manifest does not list: {unlisted}; "
            "remove them or rebuild the store",
            path=path / unlisted[0],
        )


def _read_rows(path: Path, manifest: Mapping[str, Any], kind: str, *, mmap: bool) -> Any:
    """A kind's .npy as written by the build (float16 or float32, counts x dims), else a clear
    error. ``mmap=True`` reads only the header: cheap enough for every load."""
    try:
        # allow_pickle=False: an object array would unpickle arbitrary code.
        raw = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ReferenceStoreError(
            f"reference store file {path} is not a plain numeric array ({exc}); rebuild the store",
            path=path,
        ) from exc
    expected = (manifest["counts"][kind], manifest["dims"][kind])
    if (
        not isinstance(raw, np.ndarray)
        or raw.dtype not in (np.float16, np.float32)
        or raw.shape != expected
    ):
        raise ReferenceStoreError(
            f"reference store file {path} holds {getattr(raw, 'dtype', '?')} "
            f"{getattr(raw, 'shape', '?')}, expected float16 {expected}; rebuild the store",
            path=path,
        )
    return raw


def _read_records(path: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ReferenceStoreError(f"reference store file missing: {path}", path=path) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReferenceStoreError(f"corrupt {path}: {exc}", path=path) from exc
    n, counts = manifest["records"], manifest["counts"]
    ok = (
        isinstance(data, dict)
        and isinstance(data.get("ids"), list)
        and len(data["ids"]) == n
        and all(isinstance(i, str) for i in data["ids"])
        and all(
            isinstance(data.get(key), list)
            and len(data[key]) == n
            and all(isinstance(v, bool) for v in data[key])
            for key in ("has_image", "has_reference")
        )
    )
    if not ok:
        raise ReferenceStoreError(
            f"corrupt {path}: expected ids, has_image and has_reference for {n} records",
            path=path,
        )
    if sum(data["has_image"]) != counts.get("image", 0) or sum(data["has_reference"]) != counts.get(
        "reference", 0
    ):
        raise ReferenceStoreError(
            f"corrupt {path}: image / reference flags disagree with the manifest's counts",
            path=path,
        )
    records: dict[str, Any] = data
    return records


def _verify_file(path: Path, expected: str) -> None:
    if not path.is_file():
        raise ReferenceStoreError(f"reference store file missing: {path}", path=path)
    if file_sha256(path) != expected:
        raise ReferenceStoreError(
            f"reference store file {path} does not match its checksum (altered or truncated); "
            "rebuild the store",
            path=path,
        )


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_sha256(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def _is_index_params(value: object) -> bool:
    return (
        isinstance(value, dict)
        and value.get("kind") in ("flat", "ivf")
        and set(value) == {"kind", "nlist", "nprobe"}
        and _is_count(value["nlist"])
        and _is_count(value["nprobe"])
    )


__all__ = [
    "CALIBRATION",
    "ESTIMATOR",
    "MANIFEST",
    "RECORDS",
    "STORE_FILES",
    "STORE_FORMAT",
    "STORE_KINDS",
    "EncodersLike",
    "Fingerprints",
    "ReferenceStore",
    "check_fingerprints",
    "encoder_fingerprints",
    "fingerprint_mismatches",
    "load_store",
    "open_store",
    "read_store_manifest",
    "read_verified",
    "store_lock",
    "store_path",
    "update_manifest",
    "write_store_json",
]
