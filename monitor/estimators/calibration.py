"""Null calibration (ID-vs-ID splits), p-values, thresholds and bootstrap intervals.

A raw JSD or bound value means nothing on its own: it is biased upwards at small n. It is
compared with what pure ID traffic of the same window size produces. To mimic deployment,
the ID data is split once into a *comparison* set and a disjoint *pool*; pseudo-windows drawn
from the pool are compared with the comparison set, and live windows are later compared with that
same set. (A pseudo-window drawn from inside the comparison set looks closer than any held-out
traffic would, and every real window would then alarm.)

p-value: (1 + #{null >= observed}) / (1 + B). A window is significant when p < alpha, which is
the same as ``observed > threshold(alpha)``. Everything random here takes a seed.

Small p-values come from enough trials, not from a fitted tail: the smallest p-value of B
trials is 1/(B + 1), so a test at level a needs B + 1 > 1/a, and :func:`minimum_trials` derives
B from the false-alarm rate and the number of tests a warning corrects for. A tail fitted above
an empirical quantile (a generalized Pareto, say) would resolve smaller p-values from fewer
trials, but its error sits exactly where the decision is made and depends on a shape assumption
that JSD nulls (bounded, skewed, different per term and n) give no reason to trust; the
permutation p-value is valid at any B, so calibration pays with trials instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from monitor.errors import CalibrationError, InvalidInputError
from monitor.estimators.arrays import ArrayLike, check_embeddings, check_same_rows
from monitor.estimators.club import CLUB, club_estimate_from_heads
from monitor.estimators.rjsd import DEFAULT_JSD_MODE, JSDMode, ReferenceJSD

IndexArray = npt.NDArray[np.integer[Any]]

# Largest pseudo-window as a fraction of the pool it is drawn from. Pseudo-windows of one pool
# share its sampling deviation from the population, which fresh windows do not, so a null from
# a small pool is too narrow. Measured (balanced text JSD, d = 32, window 50, alpha = 0.05,
# 24 calibrations x 200 fresh ID windows each): window/pool 0.05 -> 0.050 +- 0.004,
# 0.1 -> 0.064 +- 0.007, 0.2 -> 0.079 +- 0.009, 0.3 -> 0.086 +- 0.013.
MAX_POOL_FRACTION = 0.05


@dataclass(frozen=True)
class NullDistribution:
    """B values of a statistic on ID-vs-ID pseudo-windows of one size, sorted ascending."""

    window_size: int
    values: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        values = np.sort(np.asarray(self.values, dtype=np.float64))
        if values.size == 0 or not np.isfinite(values).all():
            raise CalibrationError("a null distribution needs at least one finite value")
        object.__setattr__(self, "values", values)

    @property
    def trials(self) -> int:
        return int(self.values.size)

    def p_value(self, observed: float) -> float:
        """(1 + #{null >= observed}) / (1 + B): never 0, and valid at any B."""
        if not math.isfinite(observed):
            raise InvalidInputError(
                f"observed statistic is not finite: {observed}", field="observed"
            )
        return float(self.p_values(np.asarray([observed], dtype=np.float64))[0])

    def p_values(self, observed: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """:meth:`p_value` of many observed values at once."""
        at_least = self.trials - np.searchsorted(self.values, observed, side="left")
        out: npt.NDArray[np.float64] = ((1.0 + at_least) / (1.0 + self.trials)).astype(np.float64)
        return out

    def threshold(self, alpha: float) -> float:
        """The value t such that ``observed > t`` exactly when ``p_value(observed) < alpha``."""
        _check_alpha(alpha)
        # Largest count k of null values >= observed with (1 + k) / (1 + B) < alpha.
        k_max = math.ceil(alpha * (1 + self.trials)) - 2
        if k_max < 0:
            raise CalibrationError(
                f"{self.trials} null trials cannot support a false-alarm rate of {alpha}: "
                f"the smallest p-value is 1/{self.trials + 1}; use at least "
                f"{math.ceil(1 / alpha)} trials"
            )
        k_max = min(k_max, self.trials - 1)
        return float(self.values[self.trials - 1 - k_max])

    def is_significant(self, observed: float, alpha: float) -> bool:
        _check_alpha(alpha)
        return self.p_value(observed) < alpha

    def to_dict(self) -> dict[str, Any]:
        return {"window_size": self.window_size, "values": self.values.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NullDistribution:
        return cls(
            window_size=int(data["window_size"]),
            values=np.asarray(data["values"], dtype=np.float64),
        )


def minimum_trials(
    false_alarm_rate: float, tests: int, hysteresis: tuple[int, int] = (1, 1)
) -> int:
    """Fewest null trials that let every per-window test of the alerting rule fire.

    A warning's joint test (the null of the smallest p-value over ``tests`` statistics) reads
    per-term levels between ``false_alarm_rate / tests`` (terms that never move together: the
    Bonferroni level, which it falls back to) and ``false_alarm_rate``, so B must satisfy
    (B + 1) * false_alarm_rate / tests > 1. The bound is tested at
    ``false_alarm_rate`` per window; the k-of-m hysteresis (``hysteresis = (k, m)``) then makes
    a critical rarer still (about C(m, k) * rate^k for independent windows), so it never needs a
    smaller per-window level, and the warning's level is the one that sets B.
    """
    _check_alpha(false_alarm_rate)
    if tests < 1:
        raise InvalidInputError(f"tests must be positive, got {tests}", field="tests")
    k, m = hysteresis
    if not 1 <= k <= m:
        raise InvalidInputError(f"hysteresis must be k/m with 1 <= k <= m, got {k}/{m}")
    level = min(false_alarm_rate / tests, false_alarm_rate)
    # Smallest B with (B + 1) * level > 1; the epsilon keeps 1 / 0.002 = 500 from rounding up.
    return max(1, math.ceil(1.0 / level - 1.0 + 1e-9))


def binomial_count_threshold(n: int, rate: float, level: float) -> int | None:
    """Smallest count k with P(Binomial(n, rate) >= k) < level; None when no k <= n reaches it.

    The OOD test of a window: each fresh ID sample is flagged with probability ``rate`` (1 - TPR
    of the store's leave-one-out threshold), so a window of any size n is significant when its
    flagged count reaches k.
    """
    _check_alpha(level)
    if n < 1:
        return None
    if not 0.0 < rate < 1.0:
        raise InvalidInputError(f"flag rate must lie in (0, 1), got {rate}", field="rate")
    counts = np.arange(n + 1)
    log_pmf = (
        np.array([math.lgamma(n + 1) - math.lgamma(c + 1) - math.lgamma(n - c + 1) for c in counts])
        + counts * math.log(rate)
        + (n - counts) * math.log1p(-rate)
    )
    # Survival P(X >= k) for every k, summed from the top in a numerically stable way.
    top = np.logaddexp.accumulate(log_pmf[::-1])[::-1]
    reaching = np.flatnonzero(top < math.log(level))
    return int(reaching[0]) if reaching.size else None


def split_reference(
    n: int, comparison_size: int, *, seed: int = 0
) -> tuple[IndexArray, IndexArray]:
    """Disjoint random (comparison, pool) index sets over n ID records."""
    if not 0 < comparison_size < n:
        raise InvalidInputError(
            f"comparison_size must lie in [1, {n - 1}] for {n} ID records, got {comparison_size}",
            field="comparison_size",
        )
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:comparison_size]), np.sort(order[comparison_size:])


def null_distributions(
    statistic: Callable[[IndexArray], Mapping[str, float | None]],
    *,
    pool_size: int,
    window_size: int,
    trials: int = 200,
    seed: int = 0,
) -> dict[str, NullDistribution]:
    """Null distributions of several statistics computed on the same pseudo-windows.

    ``statistic`` gets the row indices (into the pool) of one pseudo-window of ``window_size``
    distinct records and returns named values; None values (a term not computable on that
    window) are left out of that name's null. Computing all terms from the same draws is what
    lets the bound's null share its pseudo-windows with the per-term nulls.
    """
    if window_size < 1 or window_size > pool_size:
        raise InvalidInputError(
            f"window_size must lie in [1, {pool_size}] (the pool size), got {window_size}",
            field="window_size",
        )
    if trials < 1:
        raise InvalidInputError(f"trials must be positive, got {trials}", field="trials")
    rng = np.random.default_rng(seed)
    collected: dict[str, list[float]] = {}
    for _ in range(trials):
        window = rng.choice(pool_size, size=window_size, replace=False)
        for name, value in statistic(window).items():
            if value is not None:
                collected.setdefault(name, []).append(float(value))
    return {
        name: NullDistribution(window_size, np.asarray(values))
        for name, values in collected.items()
    }


def null_distribution(
    statistic: Callable[[IndexArray], float],
    *,
    pool_size: int,
    window_size: int,
    trials: int = 200,
    seed: int = 0,
) -> NullDistribution:
    """Null distribution of one statistic; see :func:`null_distributions`."""
    nulls = null_distributions(
        lambda idx: {"value": statistic(idx)},
        pool_size=pool_size,
        window_size=window_size,
        trials=trials,
        seed=seed,
    )
    return nulls["value"]


def jsd_null(
    comparison: ArrayLike,
    pool: ArrayLike,
    window_size: int,
    *,
    trials: int = 200,
    seed: int = 0,
    mode: JSDMode = DEFAULT_JSD_MODE,
    normalize: bool = False,
) -> NullDistribution:
    """Null of the representation JSD between the comparison set and pool pseudo-windows.

    Rows must be L2-normalised, or pass ``normalize=True`` to rescale both sets. Keep
    ``window_size`` at most :data:`MAX_POOL_FRACTION` of the pool (see there).
    """
    reference = ReferenceJSD(comparison, mode=mode, normalize=normalize)
    rows = check_embeddings(
        pool, "pool", dim=reference.dim, unit_norm=not normalize, normalize=normalize
    )
    return null_distribution(
        lambda idx: reference(rows[idx], name="pool window"),
        pool_size=rows.shape[0],
        window_size=window_size,
        trials=trials,
        seed=seed,
    )


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    confidence: float
    resamples: int


def bootstrap_interval(
    statistic: Callable[[IndexArray], float],
    n: int,
    *,
    resamples: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap of ``statistic`` over n rows resampled with replacement."""
    _check_bootstrap(n, resamples, confidence)
    rng = np.random.default_rng(seed)
    values = np.array([statistic(_resample(rng, n)) for _ in range(resamples)])
    return _interval(statistic(np.arange(n)), values, confidence)


def emi_bootstrap(
    club: CLUB,
    x: ArrayLike,
    y_hat: ArrayLike,
    y: ArrayLike,
    *,
    resamples: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """EMI with a bootstrap interval; the CLUB network runs once, resamples reuse its outputs.

    The resamples are those of :func:`bootstrap_interval` with the same seed; every resample's
    EMI is computed at once from per-row terms (:class:`_EMITerms`)."""
    terms = _EMITerms(club, x, y_hat, y)
    _check_bootstrap(terms.n, resamples, confidence)
    rng = np.random.default_rng(seed)
    values = [terms.emi_of_counts(c) for (c,) in _count_batches(rng, (terms.n,), resamples)]
    return _interval(terms.point(), np.concatenate(values), confidence)


def emid_bootstrap(
    club: CLUB,
    id_x: ArrayLike,
    id_y_hat: ArrayLike,
    id_y: ArrayLike,
    live_x: ArrayLike,
    live_y_hat: ArrayLike,
    live_y: ArrayLike,
    *,
    resamples: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """EMID = EMI(ID) - EMI(live) with an interval from resampling both windows independently.

    Each resample draws the ID rows, then the live rows, from one seeded generator; every
    resample's EMI is computed at once from per-row terms (:class:`_EMITerms`)."""
    id_terms = _EMITerms(club, id_x, id_y_hat, id_y)
    live_terms = _EMITerms(club, live_x, live_y_hat, live_y)
    n_id, n_live = id_terms.n, live_terms.n
    _check_bootstrap(min(n_id, n_live), resamples, confidence)
    rng = np.random.default_rng(seed)
    values = [
        id_terms.emi_of_counts(id_counts) - live_terms.emi_of_counts(live_counts)
        for id_counts, live_counts in _count_batches(rng, (n_id, n_live), resamples)
    ]
    return _interval(id_terms.point() - live_terms.point(), np.concatenate(values), confidence)


# Rows per block of the per-row terms in _EMITerms (float64: 4 blocks of rows x d, 25 MB at
# d = 768), and the most resamples x rows entries of one counts batch (16 MB of float64).
_TERM_CHUNK_ROWS = 1024
_COUNTS_BATCH_ENTRIES = 2_000_000


class _EMITerms:
    """EMI of any resample (with replacement) of paired rows, from per-row terms.

    The network runs once, here. A resample is a vector c of counts per row (sum n). With
    w = exp(-logvar(x)), the CLUB estimate of I(x; y) on the resample is

        (1/n) sum_i c_i sum_k w_ik [mu_ik (y_ik - m_k) + (s_k - y_ik^2) / 2],

    m_k and s_k the resample's means of y_k and y_k^2 - the estimate on the resampled rows
    themselves. EMI = estimate(y_hat) - estimate(y) is then, for every resample at once (rows of
    the counts matrix C),

        (1/n) C a - (1/n^2) sum_k (C P)_k (C dY)_k + (1/2n^2) sum_k (C W)_k (C dQ)_k,

    with per-row a = sum_k w (mu dY - dQ / 2), P = w mu, W = w, dY = y_hat - y and
    dQ = y_hat^2 - y^2: four (resamples x n) @ (n x d) products instead of a gather and two
    estimates per resample. Computed in float64 from the network's float32 outputs, so each
    value equals the straightforward float32 computation up to its rounding.
    """

    def __init__(self, club: CLUB, x: ArrayLike, y_hat: ArrayLike, y: ArrayLike) -> None:
        x_arr = check_embeddings(x, "x", dim=club.x_dim)
        y_hat_arr = check_embeddings(y_hat, "y_hat", dim=club.y_dim)
        y_arr = check_embeddings(y, "y", dim=club.y_dim)
        check_same_rows(x_arr, y_hat_arr, "x", "y_hat")
        check_same_rows(x_arr, y_arr, "x", "y")
        self.n = int(x_arr.shape[0])
        self._y_hat, self._y = _as_tensor(y_hat_arr, club), _as_tensor(y_arr, club)
        self._mu, logvar = club.mu_logvar(x_arr)
        self._weight = (-logvar).exp()

    def point(self) -> float:
        """EMI on the rows as given: the same computation as :func:`monitor.estimators.emi.emi`
        (the point estimate agrees with it exactly)."""
        return club_estimate_from_heads(self._mu, self._weight, self._y_hat) - (
            club_estimate_from_heads(self._mu, self._weight, self._y)
        )

    def emi_of_counts(self, counts: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """EMI of each resample, given as a (resamples, n) matrix of row counts summing to n."""
        C = torch.from_numpy(np.ascontiguousarray(counts)).to(self._mu.device)
        dim = self._mu.shape[1]
        linear = torch.zeros(C.shape[0], dtype=torch.float64, device=C.device)
        cp, cw, cdy, cdq = (
            torch.zeros((C.shape[0], dim), dtype=torch.float64, device=C.device) for _ in range(4)
        )
        with torch.inference_mode():
            for s in range(0, self.n, _TERM_CHUNK_ROWS):
                block = slice(s, s + _TERM_CHUNK_ROWS)
                c = C[:, block]
                w = self._weight[block].double()
                mu = self._mu[block].double()
                y_hat, y = self._y_hat[block].double(), self._y[block].double()
                dy = y_hat - y
                dq = (y_hat + y).mul_(dy)  # y_hat^2 - y^2
                p = mu * w  # not in place: .double() of float64 heads is the heads themselves
                linear.addmv_(c, (p * dy).sub_(dq * w, alpha=0.5).sum(1))
                cp.addmm_(c, p)
                cw.addmm_(c, w)
                cdy.addmm_(c, dy)
                cdq.addmm_(c, dq)
        n = float(self.n)
        values = linear / n - (cp * cdy).sum(1) / n**2 + (cw * cdq).sum(1) / (2 * n**2)
        out: npt.NDArray[np.float64] = values.cpu().numpy()
        return out


def _count_batches(
    rng: np.random.Generator, sizes: tuple[int, ...], resamples: int
) -> Iterator[list[npt.NDArray[np.float64]]]:
    """How often each row is drawn: per batch of resamples, one (batch, n) matrix per side.

    Each resample draws every side in turn (n indices with replacement each, as
    :func:`_resample`), so the draws are those of a loop over resamples. Batches hold at most
    :data:`_COUNTS_BATCH_ENTRIES` counts per side: memory stays bounded whatever n.
    """
    batch = max(1, _COUNTS_BATCH_ENTRIES // max(sizes))
    for start in range(0, resamples, batch):
        rows = min(batch, resamples - start)
        counts = [np.empty((rows, n), dtype=np.float64) for n in sizes]
        for r in range(rows):
            for side, n in enumerate(sizes):
                counts[side][r] = np.bincount(_resample(rng, n), minlength=n)
        yield counts


def _resample(rng: np.random.Generator, n: int) -> IndexArray:
    """n row indices drawn with replacement."""
    return np.asarray(rng.integers(0, n, size=n), dtype=np.intp)


def _as_tensor(arr: npt.NDArray[Any], club: CLUB) -> torch.Tensor:
    param = next(club.parameters())
    return torch.as_tensor(arr).to(device=param.device, dtype=param.dtype)


def _interval(point: float, values: npt.NDArray[np.float64], confidence: float) -> Interval:
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return Interval(
        estimate=float(point),
        low=float(low),
        high=float(high),
        confidence=confidence,
        resamples=int(values.size),
    )


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise InvalidInputError(f"alpha must lie in (0, 1), got {alpha}", field="alpha")


def _check_bootstrap(n: int, resamples: int, confidence: float) -> None:
    if n < 2:
        raise InvalidInputError(f"bootstrap needs at least 2 rows, got {n}", field="n")
    if resamples < 1:
        raise InvalidInputError(f"resamples must be positive, got {resamples}", field="resamples")
    if not 0.0 < confidence < 1.0:
        raise InvalidInputError(
            f"confidence must lie in (0, 1), got {confidence}", field="confidence"
        )
