"""CLUB mutual-information estimator (Cheng et al., 2020) as used by arXiv 2502.00577.

A network gives q(y|x) = N(mu(x), diag(exp(logvar(x)))), with the paper's architecture and
parameter names (so the authors' state dict loads as is):

    p_mu     = Linear(x_dim, h/2) -> Tanh -> Linear(h/2, y_dim)
    p_logvar = Linear(x_dim, h/2) -> Tanh -> Linear(h/2, y_dim) -> Tanh

The estimate is mean_i sum_k [ -(mu_ik - y_ik)^2 / 2s_ik + mean_j (y_jk - mu_ik)^2 / 2s_ik ],
s = exp(logvar). The reference code builds an n x n x d tensor for the second term; expanding
mean_j (y_jk - mu_ik)^2 = E[y_k^2] - 2 mu_ik E[y_k] + mu_ik^2 makes mu^2 cancel and leaves

    [ 2 mu_ik (y_ik - E[y_k]) + E[y_k^2] - y_ik^2 ] / 2s_ik,

O(n d) in time and O(chunk d) in memory, computed in row chunks with the two first layers fused.

Where training here departs from the paper (whose CLUB is fit once, on (x, y) pairs of a
separate training set):

* :func:`train_club` fits one network on whatever pairs it is given; the reference store
  (:mod:`monitor.reference.estimator`) gives it both (x, y) and (x, y_hat) pairs of the ID
  records, so one q(y|x) serves I(x; y) and I(x; y_hat) alike.
* Early stopping holds out a random fraction of the *pairs*; without ``groups`` the (x, y) and
  (x, y_hat) pairs of one record can fall on both sides, so the held-out likelihood is
  optimistic. Pass ``groups`` (one id per record) to hold out whole records.
* EMI(ID) evaluated on records the network was trained on is in-sample (biased towards the
  training fit); the store therefore keeps a held-out ID split the network never sees.

This module does no file IO: weights files are read and written by
:mod:`monitor.reference.checkpoint`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from monitor.errors import InvalidInputError
from monitor.estimators.arrays import (
    ArrayLike,
    FloatArray,
    check_embeddings,
    check_same_rows,
)

# Rows per chunk of the O(n d) estimate. Measured at n = 65,536 on 2 shared cores (AMD EPYC,
# benchmarks/bench_estimators.py): with 1 thread the size hardly matters (2,048 to 8,192 within
# 3%); with 2 threads on a busy machine 8,192 took 7.4 s against 15.3 s for 2,048 (fewer
# parallel regions for spinning threads to wait in), and quiet it costs 6-11% (1.26 s vs
# 1.13 s). Transient memory per chunk at d = 768: ~96 MB (2,048 rows: ~25 MB).
_ESTIMATE_CHUNK_ROWS = 8192


class CLUB(nn.Module):
    """q(y|x) network of the CLUB estimator; ``estimate(x, y)`` gives the MI estimate in nats."""

    def __init__(self, x_dim: int, y_dim: int, hidden: int = 500) -> None:
        super().__init__()
        if min(x_dim, y_dim) < 1 or hidden < 2:
            raise InvalidInputError(
                f"CLUB needs positive dims and hidden >= 2, got x_dim={x_dim}, y_dim={y_dim}, "
                f"hidden={hidden}",
                field="hidden",
            )
        self.x_dim, self.y_dim, self.hidden = x_dim, y_dim, hidden
        half = hidden // 2
        self.p_mu = nn.Sequential(nn.Linear(x_dim, half), nn.Tanh(), nn.Linear(half, y_dim))
        self.p_logvar = nn.Sequential(
            nn.Linear(x_dim, half), nn.Tanh(), nn.Linear(half, y_dim), nn.Tanh()
        )
        # Free-form provenance saved with the weights (encoder fingerprint, training data, ...).
        self.metadata: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu(x) and logvar(x)."""
        return self.p_mu(x), self.p_logvar(x)

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Unnormalised Gaussian log-likelihood of the pairs, the training objective."""
        mu, logvar = self.forward(x)
        return (-((mu - y) ** 2) / logvar.exp() - logvar).sum(dim=1).mean()

    def mu_logvar(
        self, x: ArrayLike, *, chunk_rows: int = _ESTIMATE_CHUNK_ROWS
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """mu(x) and logvar(x) for a whole set, without autograd (for bootstrap reuse)."""
        X = self._to_params(check_embeddings(x, "x", dim=self.x_dim))
        with torch.inference_mode():
            parts = [self._heads(X[s : s + chunk_rows]) for s in range(0, X.shape[0], chunk_rows)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def estimate(
        self, x: ArrayLike, y: ArrayLike, *, chunk_rows: int = _ESTIMATE_CHUNK_ROWS
    ) -> float:
        """CLUB estimate of I(X; Y) from paired rows of ``x`` (n, x_dim) and ``y`` (n, y_dim)."""
        return self.estimate_many(x, [y], chunk_rows=chunk_rows)[0]

    def estimate_many(
        self, x: ArrayLike, ys: Sequence[ArrayLike], *, chunk_rows: int = _ESTIMATE_CHUNK_ROWS
    ) -> list[float]:
        """I(X; Y) for several Y paired with the same x; the network runs on x only once.

        EMI needs I(x; y_hat) and I(x; y): half the cost of two ``estimate`` calls.
        """
        x_arr = check_embeddings(x, "x", dim=self.x_dim)
        X = self._to_params(x_arr)
        targets = []
        for i, y in enumerate(ys):
            name = "y" if len(ys) == 1 else f"y[{i}]"
            y_arr = check_embeddings(y, name, dim=self.y_dim)
            check_same_rows(x_arr, y_arr, "x", name)
            targets.append(self._to_params(y_arr))
        totals = [0.0] * len(targets)
        with torch.inference_mode():
            moments = [_moments(Y) for Y in targets]
            for start in range(0, X.shape[0], chunk_rows):
                mu, logvar = self._heads(X[start : start + chunk_rows])
                weight = logvar.neg_().exp_()  # exp(-logvar), shared by every y
                for k, (Y, (y_mean, y_sq_mean)) in enumerate(zip(targets, moments, strict=True)):
                    totals[k] += _club_terms_sum(
                        mu, weight, Y[start : start + chunk_rows], y_mean, y_sq_mean
                    )
        return [total / X.shape[0] for total in totals]

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Both first layers read the same x: one GEMM for the two of them.
        mu0, mu2 = self.p_mu[0], self.p_mu[2]
        lv0, lv2 = self.p_logvar[0], self.p_logvar[2]
        assert isinstance(mu0, nn.Linear)
        assert isinstance(mu2, nn.Linear)
        assert isinstance(lv0, nn.Linear)
        assert isinstance(lv2, nn.Linear)
        w1 = torch.cat([mu0.weight, lv0.weight])
        b1 = torch.cat([mu0.bias, lv0.bias])
        h = torch.addmm(b1, x, w1.T).tanh_()
        half = mu0.out_features
        mu = torch.addmm(mu2.bias, h[:, :half], mu2.weight.T)
        logvar = torch.addmm(lv2.bias, h[:, half:], lv2.weight.T).tanh_()
        return mu, logvar

    def _to_params(self, arr: FloatArray) -> torch.Tensor:
        param = next(self.parameters())
        return torch.as_tensor(arr).to(device=param.device, dtype=param.dtype)


def _moments(
    y: torch.Tensor, chunk_rows: int = _ESTIMATE_CHUNK_ROWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """E[y] and E[y^2] per column, chunk by chunk (no n x d copies).

    Each chunk is summed in its own dtype (torch sums floats by cascade, accurate to a few
    ulps) and the chunk sums are accumulated in float64: as exact as summing in float64, at a
    third of the cost.
    """
    first = torch.zeros(y.shape[1], dtype=torch.float64, device=y.device)
    second = torch.zeros_like(first)
    for start in range(0, y.shape[0], chunk_rows):
        chunk = y[start : start + chunk_rows]
        first += chunk.sum(0).double()
        second += (chunk * chunk).sum(0).double()
    n = y.shape[0]
    return (first / n).to(y.dtype), (second / n).to(y.dtype)


def _club_terms_sum(
    mu: torch.Tensor,
    weight: torch.Tensor,
    y: torch.Tensor,
    y_mean: torch.Tensor,
    y_sq_mean: torch.Tensor,
) -> float:
    """sum_ik [mu (y - E y) + (E y^2 - y^2) / 2] * weight, with weight = exp(-logvar).

    Fused into three passes over the chunk and one dot product, so no n x d temporaries
    beyond the chunk's own.
    """
    term = torch.addcmul(y_sq_mean * 0.5, y, y, value=-0.5)
    term.addcmul_(mu, y - y_mean)
    return float(torch.dot(term.view(-1), weight.reshape(-1)))


def club_estimate_from_heads(mu: torch.Tensor, weight: torch.Tensor, y: torch.Tensor) -> float:
    """The CLUB estimate from precomputed mu(x), weight = exp(-logvar(x)) and paired y."""
    y_mean, y_sq_mean = _moments(y)
    return _club_terms_sum(mu, weight, y, y_mean, y_sq_mean) / y.shape[0]


@dataclass(frozen=True)
class EpochReport:
    """One training epoch, for progress display: held-out log-likelihood (higher is better)."""

    epoch: int
    train_loglik: float
    holdout_loglik: float
    best_epoch: int


def train_club(
    x: ArrayLike,
    y: ArrayLike,
    *,
    hidden: int = 500,
    epochs: int = 200,
    batch_size: int = 256,
    lr: float = 1e-3,
    holdout_fraction: float = 0.2,
    patience: int = 10,
    seed: int = 0,
    on_epoch: Callable[[EpochReport], None] | None = None,
    groups: ArrayLike | None = None,
) -> CLUB:
    """Fit a CLUB network on paired rows by maximising the Gaussian log-likelihood.

    A seeded random ``holdout_fraction`` of the pairs (of the groups, when ``groups`` gives
    one id per pair: all pairs of a group on the same side) is held out; training stops after
    ``patience`` epochs without a better held-out log-likelihood, and the best model is returned.
    The same inputs and seed give the same weights; the global torch RNG is left untouched.
    """
    X = check_embeddings(x, "x")
    Y = check_embeddings(y, "y")
    check_same_rows(X, Y, "x", "y")
    if not 0.0 < holdout_fraction < 1.0:
        raise InvalidInputError("holdout_fraction must lie in (0, 1)", field="holdout_fraction")
    if epochs < 1 or batch_size < 1 or patience < 1 or not lr > 0:
        raise InvalidInputError(
            "epochs, batch_size, patience and lr must be positive", field="epochs"
        )
    n = X.shape[0]
    held = _holdout_mask(n, holdout_fraction, seed, groups)
    n_holdout = int(held.sum())
    if n - n_holdout < 2 or n_holdout < 1:
        raise InvalidInputError(
            f"need at least 3 pairs (and 2 groups) to train CLUB, got {n}", field="x"
        )

    xt, yt = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(Y, dtype=torch.float32)
    hold = torch.as_tensor(np.flatnonzero(held))
    train = torch.as_tensor(np.flatnonzero(~held))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLUB(X.shape[1], Y.shape[1], hidden)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        best_state, best_loglik, best_epoch = copy.deepcopy(model.state_dict()), -math.inf, 0
        for epoch in range(1, epochs + 1):
            model.train()
            perm = train[torch.randperm(train.numel())]
            total, batches = 0.0, 0
            for s in range(0, perm.numel(), batch_size):
                idx = perm[s : s + batch_size]
                loss = -model.log_likelihood(xt[idx], yt[idx])
                optimizer.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                total, batches = total - float(loss.detach()), batches + 1
            model.eval()
            with torch.no_grad():
                holdout = float(model.log_likelihood(xt[hold], yt[hold]))
            if holdout > best_loglik:
                best_state, best_loglik, best_epoch = (
                    copy.deepcopy(model.state_dict()),
                    holdout,
                    epoch,
                )
            if on_epoch is not None:
                on_epoch(EpochReport(epoch, total / batches, holdout, best_epoch))
            if epoch - best_epoch >= patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    model.metadata = {
        "trained_pairs": n - n_holdout,
        "holdout_pairs": n_holdout,
        "best_epoch": best_epoch,
        "holdout_loglik": best_loglik,
        "seed": seed,
    }
    return model


def _holdout_mask(n: int, fraction: float, seed: int, groups: ArrayLike | None) -> np.ndarray:
    """Which pairs early stopping holds out: a seeded fraction of pairs, or of groups."""
    rng = np.random.default_rng(seed)
    if groups is None:
        by_pair = np.zeros(n, dtype=bool)
        by_pair[rng.permutation(n)[: max(1, round(n * fraction))]] = True
        return by_pair
    labels = np.asarray(groups)
    if labels.shape != (n,):
        raise InvalidInputError(
            f"groups must give one id per pair ({n}), got shape {labels.shape}", field="groups"
        )
    unique, inverse = np.unique(labels, return_inverse=True)
    chosen = rng.permutation(len(unique))[: max(1, round(len(unique) * fraction))]
    held_groups = np.zeros(len(unique), dtype=bool)
    held_groups[chosen] = True
    mask: np.ndarray = held_groups[inverse]
    return mask
