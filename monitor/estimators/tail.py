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

Measured error (benchmarks/bench_tail.py: the bound of windows of 100 records by the product's
window statistics; truth a direct calibration of many windows; 20 tail models of 500 trials;
median [10%, 90%] of log10(p_model / p_true), then of z_model - z_true, z = Phi^-1(1 - p)):

* synthetic ID data (d = 32, every term), truth 400,000 windows (21 min on 2 busy cores):
  p = 1e-3: +0.60 [+0.42, +0.69], z -0.44 [-0.51, -0.30]; p = 1e-4: +1.04 [+0.79, +1.14],
  z -0.65 [-0.73, -0.49]; p = 1e-5 (4 truth values past it, so the truth itself is only known
  to about +-0.36): +1.26 [+0.94, +1.38], z -0.70 [-0.77, -0.51]. The empirical p-value:
  +0.45, +1.30, +2.30 (z -0.32, -0.84, -1.39).
* MMBench MiniLM prompts (d = 384, text term only; 4,377 records split as calibrate splits
  them, so the truth is the pseudo-window null of a 2,189-record pool), truth 30,000 windows
  (23 min): p = 1e-3: +0.51 [+0.37, +0.68], z -0.36 [-0.50, -0.26]; p = 1e-4 (3 truth values
  past it: +-0.41): +0.75 [+0.56, +1.00], z -0.46 [-0.63, -0.34]. Empirical: +0.30, +1.30.

Every model fitted a tail. The error is one-sided: the model overstates p at every level
measured (conservative; as a tail lighter than the exponential that the shape floor of 0
allows would make it), so a window's score reads 0.4 to 0.7 standard deviations low there. At
1e-3 the empirical p-value is closer; from 1e-4 on it is stuck at 1 / (B + 1) and loses 0.8
standard deviations at 1e-4, 1.4 at 1e-5, more beyond.
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
