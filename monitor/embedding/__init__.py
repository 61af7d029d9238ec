"""Embedding pipeline: records' images and texts to the float32 rows the estimators need.

    load_text_encoder(kind, model, **options) -> TextEncoder
        kinds: "xlmr_embedding_layer", "hf_mean_pool"
    load_image_encoder(kind, model, **options) -> ImageEncoder
        kinds: "clip_vision"
    load_encoder(kind, model, **options) -> either, typed by the literal kind
    encoders_from_settings(settings.encoders) -> EncoderSet (image, text, fusion)

A text encoder has ``.encode_texts``, an image encoder ``.encode_images`` (one method each);
both have ``.kind``, ``.dim`` and ``.fingerprint``, return rows L2-normalised float32, batch by
length, cache by content hash, and raise errors from :mod:`monitor.errors`. Images are decoded
only by :mod:`monitor.embedding.images`. Loading an encoder changes no process-wide setting
(torch's thread count is set once at start-up, from ``[compute]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, overload

from monitor.config import EncoderSettings, ImageEncoderSettings
from monitor.embedding.base import Embeddings, EncoderOptions, ImageEncoder, TextEncoder
from monitor.embedding.clip import ClipVisionEncoder
from monitor.embedding.fusion import Fusion, fuse, fused_dim
from monitor.embedding.images import ImageLimits, decode_image
from monitor.embedding.text import HFTextEncoder, XlmrEmbeddingLayerEncoder
from monitor.errors import EncoderError

__all__ = [
    "IMAGE_ENCODER_KINDS",
    "TEXT_ENCODER_KINDS",
    "Embeddings",
    "EncoderOptions",
    "EncoderSet",
    "ImageEncoder",
    "ImageLimits",
    "TextEncoder",
    "decode_image",
    "encoders_from_settings",
    "fuse",
    "image_limits_from_settings",
    "load_encoder",
    "load_image_encoder",
    "load_text_encoder",
]

TEXT_ENCODER_KINDS: dict[str, type[HFTextEncoder]] = {
    "xlmr_embedding_layer": XlmrEmbeddingLayerEncoder,
    "hf_mean_pool": HFTextEncoder,
}
IMAGE_ENCODER_KINDS: dict[str, type[ClipVisionEncoder]] = {"clip_vision": ClipVisionEncoder}

TextKind = Literal["xlmr_embedding_layer", "hf_mean_pool"]
ImageKind = Literal["clip_vision"]
E = TypeVar("E", HFTextEncoder, ClipVisionEncoder)


def load_text_encoder(kind: str, model: str, **options: Any) -> TextEncoder:
    """Load a text encoder of ``kind`` from a hub id or a local directory.

    Options: revision, device ("cpu", "cuda", "cuda:N", "auto"), dtype ("auto", "float32",
    "float16", "bfloat16"), batch_size, local_files_only, cache_size, max_tokens,
    batch_tokens (padded tokens per forward pass; 0 = batches of batch_size texts), backend
    ("torch", or "torch_int8" for int8 dynamic quantisation on CPU: other rows and fingerprint).
    HF_HUB_OFFLINE=1 is honoured by the hub client.
    """
    return _load(TEXT_ENCODER_KINDS, "text", kind, model, options)


def load_image_encoder(kind: str, model: str, **options: Any) -> ImageEncoder:
    """Load an image encoder of ``kind``; options as :func:`load_text_encoder` (backend
    "torch" only), plus image_limits (:class:`ImageLimits`)."""
    if options.get("backend", "torch") != "torch":
        raise EncoderError(f"image encoders run backend 'torch' only, not {options['backend']!r}")
    return _load(IMAGE_ENCODER_KINDS, "image", kind, model, options)


@overload
def load_encoder(kind: TextKind, model: str, **options: Any) -> TextEncoder: ...
@overload
def load_encoder(kind: ImageKind, model: str, **options: Any) -> ImageEncoder: ...
@overload
def load_encoder(kind: str, model: str, **options: Any) -> TextEncoder | ImageEncoder: ...
def load_encoder(kind: str, model: str, **options: Any) -> TextEncoder | ImageEncoder:
    """Load an encoder of any kind (typed precisely when ``kind`` is a literal)."""
    if kind in IMAGE_ENCODER_KINDS:
        return load_image_encoder(kind, model, **options)
    if kind in TEXT_ENCODER_KINDS:
        return load_text_encoder(kind, model, **options)
    raise EncoderError(f"unknown encoder kind {kind!r}; expected one of {_all_kinds()}")


def _load(
    kinds: Mapping[str, type[E]], modality: str, kind: str, model: str, options: dict[str, Any]
) -> E:
    if kind not in kinds:
        raise EncoderError(
            f"{kind!r} is not one of the {modality} encoder kinds {sorted(kinds)}"
            if kind in _all_kinds()
            else f"unknown encoder kind {kind!r}; expected one of {_all_kinds()}"
        )
    return kinds[kind](model, EncoderOptions.from_kwargs(options))


def _all_kinds() -> list[str]:
    return sorted({*TEXT_ENCODER_KINDS, *IMAGE_ENCODER_KINDS})


@dataclass(frozen=True)
class EncoderSet:
    """The configured encoders: image (None for text-only deployments), text, and fusion."""

    image: ImageEncoder | None
    text: TextEncoder
    fusion: Fusion

    @property
    def query_dim(self) -> int:
        return fused_dim(self.fusion, self.image.dim if self.image else None, self.text.dim)


def image_limits_from_settings(settings: ImageEncoderSettings) -> ImageLimits:
    """The ``[encoders.image]`` byte and pixel limits, for every reader of images."""
    return ImageLimits(max_bytes=settings.max_bytes, max_pixels=settings.max_pixels)


def encoders_from_settings(settings: EncoderSettings) -> EncoderSet:
    """Load the encoders of ``[encoders]``; a fusion that cannot work is a ConfigError."""
    common = {
        "device": settings.device,
        "dtype": settings.dtype,
        "batch_size": settings.batch_size,
        "local_files_only": settings.local_files_only,
        "cache_size": settings.cache_size,
    }
    text = load_text_encoder(
        settings.text.kind,
        settings.text.model,
        revision=settings.text.revision,
        max_tokens=settings.text.max_tokens,
        batch_tokens=settings.text.batch_tokens,
        backend=settings.text.backend,
        **common,
    )
    image = None
    if settings.image.kind != "none":
        image = load_image_encoder(
            settings.image.kind,
            settings.image.model,
            revision=settings.image.revision,
            image_limits=image_limits_from_settings(settings.image),
            **common,
        )
    encoders = EncoderSet(image=image, text=text, fusion=settings.fusion)
    encoders.query_dim  # noqa: B018 - validates the fusion now, not at the first record
    return encoders
