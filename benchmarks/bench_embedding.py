"""Embedding benchmark: XLM-R embedding layer vs full forward; CLIP pipeline vs bare forward.

Run: python benchmarks/bench_embedding.py [--images 64] [--device cpu|cuda] [--dtype float16]

Models have the real architectures' sizes (XLM-R base, CLIP ViT-B/32) with random weights made
from their configs: nothing is downloaded. Times are measured side by side in one run.
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModel, XLMRobertaConfig, XLMRobertaModel

from monitor.embedding import load_encoder
from monitor.embedding.clip import ClipVisionEncoder
from monitor.embedding.text import masked_mean


def best_of(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def xlmr_layer_vs_full(repeats: int, device: torch.device, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    config = XLMRobertaConfig(
        vocab_size=250_002,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=514,
        pad_token_id=1,
    )
    model = XLMRobertaModel(config).eval().to(device=device, dtype=dtype)  # type: ignore[no-untyped-call]
    ids = torch.randint(5, 250_000, (32, 128), device=device)
    ids[:, 0], ids[:, -1] = 0, 2
    mask = torch.ones_like(ids)

    def full() -> torch.Tensor:
        with torch.inference_mode():
            h0 = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            return masked_mean(h0.hidden_states[0][:, 1:], mask[:, 1:])

    def layer_only() -> torch.Tensor:
        with torch.inference_mode():
            return masked_mean(model.embeddings(input_ids=ids)[:, 1:], mask[:, 1:])

    t_full, t_layer = best_of(full, repeats), best_of(layer_only, repeats * 10)
    diff = float((full() - layer_only()).abs().max())
    print(
        f"XLM-R base, batch 32 x 128 tokens: full forward {t_full * 1000:.1f} ms, "
        f"embedding layer only {t_layer * 1000:.2f} ms -> {t_full / t_layer:.0f}x faster, "
        f"max |difference| {diff:.1e}"
    )


def jpegs(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    yy, xx = np.mgrid[0:480, 0:640]
    for i in range(n):
        base = np.stack([(xx * (i + 1)) % 256, (yy * 3 + i * 7) % 256, (xx + yy) % 256], -1)
        noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noisy, "RGB").save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def clip_pipeline_vs_bare(n_images: int, repeats: int, device: str, dtype: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        config = CLIPVisionConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=32,
        )
        CLIPVisionModel(config).save_pretrained(tmp)
        (Path(tmp) / "preprocessor_config.json").write_text(
            json.dumps(
                {
                    "size": {"shortest_edge": 224},
                    "crop_size": {"height": 224, "width": 224},
                    "resample": 3,
                    "rescale_factor": 1 / 255,
                    "image_mean": [0.48145466, 0.4578275, 0.40821073],
                    "image_std": [0.26862954, 0.26130258, 0.27577711],
                }
            )
        )
        encoder = load_encoder(
            "clip_vision", tmp, cache_size=0, batch_size=32, device=device, dtype=dtype
        )
    assert isinstance(encoder, ClipVisionEncoder)
    images = jpegs(n_images)
    pixels = [encoder.pixels(images[s : s + 32]) for s in range(0, n_images, 32)]

    def bare() -> None:
        for batch in pixels:
            encoder.forward_pixels(batch)
        if encoder.device.type == "cuda":
            torch.cuda.synchronize()

    def pipeline() -> None:
        encoder.encode_images(images)

    # Alternate the two so that load from elsewhere on the machine hits both alike.
    t_bare = t_pipe = float("inf")
    for _ in range(repeats):
        t_bare = min(t_bare, best_of(bare, 1))
        t_pipe = min(t_pipe, best_of(pipeline, 1))
    t_prep = best_of(
        lambda: [encoder.pixels(images[s : s + 32]) for s in range(0, n_images, 32)], 1
    )
    print(
        f"CLIP ViT-B/32 ({encoder.device.type}, {encoder.dtype}), {n_images} JPEGs 640x480, "
        f"batch 32: bare forward {n_images / t_bare:.1f} img/s, full pipeline (decode + "
        f"preprocess + batch + forward + pool) {n_images / t_pipe:.1f} img/s -> ratio "
        f"{t_bare / t_pipe:.2f}; decode + preprocess alone {n_images / t_prep:.0f} img/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    print(
        f"# {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), device {device}, dtype {args.dtype}"
    )
    xlmr_layer_vs_full(args.repeats, device, dtype)
    clip_pipeline_vs_bare(args.images, args.repeats, args.device, args.dtype)


if __name__ == "__main__":
    main()
