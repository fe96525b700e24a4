"""RC-measure samplers (theory.measure): index maps, counts, fan-in scales, symmetry noise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.measure import (
    balanced_index,
    counter_noise,
    fan_in_scale,
    iid_index,
    sample_space,
    unit_counts,
    zero_sum_noise,
)

sizes = st.tuples(st.integers(1, 12), st.integers(1, 40))

# jitted with static sizes: one compilation per (n, N) instead of one per eager op
_balanced = jax.jit(balanced_index, static_argnums=(1, 2))
_iid_parts = jax.jit(
    lambda key, n, N: (
        lambda g, c: (g, c, fan_in_scale(g, c, "exact"), fan_in_scale(g, c, "unbiased"))
    )(iid_index(key, n, N), unit_counts(iid_index(key, n, N), n)),
    static_argnums=(1, 2),
)
_zero_sum = jax.jit(
    lambda key, g, cols: zero_sum_noise(key, (g.shape[0], cols), g), static_argnums=(2,)
)


@settings(max_examples=10, deadline=None)
@given(nN=sizes, seed=st.integers(0, 2**31 - 1))
def test_balanced_counts_are_floor_or_ceil(nN, seed) -> None:
    n, N = nN
    g = np.asarray(_balanced(jax.random.key(seed), n, N))
    assert g.shape == (N,) and g.dtype == np.int32
    assert g.min() >= 0 and g.max() < n
    c = np.bincount(g, minlength=n)
    assert c.sum() == N and c.min() >= N // n and c.max() <= -(-N // n)
    if N >= n:  # the first n new units are the originals, in order
        np.testing.assert_array_equal(g[:n], np.arange(n))
    else:  # pruning: distinct units
        assert len(set(g.tolist())) == N


@settings(max_examples=8, deadline=None)
@given(nN=sizes, seed=st.integers(0, 2**31 - 1))
def test_iid_index_in_range_and_exact_scales_sum_to_one(nN, seed) -> None:
    n, N = nN
    g, c, s, u = _iid_parts(jax.random.key(seed), n, N)
    gn = np.asarray(g)
    assert gn.shape == (N,) and gn.min() >= 0 and gn.max() < n
    np.testing.assert_array_equal(np.asarray(c), np.bincount(gn, minlength=n))
    s = np.asarray(s)
    mass = np.bincount(gn, weights=s, minlength=n)
    kept = np.asarray(c) > 0
    np.testing.assert_allclose(mass[kept], 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(u), n / N, rtol=1e-7)


@pytest.mark.parametrize("sampler", ["balanced", "iid", "smoothed"])
@pytest.mark.parametrize("scaling", ["exact", "unbiased"])
def test_sample_space_shapes(sampler: str, scaling: str) -> None:
    m = sample_space(jax.random.key(0), 5, 13, sampler, scaling)
    assert m.index.shape == (13,) and m.counts.shape == (5,) and m.scale.shape == (13,)
    assert m.scale.dtype == jnp.float32 and int(m.counts.sum()) == 13


def test_sample_space_rejects_unknown_sampler_and_scaling() -> None:
    with pytest.raises(ValueError, match="sampler 'foo'"):
        sample_space(jax.random.key(0), 3, 6, "foo", "exact")
    with pytest.raises(ValueError, match="scaling 'bar'"):
        sample_space(jax.random.key(0), 3, 6, "balanced", "bar")


def test_iid_counts_are_unbiased() -> None:
    """E[c_k] = N/n for the iid map, so unbiased scaling s = n/N gives E[sum s] = 1 per unit."""
    n, N, R = 6, 30, 2000
    g = jax.vmap(lambda k: iid_index(k, n, N))(jax.random.split(jax.random.key(1), R))
    c = np.asarray(jax.vmap(lambda x: unit_counts(x, n))(g), np.float64)
    se = c.std(0, ddof=1) / np.sqrt(R)
    assert np.all(np.abs(c.mean(0) - N / n) <= 4 * se)
    assert se.min() > 0.01  # the maps really are random (the check above is not vacuous)
    # control: the balanced map has zero spread
    b = np.asarray(balanced_index(jax.random.key(1), n, N))
    assert np.all(np.bincount(b, minlength=n) == N // n)


@settings(max_examples=6, deadline=None)
@given(nN=sizes, cols=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_zero_sum_noise_sums_to_zero_within_copies(nN, cols, seed) -> None:
    n, N = nN
    g = _balanced(jax.random.key(seed), n, N)
    xi = np.asarray(_zero_sum(jax.random.key(seed + 1), g, cols), np.float64)
    sums = np.zeros((n, cols))
    np.add.at(sums, np.asarray(g), xi)
    np.testing.assert_allclose(sums, 0.0, atol=1e-5)
    c = np.bincount(np.asarray(g), minlength=n)
    single = c[np.asarray(g)] == 1
    assert np.all(np.abs(xi[single]) <= 1e-6)  # zero up to rounding of z - z / 1 under jit
    if (~single).any():  # units copied at least twice do get noise
        assert np.abs(xi[~single]).max() > 1e-3


_counter = jax.jit(counter_noise, static_argnums=(1, 2))
_counter_at = jax.jit(lambda key, shape, index: counter_noise(key, shape, index=index),
                      static_argnums=(1,))  # fmt: skip


@settings(max_examples=6, deadline=None)
@given(
    shape=st.lists(st.integers(1, 7), min_size=1, max_size=3).map(tuple),
    seed=st.integers(0, 2**31 - 1),
)
def test_counter_noise_at_an_index_equals_the_gathered_field(shape, seed) -> None:
    """``index`` evaluates the field at permuted rows: the same values a gather would give."""
    key = jax.random.key(seed)
    perm = np.random.default_rng(seed).integers(0, shape[0], shape[0]).astype(np.int32)
    z = np.asarray(_counter(key, shape))
    np.testing.assert_array_equal(np.asarray(_counter_at(key, shape, jnp.asarray(perm))), z[perm])
    np.testing.assert_array_equal(np.asarray(_counter(key, shape)), z)  # deterministic
    assert not np.array_equal(np.asarray(_counter(jax.random.key(seed + 1), shape)), z)


def test_counter_noise_moments_and_independence() -> None:
    """Zero mean, unit variance, uncorrelated neighbours, seeds and axes (2^20 draws: the
    standard error of each moment is ~1e-3, tolerances are 5 SE)."""
    shape = (1024, 1024)
    z = np.asarray(_counter(jax.random.key(3), shape), np.float64)
    w = np.asarray(_counter(jax.random.key(4), shape), np.float64)
    se = 1 / 1024
    assert abs(z.mean()) < 5 * se
    assert abs(z.var() - 1) < 5 * se * np.sqrt(0.8)  # var of (u^2 - 1) for this uniform: 0.8
    assert abs(np.abs(z).max() - np.sqrt(3)) < 1e-3  # uniform on [-sqrt 3, sqrt 3]
    for a, b in ((z[:, 1:], z[:, :-1]), (z[1:], z[:-1]), (z, w)):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 5 * se
    assert _counter(jax.random.key(3), (3,)).dtype == jnp.float32
