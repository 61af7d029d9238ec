"""What every encoder shares: the two protocols, options, device/dtype, loading, fingerprints.

An encoder turns texts or images into float32, L2-normalised rows. Its fingerprint names
everything that changes those rows (weights, tokenizer or preprocessing, pooling, revision,
dim), so a reference store built with one encoder can refuse embeddings from another.
Precision (dtype) and device are deliberately not part of it: fp16 on a GPU and fp32 on a CPU
embed the same way up to rounding.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from monitor.embedding.images import ImageLimits, ImageSource
from monitor.errors import EncoderError
from monitor.estimators.arrays import l2_normalise
from monitor.files import sha256_hex

Embeddings = npt.NDArray[np.float32]
# How a text encoder's forward pass runs: "torch" exactly as the weights say; "torch_int8" with
# int8 dynamic quantisation of its Linear layers (faster on CPU, rows differ slightly, so its
# fingerprint differs and a store built with one refuses the other).
TextBackend = Literal["torch", "torch_int8"]
# 2: the text fingerprint covers the tokenizer without its call-time state, truncation side
# and character bound; the CLIP one every preprocessing step.
FINGERPRINT_VERSION = 2


@runtime_checkable
class TextEncoder(Protocol):
    """Texts in, float32 L2-normalised rows out (one row per text, in order)."""

    kind: str
    dim: int
    fingerprint: str

    def encode_texts(self, texts: Sequence[str]) -> Embeddings: ...


@runtime_checkable
class ImageEncoder(Protocol):
    """Images in, float32 L2-normalised rows out (one row per image, in order)."""

    kind: str
    dim: int
    fingerprint: str

    def encode_images(self, images: Sequence[ImageSource | Image.Image]) -> Embeddings: ...


@dataclass(frozen=True)
class EncoderOptions:
    """How to load and run an encoder; the keys of ``[encoders]`` in the settings."""

    revision: str = ""
    device: str = "cpu"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    batch_size: int = 32
    local_files_only: bool = False
    cache_size: int = 4096
    max_tokens: int = 512
    # Text: padded tokens per forward pass (0: batches of batch_size texts instead).
    batch_tokens: int = 512
    backend: TextBackend = "torch"
    image_limits: ImageLimits = field(default_factory=ImageLimits)

    @classmethod
    def from_kwargs(cls, options: Mapping[str, Any]) -> EncoderOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise EncoderError(f"unknown encoder option(s) {unknown}; known: {sorted(known)}")
        try:
            made = cls(**options)
        except TypeError as exc:
            raise EncoderError(f"invalid encoder options: {exc}") from exc
        if (
            made.batch_size < 1
            or made.cache_size < 0
            or made.max_tokens < 2
            or made.batch_tokens < 0
        ):
            raise EncoderError(
                "batch_size >= 1, cache_size >= 0, max_tokens >= 2, batch_tokens >= 0"
            )
        if made.backend not in ("torch", "torch_int8"):
            raise EncoderError(
                f"unknown backend {made.backend!r}; expected 'torch' or 'torch_int8'"
            )
        return made

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise EncoderError(f"encoders.device is {self.device!r} but no CUDA device is visible")
        return device

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.float16 if device.type == "cuda" else torch.float32
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[
            self.dtype
        ]


class LoadedEncoder:
    """What every concrete encoder sets up first: options, device, dtype, hub kwargs.

    Loading never touches process-wide settings: torch's thread count belongs to whoever
    starts the process (the ``[compute]`` settings, applied once at start-up)."""

    def __init__(self, model: str, options: EncoderOptions) -> None:
        self.model_name = model
        self.options = options
        self.device = options.torch_device()
        self.dtype = options.torch_dtype(self.device)
        # Keyword arguments of every from_pretrained call (revision is ignored for directories).
        self.hub_kwargs: dict[str, Any] = {
            "revision": options.revision or "main",
            "local_files_only": options.local_files_only,
        }


def fingerprint(
    kind: str,
    *,
    dim: int,
    pooling: str,
    revision: str,
    weights_sha256: str,
    preprocessing: Mapping[str, Any],
    backend: str = "torch",
) -> str:
    """A short stable id of everything that determines an encoder's output rows."""
    content: dict[str, Any] = {
        "v": FINGERPRINT_VERSION,
        "kind": kind,
        "dim": dim,
        "pooling": pooling,
        "revision": revision,
        "weights": weights_sha256,
        "preprocessing": preprocessing,
    }
    if backend != "torch":  # absent for the exact backend: its fingerprints stay as they were
        content["backend"] = backend
    payload = json.dumps(content, sort_keys=True, default=str)
    return f"{kind}-{sha256_hex(payload)[:24]}"


def module_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's parameters and buffers (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)};".encode())
        digest.update(data.view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def unit_rows(rows: torch.Tensor) -> Embeddings:
    """Pooled features (any device and precision) as float32 numpy rows of unit norm."""
    unit: Embeddings = l2_normalise(rows.detach().float().cpu().numpy())
    return unit


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars for one load, then restore them."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def load_error(kind: str, model: str, exc: BaseException) -> EncoderError:
    """One clear message for a model that cannot be loaded (missing, offline, corrupt)."""
    message = f"cannot load {kind} model {model!r}: {exc}"
    if isinstance(exc, OSError):
        message += " (not a local model directory, and not fetchable from the hub here)"
    return EncoderError(message)
