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
    kind: Literal["clip_vision", "none"] = "clip_vision"
    model: str = "openai/clip-vit-base-patch32"
    revision: str = ""  # hub revision (branch, tag or commit) to pin; empty = default branch
    max_bytes: int = Field(default=IMAGE_MAX_BYTES, gt=0)  # encoded image size limit
    max_pixels: int = Field(default=IMAGE_MAX_PIXELS, gt=0)  # decoded width * height limit


class TextEncoderSettings(Section):
    kind: Literal["xlmr_embedding_layer", "hf_mean_pool"] = "xlmr_embedding_layer"
    model: str = "xlm-roberta-base"
    revision: str = ""
    max_tokens: int = Field(default=512, ge=2)
    # Padded tokens per forward pass, texts sorted by length (0: batches of batch_size texts).
    batch_tokens: int = Field(default=512, ge=0)
    # "torch_int8": int8 dynamic quantisation of hf_mean_pool's Linear layers on CPU; faster,
    # slightly other rows and another fingerprint (stores built with "torch" refuse it).
    backend: Literal["torch", "torch_int8"] = "torch"


class EncoderSettings(Section):
    image: ImageEncoderSettings = ImageEncoderSettings()
    text: TextEncoderSettings = TextEncoderSettings()
    device: str = "cpu"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    fusion: Literal["mean", "concat"] = "mean"
    batch_size: int = Field(default=32, ge=1)
    local_files_only: bool = False  # never reach the hub (HF_HUB_OFFLINE=1 also honoured)
    cache_size: int = Field(default=4096, ge=0)  # embeddings kept by content hash; 0 = off

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
    root: Path = Path("./references")
