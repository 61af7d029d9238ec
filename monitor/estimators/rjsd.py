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
from monitor.estimators.arrays import (
    ArrayLike,
    FloatArray,
    check_embeddings,
    to_numpy,
)

JSDMode = Literal["paper", "balanced"]
JSD_MODES: tuple[JSDMode, ...] = ("paper", "balanced")
# The mode of every drift entry point; see the module docstring for why.
DEFAULT_JSD_MODE: JSDMode = "balanced"
# Windows of at least this many float32 rows sum their covariance from float32 products in
# blocks of _COV_CHUNK_ROWS rows into float64, fewer in float64 (EmbeddingSet). Measured at
# d = 768, one thread: n = 10,000 takes 72 ms in blocks of 1,024 against 127 ms in float64
# plus 18 ms for the float64 copy; smaller blocks are more accurate and slower (128: 0.39 s).
# On the JSD of low-rank-plus-noise embeddings the blocks are within 2e-7 relative of float64
# from n = 3,000 on, but up to 3.4e-6 at n = 1,000 (a near-square covariance has many small
# eigenvalues, whose errors the entropy amplifies), where float64 costs little anyway.
_FAST_COV_MIN_ROWS = 4096
_COV_CHUNK_ROWS = 1024


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
    float64, except that the covariance of many float32 rows of ``b`` sums float32 products
    in float64 blocks, within ~2e-7 relative of float64 (:class:`EmbeddingSet`).
    """
    return ReferenceJSD(a, mode=mode, normalize=normalize, name="a")(b)


def set_jsd(a: EmbeddingSet, b: EmbeddingSet, *, mode: JSDMode = DEFAULT_JSD_MODE) -> float:
    """Representation JSD between two prepared sets (see :func:`representation_jsd`); a set
    shared by several terms computes its covariance and entropy once. The paper mode takes
    float64 covariances whatever the sets (prepare them with ``exact=True`` to share them):
    with unequal sizes its mixture does not cancel the window's rounding (``EmbeddingSet``)."""
    _check_mode(mode)
    if mode == "paper":
        a, b = a.as_exact(), b.as_exact()
    if a.dim != b.dim:
        raise EmbeddingError(
            f"{a.name} and {b.name} differ in dimension ({a.dim} vs {b.dim})", field=b.name
        )
    # Weights of each set's rows in the mixture (C_A + C_B) / 2; the 1/2 is dropped since
    # the entropy normalises the eigenvalues anyway.
    w_a, w_b = (1.0, 1.0) if mode == "paper" else (1.0 / a.trace, 1.0 / b.trace)
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
        _check_mode(mode)
        self.mode: JSDMode = mode
        self.normalize = normalize
        # Computed once per comparison set, so in float64 whatever the rows' dtype.
        self._ref = EmbeddingSet.checked(comparison, name, normalize=normalize, exact=True)

    @property
    def dim(self) -> int:
        return self._ref.dim

    def __call__(self, window: ArrayLike | EmbeddingSet, *, name: str = "b") -> float:
        """JSD of ``window`` (rows, or a set prepared with :meth:`EmbeddingSet.checked` with
        the same ``normalize``) against the comparison set."""
        other = (
            window
            if isinstance(window, EmbeddingSet)
            else EmbeddingSet.checked(
                window, name, normalize=self.normalize, exact=self.mode == "paper"
            )
        )
        return set_jsd(self._ref, other, mode=self.mode)


class EmbeddingSet:
    """Checked rows with their covariance, trace and entropy, each computed at most once.

    ``exact`` sets (a comparison set, computed once) get a float64 covariance, and so do sets
    of fewer than :data:`_FAST_COV_MIN_ROWS` rows or rows that are not float32. A large window's
    float32 rows get theirs from float32 products summed in blocks of :data:`_COV_CHUNK_ROWS`
    rows into float64: half the time of float64 at d = 768 and no float64 copy of the rows.
    Its entropy is then off by ~1e-7 nats (2e-8 relative). In the balanced mode the JSD keeps
    that within ~2e-7 relative of float64 (measured at n = 3,000 to 30,000, d = 256 and 768;
    tested in tests/unit/estimators/test_rjsd.py): the window's matrix weighs 1/2 in the
    mixture, and the mixture's entropy error cancels half the window's own to first order, up
    to a factor that grows with the JSD. The paper mode's mixture weighs a large window by its
    size (5,000 rows against 600: 0.89), the errors no longer cancel and the JSD was off by
    3e-6 relative, so :func:`set_jsd` takes float64 covariances in the paper mode.
    """

    def __init__(
        self,
        rows: FloatArray,
        *,
        exact: bool = False,
        name: str = "rows",
        cov: FloatArray | None = None,
    ) -> None:
        """``cov``: the rows' covariance when the caller already has it (a permutation split
        takes one side's as the whole's minus the other's)."""
        self._input, self.name = rows, name
        self.n, self.dim = int(rows.shape[0]), int(rows.shape[1])
        self.exact = exact or rows.dtype != np.float32 or self.n < _FAST_COV_MIN_ROWS
        if cov is not None:
            self.__dict__["cov"] = cov  # primes the cached property below

    @classmethod
    def checked(
        cls, rows: ArrayLike, name: str, *, normalize: bool = False, exact: bool = False
    ) -> EmbeddingSet:
        """A set of L2-normalised rows (or rows rescaled, with ``normalize``); bad input raises
        an EmbeddingError naming ``name``."""
        return cls(_check_unit_rows(rows, name, normalize), exact=exact, name=name)

    def as_exact(self) -> EmbeddingSet:
        """This set if its covariance is float64, else the same rows with a float64 one."""
        return self if self.exact else EmbeddingSet(self._input, exact=True, name=self.name)

    @cached_property
    def rows(self) -> FloatArray:
        """The rows in float64 (the Gram-matrix paths, where n < d)."""
        return self._input.astype(np.float64, copy=False)

    @cached_property
    def cov(self) -> FloatArray:
        if self.exact:
            return self.rows.T @ self.rows
        cov = np.zeros((self.dim, self.dim), dtype=np.float64)
        for start in range(0, self.n, _COV_CHUNK_ROWS):
            block = self._input[start : start + _COV_CHUNK_ROWS]
            cov += block.T @ block
        return cov

    @cached_property
    def trace(self) -> float:
        # From the covariance when n >= d (the entropy computes it anyway; a balanced mixture
        # then weighs each matrix as computed by exactly 1/2), else from the rows.
        if self.n >= self.dim:
            return float(np.trace(self.cov))
        return float(np.einsum("ij,ij->", self.rows, self.rows))

    @cached_property
    def entropy(self) -> float:
        # The Gram matrix X X^T has the non-zero eigenvalues of X^T X; use the smaller one.
        if self.n < self.dim:
            return _entropy_of_kernel(self.rows @ self.rows.T)
        return _entropy_of_kernel(self.cov)


def _check_mode(mode: str) -> None:
    if mode not in JSD_MODES:
        raise InvalidInputError(
            f"unknown JSD mode {mode!r}; expected one of {JSD_MODES}", field="mode"
        )


def _check_unit_rows(a: ArrayLike, name: str, normalize: bool) -> FloatArray:
    return check_embeddings(a, name, unit_norm=not normalize, normalize=normalize)


def _entropy_of_kernel(K: FloatArray) -> float:
    if K.dtype == np.float64:
        # LAPACK's syevd through numpy: 29 ms against torch's 47 ms at d = 768 on one thread,
        # the same eigenvalues up to rounding (~1e-15 relative).
        eig64 = np.linalg.eigvalsh(K)
        eig64 = eig64[eig64 > 0]
        p64 = eig64 / eig64.sum()
        return float(-(p64 * np.log(p64)).sum())
    # float32 stays on torch's solver: it is what reproduces the reference implementation.
    eig = torch.linalg.eigvalsh(torch.from_numpy(np.ascontiguousarray(K)))
    eig = eig[eig > 0]
    p = eig / eig.sum()
    return float(-(p * torch.log(p)).sum())
