"""Sections about the embedding models and the reference stores they fill."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from monitor.config._types import Section

# The image limits' defaults, here once: monitor.embedding.images.ImageLimits uses them too.
IMAGE_MAX_BYTES = 20 * 1024 * 1024  # encoded image size
IMAGE_MAX_PIXELS = 40_000_000  # decoded width * height


class ImageEncoderSettings(Section):
    # "clip_vision": mean of the CLIP vision tower's last-layer patch tokens (the paper's image
    # embedding); "none": no image encoder, a text-only deployment.
    kind: Literal["clip_vision", "none"] = "clip_vision"
    model: str = "openai/clip-vit-base-patch32"  # Hugging Face hub id or local directory
    revision: str = ""  # hub revision (branch, tag or commit) to pin; empty = "main"
    max_bytes: int = Field(default=IMAGE_MAX_BYTES, gt=0)  # largest encoded image, in bytes
    # Largest image in pixels (width * height), checked on the header before any decoding.
    max_pixels: int = Field(default=IMAGE_MAX_PIXELS, gt=0)


class TextEncoderSettings(Section):
    # "xlmr_embedding_layer": XLM-R's embedding layer only, mean over the tokens after <s> (the
    # paper's text embedding; no transformer layer runs). "hf_mean_pool": masked mean of the
    # last hidden state of any transformers encoder.
    kind: Literal["xlmr_embedding_layer", "hf_mean_pool"] = "xlmr_embedding_layer"
    model: str = "xlm-roberta-base"  # Hugging Face hub id or local directory
    revision: str = ""  # hub revision (branch, tag or commit) to pin; empty = "main"
    # Longer texts are truncated to this many tokens (capped by the tokenizer's own limit).
    max_tokens: int = Field(default=512, ge=2)
    # Padded tokens per forward pass, texts sorted by length (0: batches of batch_size texts).
    batch_tokens: int = Field(default=512, ge=0)
    # "torch_int8": int8 dynamic quantisation of hf_mean_pool's Linear layers on CPU; faster,
    # slightly other rows and another fingerprint (stores built with "torch" refuse it).
    backend: Literal["torch", "torch_int8"] = "torch"


class EncoderSettings(Section):
    image: ImageEncoderSettings = ImageEncoderSettings()
    text: TextEncoderSettings = TextEncoderSettings()
    # Where the encoders run: "cpu", "cuda", "cuda:N", "mps", or "auto" (CUDA when visible).
    device: str = "cpu"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: float16 on CUDA
    # Query embedding x from image and text rows: "mean" (x = (image + text) / 2, equal widths
    # needed) or "concat" ([image, text]). A text-only record's x is its text row (zeros for
    # the image part under concat).
    fusion: Literal["mean", "concat"] = "mean"
    # Images per forward pass; texts too when text.batch_tokens = 0.
    batch_size: int = Field(default=32, ge=1)
    local_files_only: bool = False  # never reach the hub (HF_HUB_OFFLINE=1 also honoured)
    # Embeddings kept in memory by content hash, per encoder, so a repeat is not encoded again;
    # 0 = off.
    cache_size: int = Field(default=4096, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _threads_moved(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "threads" in data:
            raise ValueError(
                "'threads' was replaced by compute.threads (one thread count for the encoders, "
                "the estimators and FAISS): move the value to [compute] threads"
            )
        return data

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not re.fullmatch(r"cpu|auto|cuda(:\d+)?|mps", device):
            raise ValueError("must be 'cpu', 'auto', 'cuda', 'cuda:N' or 'mps'")
        return device


class ReferenceStoreSettings(Section):
    # Directory of the reference stores, one subdirectory per store name
    # (`mllm-monitor reference build` writes them).
    root: Path = Path("./references")
