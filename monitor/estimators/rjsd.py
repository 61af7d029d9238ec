"""Representation Jensen-Shannon divergence between two sets of embeddings.

For a set A of L2-normalised embeddings (rows), C_A = A^T A is a density-matrix-like summary;
H(C) is its von Neumann entropy (eigenvalues scaled to sum 1, natural log, zeros dropped), and

    JSD(A, B) = H((C_A + C_B) / 2) - (H(C_A) + H(C_B)) / 2,

which is 0 for identical sets and log 2 for sets on orthogonal subspaces with equal weight.
The cost is O(n d^2 + d^3) and does not depend on any pairing between A and B. Values are biased
upwards at small n, so they only mean something against a null calibration
(:mod:`monitor.estimators.calibration`).

Modes, and why ``balanced`` is the default of every drift entry point (``representation_jsd``,
``ReferenceJSD``, ``jsd_null``, the store calibration and the live window statistics): the
paper's mode mixes the raw covariances A^T A + B^T B, so the larger set weighs more. A monitor
compares a window of tens or hundreds of records with a comparison set of thousands; the paper's
mixture is then almost the comparison set alone, and the value measures an entropy difference
more than a shift. It clips to 0 on real windows (20 of 20 TextVQA answer windows) and misses
5% and 10% mixtures; a shifted window of 40 against 1,500 ID records was not significant in
paper mode (p = 0.10) and is in balanced mode. ``balanced`` divides each covariance by its
trace, so both sets weigh equally whatever their sizes. The two modes agree when n_a == n_b
(every paired output term). The parity API keeps the paper's mode by passing
``mode="paper"`` explicitly.
"""

from __future__ import annotations

from functools import cached_property
from typing import Literal

import numpy as np
import torch

from monitor.errors import EmbeddingError, InvalidInputError
from monitor.estimators._arrays import (
    ArrayLike,
    FloatArray,
    check_embeddings,
    check_same_dim,
    to_numpy,
)

JSDMode = Literal["paper", "balanced"]
JSD_MODES: tuple[JSDMode, ...] = ("paper", "balanced")
# The mode of every drift entry point; see the module docstring for why.
DEFAULT_JSD_MODE: JSDMode = "balanced"


def von_neumann_entropy(cov: ArrayLike) -> float:
    """Von Neumann entropy of a symmetric positive semi-definite matrix.

    Eigenvalues are normalised to sum 1, non-positive ones dropped, natural log. The computation
    runs in the dtype of ``cov``: float32 reproduces the reference implementation (whose float32
    eigensolver keeps tiny spurious positive eigenvalues, about 2e-5 nats at d = 768), float64
    gives the exact value.
    """
    c = to_numpy(cov, "cov")
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] == 0:
        raise EmbeddingError(
            f"cov must be a non-empty square matrix, got shape {c.shape}", field="cov"
        )
    if not np.isfinite(c).all():
        raise EmbeddingError("cov has NaN or inf entries", field="cov")
    scale = float(np.abs(c).max())
    if scale == 0.0:
        raise EmbeddingError("cov is all zeros: its entropy is undefined", field="cov")
    if float(np.abs(c - c.T).max()) > 1e-5 * scale:
        raise EmbeddingError("cov is not symmetric", field="cov")
    return _entropy_of_kernel(c)


def representation_jsd(
    a: ArrayLike, b: ArrayLike, *, mode: JSDMode = DEFAULT_JSD_MODE, normalize: bool = False
) -> float:
    """Representation JSD between embedding sets ``a`` (n_a, d) and ``b`` (n_b, d).

    Rows must be L2-normalised, or pass ``normalize=True`` to rescale them.
    ``mode="paper"`` mixes the raw covariances A^T A and B^T B as the authors do, so the larger
    set weighs more; ``mode="balanced"`` divides each by its trace first so both weigh equally.
    Both agree when n_a == n_b; the default is ``balanced`` (module docstring). Computed in
    float64 (exact up to rounding).
    """
    return ReferenceJSD(a, mode=mode, normalize=normalize, name="a")(b)


class ReferenceJSD:
    """Representation JSD of many windows against one fixed comparison set.

    The comparison set's entropy and covariance are computed once, which is what null
    calibration (hundreds of windows against the same ID set) and live windows need.
    """

    def __init__(
        self,
        comparison: ArrayLike,
        *,
        mode: JSDMode = DEFAULT_JSD_MODE,
        normalize: bool = False,
        name: str = "comparison",
    ) -> None:
        if mode not in JSD_MODES:
            raise InvalidInputError(
                f"unknown JSD mode {mode!r}; expected one of {JSD_MODES}", field="mode"
            )
        self.mode: JSDMode = mode
        self.normalize = normalize
        self._ref = _EmbeddingSet(_check_unit_rows(comparison, name, normalize))

    @property
    def dim(self) -> int:
        return self._ref.dim

    def __call__(self, window: ArrayLike, *, name: str = "b") -> float:
        other = _EmbeddingSet(_check_unit_rows(window, name, self.normalize))
        check_same_dim(self._ref.rows, other.rows, "the comparison set", name)
        a, b = self._ref, other
        # Weights of each set's rows in the mixture (C_A + C_B) / 2; the 1/2 is dropped since
        # the entropy normalises the eigenvalues anyway.
        w_a, w_b = (1.0, 1.0) if self.mode == "paper" else (1.0 / a.trace, 1.0 / b.trace)
        if a.n + b.n < a.dim:
            # Same non-zero spectrum as the d x d mixture, from a smaller Gram matrix.
            stacked = np.vstack([np.sqrt(w_a) * a.rows, np.sqrt(w_b) * b.rows])
            h_mix = _entropy_of_kernel(stacked @ stacked.T)
        else:
            h_mix = _entropy_of_kernel(w_a * a.cov + w_b * b.cov)
        # Balanced mode (and paper mode at equal sizes) is >= 0 by concavity of the entropy, up
        # to rounding. Paper mode with unequal sizes is not a true divergence and can dip below
        # 0 when the smaller set is the more spread one: reported as 0, "no divergence".
        return max(h_mix - 0.5 * (a.entropy + b.entropy), 0.0)


class _EmbeddingSet:
    """Rows in float64 with their covariance and entropy, each computed at most once."""

    def __init__(self, rows: FloatArray) -> None:
        self.rows = rows.astype(np.float64, copy=False)
        self.n, self.dim = int(rows.shape[0]), int(rows.shape[1])

    @cached_property
    def cov(self) -> FloatArray:
        return self.rows.T @ self.rows

    @cached_property
    def trace(self) -> float:
        return float(np.einsum("ij,ij->", self.rows, self.rows))

    @cached_property
    def entropy(self) -> float:
        # The Gram matrix X X^T has the non-zero eigenvalues of X^T X; use the smaller one.
        if self.n < self.dim:
            return _entropy_of_kernel(self.rows @ self.rows.T)
        return _entropy_of_kernel(self.cov)


def _check_unit_rows(a: ArrayLike, name: str, normalize: bool) -> FloatArray:
    return check_embeddings(a, name, unit_norm=not normalize, normalize=normalize)


def _entropy_of_kernel(K: FloatArray) -> float:
    eig = torch.linalg.eigvalsh(torch.from_numpy(np.ascontiguousarray(K)))
    eig = eig[eig > 0]
    p = eig / eig.sum()
    return float(-(p * torch.log(p)).sum())
