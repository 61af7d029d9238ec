"""Encoder fingerprints: every input that changes the rows changes the fingerprint.

One test per input (weights, tokenizer, preprocessing, pooling, revision, dim), each of which
fails if that input is left out: of :func:`fingerprint` itself, and of what each encoder passes
to it (the dim only at the first level: a model of another width has other weights too).
Models are the tiny ones of conftest.py, copied and changed in exactly one respect.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from monitor.embedding import load_encoder
from monitor.embedding.base import EncoderOptions, fingerprint
from monitor.embedding.text import HFTextEncoder, XlmrEmbeddingLayerEncoder, tokenizer_sha256
from monitor.errors import EncoderError

transformers = pytest.importorskip("transformers")

BASE: dict[str, Any] = {
    "dim": 32,
    "pooling": "mean",
    "revision": "",
    "weights_sha256": "a" * 64,
    "preprocessing": {"tokenizer": "b" * 64, "max_tokens": 512},
}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("dim", 64),
        ("pooling", "cls"),
        ("revision", "v2"),
        ("weights_sha256", "c" * 64),
        ("preprocessing", {"tokenizer": "d" * 64, "max_tokens": 512}),
        ("preprocessing", {"tokenizer": "b" * 64, "max_tokens": 256}),
    ],
)
def test_each_input_of_the_fingerprint_changes_it(name: str, value: Any) -> None:
    base = fingerprint("xlmr_embedding_layer", **BASE)
    assert fingerprint("xlmr_embedding_layer", **BASE) == base  # stable
    assert fingerprint("xlmr_embedding_layer", **{**BASE, name: value}) != base


def _copy(model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model, tmp_path / "copy"))


def _edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


# -- text encoders ---------------------------------------------------------------------------


def test_text_fingerprint_follows_the_tokenizer(tiny_xlmr: Path, tmp_path: Path) -> None:
    base = load_encoder("xlmr_embedding_layer", str(tiny_xlmr))
    assert isinstance(base, HFTextEncoder)
    text = ["What Is The Color Of The Suitcases"]
    # Swap two pieces of the vocabulary (one the text uses): same weights, other token ids.
    used = [i for i in base.tokenizer(text[0])["input_ids"] if i >= 5]
    unused = next(i for i in range(5, len(base.tokenizer)) if i not in used)
    copy = _copy(tiny_xlmr, tmp_path)
    data = json.loads((copy / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab[used[0]], vocab[unused] = vocab[unused], vocab[used[0]]
    (copy / "tokenizer.json").write_text(json.dumps(data))
    swapped = load_encoder("xlmr_embedding_layer", str(copy))
    assert swapped.fingerprint != base.fingerprint
    # ... and the change matters: the same text embeds differently.
    assert not np.allclose(base.encode_texts(text), swapped.encode_texts(text))


def test_text_fingerprint_follows_the_truncation_side(tiny_xlmr: Path, tmp_path: Path) -> None:
    base = load_encoder("xlmr_embedding_layer", str(tiny_xlmr)).fingerprint
    copy = _copy(tiny_xlmr, tmp_path)
    _edit_json(copy / "tokenizer_config.json", truncation_side="left")
    assert load_encoder("xlmr_embedding_layer", str(copy)).fingerprint != base


def test_tokenizer_hash_ignores_the_state_left_by_encoding(tiny_xlmr: Path) -> None:
    encoder = load_encoder("xlmr_embedding_layer", str(tiny_xlmr), max_tokens=16)
    assert isinstance(encoder, HFTextEncoder)
    before = tokenizer_sha256(encoder.tokenizer)
    encoder.encode_texts(["a long text that is cut to sixteen tokens " * 10])
    assert tokenizer_sha256(encoder.tokenizer) == before


def _perturbed(model: Path, tmp_path: Path, parameter: str) -> Path:
    copy = _copy(model, tmp_path)
    network = transformers.AutoModel.from_pretrained(model)
    with torch.no_grad():
        network.get_parameter(parameter).add_(0.01)
    network.save_pretrained(copy)
    return copy


def test_text_fingerprint_follows_the_weights_it_uses(tiny_xlmr: Path, tmp_path: Path) -> None:
    layer = _perturbed(tiny_xlmr, tmp_path / "layer", "encoder.layer.0.attention.self.query.weight")
    # The embedding-layer encoder never runs layer 0: its rows and fingerprint stay; the
    # mean-pool encoder runs every layer: its fingerprint changes.
    for kind, changes in (("xlmr_embedding_layer", False), ("hf_mean_pool", True)):
        base = load_encoder(kind, str(tiny_xlmr)).fingerprint
        assert (load_encoder(kind, str(layer)).fingerprint != base) == changes, kind
    embedding = _perturbed(tiny_xlmr, tmp_path / "emb", "embeddings.word_embeddings.weight")
    base = load_encoder("xlmr_embedding_layer", str(tiny_xlmr)).fingerprint
    assert load_encoder("xlmr_embedding_layer", str(embedding)).fingerprint != base


def test_text_fingerprint_follows_the_pooling(tiny_xlmr: Path) -> None:
    class FirstTokenPooling(XlmrEmbeddingLayerEncoder):  # same kind and weights, other pooling
        pooling = "embedding_layer_first_token"

    options = EncoderOptions()
    base = XlmrEmbeddingLayerEncoder(str(tiny_xlmr), options)
    assert FirstTokenPooling(str(tiny_xlmr), options).fingerprint != base.fingerprint


def test_text_fingerprint_follows_revision_and_token_limit_not_precision(
    tiny_xlmr: Path,
) -> None:
    base = load_encoder("xlmr_embedding_layer", str(tiny_xlmr)).fingerprint
    assert load_encoder("xlmr_embedding_layer", str(tiny_xlmr)).fingerprint == base
    # Precision and device do not change what the encoder computes.
    assert (
        load_encoder("xlmr_embedding_layer", str(tiny_xlmr), dtype="bfloat16").fingerprint == base
    )
    assert load_encoder("xlmr_embedding_layer", str(tiny_xlmr), revision="v2").fingerprint != base
    assert load_encoder("xlmr_embedding_layer", str(tiny_xlmr), max_tokens=64).fingerprint != base


# -- CLIP ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"size": {"shortest_edge": 40}},
        {"image_mean": [0.5, 0.5, 0.5]},
        {"image_std": [0.5, 0.5, 0.5]},
        {"resample": 2},  # bilinear instead of bicubic
        {"rescale_factor": 1 / 256},
        {"do_normalize": False},
        {"do_rescale": False},
    ],
    ids=lambda change: next(iter(change)),
)
def test_clip_fingerprint_follows_the_preprocessing(
    tiny_clip: Path, tmp_path: Path, change: dict[str, Any]
) -> None:
    base = load_encoder("clip_vision", str(tiny_clip))
    copy = _copy(tiny_clip, tmp_path)
    _edit_json(copy / "preprocessor_config.json", **change)
    changed = load_encoder("clip_vision", str(copy))
    assert changed.fingerprint != base.fingerprint
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    from PIL import Image

    pil = Image.fromarray(image, "RGB")
    assert not np.allclose(base.encode_images([pil]), changed.encode_images([pil]))


def test_clip_fingerprint_is_of_the_preprocessing_applied_not_of_the_file(
    tiny_clip: Path, tmp_path: Path
) -> None:
    base = load_encoder("clip_vision", str(tiny_clip)).fingerprint
    copy = _copy(tiny_clip, tmp_path)
    (copy / "preprocessor_config.json").unlink()  # CLIP's defaults: what the file says too
    assert load_encoder("clip_vision", str(copy)).fingerprint == base


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ({"do_center_crop": False}, "sets do_center_crop = False"),
        ({"do_resize": False}, "sets do_resize = False"),
        ({"crop_size": {"height": 24, "width": 24}}, "crops to 24x24"),
        ({"size": {"height": 32, "width": 32}}, "unsupported image processor size"),
    ],
)
def test_clip_preprocessing_it_cannot_apply_is_refused(
    tiny_clip: Path, tmp_path: Path, change: dict[str, Any], refusal: str
) -> None:
    copy = _copy(tiny_clip, tmp_path)
    _edit_json(copy / "preprocessor_config.json", **change)
    with pytest.raises(EncoderError, match=refusal):
        load_encoder("clip_vision", str(copy))


def test_clip_fingerprint_follows_the_weights(tiny_clip: Path, tmp_path: Path) -> None:
    from tests.unit.embedding.conftest import make_clip

    base = load_encoder("clip_vision", str(tiny_clip)).fingerprint
    assert load_encoder("clip_vision", str(tiny_clip)).fingerprint == base
    other = make_clip(tmp_path / "other", seed=3)
    assert load_encoder("clip_vision", str(other)).fingerprint != base


class _SlowTokenizer:
    """A tokenizer without a Rust backend: what the fallback of tokenizer_sha256 reads."""

    def __init__(self, vocab: dict[str, int], **init: Any) -> None:
        self._vocab = vocab
        self.special_tokens_map = {"pad_token": "<pad>"}
        self.init_kwargs = init

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)


def test_slow_tokenizer_hash_covers_vocab_and_options_but_not_file_locations() -> None:
    vocab = {"<pad>": 0, "a": 1, "b": 2}
    base = tokenizer_sha256(_SlowTokenizer(vocab, vocab_file="/home/x/vocab.txt", lower=True))
    moved = _SlowTokenizer(vocab, vocab_file="/srv/models/vocab.txt", lower=True)
    assert tokenizer_sha256(moved) == base
    assert tokenizer_sha256(_SlowTokenizer(vocab, vocab_file="v", lower=False)) != base
    swapped = {"<pad>": 0, "a": 2, "b": 1}
    assert tokenizer_sha256(_SlowTokenizer(swapped, vocab_file="v", lower=True)) != base
