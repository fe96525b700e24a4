"""Distances between two empirical measures given as samples (units / neurons as rows).

Every function takes ``x: [n, D]`` and ``y: [m, D]`` (float arrays, one atom per row), standing
for ``mu_n = (1/n) sum_i delta_{x_i}`` and ``nu_m = (1/m) sum_j delta_{y_j}``, and returns a
scalar. Numerical kernels are compiled with ``jax.jit``; the thin public wrappers check shapes
(static, so they also work on tracers) and pick the working dtype (promoted input dtype, at
least float32). Cost and memory are ``O((n + m)^2 D)`` except for sliced Wasserstein.

Pairwise squared distances use ``|a|^2 + |b|^2 - 2 a.b`` (matmul at HIGHEST precision). The
expansion has a rounding floor of a few ``eps (|a|^2 + |b|^2)``; values below
``_FLOOR * eps * (|a|^2 + |b|^2)`` (negative ones included) are set to 0, so coincident rows,
within or across samples, get distance exactly 0. Samples are centred on the pooled mean first
(all the statistics here are translation invariant), which shrinks the norms and that floor.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

__all__ = [
    "energy_distance",
    "energy_distance_unbiased",
    "median_bandwidth",
    "mmd_biased",
    "mmd_unbiased",
    "permutation_test",
    "sliced_wasserstein",
]

_FLOOR = 16.0  # rounding floor of the expanded squared distance, in units of eps * (|a|^2 + |b|^2)
_PERM_BUDGET = 2**24  # pooled pairwise entries (N^2) evaluated at once in permutation_test


def _check(x: ArrayLike, y: ArrayLike) -> tuple[Array, Array]:
    """Return ``x, y`` as arrays of a common float dtype after checking ``[n, D]``, ``[m, D]``."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    found = f"(found x: {x.shape}, y: {y.shape})"
    for name, a in (("x", x), ("y", y)):
        if a.ndim != 2:
            raise ValueError(f"{name} must be a 2-D array [rows, features]; {found}")
        if a.shape[0] < 2:
            raise ValueError(f"{name} must have at least 2 rows (samples); {found}")
        if a.shape[1] < 1:
            raise ValueError(f"{name} must have at least 1 feature column; {found}")
        if jnp.issubdtype(a.dtype, jnp.complexfloating):
            raise ValueError(f"{name} must be real, got dtype {a.dtype}; {found}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same feature dimension D; {found}")
    dtype = jnp.promote_types(jnp.promote_types(x.dtype, y.dtype), jnp.float32)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.dtype(jnp.float32)
    return x.astype(dtype), y.astype(dtype)


def _centre(x: Array, y: Array) -> tuple[Array, Array]:
    """Subtract the pooled mean ``(sum_i x_i + sum_j y_j) / (n + m)`` from both samples."""
    c = (jnp.sum(x, axis=0) + jnp.sum(y, axis=0)) / (x.shape[0] + y.shape[0])
    return x - c, y - c


def _sq_dists(a: Array, b: Array) -> Array:
    """``[n, D], [m, D] -> [n, m]``: ``|a_i - b_j|^2`` with the rounding floor set to 0."""
    na, nb = jnp.sum(a * a, axis=1)[:, None], jnp.sum(b * b, axis=1)[None, :]
    d2 = na + nb - 2.0 * jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
    floor = _FLOOR * jnp.finfo(a.dtype).eps * (na + nb)
    return jnp.where(d2 > floor, d2, 0.0)


def _self_sq_dists(a: Array) -> Array:
    """``[n, D] -> [n, n]``: within-sample squared distances, diagonal exactly 0."""
    n = a.shape[0]
    return jnp.where(jnp.eye(n, dtype=bool), 0.0, _sq_dists(a, a))


def _offdiag_mean(k: Array) -> Array:
    """U-statistic mean ``(1 / (n (n-1))) sum_{i != j} k_ij`` of a square ``[n, n]`` matrix."""
    n = k.shape[0]
    return (jnp.sum(k) - jnp.trace(k)) / (n * (n - 1))


def _monotone_coupling(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact 1-D optimal (north-west corner) coupling of two uniform empirical measures.

    Merges the quantile breakpoints ``{i/n}`` and ``{j/m}`` of ``(0, 1]`` (exactly, in integer
    units of ``1/(n m)``). On each merged interval ``(t_{k-1}, t_k]`` both empirical quantile
    functions are constant, equal to the order statistics ``x_(ix_k)``, ``y_(iy_k)``. Returns
    ``ix, iy`` (int, ``[K]``, ``K <= n + m - 1``) and the interval lengths ``w`` (``[K]``, sum 1).
    """
    t = np.union1d(np.arange(1, n + 1, dtype=np.int64) * m, np.arange(1, m + 1, dtype=np.int64) * n)
    left = np.concatenate([[0], t[:-1]])
    return (left // m).astype(np.int32), (left // n).astype(np.int32), (t - left) / float(n * m)


@partial(jax.jit, static_argnames=("num", "dim", "dtype"))
def _directions(key: Array, num: int, dim: int, dtype: jnp.dtype) -> Array:
    """``[num, dim]`` iid directions uniform on the unit sphere (normalised Gaussians)."""
    theta = jax.random.normal(key, (num, dim), dtype=dtype)
    return theta / jnp.linalg.norm(theta, axis=1, keepdims=True)


@partial(jax.jit, static_argnames=("p",))
def _sliced_wasserstein(
    x: Array, y: Array, theta: Array, coupling: tuple[Array, Array, Array] | None, p: float
) -> Array:
    x, y = _centre(x, y)
    hi = jax.lax.Precision.HIGHEST
    xs = jnp.sort(jnp.matmul(theta, x.T, precision=hi), axis=1)  # [P, n] sorted projections
    ys = jnp.sort(jnp.matmul(theta, y.T, precision=hi), axis=1)  # [P, m]
    if coupling is None:  # n == m: the coupling is x_(i) <-> y_(i), each with mass 1/n
        gap = jnp.abs(xs - ys)
        wp = jnp.mean(gap * gap if p == 2 else gap**p, axis=1)  # [P]
    else:
        ix, iy, w = coupling
        gap = jnp.abs(xs[:, ix] - ys[:, iy])  # [P, K]
        wp = (gap * gap if p == 2 else gap**p) @ w  # [P]: W_p^p of each 1-D projection
    return jnp.mean(wp) ** (1.0 / p)


def sliced_wasserstein(
    x: ArrayLike, y: ArrayLike, key: Array, num_projections: int = 256, p: float = 2
) -> Array:
    """Monte-Carlo sliced Wasserstein distance ``SW_p(mu_n, nu_m)``.

    ``SW_p^p = E_theta[W_p^p(theta#mu_n, theta#nu_m)]`` with ``theta`` uniform on the unit sphere,
    estimated by the mean over ``num_projections`` directions drawn from ``key``. Each 1-D term is
    ``W_p^p = int_0^1 |F^{-1}(t) - G^{-1}(t)|^p dt`` for the two empirical quantile functions,
    computed *exactly* also when ``n != m``: both are step functions, so the integral is a finite
    sum over the merged grid of breakpoints ``{i/n} u {j/m}`` (at most ``n + m - 1`` cells),
    weighting each cell by its length. For ``n == m`` this is ``mean_i |x_(i) - y_(i)|^p``.
    ``x: [n, D]``, ``y: [m, D]``; returns the scalar ``SW_p`` (not its p-th power); exactly 0 for
    identical samples under any key.
    """
    x, y = _check(x, y)
    if num_projections < 1:
        raise ValueError(f"num_projections must be >= 1, got {num_projections}")
    if not p >= 1:
        raise ValueError(f"p must be >= 1, got {p}")
    n, m = x.shape[0], y.shape[0]
    coupling = None
    if n != m:
        ix, iy, w = _monotone_coupling(n, m)
        coupling = (jnp.asarray(ix), jnp.asarray(iy), jnp.asarray(w, dtype=x.dtype))
    theta = _directions(key, int(num_projections), x.shape[1], x.dtype)  # [P, D], own compile
    return _sliced_wasserstein(x, y, theta, coupling, float(p))


def _order_stat(bits: Array, k: int, upper: Array) -> Array:
    """Exact ``k``-th smallest (0-based) entry of the int array ``bits``, known to be ``<= upper``.

    For non-negative floats the IEEE bit pattern is monotone, so bisection on it selects order
    statistics of an ``[N, N]`` array in ``nbits`` counting passes instead of an
    ``O(N^2 log N)`` sort.
    """

    def step(_: int, lohi: tuple[Array, Array]) -> tuple[Array, Array]:
        lo, hi = lohi
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(bits <= mid) >= k + 1
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    lo = jnp.zeros((), bits.dtype)
    return jax.lax.fori_loop(0, 8 * bits.dtype.itemsize, step, (lo, upper))[1]


@jax.jit
def _median_bandwidth(x: Array, y: Array) -> Array:
    x, y = _centre(x, y)
    z = jnp.concatenate([x, y])  # [N, D]
    num = z.shape[0]
    d2 = _sq_dists(z, z)  # [N, N]
    upper = jnp.arange(num)[:, None] < jnp.arange(num)[None, :]  # the N (N-1) / 2 distinct pairs
    itype = jnp.int32 if d2.dtype.itemsize == 4 else jnp.int64
    bits = jax.lax.bitcast_convert_type(d2, itype)
    top = jnp.max(jnp.where(upper, bits, 0))
    bits = jnp.where(upper, bits, jnp.iinfo(itype).max)
    pairs = num * (num - 1) // 2
    middle = jnp.stack([_order_stat(bits, k, top) for k in ((pairs - 1) // 2, pairs // 2)])
    med = jnp.mean(jnp.sqrt(jax.lax.bitcast_convert_type(middle, d2.dtype)))  # mid pair(s)
    mean = jnp.sum(jnp.where(upper, jnp.sqrt(d2), 0.0)) / pairs
    return jnp.where(med > 0, med, jnp.where(mean > 0, mean, 1.0))


def median_bandwidth(x: ArrayLike, y: ArrayLike) -> Array:
    """Median heuristic ``h = median{|z_i - z_j| : i < j}`` over the pooled sample ``z = [x; y]``.

    ``x: [n, D]``, ``y: [m, D]``; the median runs over the ``N (N-1) / 2`` distinct pairs,
    ``N = n + m`` (diagonal excluded; mean of the two middle values when that count is even).
    Falls back to the mean pairwise distance, then to 1, when the median is 0 (mostly tied rows).
    Invariant to permuting rows between ``x`` and ``y``.
    """
    return _median_bandwidth(*_check(x, y))


@jax.jit
def _mmd(x: Array, y: Array, bandwidth: Array) -> tuple[Array, Array]:
    """``(MMD_b^2, MMD_u^2)``: both share the kernel matrices, so one compile serves both."""
    x, y = _centre(x, y)
    scale = -0.5 / (bandwidth * bandwidth)
    kxx = jnp.exp(scale * _self_sq_dists(x))  # [n, n]
    kyy = jnp.exp(scale * _self_sq_dists(y))  # [m, m]
    kxy = jnp.exp(scale * _sq_dists(x, y))  # [n, m]
    cross = 2.0 * jnp.mean(kxy)
    return jnp.mean(kxx) + jnp.mean(kyy) - cross, _offdiag_mean(kxx) + _offdiag_mean(kyy) - cross


def _bandwidth(x: Array, y: Array, bandwidth: ArrayLike | None) -> Array:
    if bandwidth is None:
        return _median_bandwidth(x, y)
    if isinstance(bandwidth, int | float) and not (0 < bandwidth < float("inf")):
        raise ValueError(f"bandwidth must be a positive finite number, got {bandwidth}")
    return jnp.asarray(bandwidth, dtype=x.dtype)


def mmd_unbiased(x: ArrayLike, y: ArrayLike, bandwidth: ArrayLike | None = None) -> Array:
    """Unbiased U-statistic estimate of ``MMD^2`` (Gretton et al., JMLR 2012, eq. 3).

    ``MMD_u^2 = 1/(n(n-1)) sum_{i!=j} k(x_i,x_j) + 1/(m(m-1)) sum_{i!=j} k(y_i,y_j)
    - 2/(n m) sum_{i,j} k(x_i,y_j)`` with ``k(a, b) = exp(-|a-b|^2 / (2 h^2))``. ``x: [n, D]``,
    ``y: [m, D]``; scalar, may be negative. ``bandwidth=None`` uses ``h = median_bandwidth(x, y)``
    (the estimate is then exactly unbiased only conditionally on ``h``). Memory ``O((n + m)^2)``.
    """
    x, y = _check(x, y)
    return _mmd(x, y, _bandwidth(x, y, bandwidth))[1]


def mmd_biased(x: ArrayLike, y: ArrayLike, bandwidth: ArrayLike | None = None) -> Array:
    """Biased V-statistic ``MMD_b^2 = |mean_i phi(x_i) - mean_j phi(y_j)|^2_H >= 0``.

    Same kernel and bandwidth rule as :func:`mmd_unbiased` but the sums include ``i == j``;
    for equal laws ``E[MMD_b^2] = (1/n + 1/m) (1 - E k(X, X'))`` (bias of order ``1/n``).
    """
    x, y = _check(x, y)
    return _mmd(x, y, _bandwidth(x, y, bandwidth))[0]


@jax.jit
def _energy(x: Array, y: Array) -> tuple[Array, Array]:
    """``(V-statistic, U-statistic)`` energy distances, sharing the distance matrices."""
    x, y = _centre(x, y)
    dxx = jnp.sqrt(_self_sq_dists(x))  # [n, n], zero diagonal
    dyy = jnp.sqrt(_self_sq_dists(y))  # [m, m]
    dxy = jnp.sqrt(_sq_dists(x, y))  # [n, m]
    cross = 2.0 * jnp.mean(dxy)
    return cross - jnp.mean(dxx) - jnp.mean(dyy), cross - _offdiag_mean(dxx) - _offdiag_mean(dyy)


def energy_distance(x: ArrayLike, y: ArrayLike) -> Array:
    """Energy distance V-statistic (Szekely & Rizzo): ``2 E|X-Y| - E|X-X'| - E|Y-Y'|``.

    All three expectations are plain means over all pairs (``i == j`` included, contributing 0),
    so this is the energy distance between the empirical measures themselves: ``>= 0`` (up to
    rounding), and 0 iff they coincide. ``x: [n, D]``, ``y: [m, D]``, Euclidean norm; scalar.
    """
    return _energy(*_check(x, y))[0]


def energy_distance_unbiased(x: ArrayLike, y: ArrayLike) -> Array:
    """Energy distance with U-statistics within samples (unbiased for ``2E|X-Y|-E|X-X'|-E|Y-Y'|``).

    ``2/(nm) sum_{i,j} |x_i - y_j| - 1/(n(n-1)) sum_{i!=j} |x_i - x_j|
    - 1/(m(m-1)) sum_{i!=j} |y_i - y_j|``; may be negative. ``x: [n, D]``, ``y: [m, D]``.
    """
    return _energy(*_check(x, y))[1]


@partial(jax.jit, static_argnames=("num", "size"))
def _permutations(key: Array, num: int, size: int) -> Array:
    """``[num, size]`` int: ``num`` independent uniform permutations of ``range(size)``."""
    rows = jnp.broadcast_to(jnp.arange(size), (num, size))
    return jax.random.permutation(key, rows, axis=1, independent=True)


@partial(jax.jit, static_argnames=("stat_fn", "batch_size"))
def _permutation_test(
    stat_fn: Callable[[Array, Array], Array], x: Array, y: Array, perms: Array, batch_size: int
) -> tuple[Array, Array]:
    n = x.shape[0]
    z = jnp.concatenate([x, y])  # [N, D] pooled sample
    observed = jnp.asarray(stat_fn(x, y))

    def permuted(perm: Array) -> Array:
        zp = z[perm]
        return jnp.asarray(stat_fn(zp[:n], zp[n:]), dtype=observed.dtype)

    stats = jax.lax.map(permuted, perms, batch_size=batch_size)  # [num_permutations]
    exceed = jnp.sum(stats >= observed)
    return observed, (1.0 + exceed) / (1.0 + perms.shape[0])


def permutation_test(
    stat_fn: Callable[[Array, Array], Array],
    x: ArrayLike,
    y: ArrayLike,
    key: Array,
    num_permutations: int = 200,
    batch_size: int | None = None,
) -> tuple[Array, Array]:
    """Two-sample permutation test of ``H0: law(x) == law(y)`` for a "large = different" statistic.

    Pools ``z = [x; y]`` (``[n + m, D]``), draws ``num_permutations`` uniform permutations from
    ``key`` (deterministic given it), recomputes ``stat_fn(z_perm[:n], z_perm[n:])`` and returns
    ``(statistic, p_value)``, ``p = (1 + #{perm stat >= observed}) / (1 + num_permutations)``.
    ``stat_fn``: traceable ``([n, D], [m, D]) -> scalar``, e.g. ``mmd_unbiased`` or
    ``lambda a, b: sliced_wasserstein(a, b, k)``; the median bandwidth is permutation invariant,
    so ``partial(mmd_unbiased, bandwidth=median_bandwidth(x, y))`` skips recomputing it. Runs
    ``batch_size`` permutations at a time (``jax.lax.map``, vmapped within a batch); the default
    keeps ``batch_size * (n + m)^2 ~ 2^24``. Compiles once per ``stat_fn`` object.
    """
    x, y = _check(x, y)
    if num_permutations < 1:
        raise ValueError(f"num_permutations must be >= 1, got {num_permutations}")
    if batch_size is None:
        batch_size = _PERM_BUDGET // (x.shape[0] + y.shape[0]) ** 2
    batch_size = max(1, min(int(batch_size), int(num_permutations)))
    perms = _permutations(key, int(num_permutations), x.shape[0] + y.shape[0])  # own compile
    return _permutation_test(stat_fn, x, y, perms, batch_size)
