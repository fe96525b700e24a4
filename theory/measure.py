"""Empirical RC measures of units and the samplers that draw new units from them.

Under the row-column (RC) ansatz a layer of width n is a sample of n unit *types* from a measure
mu; the small network's empirical measure is ``mu_n = (1/n) sum_k delta_{theta_k}``. Growing the
layer to N units means drawing N types from (an estimate of) mu, i.e. choosing an index map
``g: [N] -> [n]`` with counts ``c_k = |g^{-1}(k)|``, and possibly perturbing the drawn types
(kernel smoothing). Each new unit's fan-in slice carries a scale ``s_i``:

- ``exact``: ``s_i = 1 / c_{g(i)}``. For any map that keeps every unit (``c_k >= 1``) the copies'
  contributions sum to the source unit's, so the grown network computes the small one's
  function exactly.
- ``unbiased``: ``s_i = n / N``. Then ``sum_i s_i w_{g(i)} phi_{g(i)} = sum_k (n c_k / N) w_k
  phi_k``, and ``E[c_k] = N / n`` for ``iid`` and ``balanced`` maps, so each layer's
  pre-activation is unbiased given its inputs, with variance O(1/N) for ``iid`` (law of large
  numbers) and exactly zero error for ``balanced`` maps when n divides N.

Normalised spaces (LayerNorm/RMSNorm over the space) keep their statistics only if every unit
has the same count. For ``N = k n + r`` with ``0 < r < n`` the exact alternative is a *padded* map
(:func:`padded_map`, LEMON's rule): k tiled copies of every unit plus r *pad slots* that copy no
unit (the engine fills them with the row mean for LayerNorm, zero for RMSNorm, and rescales the
norm's gain and eps).

All functions are pure and jit-friendly; sizes are static Python ints.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

SAMPLERS = ("balanced", "iid", "smoothed")
SCALINGS = ("exact", "unbiased")


class SpaceMap(NamedTuple):
    """How one neuron space of size n becomes size N.

    index:  int32 [N]   source unit ``g(i)`` of each new unit (0 at pad slots, unused).
    counts: int32 [n]   ``c_k = |g^{-1}(k)|`` (0 for units dropped when pruning; pads not counted).
    scale:  float32 [N] fan-in scale ``s_i`` (0 at pad slots: they carry no source unit).
    pad:    bool [N] or None   pad slots of a padded map (:func:`padded_map`); None: no pads.
    """

    index: jax.Array
    counts: jax.Array
    scale: jax.Array
    pad: jax.Array | None = None


def balanced_index(key: jax.Array, n: int, N: int) -> jax.Array:
    """Stratified map: every unit used ``floor(N/n)`` or ``ceil(N/n)`` times.

    ``N = q n + r``: the first ``q n`` new units tile the sources in order (so unit ``i < n`` is
    the original unit i when N >= n); the last r are r distinct units drawn without replacement.
    For N < n (pruning, q = 0) this is uniform sampling without replacement. Returns int32 [N].
    """
    q, r = divmod(N, n)
    tiled = jnp.tile(jnp.arange(n, dtype=jnp.int32), q)
    extra = jax.random.permutation(key, n)[:r].astype(jnp.int32)
    return jnp.concatenate([tiled, extra])


def iid_index(key: jax.Array, n: int, N: int) -> jax.Array:
    """i.i.d. uniform map ``g(i) ~ U[n]``: an N-sample of the empirical measure. int32 [N]."""
    return jax.random.randint(key, (N,), 0, n, dtype=jnp.int32)


def unit_counts(index: jax.Array, n: int) -> jax.Array:
    """``c_k = |g^{-1}(k)|`` as int32 [n]."""
    return jnp.bincount(index, length=n).astype(jnp.int32)


def fan_in_scale(index: jax.Array, counts: jax.Array, scaling: str) -> jax.Array:
    """Fan-in scale per new unit: ``1/c_{g(i)}`` (exact) or ``n/N`` (unbiased). float32 [N]
    (float64 when ``jax_enable_x64`` is on, so that float64 models grow to float64 precision)."""
    n, N = counts.shape[0], index.shape[0]
    dtype = jnp.result_type(float)
    if scaling == "exact":
        return 1.0 / jnp.maximum(counts[index], 1).astype(dtype)
    if scaling == "unbiased":
        return jnp.full((N,), n / N, dtype)
    raise ValueError(f"scaling {scaling!r}: expected one of {SCALINGS}")


@partial(jax.jit, static_argnums=(1, 2, 3, 4))
def sample_space(key: jax.Array, n: int, N: int, sampler: str, scaling: str) -> SpaceMap:
    """Draw the index map, counts and fan-in scales that grow (or prune) a space n -> N.

    ``smoothed`` uses the balanced map here; its kernel perturbation of the drawn types is applied
    to the parameter slices by :func:`kernel_perturbation` (it needs the weights).
    """
    if sampler in ("balanced", "smoothed"):
        index = balanced_index(key, n, N)
    elif sampler == "iid":
        index = iid_index(key, n, N)
    else:
        raise ValueError(f"sampler {sampler!r}: expected one of {SAMPLERS}")
    counts = unit_counts(index, n)
    return SpaceMap(index, counts, fan_in_scale(index, counts, scaling))


def padded_map(n: int, N: int) -> SpaceMap:
    """LEMON's exact map for a normalised space, ``N = k n + r`` (``k >= 1``, ``0 <= r < n``).

    The first ``k n`` new units tile the sources in order (every count is k, scale ``1/k``,
    exact and unbiased alike: the copies are the sample), the last r are pad slots. Why it is
    exact for a vector ``x`` of n entries and its image ``x'`` (copies, then r pads):

    - LayerNorm, pads = ``mean(x)``: ``mean(x') = mean(x)``, ``var(x') = (kn/N) var(x)``, so with
      ``eps' = (kn/N) eps`` and gain ``gamma' = sqrt(kn/N) gamma`` every copy's output is its
      source's, and a pad's output is ``0 * gamma' + beta'`` -- zero when the pad bias is 0.
    - RMSNorm, pads = 0: ``ms(x') = (kn/N) ms(x)``, same gain/eps rule, pads output 0.

    Fan-in readers of the space then see the copies (scaled ``1/k``) and zeros at the pads.
    """
    k, r = divmod(N, n)
    if k < 1:
        raise ValueError(f"padded_map {n} -> {N}: needs N >= n")
    index = jnp.concatenate([jnp.tile(jnp.arange(n, dtype=jnp.int32), k), jnp.zeros(r, jnp.int32)])
    pad = jnp.arange(N) >= k * n
    scale = jnp.where(pad, 0.0, 1.0 / k).astype(jnp.result_type(float))
    return SpaceMap(index, jnp.full((n,), k, jnp.int32), scale, pad)


def pair_map(m: SpaceMap) -> SpaceMap:
    """Expand a map drawn on n pairs to the 2n entries of a paired space (units ``(i, i + n)``).

    Entry ``j < N`` is the first half of new pair j (source entry ``g(j)``), entry ``N + j`` its
    second half (source ``n + g(j)``); both carry pair j's scale (rotate-half rotary layout).
    """
    n = m.counts.shape[0]
    pad = None if m.pad is None else jnp.concatenate([m.pad, m.pad])
    return SpaceMap(
        jnp.concatenate([m.index, m.index + n]),
        jnp.concatenate([m.counts, m.counts]),
        jnp.concatenate([m.scale, m.scale]),
        pad,
    )


def zero_sum_noise(
    key: jax.Array,
    shape: tuple[int, ...],
    index: jax.Array,
    n: int,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """Standard normal noise on axis 0 (length N), centred within each group of copies.

    ``zeta[i] = z[i] - mean_{j: g(j) = g(i)} z[j]``, so ``sum_{i: g(i)=k} zeta[i] = 0`` for every
    source unit k and every entry of the trailing axes. Units copied once get zero noise.
    Returns ``dtype`` (default float32) of ``shape`` (``shape[0] == N``).
    """
    z = jax.random.normal(key, shape, dtype)
    sums = jax.ops.segment_sum(z, index, num_segments=n)
    counts = jnp.maximum(unit_counts(index, n), 1).astype(dtype)
    means = sums / counts.reshape((n,) + (1,) * (len(shape) - 1))
    return z - means[index]


def kernel_perturbation(key: jax.Array, x: jax.Array, bandwidth: float) -> jax.Array:
    """Gaussian-kernel (KDE) perturbation of unit types: ``x + h * sd(x) * z``.

    The bandwidth h is relative to the leaf's own spread ``sd(x)`` (over all entries), so the
    same h means the same smoothing for every layer. Returns an array like ``x``.
    """
    sd = jnp.std(x)
    return x + bandwidth * sd * jax.random.normal(key, x.shape, x.dtype)
