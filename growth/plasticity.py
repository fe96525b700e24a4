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
- **unit balance** (``Method.unit_balance``), on *homogeneous* spaces (``LeafSpec.homogeneous``,
  ``growth.spec``): a unit j whose output is positively homogeneous of degree 1 in its declared
  fan-in slice ``u_j`` (ReLU: ``relu(c z) = c relu(z)`` for ``c > 0``, so the whole fan-in,
  kernel column and bias; SwiGLU: ``silu(x w_gate) (x w_up)`` is linear in ``w_up``, ``b_up``)
  computes ``c_j f_j`` from ``c_j u_j``; every reader of the unit (its ``in`` slices ``v_j``) is
  a linear map of it, so ``v_j / c_j`` reads ``f_j`` back: the function is exactly unchanged for
  any ``c_j > 0``. GELU/tanh units are not homogeneous (``gelu(c z) != c gelu(z)``) and are not
  declared; neither is ``w_gate``, nor a normalised or paired space. The factor: with
  ``a_j = RMS(u_j)``, ``b_j = RMS(v_j)`` over all the space's declared fan-in leaves and all its
  reader leaves (per block on a stacked space), and ``a_0``, ``b_0`` the same RMS over every unit
  of the fresh init (the one given, else the stand-ins of :func:`fresh_leaf`, i.e. the source
  leaves' spreads) *as the grown model holds it*, i.e. times each leaf's stream factor (a fresh
  unit's fan-out into a normalised stream is scaled by ``a`` like every writer of it; without
  that, ``b_0`` would ignore the stream scale and the balance would undo half of it, ``c ~
  sqrt(a)`` on every unit), ``c_j = sqrt(b_j a_0 / (a_j b_0))`` -- then ``c_j a_j / a_0 = b_j / (c_j
  b_0)``: the unit's fan-in and fan-out sit equally far (as ratios) from the init scale, their
  product ``a_j b_j`` (what the function fixes) unchanged. ``c_j`` is clipped to
  ``[1/BALANCE_CLIP, BALANCE_CLIP]`` and is 1 where ``a_j`` or ``b_j`` is 0 (new units with zero
  fan-out, dead units). Applied last, to the final leaves (after the stream scale, which
  multiplies other axes: the symmetries commute, so the order keeps exactness; applying it last
  balances the weights the model will train). Spaces that read each other (a deep ReLU MLP's
  ``W_{l+1}`` reads ``h_l`` and writes ``h_{l+1}``) are balanced in Gauss-Seidel sweeps until
  every factor of a sweep is within ``BALANCE_TOL`` of 1 (at most ``BALANCE_SWEEPS``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from growth.depth import DepthMap
from growth.errors import GrowthError
from growth.spec import Axis, LeafSpec, ResolvedSpec
from growth.width import along
from theory.measure import SpaceMap, counter_noise, unit_counts

NEW_UNITS = ("copy", "fresh")
#: unit-balance factors are clipped to ``[1 / BALANCE_CLIP, BALANCE_CLIP]``
BALANCE_CLIP = 10.0
#: Gauss-Seidel sweeps over the homogeneous spaces stop once every step factor of a sweep is
#: within ``exp(+-BALANCE_TOL)`` of 1, or after ``BALANCE_SWEEPS`` sweeps
BALANCE_SWEEPS = 32
BALANCE_TOL = 1e-5


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


def unit_axes(spec: LeafSpec, space: str, role: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The axes of a leaf that index a unit of ``space`` as ``role`` (``"out"``: only on a leaf
    declaring it homogeneous; ``"in"``: every reader): ``(depth stacks, axes)``, the depth axes
    sorted by stack name, then the space's axis; ``((), ())`` when the leaf has none."""
    hits = [ax for ax, a in enumerate(spec.axes) if a == Axis(role, space)]  # type: ignore[arg-type]
    if not hits or (role == "out" and spec.homogeneous != space):
        return (), ()
    if len(hits) > 1:
        raise GrowthError(f"leaf {spec}: several {role}:{space} axes; cannot balance {space!r}")
    depth = sorted((a.space, ax) for ax, a in enumerate(spec.axes) if a and a.role == "depth")
    return tuple(n for n, _ in depth), tuple(ax for _, ax in depth) + (hits[0],)


def unit_sumsq(x: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, int]:
    """``(sum of squares per unit, entries per unit)``: summed over every axis not in ``axes``,
    the result's axes in the order of ``axes``."""
    others = tuple(ax for ax in range(x.ndim) if ax not in axes)
    sq = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=others)
    kept = sorted(axes)
    return jnp.transpose(sq, [kept.index(ax) for ax in axes]), math.prod(x.shape[a] for a in others)


def unit_rms(
    leaves: Sequence[jax.Array], specs: Sequence[LeafSpec], space: str, role: str
) -> jax.Array | None:
    """RMS per unit over every slice of ``space`` in ``role`` (:func:`unit_axes`), shape
    ``[*blocks, N]``; None when no leaf has one. GrowthError when the leaves disagree on the
    depth stacks (a unit must be the same unit in all of them)."""
    total, count, stacks = None, 0, None
    for x, spec in zip(leaves, specs, strict=True):
        names, axes = unit_axes(spec, space, role)
        if not axes:
            continue
        if stacks is not None and names != stacks:
            raise GrowthError(
                f"space {space!r}: leaf {spec} is stacked on {list(names)}, others on "
                f"{list(stacks)}; cannot balance its units"
            )
        sq, n = unit_sumsq(x, axes)
        total, count, stacks = sq if total is None else total + sq, count + n, names
    return None if total is None else jnp.sqrt(total / max(count, 1))


def along_axes(c: jax.Array, ndim: int, axes: tuple[int, ...]) -> jax.Array:
    """``c`` (axes in the order of ``axes``) broadcastable against a rank-``ndim`` leaf."""
    v = c.reshape(c.shape + (1,) * (ndim - c.ndim))
    return jnp.moveaxis(v, tuple(range(c.ndim)), axes)


def balance_step(
    a: jax.Array, b: jax.Array, a0: float, b0: float, total: jax.Array
) -> jax.Array:
    """The next factor per unit: ``sqrt(b a0 / (a b0))`` (1 where ``a`` or ``b`` is 0), such
    that the running product ``total * step`` stays within the clip range."""
    ok = (a > 0) & (b > 0)
    want = jnp.sqrt(jnp.where(ok, b * a0 / jnp.where(ok, a * b0, 1.0), 1.0))
    return jnp.clip(total * want, 1.0 / BALANCE_CLIP, BALANCE_CLIP) / total


def rescale_units(
    leaves: list[jax.Array], specs: Sequence[LeafSpec], space: str, c: jax.Array
) -> list[jax.Array]:
    """Declared fan-in slices of ``space`` times ``c``, its readers' slices over ``c``."""
    out = []
    for x, spec in zip(leaves, specs, strict=True):
        for role in ("out", "in"):
            _, axes = unit_axes(spec, space, role)
            if axes:
                f = along_axes(c, x.ndim, axes)
                x = x * f if role == "out" else x / f
        out.append(x)
    return out


def balance_units(
    leaves: Sequence[jax.Array],
    specs: Sequence[LeafSpec],
    fresh: Sequence[jax.Array],
    spaces: Sequence[str],
) -> tuple[list[jax.Array], dict[str, dict]]:
    """Unit balance (module docstring) of the homogeneous ``spaces`` of the final leaves.

    fresh: the fresh init (or stand-ins) of the grown leaves, for ``a_0``, ``b_0``.
    Returns the leaves (dtypes kept) and, per space, what was done: units, rebalanced (factor
    not 1), clipped, the factors' range and the sweeps run; a space whose reference RMS is 0 or
    that nobody reads is left as it is (``"skipped"``).
    """
    ys = [x.astype(jnp.promote_types(x.dtype, jnp.float32)) for x in leaves]
    refs, totals, stats = {}, {}, {}
    for s in spaces:
        a0, b0 = unit_rms(fresh, specs, s, "out"), unit_rms(fresh, specs, s, "in")
        if a0 is None or b0 is None:
            stats[s] = {"skipped": "no declared fan-in or no reader"}
            continue
        a0, b0 = float(jnp.sqrt(jnp.mean(a0**2))), float(jnp.sqrt(jnp.mean(b0**2)))
        if not (a0 > 0 and b0 > 0):
            stats[s] = {"skipped": "the fresh init's RMS is 0"}
            continue
        refs[s] = (a0, b0)
    sweeps = 0
    while refs and sweeps < BALANCE_SWEEPS:
        sweeps, worst = sweeps + 1, 0.0
        for s, (a0, b0) in refs.items():
            a, b = unit_rms(ys, specs, s, "out"), unit_rms(ys, specs, s, "in")
            total = totals.get(s, jnp.ones_like(a))
            step = balance_step(a, b, a0, b0, total)
            totals[s] = total * step
            ys = rescale_units(ys, specs, s, step)
            worst = max(worst, float(jnp.max(jnp.abs(jnp.log(step)))))
        if worst <= BALANCE_TOL:
            break
    for s, c in totals.items():
        c = np.asarray(c)
        stats[s] = {
            "units": int(c.size),
            "rebalanced": int(np.sum(c != 1.0)),
            "clipped": int(np.sum(np.isclose(np.abs(np.log(c)), np.log(BALANCE_CLIP)))),
            "factor_min": float(c.min()),
            "factor_max": float(c.max()),
            "sweeps": sweeps,
        }
    return [y.astype(x.dtype) for x, y in zip(leaves, ys, strict=True)], stats
