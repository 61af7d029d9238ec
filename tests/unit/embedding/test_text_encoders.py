"""Text encoders on tiny random XLM-R models loaded through the real path."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from monitor.embedding import ImageEncoder, TextEncoder, load_encoder, load_image_encoder
from monitor.embedding.text import HFTextEncoder, XlmrEmbeddingLayerEncoder
from monitor.errors import EncoderError, InvalidInputError

transformers = pytest.importorskip("transformers")

TEXTS = [
    "What is the color of the two suitcases in the image?",
    "Analyze the image in a comprehensive and detailed manner.",
    "",
    "hi",
    "What potential factors could make these suitcases valuable? " * 3,
    "What is the color of the two suitcases in the image?",
]


def paper_pooling(model_dir: Path, texts: list[str]) -> np.ndarray:
    """The paper's computation: full forward, hidden_states[0], masked mean without token 0."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=512)
    with torch.no_grad():
        h0 = model(**batch, output_hidden_states=True).hidden_states[0]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (h0 * mask)[:, 1:].sum(1) / mask[:, 1:].sum(1)
    rows: np.ndarray = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return rows


@pytest.mark.parametrize("batch_size", [1, 2, 32])
def test_embedding_layer_equals_full_forward_hidden_state_0(
    tiny_xlmr: Path, batch_size: int
) -> None:
    encoder = load_encoder(
        "xlmr_embedding_layer", str(tiny_xlmr), batch_size=batch_size, cache_size=0
    )
    rows = encoder.encode_texts(TEXTS)
    assert rows.dtype == np.float32
    assert rows.shape == (len(TEXTS), encoder.dim)
    np.testing.assert_allclose(rows, paper_pooling(tiny_xlmr, TEXTS), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-6)


def test_long_texts_are_truncated_to_512_tokens_like_the_paper(tiny_xlmr: Path) -> None:
    long_text = " ".join(["suitcase leather handle brown"] * 400)
    encoder = load_encoder("xlmr_embedding_layer", str(tiny_xlmr))
    assert len(encoder.tokenizer(long_text)["input_ids"]) > 512  # type: ignore[attr-defined]
    np.testing.assert_allclose(
        encoder.encode_texts([long_text, "short"]),
        paper_pooling(tiny_xlmr, [long_text, "short"]),
        atol=1e-6,
    )


def test_a_20_mb_prompt_is_cut_before_tokenizing(tiny_xlmr: Path) -> None:
    encoder = load_encoder("xlmr_embedding_layer", str(tiny_xlmr), cache_size=0)
    assert isinstance(encoder, HFTextEncoder)
    sentence = "What potential factors could make these suitcases valuable? "
    huge = sentence * (20_000_000 // len(sentence))  # one line, 20 MB
    prefix = huge[:3000]  # already over 512 tokens: the rest cannot matter
    assert len(encoder.tokenizer(prefix)["input_ids"]) > encoder.max_tokens
    encoder.encode_texts(["warm up"])  # time the prompt, not the first forward pass
    start = time.perf_counter()
    rows = encoder.encode_texts([huge])
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0, f"a 20 MB prompt took {elapsed:.1f} s"  # 111 s when tokenized whole
    np.testing.assert_array_equal(rows, encoder.encode_texts([prefix]))


def test_loading_an_encoder_leaves_torch_threads_alone(tiny_xlmr: Path) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # what a [compute] setting may have chosen at start-up
    try:
        load_encoder("xlmr_embedding_layer", str(tiny_xlmr))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(EncoderError, match="unknown encoder option"):
        load_encoder("xlmr_embedding_layer", str(tiny_xlmr), threads=2)


def test_transformer_layers_are_neither_loaded_nor_run(tiny_xlmr: Path) -> None:
    encoder = load_encoder("xlmr_embedding_layer", str(tiny_xlmr))
    assert isinstance(encoder, XlmrEmbeddingLayerEncoder)
    assert len(encoder.network.encoder.layer) == 0


def test_hf_mean_pool_is_the_masked_mean_of_the_last_hidden_state(tiny_xlmr: Path) -> None:
    encoder = load_encoder("hf_mean_pool", str(tiny_xlmr), batch_size=2)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_xlmr)
    model = transformers.AutoModel.from_pretrained(tiny_xlmr).eval()
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    np.testing.assert_allclose(encoder.encode_texts(TEXTS), expected.numpy(), atol=1e-5)


def test_cache_embeds_repeated_texts_once_and_stays_bounded(tiny_xlmr: Path) -> None:
    encoder = load_encoder("xlmr_embedding_layer", str(tiny_xlmr), cache_size=3)
    assert isinstance(encoder, HFTextEncoder)
    first = encoder.encode_texts(TEXTS)  # 5 distinct texts, one repeated
    assert encoder._cache.misses == 5  # the repeat was embedded once, not looked up twice
    np.testing.assert_array_equal(first[0], first[5])
    assert len(encoder._cache) == 3  # bounded: the two oldest were evicted
    again = encoder.encode_texts(TEXTS[3:5])
    assert encoder._cache.hits == 2
    np.testing.assert_array_equal(again, first[3:5])


def test_bad_input_and_configuration(tiny_xlmr: Path, tmp_path: Path) -> None:
    encoder = load_encoder("xlmr_embedding_layer", str(tiny_xlmr))
    with pytest.raises(InvalidInputError, match="text 1 is a int"):
        encoder.encode_texts(["ok", 3])  # type: ignore[list-item]
    assert isinstance(encoder, TextEncoder)
    assert not isinstance(encoder, ImageEncoder)  # one method each, no raising stand-ins
    with pytest.raises(EncoderError, match="'hf_mean_pool' is not one of the image encoder kinds"):
        load_image_encoder("hf_mean_pool", str(tiny_xlmr))
    with pytest.raises(EncoderError, match="unknown encoder kind"):
        load_encoder("word2vec", str(tiny_xlmr))
    with pytest.raises(EncoderError, match="unknown encoder option"):
        load_encoder("hf_mean_pool", str(tiny_xlmr), batchsize=3)
    with pytest.raises(EncoderError, match="cannot load xlmr_embedding_layer model"):
        load_encoder("xlmr_embedding_layer", str(tmp_path / "missing"), local_files_only=True)
    with pytest.raises(EncoderError, match="no CUDA device"):
        load_encoder("hf_mean_pool", str(tiny_xlmr), device="cuda")


def test_hub_id_with_local_files_only_fails_fast_without_network() -> None:
    with pytest.raises(EncoderError, match="cannot load hf_mean_pool model 'xlm-roberta-base'"):
        load_encoder("hf_mean_pool", "xlm-roberta-base", local_files_only=True)
