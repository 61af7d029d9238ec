"""The text encoder's batched path against a plain per-text forward, and the int8 backend.

Tiny random XLM-R models made in temporary directories (conftest), loaded through the real
path as ``hf_mean_pool`` (12 texts of 1 to 600 tokens, so budgets cut them many ways).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from monitor.config import EncoderSettings
from monitor.embedding import EncoderSet, encoders_from_settings, load_encoder, load_text_encoder
from monitor.errors import EncoderError
from monitor.ingest.sample_embedding import embed_records
from monitor.records import TrafficRecord

transformers = pytest.importorskip("transformers")

TEXTS = [
    "What is the color of the two suitcases in the image?",
    "A",
    "",
    "Analyze the image in a comprehensive and detailed manner. " * 40,  # over 512 tokens
    "yes",
    "What potential factors could make these suitcases valuable? " * 6,
    "hi there",
    "B",
    "The suitcases are brown leather with handles. " * 12,
    "What is the color of the two suitcases in the image?",  # a repeat
    "no",
    "Describe the scene.",
]


def per_text_forward(model_dir: Path, texts: list[str]) -> np.ndarray:
    """Each text alone, no padding: last hidden state, mean over its tokens, unit norm."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    out = []
    for text in texts:
        batch = tokenizer([text], return_tensors="pt", truncation=True, max_length=512)
        with torch.no_grad():
            pooled = model(**batch).last_hidden_state.mean(1)
        out.append(torch.nn.functional.normalize(pooled, dim=-1)[0].numpy())
    return np.stack(out)


@pytest.mark.parametrize(("batch_tokens", "batch_size"), [(1, 32), (64, 32), (512, 32), (0, 5)])
def test_batched_rows_equal_the_per_text_forward(
    tiny_xlmr: Path, batch_tokens: int, batch_size: int
) -> None:
    encoder = load_encoder(
        "hf_mean_pool",
        str(tiny_xlmr),
        cache_size=0,
        batch_tokens=batch_tokens,
        batch_size=batch_size,
    )
    np.testing.assert_allclose(
        encoder.encode_texts(TEXTS), per_text_forward(tiny_xlmr, TEXTS), rtol=0, atol=1e-6
    )


def test_one_worker_call_gives_each_kind_its_own_rows(tiny_xlmr: Path) -> None:
    """Prompts, answers and references go through one call and come back split by kind."""
    encoder = load_text_encoder("hf_mean_pool", str(tiny_xlmr), cache_size=0)
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    records = [
        TrafficRecord(
            id=f"r{i}",
            timestamp=t0,
            prompt=TEXTS[i],
            response=TEXTS[i + 1] if i % 2 else None,
            reference=TEXTS[i + 2] if i % 3 == 0 else None,
        )
        for i in range(8)
    ]
    rows = embed_records(
        EncoderSet(image=None, text=encoder, fusion="mean"), records, [None] * len(records)
    )
    expected = {
        "prompt": [r.prompt or "" for r in records],
        "response": [r.response for r in records if r.response is not None],
        "reference": [r.reference for r in records if r.reference is not None],
    }
    for kind, texts in expected.items():
        np.testing.assert_allclose(
            rows[kind], per_text_forward(tiny_xlmr, texts), rtol=0, atol=1e-6
        )
    np.testing.assert_array_equal(rows["query"], rows["prompt"])


def test_int8_backend_is_close_but_has_its_own_fingerprint(tiny_xlmr: Path) -> None:
    exact = load_encoder("hf_mean_pool", str(tiny_xlmr), cache_size=0)
    fast = load_encoder("hf_mean_pool", str(tiny_xlmr), cache_size=0, backend="torch_int8")
    assert fast.fingerprint != exact.fingerprint
    assert fast.fingerprint.startswith("hf_mean_pool-")
    exact_rows, fast_rows = exact.encode_texts(TEXTS), fast.encode_texts(TEXTS)
    cosine = np.sum(exact_rows * fast_rows, axis=1)
    assert not np.array_equal(exact_rows, fast_rows)  # it really runs another computation
    assert cosine.min() > 0.9
    np.testing.assert_allclose(np.linalg.norm(fast_rows, axis=1), 1.0, atol=1e-6)


def test_int8_backend_from_settings(tiny_xlmr: Path) -> None:
    settings = EncoderSettings.model_validate(
        {
            "image": {"kind": "none"},
            "text": {"kind": "hf_mean_pool", "model": str(tiny_xlmr), "backend": "torch_int8"},
        }
    )
    fast = encoders_from_settings(settings).text
    exact = load_encoder("hf_mean_pool", str(tiny_xlmr))
    assert (
        fast.fingerprint
        == load_encoder("hf_mean_pool", str(tiny_xlmr), backend="torch_int8").fingerprint
    )
    assert fast.fingerprint != exact.fingerprint


def test_int8_backend_is_refused_where_it_cannot_apply(tiny_xlmr: Path, tiny_clip: Path) -> None:
    with pytest.raises(EncoderError, match="xlmr_embedding_layer runs none"):
        load_encoder("xlmr_embedding_layer", str(tiny_xlmr), backend="torch_int8")
    with pytest.raises(EncoderError, match="on the CPU in float32"):
        load_encoder("hf_mean_pool", str(tiny_xlmr), backend="torch_int8", dtype="bfloat16")
    with pytest.raises(EncoderError, match="backend 'torch' only"):
        load_encoder("clip_vision", str(tiny_clip), backend="torch_int8")
    with pytest.raises(EncoderError, match="unknown backend"):
        load_encoder("hf_mean_pool", str(tiny_xlmr), backend="onnx")
    with pytest.raises(EncoderError, match="batch_tokens >= 0"):
        load_encoder("hf_mean_pool", str(tiny_xlmr), batch_tokens=-1)
