"""Masked Structural Growth (MSG; Yao et al., ICLR 2024, arXiv 2305.02869) on the engine.

MSG adds new units and blocks *behind a mask* ``m in [0, 1]`` that multiplies their
contribution, so the grown network computes the small one's function at ``m = 0`` whatever the
new weights are; the new weights are drawn fresh, and ``m`` ramps linearly from 0 to 1 during
training. Here, without touching the model modules:

- **growth** (:func:`grow_msg`): the engine (``growth.engine.plan_growth``) draws the plan and
  grows the *normalised* spaces (a LayerNorm/RMSNorm over the space reads every unit, so a mask
  on the readers cannot hide new units from the norm statistics; MSG masks inside the norm,
  which needs a new module) with its exact copy map, and the depth stacks with the ``identity``
  rule. Every other grown width space S (n -> N) keeps its n units in place and gets N - n new
  units (appended; for a paired space, appended to each half), and every new block replaces the
  engine's identity copy: all their entries are drawn fresh, ``mean_j + sd_j z`` with ``z ~
  N(0, 1)`` and ``mean_j, sd_j`` the mean and standard deviation of the source leaf j (MSG's
  "random, matched to the old weights' mean and std"; norm gains stay at their mean).
- **mask** (:func:`masked_params`): the effective params multiply, along every ``in:S`` axis of
  a masked space S, the new units' slices (their outgoing weights) by ``m``, and along the depth
  axis of every ``residual_out`` leaf, the new blocks' slices by ``m``:

      eff[..., i, ...] = (m if i is new else 1) * raw[..., i, ...]

  A new unit's value then enters the rest of the network only through weights scaled by m, and a
  new block adds ``m * f(x)`` to the residual stream (MSG's ``c Block(x) + (1 - c) x`` for
  pre-norm residual blocks). Hence at ``m = 0`` the grown network is the small one exactly, in
  exact arithmetic, for any new weights; at ``m = 1`` ``eff == raw`` bit for bit.
- **ramp** (:func:`ramp`, :func:`msg_transform`): ``m(t) = clip(t / ramp_steps, 0, 1)`` after t
  optimizer updates, applied by ``growth.tasks.train.fit(..., transform=...)`` inside the jitted
  step
  (gradients flow through the mask into the raw params, as in MSG) and at evaluation.

Guarantee per space at ``m = 0``: masked spaces and new blocks: exact (float32 rounding only);
normalised spaces: the engine's guarantee for its copy map (exact for multiples of the size, or
any width when the spec names the norm kind; the report says which).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from growth.engine import GrowthPlan, apply_leaves, plan_growth
from growth.errors import GrowthError
from growth.methods import Method, get_method
from growth.spec import LeafSpec, NeuronSpec, ResolvedSpec
from growth.width import along

_FRESH_SALT = 0x6D7367  # "msg": the fresh weights' key, independent of the engine's noise keys


@dataclass(frozen=True)
class MaskInfo:
    """Which units and blocks of a grown pytree are new, and where the mask multiplies.

    new_units: masked width space -> bool [N], True at new units.
    new_blocks: depth stack -> bool [L'], True at new blocks.
    leaf_masks: per leaf in tree order, the ``(axis, new)`` pairs the mask scales: every ``in``
    axis of a masked space, and the depth axis of ``residual_out`` leaves of a grown stack.
    """

    new_units: Mapping[str, np.ndarray]
    new_blocks: Mapping[str, np.ndarray]
    leaf_masks: tuple[tuple[tuple[int, np.ndarray], ...], ...]


def _new_slots(n: int, N: int, paired: bool) -> np.ndarray:
    """bool [N]: slots past the source size (for a paired space, past n/2 in each half)."""
    pos = np.arange(N)
    return (pos % (N // 2) >= n // 2) if paired else (pos >= n)


def _pad_new(x: jax.Array, axis: int, n: int, N: int, paired: bool) -> jax.Array:
    """Zero slots appended along ``axis`` for the N - n new units (to each half when paired)."""
    if paired:
        halves = jnp.split(x, 2, axis)
        return jnp.concatenate([_pad_new(h, axis, n // 2, N // 2, False) for h in halves], axis)
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, N - n)
    return jnp.pad(x, widths)


def _masked_spaces(resolved: ResolvedSpec, width: Mapping[str, int]) -> dict[str, int]:
    """Grown width spaces that are not normalised -> target size; checks each can be masked."""
    normed = resolved.normalized_spaces()
    out = {}
    for space, N in width.items():
        n = resolved.sizes.get(space)
        if n is None or isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 1:
            continue  # unknown space / bad target: the engine's check names it
        if space in normed or N == n:
            continue
        if N < n:
            raise GrowthError(f"msg width target {space!r}={N}: masked growth cannot prune {n}")
        readers = [a for s in resolved.leaves for a in s.axes if a and a.role == "in"]
        if not any(a.space == space for a in readers):
            raise GrowthError(
                f"space {space!r}: no leaf reads it (no 'in:{space}' axis), so its new units "
                "cannot be masked"
            )
        out[space] = N
    return out


def _leaf_masks(
    resolved: ResolvedSpec, new_units: Mapping[str, np.ndarray], new_blocks: Mapping
) -> tuple:
    masks = []
    for s in resolved.leaves:
        pairs = []
        for ax, a in enumerate(s.axes):
            if a and a.role == "in" and a.space in new_units:
                pairs.append((ax, new_units[a.space]))
            if a and a.role == "depth" and s.residual_out and a.space in new_blocks:
                pairs.append((ax, new_blocks[a.space]))
        masks.append(tuple(pairs))
    return tuple(masks)


@partial(jax.jit, static_argnames=("leaf_specs", "grown", "blocks"))
def _fresh_leaves(
    leaves: list[jax.Array],
    key: jax.Array,
    means: jax.Array,
    spreads: jax.Array,
    *,
    leaf_specs: tuple[LeafSpec, ...],
    grown: tuple[tuple[str, int, int, bool], ...],
    blocks: tuple[tuple[str, tuple[bool, ...]], ...],
) -> list[jax.Array]:
    """Append new slots on the masked spaces' axes (``grown``: (space, n, N, paired)) and draw
    every entry of a new unit or block (``blocks``: (stack, new per block)) fresh: leaf j's are
    ``means[j] + spreads[j] z``, z a slice of one N(0, 1) draw over all leaves. One compile."""
    sizes = {s: (n, N, paired) for s, n, N, paired in grown}
    new_blocks = dict(blocks)
    grown_leaves, news = [], []
    for x, spec in zip(leaves, leaf_specs, strict=True):
        new, touched = jnp.zeros(x.shape, bool), False
        for ax, a in enumerate(spec.axes):
            if a and a.role != "depth" and a.space in sizes:
                n, N, paired = sizes[a.space]
                slots = along(jnp.asarray(_new_slots(n, N, paired)), x.ndim, ax)
                x, new = _pad_new(x, ax, n, N, paired), _pad_new(new, ax, n, N, paired) | slots
                touched = True
            elif a and a.role == "depth" and a.space in new_blocks:
                new = new | along(jnp.asarray(new_blocks[a.space]), x.ndim, ax)
                touched = True
        grown_leaves.append(x)
        news.append(new if touched else None)
    # one normal draw for all leaves (a draw per leaf compiles a generator per shape)
    dtype = jnp.promote_types(jnp.result_type(*grown_leaves), jnp.float32)
    z = jax.random.normal(key, (sum(x.size for x in grown_leaves),), dtype)
    out, start = [], 0
    for j, (x, new) in enumerate(zip(grown_leaves, news, strict=True)):
        if new is not None:
            zj = z[start : start + x.size].reshape(x.shape)
            x = jnp.where(new, (means[j] + spreads[j] * zj).astype(x.dtype), x)
        start += x.size
        out.append(x)
    return out


def grow_msg(
    params: Any,
    spec: NeuronSpec,
    *,
    width: Mapping[str, int] | None = None,
    depth: Mapping[str, int] | None = None,
    method: str | Method = "msg",
    key: jax.Array | int = 0,
) -> tuple[Any, MaskInfo, GrowthPlan]:
    """Grow ``params`` the MSG way (module docstring); returns ``(raw params, mask, plan)``.

    ``method`` must have ``ramp_steps >= 1`` (its symmetry/sigma apply to the normalised spaces'
    copies; its depth rule must be ``identity``). The plan is the engine's, with the method and
    the report updated; pass it to ``growth.models.grown_config`` as for any growth. The raw
    params compute the small function only through :func:`masked_params` at ``m = 0``.
    """
    method = get_method(method)
    if method.ramp_steps < 1:
        raise GrowthError(
            f"method {method.name!r} has ramp_steps={method.ramp_steps}: masked growth needs "
            "ramp_steps >= 1 (use method='msg')"
        )
    if method.depth != "identity":
        raise GrowthError(
            f"msg depth={method.depth!r}: new blocks are placed by the 'identity' rule "
            "(their function is the mask's job)"
        )
    masked = _masked_spaces(spec.resolve(params), dict(width or {}))
    engine_method = dataclasses.replace(method, ramp_steps=0)
    plan = plan_growth(params, spec, width=width, depth=depth, method=engine_method, key=key)
    res = plan.resolved
    masked_stacks = {a.space for s in res.leaves if s.residual_out for a in s.axes if a}
    for stack in plan.depth_maps:
        if stack not in masked_stacks:
            raise GrowthError(
                f"depth stack {stack!r}: no leaf is flagged residual_out, so new blocks cannot "
                "be masked"
            )
    sub = dataclasses.replace(plan, maps={s: m for s, m in plan.maps.items() if s not in masked})

    leaves, treedef = jax.tree_util.tree_flatten(params)
    means = [float(np.mean(np.asarray(x), dtype=np.float64)) if np.size(x) else 0.0 for x in leaves]
    leaves = apply_leaves(sub, leaves, keep_sharding=False)
    new_units = {s: _new_slots(res.sizes[s], N, s in res.paired) for s, N in masked.items()}
    new_blocks = {s: np.asarray(dm.out_scale) == 0 for s, dm in plan.depth_maps.items()}
    grown = tuple((s, res.sizes[s], N, s in res.paired) for s, N in masked.items())
    blocks = tuple((s, tuple(b.tolist())) for s, b in new_blocks.items())
    out = _fresh_leaves(
        leaves, jax.random.fold_in(plan.key, _FRESH_SALT), jnp.asarray(means),
        jnp.asarray(plan.spreads), leaf_specs=res.leaves, grown=grown, blocks=blocks,
    )  # fmt: skip
    info = MaskInfo(new_units, new_blocks, _leaf_masks(res, new_units, new_blocks))
    notes = [
        f"msg: space {s!r} {res.sizes[s]} -> {N}: {int(new_units[s].sum())} new units drawn fresh "
        "(leaf mean + sd N(0, 1)), their fan-in slices masked (exact at m = 0)"
        for s, N in masked.items()
    ] + [
        f"msg: stack {s!r}: {int(b.sum())} new blocks drawn fresh, residual outputs masked"
        for s, b in new_blocks.items()
    ] + [
        f"msg: normalised space {s!r} grown by the engine's copy map (not masked)"
        for s in sub.maps
    ]
    copies = {s: c for s, c in plan.report.copies.items() if s not in masked}
    report = dataclasses.replace(
        plan.report, method=method.to_dict(), copies=copies, notes=plan.report.notes + notes
    )
    plan = dataclasses.replace(plan, method=method, report=report)
    return jax.tree_util.tree_unflatten(treedef, out), info, plan


def masked_params(params: Any, info: MaskInfo, m: float | jax.Array) -> Any:
    """Effective params at mask value ``m`` (module docstring): new units' fan-in slices and new
    blocks' residual outputs times ``m``. ``params``: the grown pytree (pure dict or NNX state,
    same leaf order as the one :func:`grow_msg` returned); ``m``: scalar, traced or concrete."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if len(leaves) != len(info.leaf_masks):
        raise GrowthError(
            f"masked_params: mask made for {len(info.leaf_masks)} leaves, params have "
            f"{len(leaves)}"
        )
    if isinstance(m, (int, float)) and not 0 <= m <= 1:
        raise GrowthError(f"masked_params m={m}: expected a mask value in [0, 1]")
    out = []
    for x, pairs in zip(leaves, info.leaf_masks, strict=True):
        for ax, new in pairs:
            if x.shape[ax] != new.shape[0]:
                raise GrowthError(
                    f"masked_params: leaf of shape {x.shape} axis {ax} has {x.shape[ax]} "
                    f"entries, the mask {new.shape[0]}"
                )
            factor = jnp.where(jnp.asarray(new), jnp.asarray(m, x.dtype), jnp.ones((), x.dtype))
            x = x * along(factor, x.ndim, ax)
        out.append(x)
    return jax.tree_util.tree_unflatten(treedef, out)


def _check_ramp(ramp_steps: int) -> None:
    if isinstance(ramp_steps, bool) or not isinstance(ramp_steps, (int, np.integer)) or (
        ramp_steps < 1
    ):
        raise GrowthError(f"ramp_steps={ramp_steps!r}: expected an integer >= 1")


def ramp(step: int | jax.Array, ramp_steps: int) -> jax.Array:
    """MSG's linear mask schedule ``m(t) = clip(t / ramp_steps, 0, 1)``, float32 scalar."""
    _check_ramp(ramp_steps)
    return jnp.clip(jnp.asarray(step, jnp.float32) / ramp_steps, 0.0, 1.0)


def msg_transform(info: MaskInfo, ramp_steps: int) -> Callable[[Any, jax.Array], Any]:
    """The params transform for ``growth.tasks.train.fit``: ``(raw, t) -> masked_params(raw, info,
    ramp(t, ramp_steps))`` with t the number of optimizer updates done."""
    _check_ramp(ramp_steps)
    return lambda params, step: masked_params(params, info, ramp(step, ramp_steps))
