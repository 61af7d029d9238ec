"""Reference store: build, load, verify, kNN OOD, estimator, calibration."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from monitor.detection import bound_null, calibrate_store, null_for
from monitor.embedding import EncoderSet
from monitor.errors import (
    CalibrationError,
    CheckpointError,
    FingerprintMismatchError,
    ReferenceStoreError,
)
from monitor.estimators.club import CLUB
from monitor.estimators.rjsd import ReferenceJSD
from monitor.reference import (
    BuildOptions,
    IDRecord,
    build_store,
    import_store_estimator,
    load_store,
    load_store_estimator,
    read_id_records,
    train_store_estimator,
)
from monitor.reference.checkpoint import save_club
from tests.unit.reference.conftest import TableEncoder, unit

D = 16
SCALE = np.geomspace(3.0, 0.3, D)


def id_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return unit(rng.standard_normal((n, D)) * SCALE + np.r_[1.5, np.zeros(D - 1)])


def table_store(
    tmp_path: Path,
    n: int = 600,
    *,
    seed: int = 0,
    name: str = "ref",
    options: BuildOptions | None = None,
) -> tuple[TableEncoder, list[IDRecord]]:
    rng = np.random.default_rng(seed)
    # rows 0..n-1 prompts, n..2n-1 responses, 2n..3n-1 references
    prompts = id_rows(rng, n)
    responses = unit(prompts + 0.3 * rng.standard_normal((n, D)))
    references = unit(prompts + 0.3 * rng.standard_normal((n, D)))
    encoder = TableEncoder(np.vstack([prompts, responses, references]))
    records = [
        IDRecord(
            id=f"r{i}", prompt=f"row:{i}", response=f"row:{n + i}", reference=f"row:{2 * n + i}"
        )
        for i in range(n)
    ]
    build_store(
        records,
        root=tmp_path,
        name=name,
        encoders=EncoderSet(image=None, text=encoder, fusion="mean"),
        options=options or BuildOptions(),
    )
    return encoder, records


def test_build_then_load_round_trip(tmp_path: Path) -> None:
    encoder, records = table_store(tmp_path)
    store = load_store(tmp_path, "ref", expect_fingerprints={"image": None, "text": "table-v1"})
    assert store.ids == [r.id for r in records]
    assert store.kinds == ["prompt", "query", "response", "reference"]
    assert store.manifest["counts"]["prompt"] == 600
    assert store.manifest["index"]["query"]["kind"] == "flat"
    np.testing.assert_allclose(store.embeddings("prompt"), encoder.table[:600], atol=2e-3)
    # Nothing hidden left behind but the store's lock file.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ref.lock", "ref"]


def test_knn_score_and_ood_threshold(tmp_path: Path) -> None:
    table_store(tmp_path, options=BuildOptions(ood_k=3, ood_tpr=0.9))
    store = load_store(tmp_path, "ref")
    rng = np.random.default_rng(1)
    fresh_id = id_rows(rng, 400)
    shifted = unit(rng.standard_normal((400, D)) * SCALE[::-1])
    assert store.ood["k"] == 3
    assert store.knn_scores(shifted).mean() > store.knn_scores(fresh_id).mean() + 0.1
    # The threshold is calibrated leave-one-out at TPR 0.9: fresh ID traffic flags ~10%.
    assert 0.04 <= store.ood_flags(fresh_id).mean() <= 0.2
    assert store.ood_flags(shifted).mean() > 0.5
    exact = store.embeddings("prompt")[5:6]
    assert store.knn_scores(exact, k=1)[0] == pytest.approx(0.0, abs=2e-3)


def test_ivf_beyond_the_configured_size(tmp_path: Path) -> None:
    table_store(tmp_path, n=600, options=BuildOptions(ivf_min_size=500, ivf_nlist=8, ivf_nprobe=8))
    store = load_store(tmp_path, "ref")
    assert store.manifest["index"]["query"] == {"kind": "ivf", "nlist": 8, "nprobe": 8}
    rows = store.embeddings("prompt")[:20]
    assert np.all(store.knn_scores(rows, k=1) < 2e-3)  # nprobe = nlist: exact


def test_existing_store_needs_replace(tmp_path: Path) -> None:
    table_store(tmp_path)
    before = load_store(tmp_path, "ref").manifest["files"]
    with pytest.raises(ReferenceStoreError, match=r"already exists.*--replace"):
        table_store(tmp_path)
    rng = np.random.default_rng(9)
    encoder = TableEncoder(id_rows(rng, 50), fingerprint="table-v2")
    records = [IDRecord(id=f"n{i}", prompt=f"row:{i}", response=f"row:{i}") for i in range(50)]
    encoders = EncoderSet(image=None, text=encoder, fusion="mean")
    build_store(records, root=tmp_path, name="ref", encoders=encoders, replace=True)
    after = load_store(tmp_path, "ref")
    assert after.ids[0] == "n0"
    assert after.manifest["files"] != before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ref.lock", "ref"]


def test_mismatched_fingerprint_is_refused(tmp_path: Path) -> None:
    table_store(tmp_path)
    with pytest.raises(FingerprintMismatchError, match="text encoder: built with 'table-v1'"):
        load_store(tmp_path, "ref", expect_fingerprints={"text": "xlmr_embedding_layer-abc"})


@pytest.mark.parametrize("victim", ["query.faiss", "prompt.npy", "records.json"])
def test_altered_or_truncated_files_are_named(tmp_path: Path, victim: str) -> None:
    table_store(tmp_path)
    path = tmp_path / "ref" / victim
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ReferenceStoreError, match=f"{victim} does not match its checksum") as e:
        load_store(tmp_path, "ref")
    assert e.value.path == path


def test_missing_file_kind_and_store(tmp_path: Path) -> None:
    table_store(tmp_path)
    (tmp_path / "ref" / "response.faiss").unlink()
    with pytest.raises(ReferenceStoreError, match=r"file missing: .*response\.faiss"):
        load_store(tmp_path, "ref")
    store = load_store(tmp_path, "ref", verify=False)
    with pytest.raises(ReferenceStoreError, match="has no 'image' embeddings"):
        store.embeddings("image")
    with pytest.raises(ReferenceStoreError, match="no reference store 'nope'"):
        load_store(tmp_path, "nope")
    with pytest.raises(ReferenceStoreError, match="invalid reference store name"):
        load_store(tmp_path, "../etc")


def test_interrupted_build_leaves_nothing_that_loads(tmp_path: Path) -> None:
    pid = os.fork()
    if pid == 0:  # child: start a build and die in the middle of it, like a killed process

        def die(stage: str, done: int, total: int) -> None:
            if stage == "indexing":
                os.kill(os.getpid(), signal.SIGKILL)

        try:
            rng = np.random.default_rng(0)
            encoder = TableEncoder(id_rows(rng, 30))
            records = [
                IDRecord(id=str(i), prompt=f"row:{i}", response=f"row:{i}") for i in range(30)
            ]
            build_store(
                records,
                root=tmp_path,
                name="ref",
                progress=die,
                encoders=EncoderSet(image=None, text=encoder, fusion="mean"),
            )
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    assert not (tmp_path / "ref").exists()
    with pytest.raises(ReferenceStoreError, match="no reference store"):
        load_store(tmp_path, "ref")
    # The killed build left its hidden working directory behind: the cleanup below is real.
    leftovers = [p.name for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith(".")]
    assert leftovers, "the killed build left no working directory to clean up"
    table_store(tmp_path)  # the next build cleans the leftovers up
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ref.lock", "ref"]


def test_estimator_train_import_and_load(tmp_path: Path) -> None:
    table_store(tmp_path, n=300)
    store = load_store(tmp_path, "ref")
    model = train_store_estimator(store, hidden=16, epochs=5, seed=0)
    again = load_store(tmp_path, "ref")
    assert again.manifest["estimator"]["source"] == "trained"
    loaded = load_store_estimator(again)
    assert loaded.metadata["encoders"] == {"image": None, "text": "table-v1"}
    x, y = again.embeddings("query"), again.embeddings("response")
    assert loaded.estimate(x, y) == pytest.approx(model.estimate(x, y), abs=1e-9)
    wrong = tmp_path / "wrong.pt"
    save_club(CLUB(D + 1, D, hidden=8), wrong)
    with pytest.raises(CheckpointError, match=f"x_dim={D + 1}"):
        import_store_estimator(again, wrong)
    right = tmp_path / "right.pt"
    save_club(CLUB(D, D, hidden=8), right)
    import_store_estimator(again, right)
    assert load_store(tmp_path, "ref").manifest["estimator"]["hidden"] == 8


def test_estimator_needs_references(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    encoder = TableEncoder(id_rows(rng, 20))
    records = [IDRecord(id=str(i), prompt=f"row:{i}", response=f"row:{i}") for i in range(20)]
    store = build_store(
        records,
        root=tmp_path,
        name="ref",
        encoders=EncoderSet(image=None, text=encoder, fusion="mean"),
    )
    with pytest.raises(ReferenceStoreError, match="has no reference answers"):
        train_store_estimator(store)
    with pytest.raises(ReferenceStoreError, match="has no estimator"):
        load_store_estimator(store)


@pytest.mark.slow
def test_calibrated_thresholds_keep_the_false_alarm_rate(tmp_path: Path) -> None:
    """Fresh ID windows against the store's comparison set: the FAR stays near alpha."""
    table_store(tmp_path, n=3000, seed=0)
    store = load_store(tmp_path, "ref")
    calibration = calibrate_store(store, window_sizes=[40], trials=1000, seed=1)
    assert load_store(tmp_path, "ref").manifest["calibrated"] is True
    text_null = null_for(calibration, "text", 40)
    assert text_null is not None and text_null.trials == 1000
    comparison = store.embeddings("prompt")[calibration["comparison"]]
    assert calibration["jsd_mode"] == "balanced"
    reference = ReferenceJSD(comparison, mode="balanced")
    rng = np.random.default_rng(7)
    alpha = 0.05
    rates = []
    for _ in range(5):
        alarms = [text_null.p_value(reference(id_rows(rng, 40))) < alpha for _ in range(200)]
        rates.append(float(np.mean(alarms)))
    # One calibration's rate spreads by about 0.02 around alpha (its pool and its null are
    # samples); the rate over many calibrations is checked tightly in
    # tests/integration/reference/test_false_alarm_matrix.py.
    assert 0.01 <= float(np.mean(rates)) <= 0.09, rates
    shifted = unit(rng.standard_normal((40, D)) * SCALE[::-1])
    assert text_null.p_value(reference(shifted)) < 0.01


def test_calibration_covers_terms_and_bound_variants(tmp_path: Path) -> None:
    table_store(tmp_path, n=2000)  # a pool of 1000: windows up to 50 records
    store = load_store(tmp_path, "ref")
    with pytest.raises(CalibrationError, match=r"window sizes \[5000\] do not fit"):
        calibrate_store(store, window_sizes=[20, 50, 5000], trials=100, false_alarm_rate=0.05)
    calibration = calibrate_store(
        store, window_sizes=[20, 50], trials=100, seed=0, false_alarm_rate=0.05
    )
    assert calibration["window_sizes"] == [20, 50]
    assert calibration["ood_flag_rate"] == pytest.approx(1 - store.ood["tpr"])
    for name in ("text", "response", "output_live"):
        null = null_for(calibration, name, 50)
        assert null is not None and null.trials == 100, name
    assert null_for(calibration, "visual", 50) is None  # text-only store
    assert null_for(calibration, "text", 10) is None  # below every bucket: no null
    largest = null_for(calibration, "text", 70)
    assert largest is not None and largest.window_size == 50  # the largest bucket <= n
    live = null_for(calibration, "output_live", 10)  # keyed by reference pairs, not records
    assert live is not None and live.window_size == 5  # 0.5% of 1,000 pool pairs
    with_live = bound_null(calibration, n=50, n_images=None, n_references=10)
    without = bound_null(calibration, n=50, n_images=None, n_references=None)
    assert with_live is not None and without is not None
    assert np.median(with_live.values) > np.median(without.values)
    assert math.isfinite(calibration["output_id"])


def test_manifest_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": 3, "response": "x"}\n')
    with pytest.raises(ReferenceStoreError, match=r"m.jsonl:3: field 'prompt' must be a string"):
        read_id_records(path)
    path.write_text('{"prompt": "a"}\n')
    with pytest.raises(ReferenceStoreError, match=r":1: missing required field 'response'"):
        read_id_records(path)
    path.write_text(
        '{"id": 1, "prompt": "a", "response": "b"}\n{"id": "1", "prompt": "c", "response": "d"}\n'
    )
    with pytest.raises(ReferenceStoreError, match="duplicate id '1'"):
        read_id_records(path)
    path.write_text("not json\n")
    with pytest.raises(ReferenceStoreError, match="invalid JSON"):
        read_id_records(path)
    assert (
        read_id_records(_write(tmp_path, [{"prompt": "p", "response": "r", "x": 1}]))[0].id
        == "line-1"
    )
    shutil.rmtree(tmp_path / "none", ignore_errors=True)


def _write(tmp_path: Path, lines: list[dict[str, object]]) -> Path:
    path = tmp_path / "ok.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines))
    return path
