"""Opening a store: encoders checked, manifest checked, every file verified, hostile stores."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitor.embedding import EncoderSet
from monitor.errors import (
    CheckpointError,
    EmbeddingError,
    FingerprintMismatchError,
    ReferenceStoreError,
)
from monitor.estimators.club import CLUB
from monitor.files import file_sha256
from monitor.reference import (
    held_out_pairs,
    load_store,
    load_store_estimator,
    open_store,
    train_store_estimator,
)
from monitor.reference.checkpoint import save_club
from monitor.reference.store import (
    CALIBRATION,
    ESTIMATOR,
    MANIFEST,
    ReferenceStore,
    write_store_json,
)
from tests.unit.reference.conftest import TableEncoder, small_store


class UnusedImageEncoder:
    """An image encoder that only has a fingerprint: opening a store never encodes."""

    kind = "unused"
    dim = 16
    fingerprint = "clip-x"

    def encode_images(self, images: Sequence[object]) -> np.ndarray:
        raise AssertionError("opening a store must not encode images")


def _rewrite_manifest(store: ReferenceStore, change: Callable[[dict[str, Any]], Any]) -> None:
    path = store.path / MANIFEST
    data = json.loads(path.read_text())
    replaced = change(data)
    path.write_text(json.dumps(data if replaced is None else replaced))


def _attach_calibration(store: ReferenceStore, data: dict[str, Any]) -> None:
    write_store_json(store, CALIBRATION, data, calibrated=True)


def test_open_store_checks_encoders_and_fusion(tmp_path: Path) -> None:
    encoder, _ = small_store(tmp_path)
    same = EncoderSet(image=None, text=encoder, fusion="mean")
    assert open_store(tmp_path, "ref", same).name == "ref"
    other = TableEncoder(encoder.table, fingerprint="table-v2")
    with pytest.raises(FingerprintMismatchError, match="text encoder: built with 'table-v1'"):
        open_store(tmp_path, "ref", EncoderSet(image=None, text=other, fusion="mean"))
    with pytest.raises(FingerprintMismatchError, match="fusion: built with 'mean'"):
        open_store(tmp_path, "ref", EncoderSet(image=None, text=encoder, fusion="concat"))
    image = UnusedImageEncoder()
    with pytest.raises(FingerprintMismatchError, match="image encoder: built with None"):
        open_store(tmp_path, "ref", EncoderSet(image=image, text=encoder, fusion="mean"))


def test_calibration_is_verified_at_load_and_again_when_read(tmp_path: Path) -> None:
    _, store = small_store(tmp_path)
    _attach_calibration(store, {"nulls": {}, "trials": 1})
    loaded = load_store(tmp_path, "ref")
    path = tmp_path / "ref" / CALIBRATION
    # Same JSON shape, other content: only the checksum can tell.
    path.write_text(json.dumps({"nulls": {}, "trials": 2}))
    with pytest.raises(ReferenceStoreError, match=r"calibration\.json does not match its checksum"):
        load_store(tmp_path, "ref")
    # A store loaded before the change reads the file again and refuses it too.
    with pytest.raises(ReferenceStoreError, match=r"calibration\.json does not match its checksum"):
        _ = loaded.calibration


def test_calibration_present_but_not_listed_is_refused(tmp_path: Path) -> None:
    _, store = small_store(tmp_path)
    (store.path / CALIBRATION).write_text(json.dumps({"nulls": {}}))
    with pytest.raises(ReferenceStoreError, match=r"does not list: \['calibration\.json'\]"):
        load_store(tmp_path, "ref")
    (store.path / CALIBRATION).unlink()
    (store.path / "notes.txt").write_text("x")
    with pytest.raises(ReferenceStoreError, match=r"does not list: \['notes\.txt'\]"):
        load_store(tmp_path, "ref")


def test_calibrated_manifest_must_list_its_calibration(tmp_path: Path) -> None:
    _, store = small_store(tmp_path)
    _rewrite_manifest(store, lambda m: m.update(calibrated=True))
    with pytest.raises(ReferenceStoreError, match=r"does not list \['calibration\.json'\]"):
        load_store(tmp_path, "ref")


def test_estimator_weights_are_verified_at_load_and_again_when_loaded(tmp_path: Path) -> None:
    _, store = small_store(tmp_path, n=40)
    train_store_estimator(store, hidden=8, epochs=1)
    loaded = load_store(tmp_path, "ref")
    assert load_store_estimator(loaded).x_dim == 16
    save_club(CLUB(16, 16, hidden=8), tmp_path / "ref" / ESTIMATOR)  # other weights, same form
    with pytest.raises(ReferenceStoreError, match=r"estimator\.pt does not match its checksum"):
        load_store(tmp_path, "ref")
    with pytest.raises(ReferenceStoreError, match=r"estimator\.pt does not match its checksum"):
        load_store_estimator(loaded)


def test_trained_estimator_holds_out_id_records(tmp_path: Path) -> None:
    _, store = small_store(tmp_path, n=50)
    model = train_store_estimator(store, hidden=8, epochs=1, id_holdout_fraction=0.2, seed=4)
    held = load_store(tmp_path, "ref").estimator_holdout
    assert len(held) == 10 and len(set(held.tolist())) == 10
    assert set(held.tolist()) <= set(store.rows_of("reference").tolist())
    # Trained on the other 40 records' two pairs each: early stopping keeps 20% of them.
    assert model.metadata["trained_pairs"] + model.metadata["holdout_pairs"] == 80
    again = train_store_estimator(store, hidden=8, epochs=1, id_holdout_fraction=0.2, seed=4)
    assert again.metadata["trained_pairs"] == model.metadata["trained_pairs"]
    reloaded = load_store(tmp_path, "ref")
    assert np.array_equal(reloaded.estimator_holdout, held)
    # EMI(ID) rows: exactly the held-out records' x, model answer and reference.
    x, y_hat, y = held_out_pairs(reloaded)
    np.testing.assert_array_equal(x, reloaded.embeddings("query")[held])
    np.testing.assert_array_equal(y_hat, reloaded.embeddings("response")[held])
    np.testing.assert_array_equal(y, reloaded.embeddings("reference")[held])  # all have one
    train_store_estimator(store, hidden=8, epochs=1, id_holdout_fraction=0.0)
    with pytest.raises(ReferenceStoreError, match="0 held-out ID records"):
        held_out_pairs(load_store(tmp_path, "ref"))


def _as_list(m: dict[str, Any]) -> Any:
    return [m]


def _drop_files(m: dict[str, Any]) -> None:
    del m["files"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_as_list, "expected a JSON object, found list"),
        (_drop_files, "missing 'files'"),
        (lambda m: m.update(counts=[1, 2]), "'counts' must map kinds"),
        (lambda m: m.update(counts={"prompt": "60"}), "'counts' must map kinds"),
        (lambda m: m.update(dims={"prompt": 16}), "'dims' and 'counts' name other kinds"),
        (lambda m: m.update(ood={"k": 1}), "'ood' must give k"),
        (lambda m: m.update(encoders=None), "'encoders' must give"),
        (lambda m: m.update(name="other"), "but the store folder is 'ref'"),
        (lambda m: m["files"].update({"../../etc/passwd": "0" * 64}), "not reference store files"),
        (lambda m: m["files"].update({"prompt.npy": "nope"}), "sha256 digests"),
        (lambda m: m.update(estimator={"id_holdout": [10**6]}), "id_holdout"),
        (lambda m: m.update(records=True), "'records' must be >= 2"),
    ],
)
def test_malformed_manifest_is_a_clear_error(
    tmp_path: Path, change: Callable[[dict[str, Any]], Any], message: str
) -> None:
    _, store = small_store(tmp_path, n=20)
    _rewrite_manifest(store, change)
    with pytest.raises(ReferenceStoreError, match=message) as info:
        load_store(tmp_path, "ref")
    assert info.value.path == tmp_path / "ref" / MANIFEST


def test_object_npy_with_a_matching_checksum_is_refused(tmp_path: Path) -> None:
    _, store = small_store(tmp_path, n=20)
    path = store.path / "prompt.npy"
    np.save(path, np.array([{"a": 1}] * 20, dtype=object), allow_pickle=True)
    _rewrite_manifest(store, lambda m: m["files"].update({"prompt.npy": file_sha256(path)}))
    # The checksum matches: the array header is what refuses it, at load and when read.
    with pytest.raises(ReferenceStoreError, match=r"prompt\.npy is not a plain numeric array"):
        load_store(tmp_path, "ref")
    with pytest.raises(ReferenceStoreError, match=r"prompt\.npy is not a plain numeric array"):
        load_store(tmp_path, "ref", verify=False).embeddings("prompt")
    np.save(path, np.zeros((20, 3), dtype=np.float16))
    _rewrite_manifest(store, lambda m: m["files"].update({"prompt.npy": file_sha256(path)}))
    with pytest.raises(ReferenceStoreError, match=r"expected float16 \(20, 16\)"):
        load_store(tmp_path, "ref")


def test_records_file_must_agree_with_the_manifest(tmp_path: Path) -> None:
    _, store = small_store(tmp_path, n=20)
    path = store.path / "records.json"
    records = json.loads(path.read_text())
    records["has_reference"][0] = False
    path.write_text(json.dumps(records))
    _rewrite_manifest(store, lambda m: m["files"].update({"records.json": file_sha256(path)}))
    with pytest.raises(ReferenceStoreError, match="disagree with the manifest's counts"):
        load_store(tmp_path, "ref")
    path.write_text("[]")
    _rewrite_manifest(store, lambda m: m["files"].update({"records.json": file_sha256(path)}))
    with pytest.raises(ReferenceStoreError, match="expected ids, has_image and has_reference"):
        load_store(tmp_path, "ref")


def test_root_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "refs"
    root.write_text("not a folder")
    with pytest.raises(ReferenceStoreError, match="is not a directory"):
        load_store(root, "ref")
    with pytest.raises(ReferenceStoreError, match="is not a directory"):
        small_store(root)
    with pytest.raises(ReferenceStoreError, match=r"cannot create reference\.root"):
        small_store(root / "below")


@pytest.mark.parametrize(
    "name",
    ["bad\x07name", "line\nbreak", "tab\there", "../up", ".hidden", "", "a/b", "é" * 3, "x" * 65],
)
def test_store_names_are_validated_in_one_place(tmp_path: Path, name: str) -> None:
    with pytest.raises(ReferenceStoreError, match="invalid reference store name"):
        load_store(tmp_path, name)
    with pytest.raises(ReferenceStoreError, match="invalid reference store name"):
        small_store(tmp_path, name=name)
    assert list(tmp_path.iterdir()) == []


def test_update_manifest_refuses_a_store_rebuilt_since_loading(tmp_path: Path) -> None:
    _, store = small_store(tmp_path, n=20)
    _rewrite_manifest(store, lambda m: m.update(created_at="2000-01-01T00:00:00+00:00"))
    with pytest.raises(ReferenceStoreError, match="rebuilt since it was loaded"):
        _attach_calibration(store, {"nulls": {}})


def test_weights_file_error_is_a_checkpoint_error(tmp_path: Path) -> None:
    _, store = small_store(tmp_path, n=20)
    train_store_estimator(store, hidden=8, epochs=1)
    path = store.path / ESTIMATOR
    path.write_bytes(b"garbage")
    _rewrite_manifest(store, lambda m: m["files"].update({ESTIMATOR: file_sha256(path)}))
    with pytest.raises(CheckpointError, match="cannot read CLUB weights"):
        load_store_estimator(load_store(tmp_path, "ref"))


def test_knn_refuses_rows_of_another_width(tmp_path: Path) -> None:
    _, store = small_store(tmp_path, n=20)
    assert store.knn_scores(np.ones((3, 16), dtype=np.float32)).shape == (3,)
    with pytest.raises(EmbeddingError, match="has 16-d 'query' rows, got an array of shape"):
        store.knn_scores(np.ones((3, 384), dtype=np.float32))
    with pytest.raises(EmbeddingError, match="shape \\(16,\\)"):
        store.knn_scores(np.ones(16, dtype=np.float32))
