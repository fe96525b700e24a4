"""LiGO: growth by a *learned* linear operator (Wang et al., "Learning to Grow Pretrained Models
for Efficient Transformer Training", ICLR 2023, arXiv 2303.00980), composed from the engine.

An engine plan grows a space S (size n -> N) through an index map ``g`` and fan-in scales ``s``;
written densely that is two matrices per space and one per depth stack:

- fan-out ``A_S = onehot(g)``            float32 [N, n]  (``out:S`` axes: ``new = A_S old``),
- fan-in  ``B_S = diag(s) onehot(g)``    float32 [N, n]  (``in:S`` axes: ``new = B_S old``),
- depth   ``mix`` [L', L], ``out_scale`` [L'] (``growth.depth.DepthMap``; ``depth:S`` axes:
  ``new = mix old``, times ``out_scale`` on ``residual_out`` leaves).

Every leaf is the small leaf contracted with one operator per grown axis, e.g. an MLP kernel
``[in:h1, out:h2]`` becomes ``B_h1 W A_h2^T`` and a stacked ResMLP ``w1 [depth, in:d, out:h]``
becomes ``mix x_1 B_d x_2 A_h x_3 W``. The operators are shared by every leaf that has the space,
exactly as the index maps are (the row-column tie: one ``A_S`` for all writers of S, one ``B_S``
for all readers). LiGO makes the entries free parameters, trains them with Adam for ~100 steps on
the task loss of the large model built from the *frozen* small weights, then materialises the
large model, which trains normally.

Symmetry: at ``A_S = onehot(g)`` the copies of a unit have identical fan-out rows, so they get
identical gradients and never separate (a saddle). :func:`dense_operators` therefore adds
``sigma / n * N(0, 1)`` to every entry of ``A_S`` (LiGO's operators start from a random
initialisation too); ``sigma = 0`` reproduces the plan exactly.

Paired (rotary) spaces: at init ``A_hd`` is the plan's pair map, so each new pair is a source
pair and keeps its frequency (``grown_config``); a learned ``A_hd`` may mix entries across pairs,
which is still a valid model of the grown config, just no longer a rotation-preserving map.

Padded maps (LEMON's rule for a normalised space grown to a non-multiple width) are refused:
their pad slots are filled per leaf kind (row mean for writers, the mean gain times sqrt(kn/N) for
norm gains, zero for norm biases), which no single shared ``A_S`` expresses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from growth.depth import DepthMap, contract, mix_axis
from growth.engine import GrowthPlan, plan_growth
from growth.errors import GrowthError
from growth.methods import Method
from growth.models import get_family, grown_config, model_from_params
from growth.spec import ResolvedSpec


class WidthOp(NamedTuple):
    """One space's operators: fan_out ``A`` and fan_in ``B``, both float32 [N, n]."""

    fan_out: jax.Array
    fan_in: jax.Array


class Operators(NamedTuple):
    """LiGO's parameters (a pytree): width ops per grown space, depth maps per grown stack."""

    width: dict[str, WidthOp]
    depth: dict[str, DepthMap]

    def size(self) -> int:
        """Number of trainable entries: ``sum_S 2 N n + sum_stacks (L' L + L')``."""
        return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(self)))


def dense_operators(plan: GrowthPlan, *, sigma: float = 0.0, key: jax.Array | int = 0) -> Operators:
    """The plan's index and depth maps as dense operators (exact for ``sigma = 0``).

    sigma: symmetry-breaking noise added to each fan-out entry, ``A += sigma / n * z``.
    Raises GrowthError for what is not a linear map of the weights: padded maps, additive
    weight noise of the plan's method (symmetry noise, smoothing) and next-block fan-out.
    """
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
        raise GrowthError(f"ligo sigma={sigma!r}: expected a finite number >= 0")
    m = plan.method
    if m.fanout_source != "self":
        raise GrowthError(
            f"ligo: method fanout_source={m.fanout_source!r} is not a shared linear operator; "
            "plan with fanout_source='self'"
        )
    if m.bandwidth > 0 or (m.symmetry != "none" and m.sigma > 0):
        raise GrowthError(
            f"ligo: method {m.name!r} adds weight noise (symmetry={m.symmetry!r}, "
            f"sigma={m.sigma}, bandwidth={m.bandwidth}), which is not a linear operator; plan "
            "with method='copy' (or symmetry='none') and break symmetry with ligo's sigma"
        )
    key = jax.random.key(key) if isinstance(key, (int, np.integer)) else key
    width = {}
    for space, sm in sorted(plan.maps.items()):
        if sm.pad is not None:
            raise GrowthError(
                f"ligo: space {space!r} has a padded map (normalised space grown "
                f"{plan.resolved.sizes[space]} -> {sm.index.shape[0]}, not a multiple); pad "
                "slots are filled per leaf kind, not by one shared operator; use a multiple"
            )
        n = plan.resolved.sizes[space]
        onehot = jax.nn.one_hot(sm.index, n, dtype=jnp.float32)
        k = jax.random.fold_in(key, len(width))
        fan_out = onehot + (sigma / n) * jax.random.normal(k, onehot.shape, jnp.float32)
        width[space] = WidthOp(fan_out, onehot * sm.scale.astype(jnp.float32)[:, None])
    depth = {
        s: DepthMap(jnp.asarray(d.mix, jnp.float32), jnp.asarray(d.out_scale, jnp.float32))
        for s, d in sorted(plan.depth_maps.items())
    }
    return Operators(width, depth)


def check_operators(ops: Operators, resolved: ResolvedSpec) -> None:
    """Raise GrowthError unless every operator names a space of ``resolved`` with its size."""
    for kind, table, known in (
        ("width", ops.width, resolved.width_spaces()),
        ("depth", ops.depth, resolved.depth_stacks()),
    ):
        for space, (a, b) in table.items():
            if space not in known:
                raise GrowthError(f"ligo {kind} operator {space!r}: not a {kind} space {known}")
            n, rows = resolved.sizes[space], a.shape[0]
            want = ((rows, n), (rows, n)) if kind == "width" else ((rows, n), (rows,))
            if (a.shape, b.shape) != want:
                raise GrowthError(
                    f"ligo {kind} operator {space!r}: shapes {a.shape}, {b.shape}; expected "
                    f"{want} for a space of size {n}"
                )


def apply_operators(ops: Operators, params: Any, resolved: ResolvedSpec) -> Any:
    """Grown params: each leaf contracted with ``A_S`` on its ``out:S`` axes, ``B_S`` on its
    ``in:S`` axes, ``mix`` on its ``depth:S`` axes (times ``out_scale`` along depth for
    ``residual_out`` leaves). Spaces without an operator keep their size. Differentiable in
    ``ops`` (and ``params``); computes in float32 (float64 for float64 leaves), returns each leaf
    in its source dtype. ``resolved``: the spec matched to ``params`` (``plan.resolved``)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if len(leaves) != len(resolved.leaves):
        raise GrowthError(f"ligo: spec has {len(resolved.leaves)} leaves, params {len(leaves)}")
    check_operators(ops, resolved)
    out = []
    for leaf, spec in zip(leaves, resolved.leaves, strict=True):
        x = jnp.asarray(leaf)
        y = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        for ax, a in enumerate(spec.axes):
            if a is None:
                continue
            if a.role == "depth" and a.space in ops.depth:
                y = mix_axis(y, ax, ops.depth[a.space], spec.residual_out)
            elif a.role != "depth" and a.space in ops.width:
                w = ops.width[a.space]
                y = contract(y, ax, w.fan_out if a.role == "out" else w.fan_in)
        out.append(y.astype(x.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


ParamsLoss = Callable[..., jax.Array]


def learn_operators(
    ops: Operators,
    params: Any,
    resolved: ResolvedSpec,
    loss_fn: ParamsLoss,
    batches: Iterator[tuple],
    steps: int,
    lr: float,
) -> tuple[Operators, list[float]]:
    """Train the operators with Adam(lr) for ``steps`` steps; ``params`` stay frozen.

    loss: ``loss_fn(apply_operators(ops, params, resolved), *batch)`` (a traced scalar), one
    batch from ``batches`` per step. Returns ``(trained ops, training loss per step)``; raises
    GrowthError on bad ``steps``/``lr``, no operators, too few batches or a non-finite loss.
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise GrowthError(f"ligo steps={steps!r}: expected an integer >= 1")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise GrowthError(f"ligo lr={lr!r}: expected a positive finite number")
    check_operators(ops, resolved)
    if not ops.width and not ops.depth:
        raise GrowthError("ligo: no operators to learn (no space or stack changes size)")
    opt = optax.adam(lr)

    @jax.jit
    def step(ops, state, params, *batch):
        def objective(o):
            return loss_fn(apply_operators(o, params, resolved), *batch)

        loss, grads = jax.value_and_grad(objective)(ops)
        updates, state = opt.update(grads, state, ops)
        return optax.apply_updates(ops, updates), state, loss

    state, curve = opt.init(ops), []
    for k in range(1, int(steps) + 1):
        batch = next(batches, None)
        if batch is None:
            raise GrowthError(f"ligo: batches ran out after {k - 1} of steps={steps} steps")
        batch = tuple(jnp.asarray(b) for b in batch)
        ops, state, loss = step(ops, state, params, *batch)
        curve.append(float(loss))
        if not math.isfinite(curve[-1]):
            raise GrowthError(f"ligo: operator loss became non-finite at step {k} ({curve[-1]})")
    return ops, curve


def grow_ligo(
    family: str,
    config: Any,
    params: Any,
    width: Mapping[str, int] | None,
    depth: Mapping[str, int] | None,
    loss_fn: Callable[..., jax.Array],
    batches: Iterator[tuple],
    *,
    steps: int = 100,
    lr: float = 1e-3,
    sigma: float = 0.1,
    seed: int = 0,
    depth_rule: str = "identity",
    eval_batch: tuple | None = None,
) -> tuple[Any, Any, dict]:
    """One call: plan, operators, ``steps`` Adam steps on them, the materialised large model.

    family/config/params: the small model (``growth.models`` family name, its config, its pure
    params). width/depth: targets as for ``growth.grow``. loss_fn: ``loss_fn(model, *batch)``
    on an NNX module of the large config (the convention of ``growth.tasks.train.fit``); batches: an
    iterator of batches for it. The operators start at the balanced copy map with ``1/c``
    fan-in scales and depth rule ``depth_rule`` (``identity``: exact; LiGO's paper initialises
    depth as ``stack``), plus ``sigma`` fan-out noise (see :func:`dense_operators`).
    eval_batch: batch for the zero-shot losses (default: one batch drawn from ``batches``
    before training -- training data, not held out).

    Returns ``(big_config, big_params, info)``; info holds ``loss_curve`` (per operator step),
    ``zero_shot_loss_init`` / ``zero_shot_loss`` (on ``eval_batch`` at the initial / trained
    operators), ``operator_params``, ``small_params``, ``big_params``, ``function_preserving``
    (False: the learned operators change the function) and ``report`` (the initial plan's
    GrowthReport: sizes and copy counts of the map the operators start from).
    """
    fam = get_family(family)
    method = Method(symmetry="none", sigma=0.0, depth=depth_rule, name="ligo")
    plan = plan_growth(params, fam.spec(config), width=width, depth=depth, method=method, key=seed)
    big_config = grown_config(fam, config, plan)
    ops = dense_operators(plan, sigma=sigma, key=jax.random.fold_in(jax.random.key(seed), 1))

    def params_loss(p: Any, *batch: jax.Array) -> jax.Array:
        return loss_fn(model_from_params(family, big_config, p), *batch)

    @jax.jit
    def zero_shot(o: Operators, p: Any, *batch: jax.Array) -> jax.Array:
        return params_loss(apply_operators(o, p, plan.resolved), *batch)

    ev = tuple(jnp.asarray(b) for b in (eval_batch if eval_batch is not None else next(batches)))
    loss_init = float(zero_shot(ops, params, *ev))
    ops, curve = learn_operators(ops, params, plan.resolved, params_loss, batches, steps, lr)
    big = jax.jit(lambda o, p: apply_operators(o, p, plan.resolved))(ops, params)
    n_small = sum(np.size(x) for x in jax.tree_util.tree_leaves(params))
    info = {
        "loss_curve": curve,
        "zero_shot_loss_init": loss_init,
        "zero_shot_loss": float(zero_shot(ops, params, *ev)),
        "operator_params": ops.size(),
        "small_params": int(n_small),
        "big_params": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(big))),
        "function_preserving": False,
        "report": plan.report,
    }
    return big_config, big, info
