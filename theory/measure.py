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

SAMPLERS = ("balanced", "iid", "smoothed", "net2net")
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


def net2net_index(key: jax.Array, n: int, N: int) -> jax.Array:
    """Net2Net's random mapping: ``g(i) = i`` for ``i < n``, ``g(i) ~ U[n]`` i.i.d. for ``i >= n``.

    Every source unit is kept (``c_k >= 1`` when N >= n) but the extra copies land unevenly, so
    the map is exact with ``1/c`` fan-in scaling and not balanced (norm statistics move). For
    N < n it keeps the first N units. int32 [N] (Chen, Goodfellow, Shlens, ICLR 2016; also
    bert2BERT's FPI map).
    """
    head = jnp.arange(min(n, N), dtype=jnp.int32)
    tail = jax.random.randint(key, (max(N - n, 0),), 0, n, dtype=jnp.int32)
    return jnp.concatenate([head, tail])


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
    to the parameter slices by ``growth.width`` (it needs the weights).
    """
    if sampler in ("balanced", "smoothed"):
        index = balanced_index(key, n, N)
    elif sampler == "iid":
        index = iid_index(key, n, N)
    elif sampler == "net2net":
        index = net2net_index(key, n, N)
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


def copy_partner(index: jax.Array) -> jax.Array:
    """The next copy of the same source unit, cyclically: ``partner[i] = j`` with ``g(j) = g(i)``.

    A permutation of [N] within each group of copies (a fixed point for units copied once).
    Built with a stable sort, so it is jit-friendly and independent of any sharding. int32 [N].
    """
    N = index.shape[0]
    order = jnp.argsort(index, stable=True)
    sorted_g = index[order]
    first = jnp.searchsorted(sorted_g, sorted_g, side="left")  # group start, per sorted slot
    nxt = jnp.arange(1, N + 1)
    wrap = (nxt >= N) | (sorted_g[jnp.minimum(nxt, N - 1)] != sorted_g)
    partner_sorted = jnp.where(wrap, first, nxt)
    return jnp.zeros(N, jnp.int32).at[order].set(order[partner_sorted].astype(jnp.int32))


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: an avalanching bijection of uint32 (2 multiplies)."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def counter_noise(
    key: jax.Array,
    shape: tuple[int, ...],
    dtype: jnp.dtype = jnp.float32,
    index: jax.Array | None = None,
) -> jax.Array:
    """Zero-mean, unit-variance noise of ``shape``, one hash per entry (no PRNG stream).

    Entry ``c = (c_0, ..., c_{k-1})`` gets ``sqrt(12) (u - 1/2)`` with ``u`` uniform on
    ``2^-24 ([0, 2^24) + 1/2)``, taken from ``fmix32(fmix32(golden * flat(c) ^ seed) + seed)``:
    ``flat(c)`` is the row-major position (mod 2^32) and ``seed`` one 32-bit word drawn from
    ``key``. ``index`` (int [shape[0]], optional) evaluates the same field at ``c_0 -> index[c_0]``,
    so the noise of a permuted position is computed, not gathered. Every entry is a pure
    function of its coordinates: the result is bit-identical however the array is sharded, and
    writing it costs about a memory copy (threefry normals cost ~9x that on CPU). The
    distribution is uniform, not normal: symmetry breaking needs zero mean and a spread, and
    ``sigma`` keeps meaning one standard deviation. Positions repeat only beyond 2^32 entries.
    """
    seed = jax.random.bits(key, (), jnp.uint32)
    flat = jax.lax.broadcasted_iota(jnp.uint32, shape, 0)
    if index is not None:
        rows = index.astype(jnp.uint32).reshape((-1,) + (1,) * (len(shape) - 1))
        flat = jnp.broadcast_to(rows, shape)
    for ax in range(1, len(shape)):
        flat = flat * jnp.uint32(shape[ax]) + jax.lax.broadcasted_iota(jnp.uint32, shape, ax)
    h = _fmix32(_fmix32(flat * jnp.uint32(0x9E3779B9) ^ seed) + seed)
    u = (h >> 8).astype(dtype) * 2.0**-24 - (0.5 - 2.0**-25)
    return u * jnp.asarray(12.0**0.5, dtype)


def zero_sum_noise(
    key: jax.Array,
    shape: tuple[int, ...],
    index: jax.Array,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """Noise on axis 0 (length N) that sums to zero within each group of copies.

    ``zeta[i] = (z[i] - z[partner(i)]) / sqrt(2)`` with :func:`copy_partner` and ``z`` the
    :func:`counter_noise` field (``z[partner(i)]`` is evaluated at the partner's coordinates,
    not gathered): since the partner map permutes each group,
    ``sum_{i: g(i)=k} zeta[i] = 0`` for every source unit k and every entry of the trailing
    axes, each entry has zero mean and unit variance, and units copied once get exactly zero.
    Each entry is a function of its own coordinates -- no reduction, no gather of noise -- so the
    result is bit-identical however the arrays are sharded.
    Returns ``dtype`` (default float32) of ``shape`` (``shape[0] == N``).
    """
    z = counter_noise(key, shape, dtype)
    z_partner = counter_noise(key, shape, dtype, index=copy_partner(index))
    return (z - z_partner) * jnp.asarray(2.0**-0.5, dtype)
