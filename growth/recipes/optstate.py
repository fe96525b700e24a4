"""Optimizer state across growth: map Adam's moments with the growth plan, and the Adam rules
under which a grown network trains exactly like its source.

Derivation. Growth maps each leaf linearly, ``w' = V * w[g]``: a gather along every grown axis
times the product ``V = prod_in s * e`` of the fan-in scales of its ``in`` axes (``e`` is an extra
value factor: ``sqrt(kn/N)`` for the gain of a padded norm, else 1). Take an exact growth
(the big network computes the small one's function). Then

- an ``in``-axis copy ``i`` of unit k sees the same activation and the same downstream signal as
  k, so its gradient is k's: ``dL/dw'_i = dL/dw_k`` (no scale);
- an ``out``-axis copy produces unit i, whose downstream signal passes through the next layer's
  fan-in weights, scaled by ``s_i``: ``dL/dw'_i = s_i dL/dw_k``;

so gradients follow the *gradient map* ``grad' = G * grad[g]`` with ``G = prod_out s / e`` --
the scales sit on the other axes than in the weight map. Hence the optimizer-state rule:

    first moments (Adam mu, momentum):  mu' = G   * mu[g]
    second moments (Adam nu):           nu' = G^2 * nu[g]

(not "like the weights": that puts ``s`` on the fan-in axes, where gradients are plain copies).
And for Adam, ``u = mu_hat / (sqrt(nu_hat) + eps)``, the grown network's trajectory equals the
small one's (``w'(t) = V * w(t)[g]`` for all t, same batches) iff per leaf

    learning rate  lr' = lr * V        (muP: 1/c on every fan-in axis),
    epsilon        eps' = eps * G      (eps times the fan-out scales),

with decoupled weight decay applied *after* the learning-rate multiplier (``lr * wd * w'``).
Exact for balanced maps with exact scaling and no symmetry breaking (the grown network's
copies then stay copies); :func:`adam_scales` gives ``V`` and ``G`` per entry.

Pad slots of padded maps (LEMON) have no source: their first moments start at 0 and their
second moments at the mean over the real units. Depth growth: every new block starts with the
optimizer state of the block(s) it was made from (the depth mix, without the residual-output
scale), so new blocks get a sensible second-moment estimate instead of Adam's zero-state first
step (which is ``(1-b1)/sqrt(1-b2) ~ 3`` learning rates in size).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from growth.depth import apply_depth
from growth.engine import GrowthPlan
from growth.errors import GrowthError
from growth.spec import leaves_with_paths
from growth.width import along

#: optax state fields that hold second moments (mapped with the squared gradient scale).
SECOND_MOMENTS = frozenset({"nu", "nu_max", "sum_of_squares"})


def _real_scale(m: Any) -> jax.Array:
    """The map's fan-in scales with pad slots set to the mean scale of the real units."""
    if m.pad is None:
        return m.scale
    return jnp.where(m.pad, jnp.sum(m.scale) / jnp.sum(~m.pad), m.scale)


def _gain_factor(plan: GrowthPlan, spec: Any) -> float:
    """``e``: the value factor of a padded norm gain (``sqrt(kn/N)``), else 1."""
    if spec.norm_part != "gain":
        return 1.0
    e = 1.0
    for a in spec.axes:
        if a and a.role == "out" and a.space in plan.report.eps_scale:
            e *= plan.report.eps_scale[a.space] ** 0.5
    return e


def _check(plan: GrowthPlan, tree: Any) -> tuple[list[jax.Array], Any]:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if plan.fitted:
        raise GrowthError(
            f"method {plan.method.name!r} draws new units from a fitted measure: there is no "
            "index map to carry optimizer statistics through; start the optimizer afresh"
        )
    if len(leaves) != len(plan.resolved.leaves):
        raise GrowthError(
            f"plan was made for {len(plan.resolved.leaves)} leaves, the tree has {len(leaves)}"
        )
    return [jnp.asarray(x) for x in leaves], treedef


def gradient_map(plan: GrowthPlan, tree: Any, *, power: int = 1) -> Any:
    """Map a params-shaped tree of gradient statistics through ``plan``.

    power 1: gradients, first moments (``G * x[g]``); power 2: second moments (``G^2 * x[g]``).
    ``G`` is the product of the fan-out scales of the leaf's grown ``out`` axes (divided by the
    padded-gain factor); ``in`` axes are plain gathers. Returns a tree like the grown params.
    """
    leaves, treedef = _check(plan, tree)
    out = []
    for x, spec in zip(leaves, plan.resolved.leaves, strict=True):
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        for ax, a in enumerate(spec.axes):
            if not a or a.role == "depth" or a.space not in plan.maps:
                continue
            m = plan.maps[a.space]
            x = jnp.take(x, m.index, axis=ax)
            if a.role == "out":
                x = x * along(m.scale.astype(x.dtype), x.ndim, ax) ** power
            if m.pad is not None:
                at = along(m.pad, x.ndim, ax)
                real = jnp.sum(jnp.where(at, 0.0, x), ax, keepdims=True) / jnp.sum(~m.pad)
                x = jnp.where(at, 0.0 if power == 1 else real, x)
        out.append(x / _gain_factor(plan, spec) ** power)
    if plan.depth_maps:
        plain = tuple(dataclasses.replace(s, residual_out=False) for s in plan.resolved.leaves)
        out = apply_depth(out, plan.depth_maps, leaf_specs=plain)
    out = [o.astype(x.dtype) for o, x in zip(out, leaves, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, out)


def _params_like(node: Any, paths: tuple[str, ...]) -> bool:
    try:
        return tuple(p for p, _ in leaves_with_paths(node)) == paths
    except Exception:  # noqa: BLE001 - anything that is not a pytree of arrays
        return False


def grow_opt_state(plan: GrowthPlan, state: Any) -> Any:
    """Map an optax state (any nesting of tuples / NamedTuples) through ``plan``.

    Every sub-tree shaped like the source params is mapped with :func:`gradient_map`: power 2
    for fields named in :data:`SECOND_MOMENTS` (Adam's ``nu``), power 1 otherwise (``mu``,
    momentum ``trace``); counts and other scalars are kept. The result has the structure of
    ``opt.init(grown_params)``.
    """
    paths = plan.resolved.paths

    def visit(node: Any, field: str | None) -> Any:
        if _params_like(node, paths):
            return gradient_map(plan, node, power=2 if field in SECOND_MOMENTS else 1)
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return type(node)(*(visit(getattr(node, f), f) for f in node._fields))
        if isinstance(node, (tuple, list)):
            return type(node)(visit(v, field) for v in node)
        if isinstance(node, dict):
            return {k: visit(v, field) for k, v in node.items()}
        return node

    return visit(state, None)


class AdamScales(NamedTuple):
    """Per-entry Adam factors for the grown params (arrays broadcastable to each leaf).

    lr:  ``V = prod_in s * e`` -- learning-rate multiplier (the weight map's scale);
    eps: ``G = prod_out s / e`` -- epsilon multiplier (the gradient map's scale).
    """

    lr: Any
    eps: Any


def adam_scales(plan: GrowthPlan, params: Any) -> AdamScales:
    """The factors under which Adam on the grown params tracks Adam on ``params`` (the source
    params of ``plan``; only their tree structure and ranks are used). Pad slots take the mean
    scale of the real units."""
    leaves, treedef = _check(plan, params)
    lr, eps = [], []
    for x, spec in zip(leaves, plan.resolved.leaves, strict=True):
        e = _gain_factor(plan, spec)
        v = jnp.full((1,) * x.ndim, e, jnp.float32)
        g = jnp.full((1,) * x.ndim, 1.0 / e, jnp.float32)
        for ax, a in enumerate(spec.axes):
            if a and a.role != "depth" and a.space in plan.maps:
                s = along(_real_scale(plan.maps[a.space]).astype(jnp.float32), x.ndim, ax)
                if a.role == "in":
                    v = v * s
                else:
                    g = g * s
        lr.append(v)
        eps.append(g)
    return AdamScales(
        jax.tree_util.tree_unflatten(treedef, lr), jax.tree_util.tree_unflatten(treedef, eps)
    )


def scale_by_adam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_scale: Any = None
) -> optax.GradientTransformation:
    """Adam's normalised update ``mu_hat / (sqrt(nu_hat) + eps * eps_scale)`` with a per-leaf
    (per-entry) epsilon factor; same state type as ``optax.scale_by_adam`` (so
    :func:`grow_opt_state` and optax states interoperate). ``eps_scale=None``: plain Adam."""

    def init(params: Any) -> optax.ScaleByAdamState:
        zeros = jax.tree.map(jnp.zeros_like, params)
        return optax.ScaleByAdamState(jnp.zeros([], jnp.int32), zeros, zeros)

    def update(grads: Any, state: optax.ScaleByAdamState, params: Any = None) -> tuple:
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
        count = optax.safe_increment(state.count)
        c1, c2 = 1 - b1**count, 1 - b2**count
        scale = eps_scale if eps_scale is not None else jax.tree.map(lambda _: 1.0, grads)
        upd = jax.tree.map(lambda m, v, f: (m / c1) / (jnp.sqrt(v / c2) + eps * f), mu, nu, scale)
        return upd, optax.ScaleByAdamState(count, mu, nu)

    return optax.GradientTransformation(init, update)


def scale_by_tree(factors: Any) -> optax.GradientTransformation:
    """Multiply updates by a params-shaped tree of factors (per-leaf or per-entry);
    ``None`` is the identity (same empty state, so optimizer states keep one structure)."""

    def init(params: Any) -> optax.EmptyState:
        return optax.EmptyState()

    def update(updates: Any, state: Any, params: Any = None) -> tuple:
        if factors is None:
            return updates, state
        return jax.tree.map(lambda u, f: u * f, updates, factors), state

    return optax.GradientTransformation(init, update)


def tracking_adam(
    lr: float | optax.Schedule,
    scales: AdamScales | None = None,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """AdamW whose grown-model run tracks the source run: per-entry eps (``scales.eps``), then
    the learning-rate multiplier (``scales.lr``), then decoupled weight decay, then ``-lr``.
    With ``scales=None`` this is plain AdamW (use it for the source model); the state has the
    same structure either way, so :func:`grow_opt_state` maps the source's state onto it."""
    parts = [
        scale_by_adam(b1, b2, eps, None if scales is None else scales.eps),
        scale_by_tree(None if scales is None else scales.lr),
    ]
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.scale_by_learning_rate(lr))
    return optax.chain(*parts)
