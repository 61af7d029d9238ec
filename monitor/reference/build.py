"""Building a reference store from a manifest, through the configured encoders.

Everything is written into a hidden temporary directory next to the target and renamed into
place only when complete, so an interrupted build leaves no half store that loads (and its
leftovers are removed by the next build).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from monitor import __version__
from monitor.embedding import EncoderSet, ImageLimits, decode_image, fuse
from monitor.errors import ImageDecodeError, ReferenceStoreError
from monitor.estimators._arrays import l2_normalise
from monitor.estimators.knn import kth_neighbour_distance, ood_threshold
from monitor.reference.index import IndexParams, build_index, choose_params, search, write_index
from monitor.reference.manifest import ManifestRecord
from monitor.reference.store import (
    MANIFEST,
    RECORDS,
    STORE_FORMAT,
    ReferenceStore,
    file_sha256,
    load_store,
    store_path,
    write_json_atomic,
)

Progress = Callable[[str, int, int], None]  # (stage, done, total)
Rows = npt.NDArray[np.float32]


@dataclass(frozen=True)
class BuildOptions:
    ood_k: int = 1
    ood_tpr: float = 0.95
    ood_calibration_rows: int = 5000
    ivf_min_size: int = 200_000
    ivf_nlist: int = 0
    ivf_nprobe: int = 0
    batch_records: int = 256
    seed: int = 0


def build_store(
    records: Sequence[ManifestRecord],
    *,
    root: Path,
    name: str,
    encoders: EncoderSet,
    image_root: Path | None = None,
    image_limits: ImageLimits | None = None,
    options: BuildOptions = BuildOptions(),
    replace: bool = False,
    progress: Progress | None = None,
) -> ReferenceStore:
    target = store_path(root, name)
    if target.exists() and not replace:
        raise ReferenceStoreError(
            f"reference store {name!r} already exists at {target}; pass --replace to rebuild it",
            path=target,
        )
    if any(r.image for r in records) and encoders.image is None:
        raise ReferenceStoreError("the manifest has images but encoders.image.kind is 'none'")
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(root, name)
    workdir = Path(tempfile.mkdtemp(prefix=f".{name}.building-", dir=root))
    try:
        limits = image_limits or ImageLimits()
        embeddings = _embed_all(records, encoders, image_root, limits, options, progress)
        _write_store(workdir, name, records, embeddings, encoders, options, progress)
        _swap_into_place(workdir, target)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return load_store(root, name)


def _embed_all(
    records: Sequence[ManifestRecord],
    encoders: EncoderSet,
    image_root: Path | None,
    limits: ImageLimits,
    options: BuildOptions,
    progress: Progress | None,
) -> dict[str, Rows]:
    parts: dict[str, list[Rows]] = {}
    total = len(records)
    for start in range(0, total, options.batch_records):
        batch = records[start : start + options.batch_records]
        decoded: list[Image.Image | None] = []
        for r in batch:
            try:
                decoded.append(
                    decode_image(r.image, limits=limits, allow_paths=True, root=image_root)
                    if r.image
                    else None
                )
            except ImageDecodeError as exc:
                raise ReferenceStoreError(f"record {r.id!r}: {exc}") from exc
        rows = embed_batch(
            encoders,
            prompts=[r.prompt for r in batch],
            responses=[r.response for r in batch],
            references=[r.reference for r in batch],
            images=decoded,
        )
        for kind, kind_rows in rows.items():
            parts.setdefault(kind, []).append(kind_rows)
        if progress:
            progress("embedding", min(start + len(batch), total), total)
    return {kind: np.concatenate(rows) for kind, rows in parts.items() if rows}


def embed_batch(
    encoders: EncoderSet,
    *,
    prompts: Sequence[str],
    responses: Sequence[str | None],
    references: Sequence[str | None],
    images: Sequence[Image.Image | None],
) -> dict[str, Rows]:
    """One batch of records embedded as a reference store holds them.

    The reference build and the live embedding workers both call this, so a live sample and an
    ID record are embedded exactly alike. ``prompt`` and ``query`` (x, the fusion of image and
    prompt) have one row per record; ``response``, ``reference`` and ``image`` one row per record
    that has one, in record order (a kind no record has is absent). Images come decoded.
    """
    out: dict[str, Rows] = {"prompt": encoders.text.encode_texts(list(prompts))}
    for kind, texts in (("response", responses), ("reference", references)):
        present = [t for t in texts if t is not None]
        if present:
            out[kind] = encoders.text.encode_texts(present)
    has_image = np.array([image is not None for image in images], dtype=bool)
    if has_image.any() and encoders.image is None:
        raise ReferenceStoreError("records have images but encoders.image.kind is 'none'")
    full_image = None
    if encoders.image is not None:
        # Zero rows where a record has no image: fuse ignores them (concat keeps the width).
        full_image = np.zeros((len(images), encoders.image.dim), dtype=np.float32)
        if has_image.any():
            out["image"] = encoders.image.encode_images([i for i in images if i is not None])
            full_image[has_image] = out["image"]
    out["query"] = fuse(out["prompt"], full_image, has_image, encoders.fusion)
    return out


def _write_store(
    workdir: Path,
    name: str,
    records: Sequence[ManifestRecord],
    embeddings: dict[str, Rows],
    encoders: EncoderSet,
    options: BuildOptions,
    progress: Progress | None,
) -> None:
    index_params: dict[str, dict[str, Any]] = {}
    for n, (kind, rows) in enumerate(sorted(embeddings.items())):
        np.save(workdir / f"{kind}.npy", rows.astype(np.float16))
        params = choose_params(
            len(rows),
            ivf_min_size=options.ivf_min_size,
            nlist=options.ivf_nlist,
            nprobe=options.ivf_nprobe,
        )
        index = build_index(l2_normalise(rows), params, seed=options.seed)
        write_index(index, workdir / f"{kind}.faiss")
        index_params[kind] = params.to_dict()
        if kind == "query":
            ood = _calibrate_ood(index, l2_normalise(rows), options)
        if progress:
            progress("indexing", n + 1, len(embeddings))
    write_json_atomic(
        workdir / RECORDS,
        {
            "ids": [r.id for r in records],
            "has_image": [bool(r.image) for r in records],
            "has_reference": [r.reference is not None for r in records],
        },
    )
    files = {path.name: file_sha256(path) for path in sorted(workdir.iterdir())}
    manifest = {
        "format": STORE_FORMAT,
        "name": name,
        "created_at": datetime.now(UTC).isoformat(),
        "project_version": __version__,
        "encoders": {
            "image": encoders.image.fingerprint if encoders.image else None,
            "text": encoders.text.fingerprint,
        },
        "fusion": encoders.fusion,
        "records": len(records),
        "counts": {kind: len(rows) for kind, rows in embeddings.items()},
        "dims": {kind: int(rows.shape[1]) for kind, rows in embeddings.items()},
        "index": index_params,
        "ood": ood,
        "calibrated": False,
        "estimator": None,
        "files": files,
    }
    write_json_atomic(workdir / MANIFEST, manifest)


def _calibrate_ood(index: Any, unit_rows: Rows, options: BuildOptions) -> dict[str, Any]:
    """Threshold on ID scores, each ID row scored leave-one-out (its own match dropped)."""
    n = len(unit_rows)
    if n < 2:
        raise ReferenceStoreError("a reference store needs at least 2 records")
    k = min(options.ood_k, n - 1)
    sample = np.random.default_rng(options.seed).permutation(n)[: options.ood_calibration_rows]
    sims, ids = search(index, unit_rows[sample], k + 1)
    own = ids == sample[:, None]
    # Drop each row's own match (or the last neighbour, when an exact duplicate displaced it).
    keep = np.where(own.any(axis=1, keepdims=True), ~own, np.arange(k + 1) < k)
    held_out = sims[keep].reshape(len(sample), k)
    scores = kth_neighbour_distance(held_out, k)
    return {
        "k": k,
        "tpr": options.ood_tpr,
        "threshold": ood_threshold(scores, options.ood_tpr),
        "calibration_rows": len(sample),
    }


def _swap_into_place(workdir: Path, target: Path) -> None:
    for path in workdir.iterdir():
        with path.open("rb") as fh:
            os.fsync(fh.fileno())
    if target.exists():
        retired = target.with_name(f".{target.name}.replaced-{os.getpid()}")
        os.replace(target, retired)
        os.replace(workdir, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(workdir, target)


def _remove_stale_builds(root: Path, name: str) -> None:
    for leftover in root.glob(f".{name}.building-*"):
        shutil.rmtree(leftover, ignore_errors=True)


__all__ = ["BuildOptions", "IndexParams", "build_store", "embed_batch"]
