"""Building a store: the writer lock, image files (limits, symlinks, FIFOs), decode batches."""

from __future__ import annotations

import base64
import io
import os
import struct
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monitor.embedding import EncoderSet, ImageLimits
from monitor.embedding.images import ImageSource
from monitor.errors import ReferenceStoreError
from monitor.reference import load_store, read_id_records
from monitor.reference.build import (
    BuildOptions,
    batches_by_bytes,
    build_store,
    decoded_size,
)
from monitor.reference.id_records import IDRecord
from tests.unit.reference.conftest import TableEncoder, id_rows, small_store, unit


class RecordingImageEncoder:
    """Image encoder double: one row per image (from its mean colour); records each call."""

    kind = "recording"
    dim = 4
    fingerprint = "recording-v1"

    def __init__(self) -> None:
        self.calls: list[list[tuple[int, int]]] = []

    def encode_images(self, images: Sequence[ImageSource | Image.Image]) -> np.ndarray:
        pil = [i for i in images if isinstance(i, Image.Image)]
        assert len(pil) == len(images)
        self.calls.append([i.size for i in pil])
        rows = [np.r_[np.asarray(i, dtype=np.float32).mean(axis=(0, 1)), 1.0] for i in pil]
        return unit(np.array(rows))


def _image_store(
    tmp_path: Path,
    sizes: Sequence[tuple[int, int]],
    *,
    limits: ImageLimits | None = None,
    options: BuildOptions | None = None,
    extra: Sequence[IDRecord] = (),
) -> tuple[RecordingImageEncoder, Path]:
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for i, (width, height) in enumerate(sizes):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(root / f"{i}.png")
        records.append(
            IDRecord(id=f"r{i}", prompt=f"row:{i}", response=f"row:{i}", image_path=f"{i}.png")
        )
    text = TableEncoder(id_rows(rng, len(sizes) + len(extra)))
    images = RecordingImageEncoder()
    build_store(
        [*records, *extra],
        root=tmp_path / "refs",
        name="img",
        encoders=EncoderSet(image=images, text=text, fusion="concat"),
        image_root=root,
        image_limits=limits,
        options=options or BuildOptions(),
    )
    return images, root


def test_batches_by_bytes_bound_the_sum_and_the_count() -> None:
    sizes = [5, 5, 5, 20, 1, 1, 1, 1, 9]
    groups = list(
        batches_by_bytes(((i, s) for i, s in enumerate(sizes)), max_bytes=10, max_items=3)
    )
    assert groups == [[0, 1], [2], [3], [4, 5, 6], [7, 8]]
    for group in groups:
        assert len(group) == 1 or sum(sizes[i] for i in group) <= 10
    assert list(batches_by_bytes(iter([]), max_bytes=1, max_items=1)) == []


def test_decoded_size_reads_the_header_only() -> None:
    # A PNG header claiming 6000 x 6000 (36 MP, 108 MB of RGB) with no pixel data at all.
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", 6000, 6000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
    assert len(png) < 200
    assert decoded_size(png) == 6000 * 6000 * 3
    assert decoded_size(b"not an image") == 0


def test_image_batches_never_exceed_the_decoded_byte_budget(tmp_path: Path) -> None:
    sizes = [(40, 30), (60, 50), (20, 20), (80, 70), (30, 30), (50, 40), (10, 90), (70, 20)]
    budget = 60 * 50 * 3 + 20 * 20 * 3  # fits two of the middle-sized images, never three
    images, _ = _image_store(
        tmp_path, sizes, options=BuildOptions(batch_image_bytes=budget, batch_records=100)
    )
    assert sorted(s for call in images.calls for s in call) == sorted(sizes)
    assert len(images.calls) > 2
    for call in images.calls:
        decoded = sum(w * h * 3 for w, h in call)
        assert decoded <= budget or len(call) == 1, (call, decoded, budget)
    alone = [call for call in images.calls if sum(w * h * 3 for w, h in call) > budget]
    assert alone == [[(80, 70)]]  # larger than the budget: decoded by itself
    store = load_store(tmp_path / "refs", "img")
    assert store.manifest["counts"]["image"] == len(sizes)


def test_build_applies_the_configured_image_limits(tmp_path: Path) -> None:
    with pytest.raises(ReferenceStoreError, match=r"record 'r1': .*over the limit of 2,000"):
        _image_store(tmp_path, [(40, 30), (50, 50)], limits=ImageLimits(max_pixels=2000))
    with pytest.raises(ReferenceStoreError, match=r"record 'r0': .*over the limit of 100 bytes"):
        _image_store(tmp_path, [(40, 30)], limits=ImageLimits(max_bytes=100))
    assert not (tmp_path / "refs" / "img").exists()


def test_symlink_inside_the_root_to_outside_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    root = tmp_path / "images"
    root.mkdir()
    (root / "link.png").symlink_to(outside)
    record = IDRecord(id="x", prompt="row:0", response="row:1", image_path="link.png")
    with pytest.raises(ReferenceStoreError, match=r"record 'x': .*escapes the image root"):
        build_store(
            [record, IDRecord(id="y", prompt="row:1", response="row:0")],
            root=tmp_path / "refs",
            name="img",
            encoders=EncoderSet(
                image=RecordingImageEncoder(),
                text=TableEncoder(id_rows(np.random.default_rng(0), 2)),
                fusion="mean",
            ),
            image_root=root,
        )


def test_a_fifo_in_the_image_root_does_not_hang_the_build(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    fifo = root / "pipe.png"
    os.mkfifo(fifo)
    record = IDRecord(id="p", prompt="row:0", response="row:1", image_path="pipe.png")
    errors: list[BaseException] = []

    def build() -> None:
        try:
            build_store(
                [record, IDRecord(id="q", prompt="row:1", response="row:0")],
                root=tmp_path / "refs",
                name="img",
                encoders=EncoderSet(
                    image=RecordingImageEncoder(),
                    text=TableEncoder(id_rows(np.random.default_rng(0), 2)),
                    fusion="mean",
                ),
                image_root=root,
            )
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    worker = threading.Thread(target=build, daemon=True)
    worker.start()
    worker.join(timeout=20)
    hung = worker.is_alive()
    if hung:  # unblock a reader stuck on the FIFO so the test run can end
        with open(fifo, "wb"):
            pass
        worker.join(timeout=5)
    assert not hung, "the build blocked on a FIFO"
    assert len(errors) == 1 and isinstance(errors[0], ReferenceStoreError)
    assert "is not a regular file" in str(errors[0])


def test_concurrent_builds_of_one_name_exclude_each_other(tmp_path: Path) -> None:
    started, release = threading.Event(), threading.Event()
    outcome: list[BaseException | None] = []

    def slow(stage: str, done: int, total: int) -> None:
        if stage == "indexing" and done == 1:
            started.set()
            assert release.wait(timeout=30)

    def first() -> None:
        try:
            rng = np.random.default_rng(0)
            encoder = TableEncoder(id_rows(rng, 30))
            build_store(
                [IDRecord(id=str(i), prompt=f"row:{i}", response=f"row:{i}") for i in range(30)],
                root=tmp_path,
                name="ref",
                encoders=EncoderSet(image=None, text=encoder, fusion="mean"),
                progress=slow,
            )
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=first, daemon=True)
    worker.start()
    assert started.wait(timeout=30)
    building = [p for p in tmp_path.iterdir() if p.name.startswith(".ref.building-")]
    assert len(building) == 1
    with pytest.raises(ReferenceStoreError, match="being built or changed by another process"):
        small_store(tmp_path, n=30)
    with pytest.raises(ReferenceStoreError, match="being built or changed by another process"):
        small_store(tmp_path, n=30, seed=1)
    assert building[0].is_dir()  # the refused builds did not remove the running one's work
    release.set()
    worker.join(timeout=30)
    assert outcome == [None]
    assert load_store(tmp_path, "ref").ids[0] == "0"
    small_store(tmp_path / "other", n=30)  # the lock is per name and released


def test_manifest_images_inline_and_by_path(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (12, 10), (200, 10, 10)).save(root / "a.png")
    buffer = io.BytesIO()
    Image.new("RGB", (9, 7), (10, 200, 10)).save(buffer, format="PNG")
    inline = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '{"id": "a", "prompt": "row:0", "response": "row:1", "image": "a.png"}\n'
        f'{{"id": "b", "prompt": "row:1", "response": "row:0", "image": {{"url": "{inline}"}}}}\n'
        '{"id": "c", "prompt": "row:2", "response": "row:2"}\n'
    )
    records = read_id_records(manifest)
    assert records[0].image_path == "a.png" and records[0].image is None
    assert records[1].image == buffer.getvalue() and records[1].image_path is None
    assert [r.has_image for r in records] == [True, True, False]
    images = RecordingImageEncoder()
    store = build_store(
        records,
        root=tmp_path / "refs",
        name="mixed",
        encoders=EncoderSet(
            image=images, text=TableEncoder(id_rows(np.random.default_rng(1), 3)), fusion="concat"
        ),
        image_root=root,
    )
    assert images.calls == [[(12, 10), (9, 7)]]
    assert store.has_image.tolist() == [True, True, False]
