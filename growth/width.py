"""Width growth: apply per-space index maps to every leaf of a params pytree (one jitted call).

For a leaf axis in space S with map ``g`` and fan-in scales ``s`` (see ``theory.measure``):

- ``out`` axis:  ``new[i] = old[g(i)]`` (+ ``h sd zeta`` when the space is kernel-smoothed);
- ``in`` axis:   ``new[..., i] = s_i (old[..., g(i)] + sigma sd xi[..., i])`` where ``xi`` is the
  symmetry-breaking noise: zero for ``none``; centred within each group of copies for
  ``zero-sum`` (so ``sum_{i: g(i)=k} s_i xi[..., i] = 0`` whenever the copies of a unit share
  one scale -- true for ``exact`` and ``unbiased`` scaling -- and the function is unchanged);
  i.i.d. normal for ``noise`` (Net2Net; the function moves by O(sigma)).

``sd`` is the standard deviation of the source leaf's entries, so ``sigma`` and the smoothing
bandwidth ``h`` are relative sizes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

import jax
import jax.numpy as jnp

from growth.spec import LeafSpec
from theory.measure import SpaceMap, zero_sum_noise

SYMMETRY = ("none", "zero-sum", "noise")


def _along(v: jax.Array, ndim: int, axis: int) -> jax.Array:
    """Reshape a vector so it broadcasts along ``axis`` of an ndim-array."""
    shape = [1] * ndim
    shape[axis] = v.shape[0]
    return v.reshape(shape)


def _grow_axis(
    x: jax.Array,
    axis: int,
    role: str,
    m: SpaceMap,
    key: jax.Array,
    sd: jax.Array,
    symmetry: str,
    sigma: float,
    bandwidth: float,
) -> jax.Array:
    """Grow one axis of one leaf (float32 in, float32 out)."""
    k_smooth, k_sym = jax.random.split(key)
    x = jnp.take(x, m.index, axis=axis)
    if bandwidth > 0:
        x = x + bandwidth * sd * jax.random.normal(k_smooth, x.shape, x.dtype)
    if role != "in":
        return x
    if symmetry == "zero-sum" and sigma > 0:
        moved = jnp.moveaxis(x, axis, 0).shape
        xi = zero_sum_noise(k_sym, moved, m.index, m.counts.shape[0])
        x = x + sigma * sd * jnp.moveaxis(xi, 0, axis)
    elif symmetry == "noise" and sigma > 0:
        x = x + sigma * sd * jax.random.normal(k_sym, x.shape, x.dtype)
    return x * _along(m.scale, x.ndim, axis)


@partial(jax.jit, static_argnames=("leaf_specs", "symmetry", "sigma", "bandwidth"))
def apply_width(
    leaves: Sequence[jax.Array],
    maps: Mapping[str, SpaceMap],
    key: jax.Array,
    *,
    leaf_specs: tuple[LeafSpec, ...],
    symmetry: str = "none",
    sigma: float = 0.0,
    bandwidth: float = 0.0,
) -> list[jax.Array]:
    """Grow every leaf along its width axes whose space is in ``maps``.

    leaves: arrays in tree order, ``leaves[j]`` described by ``leaf_specs[j]``.
    maps: space -> SpaceMap (spaces absent from ``maps`` keep their size).
    Returns the new leaves, each with its source dtype.
    """
    if symmetry not in SYMMETRY:
        raise ValueError(f"symmetry {symmetry!r}: expected one of {SYMMETRY}")
    out = []
    for j, (leaf, spec) in enumerate(zip(leaves, leaf_specs, strict=True)):
        grown = [
            (ax, a) for ax, a in enumerate(spec.axes) if a and a.role != "depth" and a.space in maps
        ]
        if not grown:
            out.append(leaf)
            continue
        x = leaf.astype(jnp.float32)
        sd = jnp.std(x)
        key_leaf = jax.random.fold_in(key, j)
        for ax, a in grown:
            x = _grow_axis(
                x,
                ax,
                a.role,
                maps[a.space],
                jax.random.fold_in(key_leaf, ax),
                sd,
                symmetry,
                sigma,
                bandwidth,
            )
        out.append(x.astype(leaf.dtype))
    return out
