"""Null p-values past the trials' resolution: a generalized Pareto model of the upper tail.

With B calibration trials the smallest empirical p-value is 1 / (B + 1) (0.002 at B = 500), so
every window past the largest trial looks the same, and a score built from the p-value is
capped. Peaks over threshold (Pickands-Balkema-de Haan): the exceedances of a statistic over a
high threshold u are close to a generalized Pareto distribution (GPD). :class:`TailNull` keeps
the empirical p-value in the body and, past u, uses

    p(x) = N_u / B * GPD.sf(x - u)

with the GPD fitted by maximum likelihood (location 0; :func:`gpd_mle`) to the N_u
largest trials' excesses, its shape kept at 0 or above (a bounded tail fitted to a few hundred
trials ends too soon: p = 0 just past them). N_u starts at a quarter of the trials (at most
250) and shrinks while a Kolmogorov-Smirnov test rejects the fit (the approach of Knijnenburg
et al., Bioinformatics 2009); when no size passes, or there are too few trials, the empirical
p-value stands (``fit`` is then None).

Its error is measured by benchmarks/bench_tail.py (figures in its docstring): the model
overstates p at every level measured (conservative), so a window's score reads somewhat low
far in the tail; the empirical p-value, stuck at 1 / (B + 1), loses more from p = 1e-4 on.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import optimize, stats

# Fewest trials for which a tail is modelled, and fewest exceedances a fit is made from.
MIN_TRIALS = 100
MIN_EXCEEDANCES = 25
MAX_EXCEEDANCES = 250
# Significance at which the KS test rejects a tail fit (then fewer exceedances are tried).
FIT_LEVEL = 0.05
# Smallest p-value reported: z of it is about 8.2, past any score the detector reads.
P_FLOOR = 1e-16

Values = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class TailFit:
    """A GPD over ``threshold``: shape xi, scale sigma, fitted to ``exceedances`` trials."""

    threshold: float
    shape: float
    scale: float
    exceedances: int
    ks_p_value: float

    def sf(self, excess: Values) -> Values:
        out: Values = stats.genpareto.sf(excess, self.shape, loc=0.0, scale=self.scale)
        return out

    def isf(self, tail_p: Values) -> Values:
        out: Values = stats.genpareto.isf(tail_p, self.shape, loc=0.0, scale=self.scale)
        return out


class TailNull:
    """A null distribution (B trial values) with p-values past 1 / (B + 1): module docstring."""

    def __init__(self, values: npt.ArrayLike) -> None:
        self.values: Values = np.sort(np.asarray(values, dtype=np.float64))
        if self.values.size == 0 or not np.isfinite(self.values).all():
            raise ValueError("a tail null needs at least one finite value")
        self.fit: TailFit | None = fit_tail(self.values)

    @property
    def trials(self) -> int:
        return int(self.values.size)

    @property
    def tail_mass(self) -> float:
        """The share of trials the GPD describes (0 without a fit)."""
        return 0.0 if self.fit is None else self.fit.exceedances / self.trials

    def p_value(self, observed: float) -> float:
        return float(self.p_values(np.asarray([observed], dtype=np.float64))[0])

    def p_values(self, observed: npt.ArrayLike) -> Values:
        """Empirical (1 + #{null >= x}) / (1 + B) in the body, the GPD past its threshold."""
        x = np.asarray(observed, dtype=np.float64)
        at_least = self.trials - np.searchsorted(self.values, x, side="left")
        p: Values = ((1.0 + at_least) / (1.0 + self.trials)).astype(np.float64)
        if self.fit is not None:
            beyond = x > self.fit.threshold
            if beyond.any():
                tail = self.tail_mass * self.fit.sf(x[beyond] - self.fit.threshold)
                p[beyond] = np.maximum(tail, P_FLOOR)
        return p

    def isf(self, p: npt.ArrayLike) -> Values:
        """The value whose p-value is ``p`` (the inverse of :meth:`p_values`, continuous: the
        body interpolates between trials). Used to draw ID window values beyond the trials."""
        q = np.clip(np.asarray(p, dtype=np.float64), P_FLOOR, 1.0)
        # Body: the value with a share q of trials at or above it, interpolated.
        ranks = np.arange(self.trials, 0, -1) / (self.trials + 1.0)  # p of each sorted value
        out: Values = np.interp(q, ranks[::-1], self.values[::-1])
        if self.fit is not None:
            deep = q < self.tail_mass
            if deep.any():
                out[deep] = self.fit.threshold + self.fit.isf(q[deep] / self.tail_mass)
        return out


def fit_tail(sorted_values: Values) -> TailFit | None:
    """The GPD tail of ascending ``sorted_values`` (module docstring); None when none fits."""
    trials = len(sorted_values)
    if trials < MIN_TRIALS:
        return None
    size = min(MAX_EXCEEDANCES, trials // 4)
    while size >= MIN_EXCEEDANCES:
        # The threshold sits between the (size+1)-th largest value and the size largest above it.
        threshold = float(sorted_values[trials - size - 1])
        excess = sorted_values[trials - size :] - threshold
        if np.ptp(excess) > 0:
            shape, scale = gpd_mle(excess)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                ks = stats.kstest(excess, "genpareto", args=(shape, 0.0, scale)).pvalue
            if math.isfinite(shape) and scale > 0 and ks >= FIT_LEVEL:
                return TailFit(threshold, float(shape), float(scale), size, float(ks))
        size = int(size * 0.8)
    return None


def gpd_mle(excess: Values) -> tuple[float, float]:
    """(shape, scale) maximising the GPD likelihood of ``excess`` with the shape at 0 or above.

    Grimshaw's reduction: with theta = shape / scale, the best shape for a theta is the mean of
    log(1 + theta * y), which leaves a one-dimensional profile likelihood (a bounded scalar
    search: 0.3 ms where scipy's generic Nelder-Mead fit took 12). A shape below 0 is not
    allowed: a bounded tail fitted to a few hundred trials puts its end point just past them,
    p = 0 beyond (measured on normal nulls: p of 1e-4 read as 1e-10); at the boundary the
    exponential tail (shape 0, scale the mean excess) errs on the large, conservative side.
    """
    n, mean = len(excess), float(np.mean(excess))

    def minus_profile(theta: float) -> float:
        shape = float(np.mean(np.log1p(theta * excess)))
        return n * (math.log(shape / theta) + shape + 1.0)

    exponential = n * (math.log(mean) + 1.0)
    found = optimize.minimize_scalar(
        minus_profile, bounds=(1e-6 / mean, 50.0 / mean), method="bounded"
    )
    if not found.success or found.fun >= exponential:
        return 0.0, mean
    theta = float(found.x)
    shape = float(np.mean(np.log1p(theta * excess)))
    return shape, shape / theta
