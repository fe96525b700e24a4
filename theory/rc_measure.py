"""A fitted RC measure of unit types, and the sampler that draws genuinely new units from it.

Under the row-column (RC) ansatz a neuron space of n units is an n-sample of unit *types* from a
measure mu. A unit's type ``theta_i in R^D`` is the concatenation of every slice of every leaf
that the unit indexes: its incoming weights and bias (the ``out`` axes of the leaves that write
it) *and* its outgoing weights (the ``in`` axes of the leaves that read it). One draw of a type
therefore sets the unit's row in one layer and its column in the next together (the tie).
``theory.measure`` estimates mu by the empirical measure and samples by copying; this module fits
a smooth density to the n types and samples new ones from it.

Model (in coordinates standardised per block, ``x = theta / s`` with ``s`` the RMS of each block,
so that no leaf dominates by its units):

    x = c + U z + diag(psi) e,    z ~ sum_k pi_k N(m_k, S_k),    e ~ N(0, I_D)

- ``c`` [D]: the mean type;
- ``U`` [D, r]: the top r principal directions of the centred types (a randomized range finder
  with power iterations: cost O(n D r), linear in the number of weights n D);
- ``z`` [r]: principal coordinates, a K-component Gaussian mixture with full r x r covariances
  fitted by EM (MAP: each covariance shrunk towards the pooled one with weight ``r + 2``
  pseudo-units, which keeps small components from collapsing onto single units);
- ``psi`` [D]: the residual standard deviation per coordinate (``sum_i res_i^2 / (n - 1 - r)``).

A coordinate that is the same for every unit (e.g. a weight zeroed by ``fitted-preserving``)
has zero basis rows and zero residual, so every draw has exactly that value.

A trained standard-parametrization layer is its i.i.d. init plus a learned low-rank part: the
low-rank subspace carries the learned structure (and, through the mixture, its clusters), the
diagonal residual carries the init's per-coordinate spread. With K = 1 and ``r = n - 1`` the
fitted measure has exactly the empirical mean and covariance of the types.

Everything is jitted with static sizes and deterministic under its key.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

#: oversampling of the randomized range finder and its number of power iterations
OVERSAMPLE = 8
POWER_ITERS = 2
EM_ITERS = 50


class RCMeasure(NamedTuple):
    """A fitted measure of types in R^D (see the module docstring).

    centre [D], unit_scale [D] (type = unit_scale * standardised type), basis [D, r] (orthonormal
    columns), weights [K], means [K, r], chols [K, r, r] (lower Cholesky factors of S_k),
    resid_sd [D].
    """

    centre: jax.Array
    unit_scale: jax.Array
    basis: jax.Array
    weights: jax.Array
    means: jax.Array
    chols: jax.Array
    resid_sd: jax.Array

    @property
    def rank(self) -> int:
        return self.basis.shape[1]

    @property
    def components(self) -> int:
        return self.weights.shape[0]


def effective_sizes(n: int, D: int, rank: int, components: int) -> tuple[int, int]:
    """The rank and number of components actually fitted to n types in R^D:
    ``r = min(rank, n - 1, D)`` (n types span at most n - 1 centred directions) and
    ``K = min(components, n)``."""
    return max(0, min(rank, n - 1, D)), max(1, min(components, n))


def block_scale(types: jax.Array, blocks: tuple[int, ...] | None) -> jax.Array:
    """Per-coordinate scale [D]: the RMS of the block (leaf slice) each coordinate belongs to.

    blocks: widths of the consecutive blocks (sum = D); None: one block. A block that is all
    zero gets scale 1.
    """
    D = types.shape[1]
    blocks = (D,) if blocks is None else blocks
    if sum(blocks) != D or min(blocks) < 1:
        raise ValueError(f"blocks {blocks} must be positive widths summing to D = {D}")
    parts, start = [], 0
    for w in blocks:
        rms = jnp.sqrt(jnp.mean(types[:, start : start + w] ** 2))
        parts.append(jnp.full((w,), jnp.where(rms > 0, rms, 1.0)))
        start += w
    return jnp.concatenate(parts)


def top_directions(xc: jax.Array, key: jax.Array, r: int) -> jax.Array:
    """Top r right singular vectors of ``xc`` [n, D] as columns [D, r] (randomized range finder
    with ``OVERSAMPLE`` extra columns and ``POWER_ITERS`` power iterations; exact when
    ``r + OVERSAMPLE >= n``). Cost O(n D (r + OVERSAMPLE)), linear in n D."""
    n, D = xc.shape
    width = min(n, r + OVERSAMPLE)
    y = xc @ jax.random.normal(key, (D, width), xc.dtype)
    for _ in range(POWER_ITERS):
        q, _ = jnp.linalg.qr(y)
        y = xc @ (xc.T @ q)
    q, _ = jnp.linalg.qr(y)
    _, _, vt = jnp.linalg.svd(q.T @ xc, full_matrices=False)  # [width, D]: O(width^2 D)
    return vt[:r].T


def _log_gauss(z: jax.Array, means: jax.Array, chols: jax.Array) -> jax.Array:
    """``log N(z_i; m_k, L_k L_k^T)`` as [n, K] for z [n, r], means [K, r], chols [K, r, r]."""
    r = z.shape[1]
    diff = z[None] - means[:, None]  # [K, n, r]
    sol = jax.scipy.linalg.solve_triangular(chols, jnp.swapaxes(diff, 1, 2), lower=True)
    maha = jnp.sum(sol**2, axis=1)  # [K, n]
    logdet = 2 * jnp.sum(jnp.log(jnp.diagonal(chols, axis1=1, axis2=2)), axis=1)
    return (-0.5 * (maha + logdet[:, None] + r * jnp.log(2 * jnp.pi))).T


def fit_mixture(
    z: jax.Array, key: jax.Array, K: int, iters: int = EM_ITERS
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """MAP-EM for a K-component full-covariance Gaussian mixture on z [n, r].

    Starts at K distinct units (drawn from ``key``) as means, the pooled covariance ``P`` for
    every component. M-step ``S_k = (sum_i g_ik (z_i - m_k)(z_i - m_k)^T + tau P) / (N_k + tau)``
    with ``tau = r + 2`` (shrinkage towards ``P``, plus a 1e-6 relative ridge); ``iters`` steps.
    Returns (weights [K], means [K, r], chols [K, r, r]). Cost O(iters n K r^2).
    """
    n, r = z.shape
    pooled = jnp.cov(z.T, bias=True).reshape(r, r)
    ridge = 1e-6 * jnp.trace(pooled) / r + 1e-12
    prior = pooled + ridge * jnp.eye(r, dtype=z.dtype)
    tau = r + 2.0
    means = z[jax.random.permutation(key, n)[:K]]
    chols = jnp.broadcast_to(jnp.linalg.cholesky(prior), (K, r, r))
    logw = jnp.full((K,), -jnp.log(K), z.dtype)

    def step(_: int, state: tuple) -> tuple:
        logw, means, chols = state
        logp = logw + _log_gauss(z, means, chols)
        g = jax.nn.softmax(logp, axis=1)  # [n, K]
        nk = g.sum(0)
        means = (g.T @ z) / jnp.maximum(nk, 1e-12)[:, None]
        diff = z[None] - means[:, None]  # [K, n, r]
        scatter = jnp.einsum("nk,kni,knj->kij", g, diff, diff)
        covs = (scatter + tau * prior) / (nk + tau)[:, None, None]
        return jnp.log(jnp.maximum(nk, 1e-12) / n), means, jnp.linalg.cholesky(covs)

    logw, means, chols = jax.lax.fori_loop(0, iters, step, (logw, means, chols))
    return jnp.exp(logw), means, chols


@partial(jax.jit, static_argnames=("rank", "components", "blocks"))
def fit_rc_measure(
    types: jax.Array,
    key: jax.Array,
    *,
    rank: int = 8,
    components: int = 2,
    blocks: tuple[int, ...] | None = None,
) -> RCMeasure:
    """Fit the measure of the module docstring to ``types`` [n, D] (n >= 2 units).

    rank, components: upper bounds (see :func:`effective_sizes`). blocks: the widths of the leaf
    slices that make up a type (per-block standardisation). Deterministic under ``key``.
    Cost O(n D (r + OVERSAMPLE)) + O(n K r^2): linear in the number of weights n D.
    """
    n, D = types.shape
    if n < 2:
        raise ValueError(f"fit_rc_measure needs at least 2 units to fit a spread, got n = {n}")
    r, K = effective_sizes(n, D, rank, components)
    types = types.astype(jnp.promote_types(types.dtype, jnp.float32))
    k_dir, k_em = jax.random.split(key)
    scale = block_scale(types, blocks)
    x = types / scale
    centre = x.mean(0)
    xc = x - centre
    basis = top_directions(xc, k_dir, r) if r else jnp.zeros((D, 0), x.dtype)
    basis = jnp.where(jnp.any(xc != 0, axis=0)[:, None], basis, 0.0)  # constants stay exact
    z = xc @ basis
    resid = xc - z @ basis.T
    resid_sd = jnp.sqrt(jnp.sum(resid**2, 0) / max(n - 1 - r, 1))
    if r:
        weights, means, chols = fit_mixture(z, k_em, K)
    else:
        weights, means, chols = jnp.ones((1,), x.dtype), jnp.zeros((1, 0)), jnp.zeros((1, 0, 0))
    return RCMeasure(centre, scale, basis, weights, means, chols, resid_sd)


@partial(jax.jit, static_argnames=("num",))
def sample_rc_measure(measure: RCMeasure, key: jax.Array, num: int) -> jax.Array:
    """Draw ``num`` i.i.d. types [num, D] from a fitted measure. Cost O(num D r)."""
    k_comp, k_z, k_e = jax.random.split(key, 3)
    comp = jax.random.categorical(k_comp, jnp.log(measure.weights), shape=(num,))
    eps = jax.random.normal(k_z, (num, measure.rank), measure.centre.dtype)
    z = measure.means[comp] + jnp.einsum("nij,nj->ni", measure.chols[comp], eps)
    e = jax.random.normal(k_e, (num, measure.centre.shape[0]), measure.centre.dtype)
    x = measure.centre + z @ measure.basis.T + measure.resid_sd * e
    return x * measure.unit_scale


def measure_mean_cov(measure: RCMeasure) -> tuple[jax.Array, jax.Array]:
    """Mean [D] and covariance [D, D] of the fitted measure (in type units; for tests and
    diagnostics -- D^2 memory)."""
    w = measure.weights
    mz = w @ measure.means
    covs = jnp.einsum("kij,klj->kil", measure.chols, measure.chols)
    dz = measure.means - mz
    cz = jnp.einsum("k,kij->ij", w, covs) + jnp.einsum("k,ki,kj->ij", w, dz, dz)
    mean = (measure.centre + measure.basis @ mz) * measure.unit_scale
    cov = measure.basis @ cz @ measure.basis.T + jnp.diag(measure.resid_sd**2)
    return mean, cov * jnp.outer(measure.unit_scale, measure.unit_scale)
