"""CLUB: the O(n d) estimate against the naive pairwise formula, training, files, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monitor.errors import EmbeddingError, InvalidInputError
from monitor.estimators.club import CLUB, EpochReport, _holdout_mask, train_club
from monitor.reference.checkpoint import load_club
from tests.conftest import PAPER_CLUB


def naive_club_estimate(model: CLUB, x: torch.Tensor, y: torch.Tensor) -> float:
    """The reference formula with its n x n x d tensor, written out independently."""
    with torch.no_grad():
        mu = model.p_mu(x)
        logvar = model.p_logvar(x)
        positive = -((mu - y) ** 2) / 2.0 / logvar.exp()
        negative = -((y.unsqueeze(0) - mu.unsqueeze(1)) ** 2).mean(dim=1) / 2.0 / logvar.exp()
        return float((positive.sum(-1) - negative.sum(-1)).mean())


def correlated_pairs(n: int, d: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = np.tanh(x @ rng.standard_normal((d, d)) / np.sqrt(d)) + noise * rng.standard_normal((n, d))
    return x.astype(np.float32), y.astype(np.float32)


@pytest.mark.parametrize(("n", "d", "chunk"), [(7, 5, 4096), (64, 16, 10), (33, 24, 1)])
def test_linear_estimate_equals_naive_formula(n: int, d: int, chunk: int) -> None:
    torch.manual_seed(n)
    model = CLUB(d, d, hidden=20).double()
    x = torch.randn(n, d, dtype=torch.float64)
    y = torch.randn(n, d, dtype=torch.float64) + 0.5 * x
    assert model.estimate(x, y, chunk_rows=chunk) == pytest.approx(
        naive_club_estimate(model, x, y), abs=1e-6
    )


def test_linear_estimate_equals_naive_on_paper_weights() -> None:
    model = load_club(PAPER_CLUB)
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.standard_normal((40, 768)).astype(np.float32) / 30)
    y = torch.nn.functional.normalize(torch.randn(40, 768), dim=-1)
    assert model.estimate(x, y) == pytest.approx(naive_club_estimate(model, x, y), abs=1e-6)


def test_training_finds_dependence_and_is_seeded() -> None:
    x, y = correlated_pairs(600, 8, noise=0.1)
    reports: list[EpochReport] = []
    model = train_club(x, y, hidden=32, epochs=60, lr=3e-3, seed=1, on_epoch=reports.append)
    again = train_club(x, y, hidden=32, epochs=60, lr=3e-3, seed=1)
    for p, q in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)
    dependent = model.estimate(x, y)
    shuffled = model.estimate(x, y[np.random.default_rng(0).permutation(len(y))])
    assert dependent > 0.5
    assert abs(shuffled) < dependent / 5
    assert reports and reports[-1].best_epoch == model.metadata["best_epoch"]


def test_training_stops_early_and_returns_the_best_epoch() -> None:
    # Pure noise: the held-out likelihood stops improving quickly, training must stop early.
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((80, 4)), rng.standard_normal((80, 4))
    reports: list[EpochReport] = []
    model = train_club(
        x, y, hidden=64, epochs=500, lr=1e-2, patience=5, seed=0, on_epoch=reports.append
    )
    assert len(reports) < 500
    assert reports[-1].epoch - model.metadata["best_epoch"] == 5
    best = max(reports, key=lambda r: r.holdout_loglik)
    assert best.epoch == model.metadata["best_epoch"]


def test_training_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    x, y = correlated_pairs(50, 4, noise=0.5)
    train_club(x, y, hidden=8, epochs=2, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_estimate_rejects_bad_input() -> None:
    model = CLUB(4, 3, hidden=8)
    with pytest.raises(EmbeddingError, match="x has dimension 5, expected 4"):
        model.estimate(np.ones((2, 5)), np.ones((2, 3)))
    with pytest.raises(EmbeddingError, match="paired row by row"):
        model.estimate(np.ones((2, 4)), np.ones((3, 3)))
    with pytest.raises(EmbeddingError, match="NaN or inf"):
        model.estimate(np.full((2, 4), np.nan), np.ones((2, 3)))
    with pytest.raises(EmbeddingError, match="empty"):
        model.estimate(np.ones((0, 4)), np.ones((0, 3)))
    with pytest.raises(InvalidInputError, match="at least 3 pairs"):
        train_club(np.ones((2, 4)), np.ones((2, 3)))
    with pytest.raises(InvalidInputError, match="hidden"):
        CLUB(4, 3, hidden=1)


def test_groups_keep_a_record_s_pairs_on_one_side_of_the_holdout() -> None:
    # Two pairs per record, (x, y) and (x, y_hat): with groups, early stopping holds out whole
    # records; without, the two pairs of a record fall on both sides.
    groups = np.concatenate([np.arange(60), np.arange(60)])
    by_record = _holdout_mask(120, 0.2, 3, groups)
    assert by_record.sum() == 24 and np.array_equal(by_record[:60], by_record[60:])
    by_pair = _holdout_mask(120, 0.2, 3, None)
    assert by_pair.sum() == 24 and not np.array_equal(by_pair[:60], by_pair[60:])
    x, y = correlated_pairs(60, 4, noise=0.3)
    pairs_x, pairs_y = np.concatenate([x, x]), np.concatenate([y, y + 0.01])
    model = train_club(pairs_x, pairs_y, hidden=8, epochs=2, seed=3, groups=groups)
    assert model.metadata["holdout_pairs"] == 24
    with pytest.raises(InvalidInputError, match="one id per pair"):
        train_club(pairs_x, pairs_y, hidden=8, epochs=1, groups=np.arange(5))
