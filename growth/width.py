"""Width growth: apply per-space index maps to every leaf of a params pytree (one jitted call),
or draw a space's units from a fitted RC measure (:func:`draw_space`, the ``fitted`` sampler:
no index map; new slices are sampled from ``theory.rc_measure``, see the end of this module).

For a leaf axis in space S with map ``g`` and fan-in scales ``s`` (see ``theory.measure``):

- ``out`` axis:  ``new[i] = old[g(i)]`` (+ ``h sd zeta`` when the space is kernel-smoothed,
  ``zeta`` centred within each group of copies: an *antithetic* kernel on the units'
  features, so the copies' mean feature is the source unit's and, with equal fan-in weights on
  the copies, the function moves only at second order, O(h^2); zero-sum fan-in noise on top adds
  a first-order cross term ``sigma h`` whose mean over draws is zero);
- ``in`` axis:   ``new[..., i] = s_i (old[..., g(i)] + sigma sd xi[..., i])`` where ``xi`` is the
  symmetry-breaking noise: zero for ``none``; centred within each group of copies for
  ``zero-sum`` (so ``sum_{i: g(i)=k} s_i xi[..., i] = 0`` whenever the copies of a unit share
  one scale -- true for ``exact`` and ``unbiased`` scaling -- and the function is unchanged);
  i.i.d. for ``noise`` (Net2Net; the function moves by O(sigma)).

All noise is ``theory.measure.counter_noise`` (zero mean, unit variance, a hash of each entry's
coordinates: about as cheap as writing the entry, and independent of sharding).

``sd`` is the standard deviation of the source leaf's entries, so ``sigma`` and the smoothing
bandwidth ``h`` are relative sizes.

Padded maps (``theory.measure.padded_map``, a normalised space grown to ``N = k n + r``) add r pad
slots. With ``f = k n / N`` and the space's norm kind (from the ``norm`` leaves):

- ``out`` axis of a norm gain: ``new = sqrt(f) old[g]``, pads get the mean gain (any value works);
- ``out`` axis of a norm bias: ``new = old[g]``, pads 0;
- any other ``out`` axis (the writers of the space, e.g. residual-branch outputs, embeddings):
  pads get the mean over the units along that axis (LayerNorm) or 0 (RMSNorm), so the padded
  slots of the normalised vector hold its mean (its zero) -- linear, hence kept by every sum
  of writers;
- ``in`` axis: pads read the normalised vector where it is exactly 0, so their weights do not
  change the function: 0 without symmetry breaking, ``sigma sd z mean(s)`` with it (so the pads
  are not a dead saddle: with all-zero pad weights an RMSNorm pad never gets a gradient).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from growth.errors import GrowthError
from growth.spec import LeafSpec, pad_kind
from theory.measure import SpaceMap, counter_noise, zero_sum_noise
from theory.rc_measure import fit_rc_measure, sample_rc_measure

SYMMETRY = ("none", "zero-sum", "noise")


def along(v: jax.Array, ndim: int, axis: int) -> jax.Array:
    """Reshape a vector so it broadcasts along ``axis`` of an ndim-array."""
    shape = [1] * ndim
    shape[axis] = v.shape[0]
    return v.reshape(shape)


def _mean_real(x: jax.Array, axis: int, pad: jax.Array) -> jax.Array:
    """Mean of x along ``axis`` over the non-pad slots (keepdims)."""
    real = along(~pad, x.ndim, axis)
    return jnp.sum(jnp.where(real, x, 0.0), axis, keepdims=True) / jnp.sum(~pad).astype(x.dtype)


def _fill_pads(
    x: jax.Array, axis: int, role: str, pad: jax.Array, kind: str, part: str | None
) -> jax.Array:
    """Set the pad slots of a gathered axis (see the module docstring); scale norm gains."""
    at = along(pad, x.ndim, axis)
    if role == "in" or part == "bias" or (part is None and kind == "rms"):
        return jnp.where(at, 0.0, x)
    if part == "gain":
        x = x * jnp.sqrt(jnp.mean(~pad, dtype=x.dtype))
    return jnp.where(at, _mean_real(x, axis, pad), x)


def _centred_noise(key: jax.Array, x: jax.Array, axis: int, m: SpaceMap) -> jax.Array:
    """Unit-variance noise like ``x``, centred along ``axis`` within each group of copies
    (``theory.measure.zero_sum_noise``); pad slots form a group of their own."""
    n = m.counts.shape[0]
    groups = m.index if m.pad is None else jnp.where(m.pad, n, m.index)
    moved = jnp.moveaxis(x, axis, 0).shape
    xi = zero_sum_noise(key, moved, groups, dtype=x.dtype)
    return jnp.moveaxis(xi, 0, axis)


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
    kind: str | None = None,
    part: str | None = None,
) -> jax.Array:
    """Grow one axis of one leaf (in the compute dtype: float32, or float64 for float64 leaves).

    kind: norm kind of the space (needed for padded maps); part: the leaf's norm part.
    """
    k_smooth, k_sym = jax.random.split(key)
    x = jnp.take(x, m.index, axis=axis)
    if m.pad is not None:
        x = _fill_pads(x, axis, role, m.pad, kind, part)
    if role != "in":
        if bandwidth > 0:
            x = x + bandwidth * sd * _centred_noise(k_smooth, x, axis, m)
        return x
    if symmetry == "zero-sum" and sigma > 0:
        x = x + sigma * sd * _centred_noise(k_sym, x, axis, m)
    elif symmetry == "noise" and sigma > 0:
        x = x + sigma * sd * counter_noise(k_sym, x.shape, x.dtype)
    x = x * along(m.scale.astype(x.dtype), x.ndim, axis)
    if m.pad is not None and symmetry != "none" and sigma > 0:
        s_bar = (jnp.sum(m.scale) / jnp.sum(~m.pad)).astype(x.dtype)
        z = counter_noise(jax.random.fold_in(k_sym, 1), x.shape, x.dtype)
        x = x + jnp.where(along(m.pad, x.ndim, axis), sigma * sd * s_bar * z, 0.0)
    return x


@partial(
    jax.jit, static_argnames=("spec", "kinds", "symmetry", "sigma", "bandwidth", "out_sharding")
)
def _grow_leaf(
    leaf: jax.Array,
    maps: Mapping[str, SpaceMap],
    key: jax.Array,
    position: jax.Array,
    sd: jax.Array,
    *,
    spec: LeafSpec,
    kinds: tuple[tuple[str, str | None], ...],
    symmetry: str,
    sigma: float,
    bandwidth: float,
    out_sharding: Any,
) -> jax.Array:
    """Grow one leaf along its width axes whose space is in ``maps`` (see :func:`apply_width`)."""
    kind = dict(kinds)
    x = leaf.astype(jnp.promote_types(leaf.dtype, jnp.float32))
    sd = sd.astype(x.dtype)
    key_leaf = jax.random.fold_in(key, position)
    for ax, a in enumerate(spec.axes):
        if a is None or a.role == "depth" or a.space not in maps:
            continue
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
            kind.get(a.space),
            spec.norm_part,
        )
    (x,) = constrain([x.astype(leaf.dtype)], (out_sharding,))
    return x


def apply_width(
    leaves: Sequence[jax.Array],
    maps: Mapping[str, SpaceMap],
    key: jax.Array,
    spreads: Sequence[float],
    *,
    leaf_specs: tuple[LeafSpec, ...],
    symmetry: str = "none",
    sigma: float = 0.0,
    bandwidth: float = 0.0,
    out_shardings: tuple | None = None,
    first_leaf: int = 0,
    norm_specs: tuple[LeafSpec, ...] | None = None,
) -> list[jax.Array]:
    """Grow every leaf along its width axes whose space is in ``maps``.

    leaves: arrays in tree order, ``leaves[j]`` described by ``leaf_specs[j]``.
    maps: space -> SpaceMap (spaces absent from ``maps`` keep their size).
    spreads: per-leaf standard deviation of the source entries (the ``sd`` above), computed
    once by the plan, so the noise does not depend on how a reduction is partitioned.
    out_shardings: per-leaf sharding of the result (or None): growth of a sharded pytree stays
    sharded, never gathered on one device.
    first_leaf: tree position of ``leaves[0]`` (the noise of leaf j is keyed by its position,
    so growing a slice of the leaves -- streaming -- gives the same result as the whole tree).
    norm_specs: the specs of the whole tree when ``leaves`` are a slice of it, so a padded
    map finds its space's norm kind on norm leaves outside the slice (default ``leaf_specs``).
    Computes in float32 (float64 for float64 leaves); returns each leaf in its source dtype.

    Each leaf is one jitted call (compiled once per leaf signature): XLA's CPU runtime runs one
    program holding every leaf's gathers ~3x slower than the same gathers as separate programs
    (measured: two 64 MB leaves 0.55 s in one program, 0.17 s as two, a plain copy 0.19 s).
    """
    if symmetry not in SYMMETRY:
        raise ValueError(f"symmetry {symmetry!r}: expected one of {SYMMETRY}")
    kinds = {}
    for space, m in maps.items():
        if m.pad is not None:
            kinds[space] = pad_kind(norm_specs or leaf_specs, space)
            if kinds[space] is None:
                raise GrowthError(
                    f"space {space!r}: a padded map needs one named norm kind on the space's "
                    "norm leaves (LeafSpec norm='layer-gain'/'layer-bias'/'rms-gain')"
                )
    out = []
    for j, (leaf, spec) in enumerate(zip(leaves, leaf_specs, strict=True)):
        spaces = {a.space for a in spec.axes if a and a.role != "depth" and a.space in maps}
        if not spaces:
            out.append(leaf)
            continue
        grown = _grow_leaf(
            leaf,
            {s: maps[s] for s in sorted(spaces)},
            key,
            jnp.int32(first_leaf + j),
            jnp.asarray(spreads[j], jnp.result_type(float)),
            spec=spec,
            kinds=tuple(sorted((s, kinds.get(s)) for s in spaces)),
            symmetry=symmetry,
            sigma=sigma,
            bandwidth=bandwidth,
            out_sharding=None if out_shardings is None else out_shardings[j],
        )
        out.append(grown)
    return out


def constrain(leaves: list[jax.Array], shardings: tuple | None) -> list[jax.Array]:
    """Pin each leaf to its sharding (inside jit); None entries are left to the compiler."""
    if shardings is None:
        return leaves
    return [
        x if s is None else jax.lax.with_sharding_constraint(x, s)
        for x, s in zip(leaves, shardings, strict=True)
    ]


# ---------------------------------------------------------------------------------------------
# width growth by sampling: new units drawn from a fitted RC measure (theory.rc_measure)
# ---------------------------------------------------------------------------------------------


def space_axes(leaf_specs: Sequence[LeafSpec], space: str) -> list[tuple[int, int, str]]:
    """``(leaf position, axis, role)`` of every width axis over ``space``, in tree order.

    Raises GrowthError for a leaf with two axes over the space (a unit's slice of it is then
    not a vector: ``W[i, j]`` belongs to two units of the same space).
    """
    found = []
    for j, spec in enumerate(leaf_specs):
        axes = [(ax, a.role) for ax, a in enumerate(spec.axes) if a and a.space == space]
        if len(axes) > 1:
            raise GrowthError(
                f"space {space!r}: leaf {j} has {len(axes)} axes over it; a fitted measure of "
                "unit types needs each leaf to index a unit on one axis"
            )
        found += [(j, ax, role) for ax, role in axes if role != "depth"]
    return found


def unit_view(x: jax.Array, axis: int, paired: bool) -> jax.Array:
    """``x`` as [units, rest]: ``axis`` first, the rest flattened. A paired axis (units are the
    entry pairs ``(i, i + n/2)``) gives n/2 units, each holding both entries' slices."""
    y = jnp.moveaxis(x, axis, 0)
    if paired:
        y = jnp.swapaxes(y.reshape((2, y.shape[0] // 2) + y.shape[1:]), 0, 1)
    return y.reshape(y.shape[0], -1)


def from_unit_view(u: jax.Array, axis: int, like: tuple[int, ...], paired: bool) -> jax.Array:
    """Inverse of :func:`unit_view`: [units, rest] back to an array shaped like ``like`` except
    along ``axis`` (units, or 2 * units for a paired axis)."""
    rest = tuple(s for ax, s in enumerate(like) if ax != axis)
    if paired:
        y = u.reshape((u.shape[0], 2) + rest)
        y = jnp.swapaxes(y, 0, 1).reshape((2 * u.shape[0],) + rest)
    else:
        y = u.reshape((u.shape[0],) + rest)
    return jnp.moveaxis(y, 0, axis)


def draw_space(
    leaves: list[jax.Array],
    leaf_specs: Sequence[LeafSpec],
    space: str,
    N: int,
    key: jax.Array,
    *,
    keep_source: bool,
    rank: int,
    components: int,
    paired: bool = False,
) -> list[jax.Array]:
    """Grow ``space`` to N entries by drawing unit types from the measure fitted to its units.

    A unit's type is the concatenation of its slices on every axis over the space (its ``out``
    slices: incoming weights, biases, gains; its ``in`` slices: the weights that read it), so
    one draw sets both ends of the unit (the RC tie). ``keep_source=False`` (``fitted``): all N
    units are drawn and every ``in`` slice is scaled by ``n / N`` (mean-field sampling: given its
    inputs, each reader's pre-activation is an unbiased estimate of the fitted measure's,
    ``n E_mu[b phi(a . x)]``; pruning for N < n). ``keep_source=True`` (``fitted-preserving``):
    the n source units are kept bit for bit, the ``N - n`` new ones are drawn and their ``in``
    slices set to 0, so they start contributing exactly nothing. Computes in float32 (float64
    for float64 leaves); returns each leaf in its dtype.
    """
    where = space_axes(leaf_specs, space)
    dtype = jnp.promote_types(jnp.result_type(*[leaves[j] for j, _, _ in where]), jnp.float32)
    views = [unit_view(leaves[j].astype(dtype), ax, paired) for j, ax, _ in where]
    n = views[0].shape[0]
    units = N // 2 if paired else N
    drawn = units - n if keep_source else units
    out = list(leaves)
    if drawn <= 0 and keep_source:
        return out
    k_fit, k_draw = jax.random.split(key)
    widths = tuple(v.shape[1] for v in views)
    measure = fit_rc_measure(
        jnp.concatenate(views, 1), k_fit, rank=rank, components=components, blocks=widths
    )
    new = sample_rc_measure(measure, k_draw, drawn)
    start = 0
    for (j, ax, role), v, w in zip(where, views, widths, strict=True):
        part = new[:, start : start + w]
        start += w
        if keep_source:
            part = jnp.concatenate([v, jnp.zeros_like(part) if role == "in" else part])
        elif role == "in":
            part = part * (n / units)
        out[j] = from_unit_view(part, ax, leaves[j].shape, paired).astype(leaves[j].dtype)
    return out
