"""Null calibration, p-values, thresholds and bootstrap intervals."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

from monitor.errors import CalibrationError, EmbeddingError, InvalidInputError
from monitor.estimators import calibration
from monitor.estimators.calibration import (
    NullDistribution,
    binomial_count_threshold,
    bootstrap_interval,
    emi_bootstrap,
    emid_bootstrap,
    jsd_null,
    minimum_trials,
    null_distributions,
    split_reference,
)
from monitor.estimators.club import CLUB, club_estimate_from_heads
from monitor.estimators.emi import emi, emid
from monitor.estimators.rjsd import ReferenceJSD
from tests.conftest import unit_rows

D = 24
# An anisotropic ID distribution: a few strong directions, like real embeddings.
SCALE = np.geomspace(3.0, 0.3, D)
ID_MEAN = np.r_[1.5, np.zeros(D - 1)]


def id_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return unit_rows(rng, n, D, scale=SCALE, mean=ID_MEAN)


def test_p_value_and_threshold_agree_on_every_observation() -> None:
    rng = np.random.default_rng(0)
    null = NullDistribution(50, rng.standard_normal(199))
    for alpha in (0.01, 0.05, 0.1, 0.5):
        t = null.threshold(alpha)
        for observed in np.r_[null.values, null.values + 1e-9, rng.standard_normal(50)]:
            assert (observed > t) == (null.p_value(observed) < alpha)


def test_p_value_formula() -> None:
    null = NullDistribution(10, np.array([1.0, 2.0, 3.0, 4.0]))
    assert null.p_value(10.0) == pytest.approx(1 / 5)
    assert null.p_value(3.0) == pytest.approx(3 / 5)  # counts null values >= observed
    assert null.p_value(0.0) == pytest.approx(1.0)
    assert null.trials == 4


def test_threshold_needs_enough_trials() -> None:
    null = NullDistribution(10, np.arange(50.0))
    with pytest.raises(CalibrationError, match=r"cannot support a false-alarm rate of 0\.01"):
        null.threshold(0.01)
    with pytest.raises(InvalidInputError, match="alpha"):
        null.threshold(1.5)


def test_null_round_trips_through_dict() -> None:
    null = NullDistribution(30, np.array([0.3, 0.1, 0.2]))
    again = NullDistribution.from_dict(null.to_dict())
    assert again.window_size == 30 and np.array_equal(again.values, [0.1, 0.2, 0.3])


def test_split_reference_is_disjoint_seeded_and_complete() -> None:
    comparison, pool = split_reference(100, 30, seed=4)
    assert len(comparison) == 30 and len(pool) == 70
    assert not set(comparison) & set(pool)
    assert np.array_equal(np.sort(np.r_[comparison, pool]), np.arange(100))
    assert np.array_equal(split_reference(100, 30, seed=4)[0], comparison)
    with pytest.raises(InvalidInputError, match="comparison_size"):
        split_reference(10, 10)


def id_false_alarm_rate(
    seed: int, *, window_size: int = 60, alpha: float = 0.05, windows: int = 200
) -> float:
    """Calibrate on one ID sample, then count alarms on `windows` fresh ID windows."""
    rng = np.random.default_rng(seed)
    ids = id_rows(rng, 5000)
    comparison_idx, pool_idx = split_reference(len(ids), 600, seed=seed)
    null = jsd_null(ids[comparison_idx], ids[pool_idx], window_size, trials=2000, seed=seed)
    reference = ReferenceJSD(ids[comparison_idx])
    alarms = [null.p_value(reference(id_rows(rng, window_size))) < alpha for _ in range(windows)]
    return float(np.mean(alarms))


@pytest.mark.slow
def test_false_alarm_rate_on_id_windows_is_close_to_alpha() -> None:
    """200 fresh ID windows against one calibration: the false-alarm rate stays near 0.05.

    One calibration's rate over 200 windows spreads by about +-0.025 (binomial noise plus the
    null's own sampling); the mean over 10 calibrations (2000 windows) is checked more tightly.
    """
    rates = [id_false_alarm_rate(seed) for seed in range(1, 11)]
    assert 0.02 <= rates[0] <= 0.09, rates
    assert 0.035 <= float(np.mean(rates)) <= 0.065, rates


def test_clearly_shifted_window_gets_a_small_p_value() -> None:
    rng = np.random.default_rng(9)
    ids = id_rows(rng, 2000)
    comparison_idx, pool_idx = split_reference(len(ids), 600, seed=0)
    null = jsd_null(ids[comparison_idx], ids[pool_idx], 60, trials=300, seed=0)
    shifted = unit_rows(rng, 60, D, scale=SCALE[::-1], mean=ID_MEAN)
    assert null.p_value(ReferenceJSD(ids[comparison_idx])(shifted)) < 0.01


def test_pseudo_windows_from_inside_the_comparison_set_would_alarm_on_real_traffic() -> None:
    """Why the pool must be disjoint: an in-sample null sits below held-out ID traffic."""
    rng = np.random.default_rng(11)
    ids = id_rows(rng, 1200)
    comparison_idx, pool_idx = split_reference(len(ids), 150, seed=0)
    comparison = ids[comparison_idx]
    reference = ReferenceJSD(comparison)
    held_out = jsd_null(comparison, ids[pool_idx], 40, trials=100, seed=0)
    in_sample = jsd_null(comparison, comparison, 40, trials=100, seed=0)
    assert np.median(in_sample.values) < np.median(held_out.values)
    fresh = [reference(id_rows(rng, 40)) for _ in range(40)]
    assert np.mean([in_sample.p_value(v) < 0.05 for v in fresh]) > 0.3


def test_null_distributions_share_draws_and_skip_missing_values() -> None:
    seen: list[np.ndarray] = []

    def statistic(idx: np.ndarray) -> dict[str, float | None]:
        seen.append(idx)
        return {"mean": float(idx.mean()), "visual": None if idx[0] % 2 else 1.0}

    nulls = null_distributions(statistic, pool_size=50, window_size=10, trials=40, seed=0)
    assert nulls["mean"].trials == 40
    assert 0 < nulls["visual"].trials < 40
    assert all(len(set(idx)) == 10 for idx in seen)  # windows hold distinct records
    with pytest.raises(InvalidInputError, match="window_size"):
        null_distributions(statistic, pool_size=5, window_size=10)


def test_bootstrap_interval_covers_the_mean() -> None:
    data = np.random.default_rng(0).normal(2.0, 1.0, size=400)
    interval = bootstrap_interval(
        lambda idx: float(data[idx].mean()), len(data), resamples=2000, seed=1
    )
    assert interval.low < interval.estimate < interval.high
    assert interval.low < 2.0 < interval.high
    # The bootstrap distribution of a mean has sd = std(data) / sqrt(n): a 95% interval is
    # 2 * 1.96 of it wide (a 90% one would be 16% narrower).
    expected = 2 * 1.96 * data.std() / math.sqrt(len(data))
    assert interval.high - interval.low == pytest.approx(expected, rel=0.06)
    again = bootstrap_interval(
        lambda idx: float(data[idx].mean()), len(data), resamples=2000, seed=1
    )
    assert again == interval


def test_emi_and_emid_bootstrap_are_seeded_and_centred_on_the_estimate() -> None:
    rng = np.random.default_rng(5)
    model = CLUB(8, 8, hidden=16)
    p = [rng.standard_normal((80, 8)) for _ in range(3)]
    q = [rng.standard_normal((60, 8)) for _ in range(3)]
    interval = emi_bootstrap(model, *p, resamples=100, seed=2)
    assert interval.estimate == pytest.approx(emi(model, *p), abs=1e-9)
    assert interval.low <= interval.estimate <= interval.high
    drop = emid_bootstrap(model, *p, *q, resamples=100, seed=2)
    assert drop.estimate == pytest.approx(emid(model, *p, *q), abs=1e-9)
    assert drop.low < drop.high
    assert drop == emid_bootstrap(model, *p, *q, resamples=100, seed=2)
    with pytest.raises(InvalidInputError, match="confidence"):
        emi_bootstrap(model, *p, confidence=1.0)


def _straightforward_emi(model: CLUB, side: list[np.ndarray]) -> Callable[[np.ndarray], float]:
    """EMI of the rows ``idx`` as the bootstrap first computed it: the CLUB estimate from the
    network's heads, gathered and recomputed for every resample."""
    mu, logvar = model.mu_logvar(side[0])
    weight = (-logvar).exp()
    y_hat, y = (torch.as_tensor(a, dtype=torch.float32) for a in side[1:])

    def emi_of(idx: np.ndarray) -> float:
        rows = torch.as_tensor(idx)
        return club_estimate_from_heads(mu[rows], weight[rows], y_hat[rows]) - (
            club_estimate_from_heads(mu[rows], weight[rows], y[rows])
        )

    return emi_of


def _straightforward_emid_interval(
    model: CLUB,
    p: list[np.ndarray],
    q: list[np.ndarray],
    resamples: int,
    seed: int,
) -> tuple[float, float]:
    """The EMID bootstrap as first written: ID rows drawn before live rows per resample."""
    id_emi, live_emi = _straightforward_emi(model, p), _straightforward_emi(model, q)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        id_rows_drawn = rng.integers(0, len(p[0]), size=len(p[0]))
        values.append(id_emi(id_rows_drawn) - live_emi(rng.integers(0, len(q[0]), size=len(q[0]))))
    low, high = np.quantile(values, [0.025, 0.975])
    return float(low), float(high)


def test_emid_bootstrap_equals_recomputing_every_resample(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The counts-matrix bootstrap draws the same resamples as recomputing EMI on each one's
    rows, and gets the same values up to float32 rounding; small blocks and batches make the
    row chunks and resample batches of the vectorised form run more than once."""
    rng = np.random.default_rng(11)
    model = CLUB(6, 5, hidden=12)
    p = [rng.standard_normal((45, 6)), rng.standard_normal((45, 5)), rng.standard_normal((45, 5))]
    q = [rng.standard_normal((30, 6)), rng.standard_normal((30, 5)), rng.standard_normal((30, 5))]
    q[1] += 0.8 * q[0][:, :5]  # answers that depend on the query: an EMI away from 0
    low, high = _straightforward_emid_interval(model, p, q, resamples=60, seed=9)
    live_only = bootstrap_interval(_straightforward_emi(model, q), 30, resamples=60, seed=9)
    monkeypatch.setattr(calibration, "_TERM_CHUNK_ROWS", 7)
    monkeypatch.setattr(calibration, "_COUNTS_BATCH_ENTRIES", 45 * 25)  # batches of 25
    interval = emid_bootstrap(model, *p, *q, resamples=60, seed=9)
    assert interval.estimate == emid(model, *p, *q)  # the point estimate is the same code
    assert interval.resamples == 60
    assert interval.low == pytest.approx(low, abs=1e-6)
    assert interval.high == pytest.approx(high, abs=1e-6)
    assert high - low > 1e-3  # the tolerance is far below the interval's width
    emi_interval = emi_bootstrap(model, *q, resamples=60, seed=9)  # bootstrap_interval's draws
    assert emi_interval.estimate == live_only.estimate
    assert emi_interval.low == pytest.approx(live_only.low, abs=1e-6)
    assert emi_interval.high == pytest.approx(live_only.high, abs=1e-6)


def test_emi_of_counts_is_the_estimate_on_the_resampled_rows_in_float64() -> None:
    """Each resample's value against the CLUB definition evaluated directly, in float64, on the
    gathered rows: mean_i sum_k w_ik [-(mu_ik - y_ik)^2 + mean_j (y_jk - mu_ik)^2] / 2."""
    rng = np.random.default_rng(12)
    model = CLUB(4, 3, hidden=8)
    x, y_hat, y = (
        rng.standard_normal((20, 4)),
        rng.standard_normal((20, 3)),
        rng.standard_normal((20, 3)),
    )
    mu_t, logvar_t = model.mu_logvar(x)
    # The weight as the estimator takes it: exp(-logvar) of the network's float32 output.
    mu, w = mu_t.double().numpy(), (-logvar_t).exp().double().numpy()
    y_hat32, y32 = (
        y_hat.astype(np.float32).astype(np.float64),
        y.astype(np.float32).astype(np.float64),
    )

    def club_on(idx: np.ndarray, target: np.ndarray) -> float:
        m, weight, t = mu[idx], w[idx], target[idx]
        positive = -((m - t) ** 2)
        negative = ((t[None, :, :] - m[:, None, :]) ** 2).mean(1)
        return float((weight * (positive + negative)).sum(1).mean() / 2)

    draws = [rng.integers(0, 20, size=20) for _ in range(5)] + [np.arange(20)]
    counts = np.stack([np.bincount(d, minlength=20) for d in draws]).astype(np.float64)
    values = calibration._EMITerms(model, x, y_hat, y).emi_of_counts(counts)
    expected = [club_on(d, y_hat32) - club_on(d, y32) for d in draws]
    np.testing.assert_allclose(values, expected, rtol=1e-10, atol=1e-12)


def _mean_free_club(dim: int) -> CLUB:
    """A CLUB with mu(x) = 0 and a random logvar(x): its estimate on (x, y_hat) with y = 0 is
    -1/2 sum_k cov_n(w_k, y_hat_k^2), w = exp(-logvar(x)) - a sample covariance, whose sampling
    standard deviation is known from its influence function."""
    torch.manual_seed(3)
    model = CLUB(dim, dim, hidden=16)
    with torch.no_grad():
        last = model.p_mu[2]
        assert isinstance(last, torch.nn.Linear)
        last.weight.zero_()
        last.bias.zero_()
    return model


def _emi_and_influence(model: CLUB, x: np.ndarray, y_hat: np.ndarray) -> tuple[float, np.ndarray]:
    """EMI in closed form (y = 0) and each row's influence on it."""
    _, logvar = model.mu_logvar(x)
    w = np.exp(-logvar.double().numpy())
    q = y_hat.astype(np.float64) ** 2
    centred = (w - w.mean(0)) * (q - q.mean(0))
    influence = -0.5 * centred.sum(1)
    return float(influence.mean()), influence


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Thousands of small torch calls: one thread avoids spinning on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_torch_thread")
def test_emid_bootstrap_resamples_both_sides_at_95_percent_against_a_known_answer() -> None:
    """Width and centre of the EMID interval against the closed form of a known case.

    EMID = EMI(ID) - EMI(live) of two independent samples has standard error
    sqrt(se_id^2 + se_live^2), each from its influence function, and a 95% percentile interval
    about 2 * 1.96 of it wide. Not resampling the ID side shrinks the width by 1/sqrt(2) here
    (equal contributions); a 90% interval by 1.645 / 1.96: both fall outside the tolerance.
    """
    dim, n = 3, 800
    model = _mean_free_club(dim)
    rng = np.random.default_rng(8)

    def side(scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = rng.standard_normal((n, dim)).astype(np.float32)
        y_hat = (scale * x + rng.standard_normal((n, dim))).astype(np.float32)
        return x, y_hat, np.zeros_like(y_hat)

    p, q = side(1.0), side(1.0)
    emi_p, infl_p = _emi_and_influence(model, p[0], p[1])
    emi_q, infl_q = _emi_and_influence(model, q[0], q[1])
    assert emi(model, *p) == pytest.approx(emi_p, abs=1e-4)  # the closed form is right
    se = math.sqrt(infl_p.var() / n + infl_q.var() / n)
    interval = emid_bootstrap(model, *p, *q, resamples=1500, seed=4)
    assert interval.estimate == pytest.approx(emi_p - emi_q, abs=1e-4)
    assert interval.confidence == 0.95
    assert interval.high - interval.low == pytest.approx(2 * 1.96 * se, rel=0.08)
    centre = (interval.high + interval.low) / 2
    assert abs(centre - interval.estimate) < 0.15 * (interval.high - interval.low)
    # The live side alone gives the narrower width a broken bootstrap would: distinguishable.
    live_only = emi_bootstrap(model, *q, resamples=1500, seed=4)
    assert (live_only.high - live_only.low) < 0.8 * (interval.high - interval.low)


def test_minimum_trials_lets_the_bonferroni_level_fire() -> None:
    # 5 tests at 0.01: p-values must reach below 0.002, so (B + 1) * 0.002 > 1.
    assert minimum_trials(0.01, 5) == 500
    assert minimum_trials(0.01, 4, (2, 3)) == 400
    assert minimum_trials(0.05, 1) == 20
    for rate, tests in ((0.013, 5), (0.003, 3), (0.047, 7)):
        trials = minimum_trials(rate, tests)
        null = NullDistribution(50, np.arange(float(trials)))
        assert null.p_value(1e9) < rate / tests  # the top value can be beaten
        assert NullDistribution(50, np.arange(trials - 1.0)).p_value(1e9) >= rate / tests
    with pytest.raises(InvalidInputError, match="hysteresis"):
        minimum_trials(0.01, 5, (3, 2))


def test_binomial_count_threshold_is_the_exact_tail() -> None:
    n, rate, level = 100, 0.05, 0.01
    k = binomial_count_threshold(n, rate, level)
    assert k is not None

    def tail(count: int) -> float:
        return sum(math.comb(n, i) * rate**i * (1 - rate) ** (n - i) for i in range(count, n + 1))

    assert tail(k) < level <= tail(k - 1)
    assert binomial_count_threshold(1, 0.05, 0.002) is None  # one sample cannot be significant
    big = binomial_count_threshold(100_000, 0.05, 0.002)
    assert big is not None and 5000 < big < 5300  # about mean + 2.9 sd, and no overflow


def test_jsd_null_defaults_to_balanced_and_normalizes_on_request() -> None:
    rng = np.random.default_rng(2)
    ids = id_rows(rng, 1200)
    comparison, pool = ids[:600], ids[600:]
    default = jsd_null(comparison, pool, 30, trials=20, seed=1)
    balanced = jsd_null(comparison, pool, 30, trials=20, seed=1, mode="balanced")
    assert np.array_equal(default.values, balanced.values)
    scaled = pool * rng.uniform(0.5, 2.0, size=(len(pool), 1))
    with pytest.raises(EmbeddingError, match="normalize=True"):
        jsd_null(comparison, scaled, 30, trials=20)
    rescaled = jsd_null(comparison, scaled, 30, trials=20, seed=1, normalize=True)
    np.testing.assert_allclose(rescaled.values, default.values, atol=1e-9)


def test_is_significant_means_p_below_alpha_with_p_equal_to_alpha_not_significant() -> None:
    null = NullDistribution(50, np.arange(199.0))  # p-values are multiples of 1/200
    for observed in (150.0, 189.0, 190.0, 198.0, 1e9):
        p = null.p_value(observed)
        assert not null.is_significant(observed, p)
        assert null.is_significant(observed, float(np.nextafter(p, 1.0)))
        if p > 1 / 200:  # (1/200 has no threshold: no p-value is below it)
            assert not observed > null.threshold(p)  # the threshold agrees at the boundary


@pytest.mark.parametrize("trials", [19, 20, 21, 37, 199, 200])
def test_threshold_agrees_with_p_value_for_any_trial_count(trials: int) -> None:
    """alpha * (B + 1) whole or not: ``observed > threshold(alpha)`` iff ``p < alpha``, at
    every null value and between them; where no threshold exists, no p-value is below alpha."""
    null = NullDistribution(50, np.random.default_rng(trials).standard_normal(trials))
    observations = np.r_[null.values, null.values + 1e-9, null.values - 1e-9]
    for alpha in (0.01, 0.05, 0.1, 0.25, 1 / (trials + 1), 2 / (trials + 1)):
        try:
            t = null.threshold(alpha)
        except CalibrationError:
            assert null.p_value(1e9) >= alpha, (trials, alpha)
            continue
        for observed in observations:
            assert (observed > t) == (null.p_value(observed) < alpha), (trials, alpha, observed)


@pytest.mark.parametrize(("n", "rate", "level"), [(1, 0.5, 0.5), (2, 0.5, 0.25), (3, 0.5, 0.125)])
def test_binomial_tail_equal_to_the_level_is_not_below_it(
    n: int, rate: float, level: float
) -> None:
    """P(X >= n) = 0.5^n is exactly the level here (exact in floating point, logs included):
    not significant, so no count qualifies; a level just above it makes k = n."""
    assert binomial_count_threshold(n, rate, level) is None
    assert binomial_count_threshold(n, rate, level * (1 + 1e-12)) == n
