"""The core entry point: ``grow(params, spec, width=..., depth=..., method=..., key=...)``.

Works on any pytree of arrays (NNX state as a pure dict, Linen params, plain dicts) described by
a :class:`~growth.spec.NeuronSpec`. Input is validated before any work: unknown spaces,
nonsensical targets, non-finite weights and impossible method/target combinations raise a
:class:`~growth.errors.GrowthError` naming the offending space, leaf or field.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from growth.depth import EXACT_DEPTH_RULES, DepthMap, apply_depth, depth_map
from growth.errors import GrowthError
from growth.guarantee import assess, output_error, rounding_bound
from growth.methods import DEFAULT_METHOD, Method, get_method
from growth.plasticity import (
    apply_plasticity,
    balance_units,
    extend_map,
    fresh_leaf,
    fresh_unit_spaces,
    stream_factor,
)
from growth.spec import NeuronSpec, ResolvedSpec, leaves_with_paths
from growth.width import along, apply_width, draw_space, space_axes
from theory.measure import SpaceMap, padded_map, pair_map, sample_space


@dataclass
class GrowthReport:
    """What a growth did: sizes before/after, copy counts, and whether it keeps the function."""

    method: dict
    sizes_before: dict[str, int]
    sizes_after: dict[str, int]
    copies: dict[str, tuple[int, int]] = field(default_factory=dict)  # space -> (min, max) count
    function_preserving: bool = False
    notes: list[str] = field(default_factory=list)
    # normalised space -> factor the norm's eps must be multiplied by (padded maps: k n / N);
    # the model family applies it to its config (``growth.models.grown_config``)
    eps_scale: dict[str, float] = field(default_factory=dict)
    # the declared guarantee (``growth.guarantee.Bound.to_dict``)
    bound: dict = field(default_factory=dict)
    # how function_preserving was decided: "proved", "measured", "unmeasured" (exact only in
    # exact arithmetic, no forward pass run yet) or "no" (the bound is not ``rounding``)
    function_check: str = "no"
    max_rel_output_error: float | None = None  # measured e, when measured
    # normalised space -> factor a on its writers (``Method.stream_scale``): the model family
    # multiplies the norms' eps by a^2 and a tied readout's multiplier by 1/a
    stream_scale: dict[str, float] = field(default_factory=dict)
    # homogeneous space -> what the unit balance (``Method.unit_balance``) did there: filled in
    # by ``apply_plan`` (units, rebalanced, clipped, factor range, sweeps); empty when off
    unit_balance: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def measured(self, ref: Any, out: Any) -> GrowthReport:
        """:meth:`record_error` of ``e = max |out - ref| / max |ref|``: outputs of the source
        (``ref``) and the grown model (``out``) on the same probe inputs."""
        return self.record_error(output_error(ref, out))

    def record_error(self, e: float) -> GrowthReport:
        """Set ``function_preserving`` from a measured relative output error ``e``: the growth
        is exact in exact arithmetic (bound ``rounding``) and ``e`` is within float32 rounding,
        ``growth.guarantee.rounding_bound(D)``. Returns ``self`` (updated)."""
        limit = rounding_bound(self.bound.get("depth", 1))
        self.max_rel_output_error = float(e)
        self.function_preserving = bool(self.bound.get("kind") == "rounding" and e <= limit)
        self.function_check = "measured"
        self.notes.append(f"measured relative output error {e:.3g} (float32 rounding bound "
                          f"{limit:.3g}): function preserving {self.function_preserving}")
        return self

    def __str__(self) -> str:
        lines = [f"method: {self.method['name']} ({self.method})"]
        lines.append(f"{'space':<16} {'before':>7} {'after':>7}  copies")
        for s, n in self.sizes_before.items():
            copies = "{}..{}".format(*self.copies[s]) if s in self.copies else "-"
            lines.append(f"{s:<16} {n:>7} {self.sizes_after[s]:>7}  {copies}")
        for space, f in self.eps_scale.items():
            lines.append(f"norm eps over {space!r} times {f:.6g} (padded map)")
        for space, a in self.stream_scale.items():
            lines.append(f"writers of {space!r} times {a:.6g}, its norms' eps times {a * a:.6g}")
        for space, st in self.unit_balance.items():
            lines.append(f"unit balance of {space!r}: " + ", ".join(
                f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in st.items()
            ))  # fmt: skip
        lines.append(f"guarantee: {self.bound.get('statement', '?')}")
        lines.append(f"function preserving: {self.function_preserving} ({self.function_check})")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


FRESH_STREAM = 0x5EED  # folded into the plan key for the stand-in fresh init (not the width noise)


def _space_key(key: jax.Array, name: str) -> jax.Array:
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def _check_targets(kind: str, targets: Mapping[str, Any], known: list[str]) -> dict[str, int]:
    checked = {}
    for space, target in targets.items():
        if space not in known:
            raise GrowthError(f"{kind} target {space!r}: not a {kind} space of the spec {known}")
        if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or target < 1:
            raise GrowthError(f"{kind} target {space!r}={target!r}: expected a positive integer")
        checked[space] = int(target)
    return checked


def _host_value(leaf: Any) -> np.ndarray:
    """The full value of a leaf on this host. A global ``jax.Array`` that spans other processes'
    devices (multi-host) is all-gathered with ``process_allgather``: a collective, so every
    process must call it for the same leaves in the same order (``plan_growth`` does)."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return np.asarray(leaf)


SEED_MAX = 2**32 - 1


def check_seed(seed: int, what: str = "seed") -> int:
    """``seed`` as an int, refused (GrowthError) unless it is an integer in ``0..2**32 - 1``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise GrowthError(f"{what}={seed!r}: expected an integer in 0..{SEED_MAX}")
    if not 0 <= seed <= SEED_MAX:
        raise GrowthError(f"{what}={seed}: expected an integer in 0..{SEED_MAX}")
    return int(seed)


def grown_nbytes(
    resolved: ResolvedSpec, params: Any, width: Mapping[str, int], depth: Mapping[str, int]
) -> int:
    """Bytes of the grown leaves, from shapes alone (nothing is allocated): every axis of a
    width space or depth stack takes its target size, ``sum_leaves prod(shape') * itemsize``."""
    after = dict(resolved.sizes) | dict(width) | dict(depth)
    total = 0
    for leaf, s in zip(jax.tree_util.tree_leaves(params), resolved.leaves, strict=True):
        shape = [after[a.space] if a else n for a, n in zip(s.axes, np.shape(leaf), strict=True)]
        total += math.prod(shape) * _dtype(leaf).itemsize
    return total


def _dtype(leaf: Any) -> np.dtype:
    return np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.asarray(leaf).dtype


def check_float_leaves(params: Any) -> None:
    """Raise GrowthError naming the first leaf that is not floating point (integer weights
    cannot hold rescaled or mixed values; growth would truncate them)."""
    for path, leaf in leaves_with_paths(params):
        dtype = _dtype(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise GrowthError(
                f"leaf {path!r} has dtype {dtype}: growth rescales and mixes weights, which "
                "only floating-point leaves hold; refusing to grow it"
            )


def leaf_spreads(params: Any) -> tuple[float, ...]:
    """Per-leaf standard deviation of the entries (float64, on the host), in tree order.

    Also the dtype and finiteness checks: raises GrowthError naming the first leaf that is not
    floating point or that holds NaN or inf.
    Computed once per plan, one leaf at a time, from the leaf's full value (gathered across
    processes for multi-host arrays), so the noise scales are identical however the leaves are
    sharded, on one host or several.
    """
    spreads = []
    check_float_leaves(params)
    for path, leaf in leaves_with_paths(params):
        x = _host_value(leaf)
        if not np.isfinite(x).all():
            raise GrowthError(f"leaf {path!r} contains NaN or inf; refusing to grow it")
        spreads.append(float(np.std(x, dtype=np.float64)) if x.size else 0.0)
    return tuple(spreads)


def _out_shardings(leaves: list[jax.Array], shapes: list[tuple[int, ...]]) -> tuple | None:
    """Keep each sharded leaf's PartitionSpec on its grown shape where the sizes still divide
    the mesh axes (else leave that leaf to the compiler); None when nothing is sharded."""
    out, any_sharded = [], False
    for x, shape in zip(leaves, shapes, strict=True):
        s = getattr(x, "sharding", None)
        if not isinstance(s, NamedSharding) or s.is_fully_replicated:
            out.append(None)
            continue
        any_sharded = True
        spec = tuple(s.spec) + (None,) * (len(shape) - len(s.spec))
        fits = all(
            ax is None or n % np.prod([s.mesh.shape[a] for a in np.atleast_1d(ax)]) == 0
            for ax, n in zip(spec, shape, strict=True)
        )
        out.append(s if fits else None)
    return tuple(out) if any_sharded else None


def _space_map(
    resolved: ResolvedSpec, space: str, N: int, method: Method, key: jax.Array
) -> tuple[SpaceMap | None, str | None]:
    """Draw one space's map: on pairs for a paired space, padded for a normalised space whose
    target is not a multiple of its size (balanced samplers), else ``sample_space``.
    Returns ``(map or None for the identity, note)``."""
    n = resolved.sizes[space]
    if N == n and method.sampler == "balanced":
        return None, None  # identity map: nothing to do
    fresh = space in fresh_unit_spaces(resolved, {space: N}, method.new_units)
    if space in resolved.paired:
        if N % 2:
            raise GrowthError(
                f"width target {space!r}={N}: the space's units are pairs of entries (i, i + n/2) "
                "(rotary embeddings rotate them together), so the target must be even"
            )
        n, N = n // 2, N // 2
    kind = resolved.pad_kind(space)
    note = None
    if fresh:
        m = extend_map(n, N)
    elif kind and method.sampler in ("balanced", "smoothed") and N > n and N % n:
        m = padded_map(n, N)
        k, r = divmod(N, n)
        note = (
            f"space {space!r} ({kind}norm) {n} -> {N} = {k}*{n} + {r}: {r} pad slots holding "
            f"the {'mean' if kind == 'layer' else 'zero'}, gain x sqrt({k * n}/{N}), "
            f"eps x {k * n}/{N} (LEMON)"
        )
    else:
        m = sample_space(key, n, N, method.sampler, method.scaling)
    return (pair_map(m) if space in resolved.paired else m), note


def _width_maps(
    resolved: ResolvedSpec, targets: dict[str, int], method: Method, key: jax.Array
) -> tuple[dict[str, SpaceMap], list[str], list[tuple[str, str]], dict[str, float]]:
    """Draw every space's map. Returns ``(maps, notes, [(bound kind, reason)], eps factors)``;
    the kinds are those of ``growth.guarantee`` that apply beyond ``rounding``."""
    maps, notes, kinds, eps = {}, [], [], {}
    normed = resolved.normalized_spaces()
    for space, N in targets.items():
        n = resolved.sizes[space]
        m, note = _space_map(resolved, space, N, method, _space_key(key, space))
        if m is None:
            continue
        counts = np.asarray(m.counts)
        if method.scaling == "exact" and counts.min() == 0:
            raise GrowthError(
                f"space {space!r}: scaling='exact' keeps every source unit, but the "
                f"{method.sampler!r} map {n} -> {N} drops {int((counts == 0).sum())} of them "
                "(pruning); use scaling='unbiased' to prune by sampling"
            )
        maps[space] = m
        if note:
            notes.append(note)
            eps[space] = float(np.mean(~np.asarray(m.pad)))
        # pad slots have scale 0, so they add no mass
        mass = np.bincount(np.asarray(m.index), np.asarray(m.scale), minlength=counts.shape[0])
        if not np.allclose(mass, 1.0, rtol=1e-6):
            kinds.append(("sampling", f"{method.sampler} map of {space!r}"))
            notes.append(f"space {space!r}: fan-in scales do not sum to 1 per unit (sampling)")
        if space in normed and counts.min() != counts.max():
            kinds.append(("none", f"unequal copy counts under the norm of {space!r}"))
            notes.append(
                f"space {space!r} is normalised (LayerNorm/RMSNorm) and its units get unequal "
                f"copy counts {counts.min()}..{counts.max()}: the norm statistics change; use a "
                f"target that is a multiple of {n}, or name the norm kind in the spec "
                "(norm='layer-gain', ...) so that the engine can pad"
            )
    if maps and method.fanout_source != "self":
        kinds.append(("none", f"fanout_source={method.fanout_source!r}"))
        notes.append(f"fanout_source={method.fanout_source!r}: new units get other features")
    if maps and (method.bandwidth > 0 or method.symmetry == "noise" and method.sigma > 0):
        kinds.append(("noise", "kernel smoothing" if method.bandwidth > 0 else "i.i.d. noise"))
        notes.append("kernel smoothing / additive noise changes the function by design")
    return maps, notes, kinds, eps


@dataclass(frozen=True)
class GrowthPlan:
    """Everything a growth decided before touching the weights: the spec matched to the source
    params, the method, the per-space index maps, the depth maps and the PRNG key for noise.

    Apply it to the params with :func:`apply_plan`; the same plan maps anything that lives on the
    same leaves (e.g. optimizer moments, see ``growth.recipes.optstate``).
    """

    resolved: ResolvedSpec
    method: Method
    maps: dict[str, SpaceMap]
    depth_maps: dict[str, DepthMap]
    key: jax.Array
    report: GrowthReport
    spreads: tuple[float, ...]  # per-leaf sd of the source entries (noise scale)
    # space -> N for spaces grown by drawing from a fitted measure (``sampler="fitted"``): no
    # index map; the draw needs all the space's leaves, so it happens in :func:`apply_leaves`
    fitted: dict[str, int] = field(default_factory=dict)


def plan_growth(
    params: Any,
    spec: NeuronSpec,
    *,
    width: Mapping[str, int] | None = None,
    depth: Mapping[str, int] | None = None,
    method: str | Method = DEFAULT_METHOD,
    key: jax.Array | int = 0,
    spreads: tuple[float, ...] | None = None,
) -> GrowthPlan:
    """Validate the request against ``params`` and draw all index and depth maps.

    spreads: per-leaf noise scales (tree order) supplied by a caller that never holds the whole
    model (``growth.formats.hf.stream`` plans on shapes, ``jax.ShapeDtypeStruct`` leaves, and
    replaces them per tensor); that caller then checks finiteness itself. None: computed here
    by :func:`leaf_spreads`, which also refuses non-finite leaves.
    """
    resolved = spec.resolve(params)
    method = get_method(method)
    for knob, entry in (("ramp_steps", "growth.recipes.msg.grow_msg"),
                        ("operator_steps", "growth.recipes.ligo.grow_ligo")):  # fmt: skip
        if getattr(method, knob):
            raise GrowthError(
                f"method {method.name!r} ({knob}={getattr(method, knob)}) needs training data "
                f"or a training loop; grow it with {entry}"
            )
    width = _check_targets("width", width or {}, resolved.width_spaces())
    depth = _check_targets("depth", depth or {}, resolved.depth_stacks())
    check_float_leaves(params)
    if spreads is None:
        spreads = leaf_spreads(params)
    elif len(spreads) != len(resolved.leaves):
        raise GrowthError(f"spreads: {len(spreads)} values for {len(resolved.leaves)} leaves")
    key = jax.random.key(check_seed(key)) if isinstance(key, (int, np.integer)) else key
    k_maps, k_apply = jax.random.split(key)

    if method.sampler == "fitted":
        fitted = {s: N for s, N in width.items() if N != resolved.sizes[s] or not _keeps(method)}
        maps, notes, kinds, eps = {}, *_fitted_report(resolved, fitted, method), {}
    else:
        fitted = {}
        maps, notes, kinds, eps = _width_maps(resolved, width, method, k_maps)
    dmaps: dict[str, DepthMap] = {}
    for stack, L_new in depth.items():
        L = resolved.sizes[stack]
        if L_new != L:
            dmaps[stack] = depth_map(method.depth, L, L_new)
            if method.depth not in EXACT_DEPTH_RULES:
                kinds.append(("none", f"approximate depth rule {method.depth!r}"))
                notes.append(f"depth rule {method.depth!r} on {stack!r} is approximate")
    after = dict(resolved.sizes) | width | depth
    copies = {s: (int(np.min(m.counts)), int(np.max(m.counts))) for s, m in maps.items()}
    stream = {s: method.stream_scale for s in sorted(resolved.normalized_spaces())}
    if method.stream_scale == 1.0 or not stream:
        stream = {}
    else:
        notes.append(
            f"writers of {sorted(stream)} times {method.stream_scale:g}, norm eps times "
            f"{method.stream_scale**2:g}: exact when every reader of these spaces reads them "
            "through the norm (pre-norm residual streams); apply GrowthReport.stream_scale "
            "to the config"
        )
    balance = resolved.homogeneous_spaces() if method.unit_balance else []
    if balance:
        notes.append(
            f"unit balance of {balance}: each unit's homogeneous fan-in times c > 0, its "
            "fan-out over c (exact), c balancing both against the fresh init's RMS"
        )
    report = GrowthReport(method.to_dict(), dict(resolved.sizes), after, copies, False, notes,
                          eps_scale=eps, stream_scale=stream,
                          unit_balance={s: {} for s in balance})  # fmt: skip
    report.bound, report.function_preserving, report.function_check, note = assess(
        params, resolved, after, maps, method, kinds
    )
    report.notes += [note] if note else []
    return GrowthPlan(resolved, method, maps, dmaps, k_apply, report, spreads, fitted)


def _keeps(method: Method) -> bool:
    """Whether a fitted method keeps the source units (``scaling="exact"``)."""
    return method.scaling == "exact"


def _fitted_report(
    resolved: ResolvedSpec, fitted: dict[str, int], method: Method
) -> tuple[list[str], list[tuple[str, str]]]:
    """Validate fitted targets; return (notes, [(bound kind, reason)]) (``growth.guarantee``).
    Exact iff the source units are kept (new units have zero fan-out) and no grown space is
    normalised (new units there change the norm statistics); pruning by sampling: sampling."""
    notes, kinds = [], []
    normed = resolved.normalized_spaces()
    for space, N in fitted.items():
        n = resolved.sizes[space]
        space_axes(resolved.leaves, space)  # one axis per leaf, else GrowthError
        units, N_units = (n // 2, N // 2) if space in resolved.paired else (n, N)
        if space in resolved.paired and N % 2:
            raise GrowthError(f"width target {space!r}={N}: a paired space needs an even target")
        if units < 2:
            raise GrowthError(f"space {space!r}: a fitted measure needs >= 2 source units")
        if _keeps(method) and N_units < units:
            raise GrowthError(
                f"width target {space!r}={N} < {n}: {method.name!r} keeps every source unit; "
                "use scaling='unbiased' (method 'fitted') to prune by sampling"
            )
        drawn = N_units - units if _keeps(method) else N_units
        notes.append(
            f"space {space!r}: {drawn} unit(s) drawn from the fitted RC measure (rank <= "
            f"{method.fit_rank}, {method.fit_components} component(s))"
            + (", zero fan-out" if _keeps(method) else f", readers x {units}/{N_units}")
        )
        if not _keeps(method):
            kinds.append(("sampling", f"units of {space!r} drawn from the fitted measure"))
        elif space in normed:
            kinds.append(("none", f"new units under the norm of {space!r}"))
            notes.append(f"space {space!r} is normalised: new units change the norm statistics")
    return notes, kinds


def _shapes(plan: GrowthPlan, leaves: list[jax.Array], roles: tuple[str, ...]) -> list[tuple]:
    """Leaf shapes after resizing the axes whose role is in ``roles``."""
    after = plan.report.sizes_after
    return [
        tuple(
            after[a.space] if a is not None and (a.role == "depth") == ("depth" in roles) else n
            for a, n in zip(spec.axes, x.shape, strict=True)
        )
        for x, spec in zip(leaves, plan.resolved.leaves, strict=True)
    ]


def _fanout_from_next_block(leaves: list[jax.Array], plan: GrowthPlan) -> list[jax.Array]:
    """bert2BERT AKI: on leaves stacked on a depth axis, the new units (slots past the source
    size; for a paired space, past the source size in each half) of block l take their grown
    fan-out slice from block l + 1 (the last block keeps its own). Fan-in slices untouched."""
    out = []
    for x, spec in zip(leaves, plan.resolved.leaves, strict=True):
        depth_ax = [ax for ax, a in enumerate(spec.axes) if a and a.role == "depth"]
        if depth_ax:
            L = x.shape[depth_ax[0]]
            nxt = jnp.take(x, jnp.minimum(jnp.arange(L) + 1, L - 1), axis=depth_ax[0])
            for ax, a in enumerate(spec.axes):
                if not (a and a.role == "out" and a.space in plan.maps):
                    continue
                n, N = plan.resolved.sizes[a.space], x.shape[ax]
                pos = jnp.arange(N)
                if a.space in plan.resolved.paired:
                    n, pos = n // 2, pos % (N // 2)
                x = jnp.where(along(pos >= n, x.ndim, ax), nxt, x)
        out.append(x)
    return out


def apply_leaves(
    plan: GrowthPlan,
    leaves: list[jax.Array],
    first_leaf: int = 0,
    *,
    keep_sharding: bool = True,
    fresh: list[jax.Array] | None = None,
) -> list[jax.Array]:
    """Apply a plan to the consecutive leaves ``first_leaf, first_leaf + 1, ...`` (tree order).

    Growing the whole tree at once or a slice at a time (``growth.formats.stream``) gives the same
    bits.
    fresh: a fresh init of the grown leaves (same slice, grown shapes), the source of fresh units
    and blocks (``growth.plasticity``); None draws stand-ins at each source leaf's spread.
    """
    if (plan.fitted or plan.report.unit_balance) and (first_leaf, len(leaves)) != (
        0,
        len(plan.resolved.leaves),
    ):
        what = "drawing from a fitted measure" if plan.fitted else "balancing units (unit_balance)"
        raise GrowthError(
            f"method {plan.method.name!r}: {what} needs every leaf of the grown spaces at once; "
            "it cannot be applied a slice of leaves at a time (streaming)"
        )
    sl = slice(first_leaf, first_leaf + len(leaves))
    specs, spreads = plan.resolved.leaves[sl], plan.spreads[sl]
    sub = dataclasses.replace(plan, resolved=dataclasses.replace(plan.resolved, leaves=specs))
    leaves = [jnp.asarray(x) for x in leaves]
    m = plan.method
    units = fresh_unit_spaces(plan.resolved, plan.report.sizes_after, m.new_units)
    shard = _out_shardings(leaves, _shapes(sub, leaves, ("in", "out"))) if keep_sharding else None
    for maps, symmetry in (
        ({s: v for s, v in plan.maps.items() if s not in units}, m.symmetry),
        ({s: v for s, v in plan.maps.items() if s in units}, "none"),  # fresh units: no noise
    ):
        if maps:
            leaves = apply_width(
                leaves, maps, plan.key, spreads, leaf_specs=specs, symmetry=symmetry,
                sigma=float(m.sigma), bandwidth=float(m.bandwidth), out_shardings=shard,
                first_leaf=first_leaf, norm_specs=plan.resolved.leaves,
            )  # fmt: skip
    for space, N in sorted(plan.fitted.items()):
        leaves = draw_space(
            leaves,
            specs,
            space,
            N,
            _space_key(plan.key, space),
            keep_source=_keeps(m),
            rank=m.fit_rank,
            components=m.fit_components,
            paired=space in plan.resolved.paired,
        )
    if plan.maps and m.fanout_source == "next-block":
        leaves = _fanout_from_next_block(leaves, sub)
    if plan.depth_maps:
        leaves = apply_depth(
            leaves,
            plan.depth_maps,
            leaf_specs=specs,
            out_shardings=_out_shardings(leaves, _shapes(sub, leaves, ("depth",)))
            if keep_sharding
            else None,
        )
    blocks = plan.depth_maps if m.new_blocks == "fresh" else {}
    balance = sorted(plan.report.unit_balance)
    if units or blocks or plan.report.stream_scale or balance:
        if not (units or blocks or balance):
            fresh = leaves  # the stream scale alone reads no fresh weights
        elif fresh is None:
            k = jax.random.fold_in(plan.key, FRESH_STREAM)
            fresh = [
                fresh_leaf(jax.random.fold_in(k, first_leaf + j), x.shape, spec, sd, x.dtype)
                for j, (x, spec, sd) in enumerate(zip(leaves, specs, spreads, strict=True))
            ]
        for path, x, f in zip(plan.resolved.paths[sl], leaves, fresh, strict=True):
            if np.shape(f) != x.shape:
                raise GrowthError(
                    f"fresh leaf {path!r}: shape {np.shape(f)}, expected the grown {x.shape}"
                )
        leaves = apply_plasticity(
            leaves, specs, fresh, unit_spaces=units, paired=frozenset(plan.resolved.paired),
            block_maps=blocks, stream=plan.report.stream_scale,
        )  # fmt: skip
    if balance:  # the reference: fresh units as the grown model holds them (stream factor on)
        a = plan.report.stream_scale
        ref = [f * stream_factor(sp, a) if a else f for f, sp in zip(fresh, specs, strict=True)]
        leaves, done = balance_units(leaves, specs, ref, balance)
        plan.report.unit_balance.update(done)
    return leaves


def apply_plan(plan: GrowthPlan, params: Any, fresh: Any = None) -> Any:
    """Apply a plan's width then depth maps to ``params`` (same structure as planned).

    fresh: a fresh init of the grown model (same structure, grown shapes; e.g.
    ``params_of(init_model(family, grown_config, seed))``), the source of fresh units and blocks
    when the method has them (``growth.plasticity``); None: stand-ins at the source spreads.

    Sharded leaves (``NamedSharding``) come back sharded the same way wherever the grown sizes
    still divide the mesh axes: the work is done shard-parallel under ``jit``, never gathered.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if len(leaves) != len(plan.resolved.leaves):
        raise GrowthError(
            f"plan was made for {len(plan.resolved.leaves)} leaves, params have {len(leaves)}"
        )
    if fresh is not None:
        fresh, fresh_def = jax.tree_util.tree_flatten(fresh)
        if fresh_def != treedef:
            raise GrowthError("fresh: expected the same tree structure as the params")
    return jax.tree_util.tree_unflatten(treedef, apply_leaves(plan, leaves, fresh=fresh))


def grow(
    params: Any,
    spec: NeuronSpec,
    *,
    width: Mapping[str, int] | None = None,
    depth: Mapping[str, int] | None = None,
    method: str | Method = DEFAULT_METHOD,
    key: jax.Array | int = 0,
    fresh: Any = None,
) -> tuple[Any, GrowthReport]:
    """Grow (or prune) the neuron spaces and depth stacks of ``params``.

    width: space -> new size N. depth: stack -> new number of blocks L'.
    method: a recipe name from ``growth.methods.METHODS`` or a :class:`Method`.
    key: PRNG key or int seed; the same key gives bit-identical results.
    fresh: optional fresh init of the grown model (see :func:`apply_plan`).
    Returns ``(new_params, report)`` with the same tree structure as ``params``.
    """
    plan = plan_growth(params, spec, width=width, depth=depth, method=method, key=key)
    return apply_plan(plan, params, fresh), plan.report
