"""A synthetic ID distribution of records for calibration tests: fast and with every kind.

A low-rank latent plus noise in d = 32: prompt, image and model answer depend on a shared
latent, the reference answer on the model answer's latent with a systematic difference (so the
ID output term is > 0). ``IDModel(seed)`` fixes the distribution; ``draw`` samples records.
"""

from __future__ import annotations

import numpy as np

D, LATENT = 32, 6


def _unit(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


class IDModel:
    """A fixed ID distribution of records (prompt, image, response, reference embeddings)."""

    def __init__(self, seed: int = 12345) -> None:
        rng = np.random.default_rng(seed)
        self.maps = {k: rng.standard_normal((LATENT, D)) for k in ("prompt", "image", "response")}
        self.means = {k: rng.standard_normal(D) * 1.5 for k in self.maps}
        self.reference_extra = rng.standard_normal((LATENT, D)) * 0.5

    def draw(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        z = rng.standard_normal((n, LATENT))
        out = {
            k: _unit(z @ self.maps[k] + self.means[k] + 0.7 * rng.standard_normal((n, D)))
            for k in self.maps
        }
        out["reference"] = _unit(
            z @ (self.maps["response"] + self.reference_extra)
            + self.means["response"]
            + 0.7 * rng.standard_normal((n, D))
        )
        return out
