"""Plasticity pieces of growth: fresh new units, fresh new blocks, a rescaled residual stream.

Copy growth keeps a trained model's weights, which sit far above a fresh init (2-13x in RMS on
the demo) and so move slowly under Adam's fixed-size steps, and its copies start identical. Each
piece below uses an exact symmetry of the function, so the grown model still computes the source
function at step 0 (to float32 rounding), while its weights look more like a fresh large model:

- **fresh units** (``Method.new_units="fresh"``), on spaces not under a norm: the map keeps each
  source unit once (fan-in scale 1) and appends ``N - n`` new units (:func:`extend_map`). A new
  unit's *fan-in* (its ``out``-axis slices: the weights that compute it) is fresh -- taken from
  a fresh init of the large model when one is given, else drawn at the source leaf's spread --
  and its *fan-out* (its ``in``-axis slices: every weight that reads it) is 0. A unit that nobody
  reads does not change the function, whatever it computes; its fan-out gets a gradient at once
  (its activation is non-zero), its fan-in one step later.
- **fresh blocks** (``Method.new_blocks="fresh"``, depth rule ``identity``): a new block's
  residual output projection is 0 (so the block computes the identity), and every other leaf of
  it is fresh. With copied ``w1`` and ``w2 = 0`` a new block's hidden units stay identical
  copies forever (zero-sum noise lives on fan-in slices, and the block has none that act).
- **stream scale** (``Method.stream_scale = a``): every leaf that writes a normalised space
  (``out`` axis on a space with LayerNorm/RMSNorm leaves, the norm leaves themselves excluded:
  embeddings, residual output projections and their biases) is multiplied by ``a`` and the norms'
  eps by ``a^2`` (``GrowthReport.stream_scale``; the model family applies it). The stream is
  then ``a x``, and ``LN(a x)`` with eps ``a^2 e`` equals ``LN(x)`` with eps ``e``:
  ``(a x - a m) / sqrt(a^2 v + a^2 e) = (x - m) / sqrt(v + e)``, the same for RMSNorm. Exact
  only when every reader of the space reads it through such a norm (pre-norm residual streams,
  e.g. ``resmlp`` and ``decoder``); a tied readout reads the embedding directly, so its
  multiplier is divided by ``a``. Post-LN models (BERT) are not scale invariant this way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from growth.depth import DepthMap
from growth.spec import LeafSpec, ResolvedSpec
from growth.width import along
from theory.measure import SpaceMap, counter_noise, unit_counts

NEW_UNITS = ("copy", "fresh")


def extend_map(n: int, N: int) -> SpaceMap:
    """Keep units ``0..n-1`` in place (fan-in scale 1) and append ``N - n`` new units (scale 0;
    their index ``i mod n`` only gives them a shape to fill: :func:`refresh_units` overwrites)."""
    index = jnp.arange(N, dtype=jnp.int32) % n
    return SpaceMap(index, unit_counts(index, n), (jnp.arange(N) < n).astype(jnp.float32))


def fresh_unit_spaces(
    resolved: ResolvedSpec, targets: Mapping[str, int], new_units: str
) -> dict[str, int]:
    """Spaces whose new units are fresh (space -> source size): with ``new_units="fresh"``, every
    grown space (target above its size) that no norm is taken over (normalised spaces keep
    balanced copies: a fresh unit would change the norm's statistics)."""
    if new_units != "fresh":
        return {}
    normed = resolved.normalized_spaces()
    n = resolved.sizes
    return {s: n[s] for s, N in targets.items() if s not in normed and N > n[s]}


def new_slots(N: int, n: int, paired: bool) -> jax.Array:
    """bool [N]: the appended units of an :func:`extend_map` (for a paired space of ``N``
    entries, pairs ``(i, i + N/2)``: the entries past ``n/2`` in each half)."""
    pos = jnp.arange(N)
    return (pos % (N // 2) >= n // 2) if paired else (pos >= n)


def fresh_leaf(
    key: jax.Array, shape: tuple[int, ...], spec: LeafSpec, sd: float, dtype: jnp.dtype
) -> jax.Array:
    """A stand-in fresh init for one leaf when none is given: norm gains 1, norm biases 0, other
    leaves zero-mean noise of standard deviation ``sd`` (the source leaf's spread)."""
    if spec.norm:
        return jnp.full(shape, 0.0 if spec.norm_part == "bias" else 1.0, dtype)
    return (sd * counter_noise(key, shape, jnp.float32)).astype(dtype)


def refresh_units(
    x: jax.Array, spec: LeafSpec, fresh: jax.Array, spaces: Mapping[str, int], paired: frozenset
) -> jax.Array:
    """New units of ``spaces`` (space -> source size n): fresh fan-in on ``out`` axes, zero
    fan-out on ``in`` axes (applied last, so a weight between two new units is 0)."""
    axes = [(ax, a) for ax, a in enumerate(spec.axes) if a and a.role != "depth"]
    for role in ("out", "in"):
        for ax, a in axes:
            if a.role == role and a.space in spaces:
                new = along(new_slots(x.shape[ax], spaces[a.space], a.space in paired), x.ndim, ax)
                x = jnp.where(new, fresh if role == "out" else 0.0, x)
    return x


def refresh_blocks(
    x: jax.Array, spec: LeafSpec, fresh: jax.Array, maps: Mapping[str, DepthMap]
) -> jax.Array:
    """New blocks (``out_scale == 0``: identity rule) take every leaf but their residual output
    from ``fresh``; the residual output stays 0, so they compute the identity."""
    if spec.residual_out:
        return x
    for ax, a in enumerate(spec.axes):
        if a and a.role == "depth" and a.space in maps:
            x = jnp.where(along(maps[a.space].out_scale == 0, x.ndim, ax), fresh, x)
    return x


def stream_factor(spec: LeafSpec, scales: Mapping[str, float]) -> float:
    """The factor on a leaf under stream scaling: the product of ``a_s`` over the normalised
    spaces it writes (``out`` axes), 1 for norm leaves and for leaves that write none."""
    if spec.norm:
        return 1.0
    f = 1.0
    for a in spec.axes:
        if a and a.role == "out" and a.space in scales:
            f *= scales[a.space]
    return f


def apply_plasticity(
    leaves: Sequence[jax.Array],
    specs: Sequence[LeafSpec],
    fresh: Sequence[jax.Array],
    *,
    unit_spaces: Mapping[str, int],
    paired: frozenset,
    block_maps: Mapping[str, DepthMap],
    stream: Mapping[str, float],
) -> list[jax.Array]:
    """Fresh units, fresh blocks and the stream scale on grown leaves (module docstring).

    leaves, fresh: grown-shape arrays in tree order; unit_spaces: fresh-unit spaces -> source
    size; block_maps: depth maps whose new blocks are fresh; stream: normalised space -> a.
    """
    out = []
    for x, spec, f in zip(leaves, specs, fresh, strict=True):
        y = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        f = jnp.asarray(f, y.dtype)
        if unit_spaces:
            y = refresh_units(y, spec, f, unit_spaces, paired)
        if block_maps:
            y = refresh_blocks(y, spec, f, block_maps)
        a = stream_factor(spec, stream)
        out.append((y * a if a != 1.0 else y).astype(x.dtype))
    return out
