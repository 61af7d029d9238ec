"""The paper's image embedding: CLIP vision tower, mean of the last layer's patch tokens.

``last_hidden_state`` of the vision transformer is the last encoder layer's output before the
post-layernorm (which only the pooled CLS output goes through), so the mean over tokens 1..N
(CLS excluded) is exactly the paper's ``hidden_states[-1][:, 1:, :].mean(1)``.

Preprocessing follows the checkpoint's ``preprocessor_config.json`` the way CLIP's image
processor does (resize the short side with bicubic resampling, centre crop, rescale,
normalise), written out here with PIL and numpy so it runs without torchvision.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from monitor.embedding.base import (
    Embeddings,
    EncoderOptions,
    LoadedEncoder,
    fingerprint,
    load_error,
    module_sha256,
    quiet_transformers,
    unit_rows,
)
from monitor.embedding.batching import EmbeddingCache, content_key, encode_with_cache
from monitor.embedding.images import ImageSource, decode_image, image_bytes
from monitor.errors import EncoderError, ImageDecodeError

# Beyond this aspect ratio the long side is centre-cropped before resizing, so a 100000 x 1
# strip cannot turn into a 22-million-pixel resize; ordinary photos are never affected.
MAX_ASPECT_RATIO = 8

# OpenAI CLIP's defaults, used when a checkpoint has no preprocessor_config.json.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipPreprocessing:
    """Every step between decoded RGB pixels and the model input; all of it is fingerprinted."""

    shortest_edge: int
    crop_height: int
    crop_width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale: float = 1 / 255
    resample: int = int(Image.Resampling.BICUBIC)
    max_aspect_ratio: int = MAX_ASPECT_RATIO

    def __call__(self, image: Image.Image) -> npt.NDArray[np.uint8]:
        """The resized, centre-cropped (H, W, 3) uint8 pixels of one RGB image."""
        image = _limit_aspect_ratio(image, self.max_aspect_ratio)
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
        resized = image.resize(size, resample=Image.Resampling(self.resample))
        top = (size[1] - self.crop_height) // 2
        left = (size[0] - self.crop_width) // 2
        cropped = resized.crop((left, top, left + self.crop_width, top + self.crop_height))
        return np.asarray(cropped, dtype=np.uint8)

    def normalise(self, batch: npt.NDArray[np.uint8]) -> torch.Tensor:
        """(b, H, W, 3) uint8 to the model's (b, 3, H, W) float32 input, in one vector pass."""
        pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
        mean = torch.tensor(self.mean).view(1, 3, 1, 1) / self.rescale
        std = torch.tensor(self.std).view(1, 3, 1, 1) / self.rescale
        return pixels.sub_(mean).div_(std).contiguous()


def _limit_aspect_ratio(image: Image.Image, max_ratio: int) -> Image.Image:
    width, height = image.size
    if width > height * max_ratio:
        keep = height * max_ratio
        left = (width - keep) // 2
        return image.crop((left, 0, left + keep, height))
    if height > width * max_ratio:
        keep = width * max_ratio
        top = (height - keep) // 2
        return image.crop((0, top, width, top + keep))
    return image


class ClipVisionEncoder(LoadedEncoder):
    kind = "clip_vision"
    pooling = "last_hidden_state_mean_of_patch_tokens"

    def __init__(self, model: str, options: EncoderOptions) -> None:
        from transformers import CLIPVisionModel

        super().__init__(model, options)
        try:
            with quiet_transformers():
                network = CLIPVisionModel.from_pretrained(
                    model, dtype=torch.float32, **self.hub_kwargs
                )
                self.preprocess = _load_preprocessing(model, self.hub_kwargs, network.config)
        except (OSError, ValueError, KeyError) as exc:
            raise load_error(self.kind, model, exc) from exc
        self.network = network.eval()  # type: ignore[no-untyped-call]
        self.dim = int(network.config.hidden_size)
        self.fingerprint = fingerprint(
            self.kind,
            dim=self.dim,
            pooling=self.pooling,
            revision=options.revision,
            weights_sha256=module_sha256(network),
            preprocessing=asdict(self.preprocess),
        )
        self.network.to(device=self.device, dtype=self.dtype)
        self._cache = EmbeddingCache(options.cache_size)
        # Decoding and resizing (PIL releases the GIL) overlap with the forward pass.
        self._prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clip-preprocess")

    def encode_images(self, images: Sequence[ImageSource | Image.Image]) -> Embeddings:
        items = list(images)
        keys = [self._key(i, image) for i, image in enumerate(items)]
        return encode_with_cache(
            keys, self.dim, self._cache, lambda positions: self._embed(items, positions)
        )

    def pixels(
        self, images: Sequence[ImageSource | Image.Image], labels: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Decode and preprocess a batch into a (b, 3, H, W) float32 tensor.

        ``labels`` are the caller's positions of the images, used to name a bad one.
        """
        arrays = []
        for offset, image in enumerate(images):
            try:
                decoded = decode_image(image, limits=self.options.image_limits)
            except ImageDecodeError as exc:
                label = labels[offset] if labels is not None else offset
                raise ImageDecodeError(f"image {label}: {exc}", field="image") from exc
            arrays.append(self.preprocess(decoded))
        return self.preprocess.normalise(np.stack(arrays))

    def forward_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pooled, un-normalised features of preprocessed pixels."""
        with torch.inference_mode():
            hidden = self.network(
                pixel_values=pixels.to(device=self.device, dtype=self.dtype)
            ).last_hidden_state
            pooled: torch.Tensor = hidden[:, 1:, :].mean(dim=1)
            return pooled

    def _embed(self, items: list[ImageSource | Image.Image], positions: list[int]) -> Embeddings:
        """Rows for ``items[p]`` for each p in ``positions``, decoding ahead of the model."""
        size = self.options.batch_size
        batches = [positions[s : s + size] for s in range(0, len(positions), size)]
        out = np.empty((len(positions), self.dim), dtype=np.float32)

        def prepare(batch: list[int]) -> torch.Tensor:
            return self.pixels([items[p] for p in batch], batch)

        pending = self._prefetch.submit(prepare, batches[0])
        for n in range(len(batches)):
            pixels = pending.result()
            if n + 1 < len(batches):
                pending = self._prefetch.submit(prepare, batches[n + 1])
            out[n * size : n * size + len(batches[n])] = unit_rows(self.forward_pixels(pixels))
        return out

    def _key(self, index: int, image: ImageSource | Image.Image) -> str:
        if isinstance(image, Image.Image):
            return content_key(f"{image.mode}{image.size}".encode() + image.tobytes())
        try:
            return content_key(image_bytes(image, limits=self.options.image_limits))
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"image {index}: {exc}", field="image") from exc


def _load_preprocessing(model: str, hub_kwargs: dict[str, Any], config: Any) -> ClipPreprocessing:
    """The checkpoint's ``preprocessor_config.json`` as a :class:`ClipPreprocessing`.

    Resizing and centre cropping cannot be switched off (the vision tower takes exactly its
    ``image_size`` square); rescaling and normalisation can, as in CLIP's image processor."""
    from transformers import ImageProcessingMixin

    try:
        data, _ = ImageProcessingMixin.get_image_processor_dict(model, **hub_kwargs)
    except OSError:
        data = {}  # no preprocessor_config.json: CLIP's defaults at the model's input size
    for step in ("do_resize", "do_center_crop"):
        if data.get(step, True) is not True:
            raise EncoderError(
                f"{model!r}: preprocessor_config.json sets {step} = {data[step]!r}; the CLIP "
                "encoder always resizes and centre-crops to the model's input size"
            )
    image_size = int(config.image_size)
    size = data.get("size", {"shortest_edge": image_size})
    crop = data.get("crop_size", {"height": image_size, "width": image_size})
    if isinstance(size, int):
        size = {"shortest_edge": size}
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    if "shortest_edge" not in size:
        raise EncoderError(f"{model!r}: unsupported image processor size {size}")
    if (int(crop["height"]), int(crop["width"])) != (image_size, image_size):
        raise EncoderError(
            f"{model!r}: preprocessor_config.json crops to {crop['height']}x{crop['width']}, "
            f"but the vision tower takes {image_size}x{image_size} images"
        )
    normalise = data.get("do_normalize", True)
    rescale = data.get("do_rescale", True)
    return ClipPreprocessing(
        shortest_edge=int(size["shortest_edge"]),
        crop_height=int(crop["height"]),
        crop_width=int(crop["width"]),
        mean=tuple(data.get("image_mean", _CLIP_MEAN)) if normalise else (0.0, 0.0, 0.0),
        std=tuple(data.get("image_std", _CLIP_STD)) if normalise else (1.0, 1.0, 1.0),
        rescale=float(data.get("rescale_factor", 1 / 255)) if rescale else 1.0,
        resample=int(data.get("resample", int(Image.Resampling.BICUBIC))),
    )
