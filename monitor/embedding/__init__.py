"""Embedding pipeline: records' images and texts to the float32 rows the estimators need.

    load_encoder(kind, model, **options) -> Encoder
        kinds: "clip_vision" (images), "xlmr_embedding_layer" and "hf_mean_pool" (texts)
    encoders_from_settings(settings.encoders) -> EncoderSet (image, text, fusion)

Every encoder has ``.dim``, ``.fingerprint``, ``.encode_texts`` / ``.encode_images`` (rows
L2-normalised, float32), batches by length, caches by content hash, and raises errors from
:mod:`monitor.errors`. Images are decoded only by :mod:`monitor.embedding.images`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from monitor.config import EncoderSettings
from monitor.embedding.base import Embeddings, Encoder, EncoderOptions
from monitor.embedding.clip import ClipVisionEncoder
from monitor.embedding.fusion import Fusion, fuse, fused_dim
from monitor.embedding.images import ImageLimits, decode_image
from monitor.embedding.text import HFTextEncoder, XlmrEmbeddingLayerEncoder
from monitor.errors import EncoderError

__all__ = [
    "ENCODER_KINDS",
    "Embeddings",
    "Encoder",
    "EncoderOptions",
    "EncoderSet",
    "ImageLimits",
    "decode_image",
    "encoders_from_settings",
    "fuse",
    "load_encoder",
]

ENCODER_KINDS: dict[str, type[Any]] = {
    "clip_vision": ClipVisionEncoder,
    "xlmr_embedding_layer": XlmrEmbeddingLayerEncoder,
    "hf_mean_pool": HFTextEncoder,
}


def load_encoder(kind: str, model: str, **options: Any) -> Encoder:
    """Load an encoder of ``kind`` from a hub id or a local directory.

    Options: revision, device ("cpu", "cuda", "cuda:N", "auto"), dtype ("auto", "float32",
    "float16", "bfloat16"), batch_size, threads, local_files_only, cache_size, max_tokens,
    image_limits (:class:`ImageLimits`). HF_HUB_OFFLINE=1 is honoured by the hub client.
    """
    if kind not in ENCODER_KINDS:
        raise EncoderError(
            f"unknown encoder kind {kind!r}; expected one of {sorted(ENCODER_KINDS)}"
        )
    encoder: Encoder = ENCODER_KINDS[kind](model, EncoderOptions.from_kwargs(options))
    return encoder


@dataclass(frozen=True)
class EncoderSet:
    """The configured encoders: image (None for text-only deployments), text, and fusion."""

    image: Encoder | None
    text: Encoder
    fusion: Fusion

    @property
    def query_dim(self) -> int:
        return fused_dim(self.fusion, self.image.dim if self.image else None, self.text.dim)


def encoders_from_settings(settings: EncoderSettings) -> EncoderSet:
    """Load the encoders of ``[encoders]``; a fusion that cannot work is a ConfigError."""
    common = {
        "device": settings.device,
        "dtype": settings.dtype,
        "batch_size": settings.batch_size,
        "threads": settings.threads,
        "local_files_only": settings.local_files_only,
        "cache_size": settings.cache_size,
    }
    text = load_encoder(
        settings.text.kind,
        settings.text.model,
        revision=settings.text.revision,
        max_tokens=settings.text.max_tokens,
        **common,
    )
    image = None
    if settings.image.kind != "none":
        limits = ImageLimits(
            max_bytes=settings.image.max_bytes, max_pixels=settings.image.max_pixels
        )
        image = load_encoder(
            settings.image.kind,
            settings.image.model,
            revision=settings.image.revision,
            image_limits=limits,
            **common,
        )
    encoders = EncoderSet(image=image, text=text, fusion=settings.fusion)
    encoders.query_dim  # noqa: B018 - validates the fusion now, not at the first record
    return encoders
