"""Building a reference store from a manifest, through the configured encoders.

Everything is written into a hidden temporary directory next to the target and renamed into
place only when complete, so an interrupted build leaves no half store that loads (and its
leftovers are removed by the next build). Builds of one store name exclude each other through
the store's lock (the second is refused at once, instead of deleting the first's work).

Images: paths are resolved (symlinks included) under the image root and must stay inside
it; only regular files are read (a FIFO or device would block or never end), at most
``max_bytes`` of them. Decoding is bounded by bytes in flight, not by record count: a batch
holds at most ``BuildOptions.batch_image_bytes`` of decoded RGB pixels (width x height x 3,
read from the header before decoding), or a single image when one alone is larger.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from PIL import Image

from monitor import __version__
from monitor.embedding import EncoderSet, ImageLimits, decode_image, fuse
from monitor.errors import ImageDecodeError, ReferenceStoreError
from monitor.estimators.arrays import l2_normalise
from monitor.estimators.knn import kth_neighbour_distance, ood_threshold
from monitor.files import file_sha256, write_json_atomic
from monitor.reference.id_records import IDRecord
from monitor.reference.index import IndexParams, build_index, choose_params, search, write_index
from monitor.reference.store import (
    MANIFEST,
    RECORDS,
    STORE_FORMAT,
    ReferenceStore,
    encoder_fingerprints,
    load_store,
    store_lock,
    store_path,
)

Progress = Callable[[str, int, int], None]  # (stage, done, total)
Rows = npt.NDArray[np.float32]
T = TypeVar("T")


@dataclass(frozen=True)
class BuildOptions:
    ood_k: int = 1
    ood_tpr: float = 0.95
    ood_calibration_rows: int = 5000
    ivf_min_size: int = 200_000
    ivf_nlist: int = 0
    ivf_nprobe: int = 0
    batch_records: int = 256
    # Decoded RGB bytes per image batch: 256 MiB is ~280 photos of 640x480, or one 36 MP image.
    batch_image_bytes: int = 256 * 1024 * 1024
    seed: int = 0


def build_store(
    records: Sequence[IDRecord],
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
    if any(r.has_image for r in records) and encoders.image is None:
        raise ReferenceStoreError("the manifest has images but encoders.image.kind is 'none'")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReferenceStoreError(
            f"cannot create reference.root {root}: {exc.strerror or exc}", path=root
        ) from exc
    with store_lock(root, name):
        if target.exists() and not replace:
            raise ReferenceStoreError(
                f"reference store {name!r} already exists at {target}; pass --replace to "
                "rebuild it",
                path=target,
            )
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
    return load_store(
        root, name, expect_fingerprints=encoder_fingerprints(encoders), fusion=encoders.fusion
    )


def _embed_all(
    records: Sequence[IDRecord],
    encoders: EncoderSet,
    image_root: Path | None,
    limits: ImageLimits,
    options: BuildOptions,
    progress: Progress | None,
) -> dict[str, Rows]:
    parts: dict[str, list[Rows]] = {k: [] for k in ("image", "prompt", "response", "reference")}
    total = len(records)
    for start in range(0, total, options.batch_records):
        batch = records[start : start + options.batch_records]
        parts["prompt"].append(encoders.text.encode_texts([r.prompt or "" for r in batch]))
        parts["response"].append(encoders.text.encode_texts([r.response or "" for r in batch]))
        refs = [r.reference for r in batch if r.reference is not None]
        if refs:
            parts["reference"].append(encoders.text.encode_texts(refs))
        if progress:
            progress("embedding", min(start + len(batch), total), total)
    with_image = [r for r in records if r.has_image]
    if with_image and encoders.image is not None:
        read = ((r, _image_data(r, image_root, limits)) for r in with_image)
        done = 0
        for group in batches_by_bytes(
            ((item, decoded_size(item[1])) for item in read),
            max_bytes=options.batch_image_bytes,
            max_items=options.batch_records,
        ):
            decoded = [_decode(r, data, limits) for r, data in group]
            parts["image"].append(encoders.image.encode_images(decoded))
            del decoded  # the next batch's pixels replace these, not add to them
            done += len(group)
            if progress:
                progress("embedding images", done, len(with_image))
    out = {kind: np.concatenate(rows) for kind, rows in parts.items() if rows}
    has_image = np.array([r.has_image for r in records])
    if encoders.image is None:
        # Text-only deployment: x is the prompt embedding, whatever the fusion setting.
        out["query"] = fuse(out["prompt"], None, has_image, "mean")
        return out
    # Records without an image (or a store without any) get zero image rows, so x has the
    # width live traffic gets from the configured fusion.
    full_image = np.zeros((total, encoders.image.dim), dtype=np.float32)
    if "image" in out:
        full_image[has_image] = out["image"]
    out["query"] = fuse(out["prompt"], full_image, has_image, encoders.fusion)
    return out


def batches_by_bytes(
    items: Iterable[tuple[T, int]], *, max_bytes: int, max_items: int
) -> Iterator[list[T]]:
    """Group ``(item, size)`` pairs, in order, into lists of at most ``max_items`` items whose
    sizes sum to at most ``max_bytes``; an item larger than ``max_bytes`` goes alone.

    Streaming: items are consumed as the groups are, so at most one group is held.
    """
    group: list[T] = []
    held = 0
    for item, size in items:
        if group and (held + size > max_bytes or len(group) >= max_items):
            yield group
            group, held = [], 0
        group.append(item)
        held += size
    if group:
        yield group


def decoded_size(data: bytes) -> int:
    """Bytes of the RGB pixels ``data`` decodes to, from its header (nothing is decoded).

    0 when the header cannot be read: decoding the image then fails with the real reason.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Exception:  # any unreadable header is reported by the decode itself
        return 0
    return int(width) * int(height) * 3


def read_image_file(root: Path | None, relative: str, max_bytes: int) -> bytes:
    """The bytes of an image file named in a manifest, read safely.

    The path is resolved with symlinks under ``root`` and refused if it lands outside; only a
    regular file is read (opened non-blocking, so a FIFO cannot hang the build), and no more
    than ``max_bytes`` of it.
    """
    if root is None:
        raise ImageDecodeError(
            f"image path {relative!r} needs an image root (--image-root)", field="image"
        )
    base = root.resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise ImageDecodeError(
            f"image path {relative!r} escapes the image root {root}", field="image"
        )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"image file not found: {path}", field="image") from exc
    except OSError as exc:
        raise ImageDecodeError(
            f"cannot read image file {path}: {exc.strerror or exc}", field="image"
        ) from exc
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageDecodeError(
                f"image path {path} is not a regular file (a directory, FIFO or device)",
                field="image",
            )
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageDecodeError(
            f"image file {path} is over the limit of {max_bytes:,} bytes", field="image"
        )
    return data


def _image_data(record: IDRecord, root: Path | None, limits: ImageLimits) -> bytes:
    if record.image is not None:
        return record.image
    try:
        return read_image_file(root, record.image_path or "", limits.max_bytes)
    except ImageDecodeError as exc:
        raise ReferenceStoreError(f"record {record.id!r}: {exc}") from exc


def _decode(record: IDRecord, data: bytes, limits: ImageLimits) -> Image.Image:
    try:
        return decode_image(data, limits=limits)
    except ImageDecodeError as exc:
        raise ReferenceStoreError(f"record {record.id!r}: {exc}") from exc


def _write_store(
    workdir: Path,
    name: str,
    records: Sequence[IDRecord],
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
            "has_image": [r.has_image for r in records],
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


__all__ = [
    "BuildOptions",
    "IndexParams",
    "batches_by_bytes",
    "build_store",
    "decoded_size",
    "read_image_file",
]
