"""Representation JSD: closed-form cases, modes, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monitor.errors import EmbeddingError, InvalidInputError, MonitorError
from monitor.estimators.rjsd import (
    EmbeddingSet,
    ReferenceJSD,
    representation_jsd,
    set_jsd,
    von_neumann_entropy,
)
from tests.conftest import unit_rows


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.mark.parametrize("mode", ["paper", "balanced"])
@pytest.mark.parametrize(("n", "d"), [(10, 64), (200, 16)])  # Gram path and covariance path
def test_identical_sets_give_zero(rng: np.random.Generator, mode: str, n: int, d: int) -> None:
    a = unit_rows(rng, n, d)
    assert representation_jsd(a, a, mode=mode) == pytest.approx(0.0, abs=1e-10)  # type: ignore[arg-type]


@pytest.mark.parametrize(("n_a", "n_b", "d"), [(5, 8, 64), (40, 70, 32), (300, 100, 16)])
def test_orthogonal_subspaces_give_log2_in_balanced_mode(
    rng: np.random.Generator, n_a: int, n_b: int, d: int
) -> None:
    half = d // 2
    a = np.zeros((n_a, d))
    b = np.zeros((n_b, d))
    a[:, :half] = unit_rows(rng, n_a, half)
    b[:, half:] = unit_rows(rng, n_b, d - half)
    assert representation_jsd(a, b, mode="balanced") == pytest.approx(math.log(2), abs=1e-10)
    if n_a != n_b:  # paper mode weighs the larger set more, so it departs from log 2
        assert abs(representation_jsd(a, b, mode="paper") - math.log(2)) > 1e-3


def test_modes_agree_at_equal_sizes(rng: np.random.Generator) -> None:
    a, b = unit_rows(rng, 50, 24), unit_rows(rng, 50, 24, mean=np.full(24, 0.3))
    assert representation_jsd(a, b, mode="paper") == pytest.approx(
        representation_jsd(a, b, mode="balanced"), abs=1e-12
    )


def test_gram_and_covariance_paths_agree(rng: np.random.Generator) -> None:
    # n_a + n_b < d takes the Gram path; compare with the d x d formula written out here.
    a, b = unit_rows(rng, 20, 100), unit_rows(rng, 30, 100, mean=np.full(100, 0.1))

    def entropy(c: np.ndarray) -> float:
        e = np.linalg.eigvalsh(c)
        e = e[e > 1e-12 * e.max()]
        p = e / e.sum()
        return float(-(p * np.log(p)).sum())

    ca, cb = a.T @ a, b.T @ b
    paper = entropy((ca + cb) / 2) - (entropy(ca) + entropy(cb)) / 2
    assert representation_jsd(a, b, mode="paper") == pytest.approx(paper, abs=1e-9)
    mix = ca / np.trace(ca) + cb / np.trace(cb)
    balanced = entropy(mix / 2) - (entropy(ca) + entropy(cb)) / 2
    assert representation_jsd(a, b, mode="balanced") == pytest.approx(balanced, abs=1e-9)


def test_drift_entry_points_default_to_the_balanced_mode(rng: np.random.Generator) -> None:
    # Unequal sizes, where the modes differ: a window against a far larger comparison set.
    ref, window = unit_rows(rng, 400, 16), unit_rows(rng, 40, 16, mean=np.full(16, 0.3))
    balanced = representation_jsd(ref, window, mode="balanced")
    assert balanced != pytest.approx(representation_jsd(ref, window, mode="paper"), abs=1e-6)
    assert representation_jsd(ref, window) == balanced
    assert ReferenceJSD(ref)(window) == balanced
    assert ReferenceJSD(ref).mode == "balanced"


def test_jsd_grows_with_shift(rng: np.random.Generator) -> None:
    base = unit_rows(rng, 400, 16)
    direction = np.eye(16)[0]
    values = [
        representation_jsd(base, unit_rows(rng, 400, 16, mean=s * direction))
        for s in (0.0, 1.0, 3.0)
    ]
    assert values[0] < values[1] < values[2]


def test_symmetric_in_balanced_mode(rng: np.random.Generator) -> None:
    a, b = unit_rows(rng, 30, 12), unit_rows(rng, 80, 12, mean=np.full(12, 0.2))
    assert representation_jsd(a, b, mode="balanced") == pytest.approx(
        representation_jsd(b, a, mode="balanced"), abs=1e-12
    )


def test_reference_jsd_matches_function(rng: np.random.Generator) -> None:
    ref, window = unit_rows(rng, 300, 16), unit_rows(rng, 40, 16)
    other = unit_rows(rng, 25, 16, mean=np.full(16, 0.4))
    cached = ReferenceJSD(ref, mode="balanced")
    first = cached(window)
    assert first == pytest.approx(representation_jsd(ref, window, mode="balanced"))
    # The comparison set's cached covariance and entropy are not altered by other windows.
    assert cached(other) == pytest.approx(representation_jsd(ref, other, mode="balanced"))
    assert cached(window) == pytest.approx(first, abs=1e-12)


def test_normalize_flag_rescales_rows(rng: np.random.Generator) -> None:
    a, b = unit_rows(rng, 30, 8), unit_rows(rng, 30, 8, mean=np.full(8, 0.5))
    scaled = a * rng.uniform(0.5, 3.0, size=(30, 1))
    with pytest.raises(EmbeddingError, match=r"not L2-normalised.*normalize=True"):
        representation_jsd(scaled, b)
    assert representation_jsd(scaled, b, normalize=True) == pytest.approx(
        representation_jsd(a, b), abs=1e-12
    )


def test_accepts_float16_and_torch(rng: np.random.Generator) -> None:
    a, b = unit_rows(rng, 60, 32), unit_rows(rng, 60, 32, mean=np.full(32, 0.3))
    exact = representation_jsd(a, b)
    assert representation_jsd(a.astype(np.float16), b.astype(np.float16)) == pytest.approx(
        exact, abs=1e-3
    )
    assert representation_jsd(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(exact)


@pytest.mark.parametrize(
    ("a", "message"),
    [
        (np.zeros((0, 8)), "empty"),
        (np.ones(8) / math.sqrt(8), "2-D"),
        (np.full((3, 8), np.nan), "NaN or inf"),
        (np.zeros((3, 8)), "all-zero"),
        (np.full((3, 4), 1.0), "not L2-normalised"),
        (np.array([["a", "b"]]), "real numbers"),
    ],
)
def test_bad_input_names_the_problem(a: np.ndarray, message: str) -> None:
    good = np.eye(8)[:3]
    with pytest.raises(EmbeddingError, match=message) as info:
        representation_jsd(a, good)
    assert isinstance(info.value, MonitorError) and info.value.field == "a"


def test_inf_row_is_reported_with_its_index() -> None:
    a = np.eye(4)
    a[2, 1] = np.inf
    with pytest.raises(EmbeddingError, match=r"1 row\(s\) with NaN or inf \(first at row 2\)"):
        representation_jsd(np.eye(4), a)


def test_dimension_mismatch_and_unknown_mode() -> None:
    with pytest.raises(EmbeddingError, match="differ in dimension"):
        representation_jsd(np.eye(4), np.eye(5))
    with pytest.raises(InvalidInputError, match="unknown JSD mode"):
        representation_jsd(np.eye(4), np.eye(4), mode="fast")  # type: ignore[arg-type]


def test_von_neumann_entropy_closed_forms_and_errors() -> None:
    assert von_neumann_entropy(np.eye(6)) == pytest.approx(math.log(6))
    assert von_neumann_entropy(np.diag([3.0, 0.0, 0.0])) == pytest.approx(0.0)
    with pytest.raises(EmbeddingError, match="square"):
        von_neumann_entropy(np.ones((2, 3)))
    with pytest.raises(EmbeddingError, match="not symmetric"):
        von_neumann_entropy(np.array([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(EmbeddingError, match="all zeros"):
        von_neumann_entropy(np.zeros((3, 3)))


def _low_rank_rows(rng: np.random.Generator, n: int, d: int, basis: np.ndarray) -> np.ndarray:
    """float32 unit rows with a shared low-rank structure plus noise, stored as float16 and
    re-normalised like the monitor's windows: a spectrum with many small eigenvalues."""
    x = rng.standard_normal((n, basis.shape[0])) @ basis + 0.5 * rng.standard_normal((n, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)
    rows: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return rows


def test_large_float32_windows_sum_their_covariance_in_blocks_within_1e_6_of_float64(
    rng: np.random.Generator,
) -> None:
    d = 128
    basis = rng.standard_normal((8, d))
    comparison = _low_rank_rows(rng, 600, d, basis)
    window = _low_rank_rows(rng, 5000, d, basis)
    answers = _low_rank_rows(rng, 5000, d, basis)
    references = answers + 0.1 * rng.standard_normal(answers.shape).astype(np.float32)
    references /= np.linalg.norm(references, axis=1, keepdims=True)
    blocked = EmbeddingSet(window)
    assert not blocked.exact  # 5,000 float32 rows: the float32-block path
    assert EmbeddingSet(window[:1000]).exact and EmbeddingSet(window.astype(np.float64)).exact
    exact_window = EmbeddingSet(window, exact=True)
    assert np.abs(blocked.cov - exact_window.cov).max() > 0  # a different computation...
    np.testing.assert_allclose(blocked.cov, exact_window.cov, rtol=1e-5, atol=1e-4)
    reference = EmbeddingSet(comparison, exact=True)
    balanced = set_jsd(reference, blocked)
    assert balanced == pytest.approx(set_jsd(reference, exact_window), rel=1e-6)  # ...same JSD
    assert ReferenceJSD(comparison)(window) == balanced
    # The paper mode does not cancel the rounding (blocks: 9e-7 relative here, 3e-6 at
    # d = 256): it takes float64 covariances.
    paper = set_jsd(reference, blocked, mode="paper")
    assert paper == set_jsd(reference, exact_window, mode="paper")
    assert ReferenceJSD(comparison, mode="paper")(window) == paper
    paired = set_jsd(EmbeddingSet(answers), EmbeddingSet(references))
    exact_paired = set_jsd(EmbeddingSet(answers, exact=True), EmbeddingSet(references, exact=True))
    assert paired == pytest.approx(exact_paired, rel=1e-6)
    assert representation_jsd(answers, references) == pytest.approx(exact_paired, rel=1e-6)


def test_prepared_sets_give_the_values_of_rows(rng: np.random.Generator) -> None:
    ref, window = unit_rows(rng, 300, 16), unit_rows(rng, 40, 16, mean=np.full(16, 0.2))
    prepared = EmbeddingSet.checked(window, "window")
    assert ReferenceJSD(ref)(prepared) == ReferenceJSD(ref)(window)
    assert set_jsd(EmbeddingSet.checked(ref, "ref", exact=True), prepared) == (
        representation_jsd(ref, window)
    )
    with pytest.raises(EmbeddingError, match="differ in dimension"):
        set_jsd(prepared, EmbeddingSet.checked(unit_rows(rng, 5, 8), "other"))
    with pytest.raises(EmbeddingError, match="not L2-normalised"):
        EmbeddingSet.checked(window * 2, "window")
    with pytest.raises(InvalidInputError, match="unknown JSD mode"):
        set_jsd(prepared, prepared, mode="nope")  # type: ignore[arg-type]
