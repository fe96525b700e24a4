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
