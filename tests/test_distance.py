"""Tests for theory.distance: exactness on small cases, invariances, finite-sample rates, tests."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.spatial.distance import cdist, pdist
from scipy.stats import wasserstein_distance

from theory.distance import (
    energy_distance,
    energy_distance_unbiased,
    median_bandwidth,
    mmd_biased,
    mmd_unbiased,
    permutation_test,
    sliced_wasserstein,
)

SETTINGS = settings(max_examples=15, deadline=None)
KEY = jax.random.key(0)


def samples(n: int, d: int) -> st.SearchStrategy[np.ndarray]:
    """Float32 ``[n, d]`` arrays with bounded entries (ties and duplicate rows allowed)."""
    elements = st.floats(-10, 10, width=32, allow_nan=False, allow_infinity=False)
    return hnp.arrays(np.float32, (n, d), elements=elements)


def gaussian(seed: int | tuple[int, ...], n: int, d: int, shift: float = 0.0) -> np.ndarray:
    """``[n, d]`` float32 iid ``N(shift e_1, I_d)`` rows (numpy, so no per-shape compilation)."""
    z = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    z[:, 0] += shift
    return z


def loglog_slope(ns: list[int], values: list[float]) -> float:
    """Least-squares slope of ``log values`` against ``log ns``."""
    return float(np.polyfit(np.log(ns), np.log(values), 1)[0])


STATS = {
    "sw": lambda a, b: sliced_wasserstein(a, b, KEY, num_projections=64),
    "mmd_u": mmd_unbiased,
    "mmd_b": mmd_biased,
    "energy": energy_distance,
    "energy_u": energy_distance_unbiased,
}


# ----------------------------------------------------------------------------- exact references


def test_against_float64_references() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(13, 3)), rng.normal(size=(21, 3)) + 0.4
    h = float(np.median(pdist(np.vstack([x, y]))))
    np.testing.assert_allclose(median_bandwidth(x, y), h, rtol=1e-5)
    kxx, kyy, kxy = (
        np.exp(-cdist(a, b, "sqeuclidean") / (2 * h * h)) for a, b in [(x, x), (y, y), (x, y)]
    )
    mmd_b = kxx.mean() + kyy.mean() - 2 * kxy.mean()
    mmd_u = (kxx.sum() - 13) / (13 * 12) + (kyy.sum() - 21) / (21 * 20) - 2 * kxy.mean()
    np.testing.assert_allclose(mmd_biased(x, y), mmd_b, rtol=1e-4)
    np.testing.assert_allclose(mmd_unbiased(x, y), mmd_u, rtol=1e-4)
    dxy, dxx, dyy = cdist(x, y).mean(), cdist(x, x), cdist(y, y)
    np.testing.assert_allclose(energy_distance(x, y), 2 * dxy - dxx.mean() - dyy.mean(), rtol=1e-4)
    e_u = 2 * dxy - dxx.sum() / (13 * 12) - dyy.sum() / (21 * 20)
    np.testing.assert_allclose(energy_distance_unbiased(x, y), e_u, rtol=1e-4, atol=1e-6)


@SETTINGS
@given(x=samples(5, 2), y=samples(7, 2))
def test_median_bandwidth_matches_numpy(x: np.ndarray, y: np.ndarray) -> None:
    """Bisection order statistic == median over the 66 distinct pooled pairs (an even count)."""
    ref = float(np.median(pdist(np.vstack([x, y]).astype(np.float64))))
    got = float(median_bandwidth(x, y))
    if ref > 0.05:  # below that, float32 |a|^2 + |b|^2 - 2ab cannot resolve |a| ~ 10 points
        assert got == pytest.approx(ref, rel=1e-4, abs=0.05)
    assert np.isfinite(got) and got > 0


def lcm_wasserstein(u: np.ndarray, v: np.ndarray, p: float) -> float:
    """Exact 1-D ``W_p`` of two uniform empirical measures, both rewritten with lcm(n, m) atoms."""
    big = math.lcm(len(u), len(v))
    us = np.repeat(np.sort(u), big // len(u))
    vs = np.repeat(np.sort(v), big // len(v))
    return float(np.mean(np.abs(us - vs) ** p) ** (1 / p))


@SETTINGS
@given(
    u=hnp.arrays(np.float32, st.sampled_from([2, 3, 6]), elements=st.floats(-5, 5, width=32)),
    v=hnp.arrays(np.float32, st.sampled_from([3, 4, 6]), elements=st.floats(-5, 5, width=32)),
    p=st.sampled_from([1.0, 2.0, 3.0]),
)
def test_sliced_wasserstein_exact_in_1d(u: np.ndarray, v: np.ndarray, p: float) -> None:
    """In D = 1 every direction is +-1, so SW_p is the exact W_p, also for n != m."""
    u_arr, v_arr = u.astype(np.float64), v.astype(np.float64)
    got = float(sliced_wasserstein(u_arr[:, None], v_arr[:, None], KEY, num_projections=2, p=p))
    assert got == pytest.approx(lcm_wasserstein(u_arr, v_arr, p), rel=1e-4, abs=1e-5)
    if p == 1.0:
        assert got == pytest.approx(wasserstein_distance(u_arr, v_arr), rel=1e-4, abs=1e-5)


# ----------------------------------------------------------------------------- metric properties


@SETTINGS
@given(x=samples(6, 2), seed=st.integers(0, 2**31 - 1))
def test_zero_on_identical_samples(x: np.ndarray, seed: int) -> None:
    key = jax.random.key(seed)
    assert float(sliced_wasserstein(x, x.copy(), key, 64)) == 0.0  # exactly, for any directions
    # the same empirical measure, written with every atom repeated twice (n != m coupling)
    assert float(sliced_wasserstein(x, np.concatenate([x, x]), key, 64)) == 0.0
    scale = 1.0 + float(np.abs(x).max())
    assert abs(float(energy_distance(x, x))) <= 1e-5 * scale
    assert abs(float(energy_distance(x, np.concatenate([x, x])))) <= 1e-5 * scale
    assert abs(float(mmd_biased(x, x))) <= 1e-5


@SETTINGS
@given(x=samples(5, 2), y=samples(7, 2))
def test_symmetry(x: np.ndarray, y: np.ndarray) -> None:
    for name, fn in STATS.items():
        a, b = float(fn(x, y)), float(fn(y, x))
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5), name


@SETTINGS
@given(
    x=samples(5, 2),
    y=samples(7, 2),
    shift=hnp.arrays(np.float32, (2,), elements=st.floats(-20, 20, width=32)),
)
def test_translation_invariance(x: np.ndarray, y: np.ndarray, shift: np.ndarray) -> None:
    tol = 1e-4 * (1.0 + float(np.abs(x).max() + np.abs(y).max() + np.abs(shift).max()))
    for name in ("sw", "energy", "energy_u", "mmd_u"):
        fn = STATS[name]
        a, b = float(fn(x, y)), float(fn(x + shift, y + shift))
        assert a == pytest.approx(b, rel=1e-3, abs=tol), name


def test_positive_on_shifted_gaussians() -> None:
    x, y = gaussian(1, 30, 2), gaussian(2, 30, 2, shift=3.0)  # shapes shared with tests below
    assert float(STATS["sw"](x, y)) > 1.0  # population SW_2 = 3 / sqrt(2)
    for name in ("mmd_u", "mmd_b", "energy", "energy_u"):
        assert float(STATS[name](x, y)) > 0.2, name


# ----------------------------------------------------------------------------- finite-sample rates

D = 5
H = math.sqrt(D)


def test_sliced_wasserstein_rate_on_identical_laws() -> None:
    """E SW_2(mu_n, mu'_n) for two iid N(0, I_5) samples decays like n^-1/2 (up to log log n)."""
    ns = [64, 128, 256, 512, 1024, 2048]
    means = []
    for n in ns:
        vals = [
            sliced_wasserstein(gaussian((n, r, 0), n, D), gaussian((n, r, 1), n, D), key, 256)
            for r, key in enumerate(jax.random.split(jax.random.key(n), 4))
        ]
        means.append(float(np.mean(vals)))
    slope = loglog_slope(ns, means)
    print(f"SW_2 slope {slope:.3f}")
    assert -0.65 <= slope <= -0.35


def test_mmd_rates_on_identical_laws() -> None:
    """Null law N(0, I_5) vs itself, fixed h = sqrt(D):

    * sd(MMD_u^2) ~ 1/n (degenerate U-statistic), and E MMD_u^2 = 0;
    * E MMD_b^2 = (2/n) (1 - E k(X, X')) with E k = (1 + 2/h^2)^(-D/2).
    """
    ns, reps = [64, 128, 256, 512, 1024], 48
    bias_const = 2.0 * (1.0 - (1.0 + 2.0 / H**2) ** (-D / 2))
    sds, bias = [], []
    for n in ns:
        pairs = [(gaussian((n, r, 2), n, D), gaussian((n, r, 3), n, D)) for r in range(reps)]
        vals = np.array([[mmd_unbiased(x, y, H), mmd_biased(x, y, H)] for x, y in pairs])
        unb, bia = vals[:, 0], vals[:, 1]
        se = unb.std(ddof=1) / math.sqrt(reps)
        assert abs(unb.mean()) <= 4 * se, (n, unb.mean(), se)
        bias_se = bia.std(ddof=1) / math.sqrt(reps)
        assert abs(bia.mean() - bias_const / n) <= 4 * bias_se, (n, bia.mean(), bias_const / n)
        sds.append(unb.std(ddof=1))
        bias.append(bia.mean())
    sd_slope, bias_slope = loglog_slope(ns, sds), loglog_slope(ns, bias)
    print(f"sd(MMD_u) slope {sd_slope:.3f}; E MMD_b slope {bias_slope:.3f}")
    assert -1.25 <= sd_slope <= -0.75
    assert -1.25 <= bias_slope <= -0.75


# ----------------------------------------------------------------------------- permutation test


def test_permutation_test_null_and_alternative() -> None:
    null_p = []
    for rep in range(20):
        x, y = gaussian(2 * rep, 30, 2), gaussian(2 * rep + 1, 30, 2)
        _, p = permutation_test(mmd_unbiased, x, y, jax.random.key(rep))
        assert 0.0 < float(p) <= 1.0
        null_p.append(float(p))
    null_p = np.asarray(null_p)
    assert np.mean(null_p < 0.05) <= 0.25
    assert 0.25 <= null_p.mean() <= 0.75  # roughly uniform: mean 1/2

    x, y = gaussian(100, 30, 2), gaussian(101, 30, 2, shift=1.5)
    for name in ("mmd_u", "energy", "sw"):
        stat, p = permutation_test(STATS[name], x, y, KEY)
        assert float(p) < 0.05, name
        assert float(stat) == pytest.approx(float(STATS[name](x, y)), rel=1e-5), name


def test_permutation_test_deterministic_and_batch_independent() -> None:
    x, y = gaussian(3, 30, 2), gaussian(4, 30, 2, shift=0.3)
    a = permutation_test(energy_distance, x, y, KEY)
    b = permutation_test(energy_distance, x, y, KEY)
    c = permutation_test(energy_distance, x, y, KEY, batch_size=1)
    assert float(a[0]) == float(b[0]) and float(a[1]) == float(b[1])
    assert float(c[1]) == pytest.approx(float(a[1]), abs=0.011)  # rounding may flip a near-tie
    assert float(a[1]) * 201 == pytest.approx(round(float(a[1]) * 201))  # (1 + k) / (1 + 200)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (np.zeros(5), np.zeros((4, 2)), r"x must be a 2-D.*\(5,\)"),
        (np.zeros((4, 2)), np.zeros((2, 2, 2)), r"y must be a 2-D.*\(2, 2, 2\)"),
        (np.zeros((4, 2)), np.zeros((4, 3)), r"same feature dimension.*\(4, 2\).*\(4, 3\)"),
        (np.zeros((1, 2)), np.zeros((4, 2)), r"x must have at least 2 rows.*\(1, 2\)"),
        (np.zeros((4, 2)), np.zeros((1, 2)), r"y must have at least 2 rows.*\(1, 2\)"),
        (np.zeros((4, 0)), np.zeros((4, 0)), r"x must have at least 1 feature"),
        (np.zeros((4, 2), complex), np.zeros((4, 2)), r"x must be real"),
    ],
)
def test_bad_shapes_raise(x: np.ndarray, y: np.ndarray, match: str) -> None:
    for fn in [*STATS.values(), median_bandwidth]:
        with pytest.raises(ValueError, match=match):
            fn(x, y)
    with pytest.raises(ValueError, match=match):
        permutation_test(energy_distance, x, y, KEY)


def test_bad_parameters_raise() -> None:
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="num_projections"):
        sliced_wasserstein(x, x, KEY, num_projections=0)
    with pytest.raises(ValueError, match="p must be"):
        sliced_wasserstein(x, x, KEY, p=0.5)
    with pytest.raises(ValueError, match="bandwidth"):
        mmd_unbiased(x, x, bandwidth=0.0)
    with pytest.raises(ValueError, match="num_permutations"):
        permutation_test(energy_distance, x, x, KEY, num_permutations=0)


def test_integer_input_and_tied_rows() -> None:
    """Integer input is promoted to float; a pooled sample of mostly tied rows keeps h finite."""
    x = np.array([[0, 0], [0, 0], [0, 0], [1, 0]])
    y = np.array([[0, 0], [0, 0], [0, 0], [0, 0]])
    h = float(median_bandwidth(x, y))
    assert np.isfinite(h) and h > 0
    assert np.isfinite(float(mmd_unbiased(x, y))) and float(mmd_biased(x, y)) > 0
