"""Training tracking (DESIGN 2.7, theory notes (d) P3 / (f) T8): a balanced-grown copy of a model,
trained side by side with its source on identical batches, follows the source's loss curve
exactly -- under the right width rules -- and visibly drifts away under the wrong ones.

Growth by method ``copy`` (balanced index maps, exact ``1/c`` fan-in scaling, no symmetry
breaking) maps every leaf as ``w' = V * w[g]`` and every gradient as ``grad' = G * grad[g]``
(``V``: product of the leaf's fan-in scales, ``G``: of its fan-out scales;
``growth.recipes.optstate``).
The copies stay copies under a deterministic optimizer, and ``w'(t) = V * w(t)[g]`` holds for
all t iff the grown leaf's update is ``V`` times the source's:

- SGD: ``lr' = lr * V / G = lr * r_out / r_in`` (mean-field / muP SGD rule);
- Adam: ``lr' = lr * V = lr / r_in`` (muP Adam) and ``eps' = eps * G = eps / r_out``;
- weight decay decoupled and applied after the LR multiplier: ``-lr * wd * w'``.

Rules (:data:`RULES`): ``right`` (all of the above) and the negative controls ``global-lr``
(one learning rate for every leaf, the SP habit), ``unscaled-eps`` (Adam eps not divided by the
copy count) and ``coupled-wd`` (L2 decay added to the gradient before the optimizer, as in
``optax.adam`` + ``add_decayed_weights`` or torch's ``Adam(weight_decay=...)``).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from growth.apps.commands import load_model
from growth.engine import apply_plan, plan_growth
from growth.errors import GrowthError
from growth.models import get_family, grown_config, model_from_params, params_of
from growth.recipes.optstate import scale_by_adam
from growth.spec import ResolvedSpec, parse_targets
from growth.tasks.data import Dataset, iterate_batches, load_dataset
from growth.tasks.train import cross_entropy, scale_by_leaf
from theory.parametrization import adam_eps_multipliers, lr_multipliers

__all__ = [
    "CONTROLS", "RULES", "track", "track_checkpoint", "track_pair", "width_aware_optimizer",
]

RULES: tuple[str, ...] = ("right", "global-lr", "unscaled-eps", "coupled-wd")
#: negative controls that apply to each optimizer
CONTROLS: dict[str, tuple[str, ...]] = {
    "sgd": ("global-lr", "coupled-wd"),
    "adam": ("global-lr", "unscaled-eps", "coupled-wd"),
}
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3}


def width_aware_optimizer(
    params: Any,
    resolved: ResolvedSpec,
    base_sizes: Mapping[str, int],
    lr: float | optax.Schedule,
    *,
    optimizer: str = "adam",
    parametrization: str = "mup",
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    rule: str = "right",
) -> optax.GradientTransformation:
    """SGD or Adam(W) with the per-leaf width rules of ``parametrization``, relative to
    ``base_sizes`` (``resolved``: the spec matched to ``params``, the params to be trained).

    Chain: coupled decay -> ``scale_by_adam`` with per-leaf eps factors
    (:func:`theory.parametrization.adam_eps_multipliers`;
    ``growth.recipes.optstate.scale_by_adam``) -> per-leaf LR factors
    (:func:`theory.parametrization.lr_multipliers`; ``growth.tasks.train.scale_by_leaf``) ->
    decoupled decay -> ``-lr``; the ``coupled-wd`` rule decays only before the optimizer, the
    others only after it (the other decay is by 0). With ``base_sizes`` equal to the current
    sizes every factor is 1 (plain SGD / AdamW). ``rule`` selects a negative control
    (:data:`RULES`). The state structure is the same for every rule.
    """
    if optimizer not in CONTROLS:
        raise GrowthError(f"optimizer {optimizer!r}: expected 'sgd' or 'adam'")
    if rule not in RULES:
        raise GrowthError(f"rule {rule!r}: expected one of {RULES}")
    coef = _rule_coefficients(resolved, base_sizes, optimizer, parametrization, eps,
                              weight_decay, rule)  # fmt: skip
    treedef = jax.tree_util.tree_structure(params)
    return _rule_chain(optimizer, treedef, lr, b1=b1, b2=b2, **coef)


def _rule_coefficients(resolved: ResolvedSpec, base_sizes: Mapping[str, int], optimizer: str,
                       parametrization: str, eps: float, weight_decay: float,
                       rule: str) -> dict:  # fmt: skip
    """The numbers in which the rules differ: per-leaf LR factors ``mults``, per-leaf Adam
    epsilons ``eps_leaf`` (``eps`` times its factor) and the coupled / decoupled decay."""
    n = len(resolved.leaves)
    mults = (
        (1.0,) * n
        if rule == "global-lr"
        else lr_multipliers(resolved, base_sizes, parametrization, optimizer)
    )
    eps_f = (1.0,) * n if rule == "unscaled-eps" else adam_eps_multipliers(resolved, base_sizes)
    coupled = rule == "coupled-wd"
    return {
        "mults": tuple(mults),
        "eps_leaf": tuple(eps * f for f in eps_f),
        "coupled_wd": weight_decay if coupled else 0.0,
        "decoupled_wd": 0.0 if coupled else weight_decay,
    }


def _rule_chain(optimizer: str, treedef: Any, lr: float | optax.Schedule | jax.Array, *,
                mults: Sequence, eps_leaf: Sequence, coupled_wd: Any, decoupled_wd: Any,
                b1: float = 0.9, b2: float = 0.999) -> optax.GradientTransformation:  # fmt: skip
    """coupled decay -> [Adam with per-leaf eps] -> per-leaf LR factors -> decoupled decay ->
    ``-lr``; one structure for every rule (an absent decay is a decay by 0), so the numbers may
    be traced and every rule runs one compiled step."""
    parts = [optax.add_decayed_weights(coupled_wd)]
    if optimizer == "adam":
        eps = jax.tree_util.tree_unflatten(treedef, list(eps_leaf))
        parts.append(scale_by_adam(b1, b2, 1.0, eps))
    parts.append(scale_by_leaf(mults))
    parts.append(optax.add_decayed_weights(decoupled_wd))
    parts.append(optax.scale_by_learning_rate(lr))
    return optax.chain(*parts)


@functools.partial(jax.jit, static_argnames=("family", "config", "optimizer"))
def _track_step(p: Any, state: Any, x: jax.Array, y: jax.Array, lr: jax.Array, coef: dict, *,
                family: str, config: Any, optimizer: str) -> tuple:  # fmt: skip
    """One update of a ``family``/``config`` model under the rule whose numbers are ``coef``
    (traced: the rules, and runs of one model, share the compiled step); returns
    (params, state, the loss before the update)."""

    def loss_fn(q: Any) -> jax.Array:
        return cross_entropy(model_from_params(family, config, q)(x), y)

    loss, grads = jax.value_and_grad(loss_fn)(p)
    opt = _rule_chain(optimizer, jax.tree_util.tree_structure(p), lr, **coef)
    updates, state = opt.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss


def track(
    params: Any,
    family: str,
    config: Any,
    data: Dataset,
    *,
    width: str | Mapping[str, int] = "x2",
    method: str = "copy",
    seed: int = 0,
    **kwargs: Any,
) -> dict:
    """Grow ``params`` (a ``family``/``config`` model) by ``method`` (default ``copy``) to
    ``width`` and :func:`track_pair` the source and the grown model. Extra keyword arguments go
    to :func:`track_pair`."""
    fam = get_family(family)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    spec = fam.spec(config)
    resolved = spec.resolve(params)
    spaces = {s: resolved.sizes[s] for s in resolved.width_spaces()}
    targets = width if isinstance(width, Mapping) else parse_targets(width, spaces, "width")
    plan = plan_growth(params, spec, width=targets, method=method, key=seed)
    big = apply_plan(plan, params)
    return track_pair(params, config, big, grown_config(fam, config, plan), family, data,
                      seed=seed, **kwargs)  # fmt: skip


def track_pair(
    params: Any,
    config: Any,
    big: Any,
    big_cfg: Any,
    family: str,
    data: Dataset,
    *,
    steps: int = 100,
    optimizer: str = "adam",
    rules: Sequence[str] | None = None,
    lr: float | None = None,
    eps: float = 1e-5,
    weight_decay: float = 1e-2,
    batch_size: int = 64,
    parametrization: str = "mf",
    seed: int = 0,
) -> dict:
    """Train ``params`` (``config``) and a grown model ``big`` (``big_cfg``) side by side for
    ``steps`` steps on the same batches of ``data``; one grown run per rule, whose LR and eps
    factors are those of the grown sizes relative to the source's.

    rules: default ``("right", *CONTROLS[optimizer])``. parametrization: whose LR factors the
    ``right`` rule uses; ``"mf"`` (SGD ``r_out / r_in``) tracks for any per-space factors,
    ``"mup"`` (hidden SGD factor 1) only when ``r_in = r_out``; both give muP-Adam.
    eps: Adam's epsilon; the default 1e-5 is large enough for the ``unscaled-eps`` control to
    show (its effect is ~ ``eps / sqrt(nu)``: at eps = 1e-8 and gradients ~1e-2 it stays near
    float32 rounding). weight_decay: decoupled decay of the right rule (> 0 so that
    ``coupled-wd`` differs from it).

    Returns a JSON-able dict with ``gaps[rule] = max_t |L'_t - L_t| / |L_t|`` over the per-step
    training losses ``L_t`` (source) and ``L'_t`` (grown; each evaluated on the step's batch
    before its update; ``t = 0`` is the grown model as given), the loss curves, sizes and
    settings.
    """
    if steps < 1:
        raise GrowthError(f"steps={steps}: must be >= 1")
    if not 0 < eps < math.inf:
        raise GrowthError(f"eps={eps}: Adam's epsilon must be a finite number > 0")
    if lr is not None and not 0 < lr < math.inf:
        raise GrowthError(f"lr={lr}: must be a finite number > 0")
    if optimizer not in CONTROLS:
        raise GrowthError(f"optimizer {optimizer!r}: expected 'sgd' or 'adam'")
    rules = tuple(rules) if rules is not None else ("right", *CONTROLS[optimizer])
    for r in rules:
        if r not in RULES:
            raise GrowthError(f"rule {r!r}: expected one of {RULES}")
    lr = DEFAULT_LR[optimizer] if lr is None else lr
    fam = get_family(family)
    params, big = (jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p) for p in (params, big))
    resolved = fam.spec(config).resolve(params)
    big_resolved = fam.spec(big_cfg).resolve(big)
    base = dict(resolved.sizes)
    kw = {"optimizer": optimizer, "parametrization": parametrization, "eps": eps}
    kw["weight_decay"] = weight_decay

    batches = iterate_batches(data.x_train, data.y_train, batch_size, seed)
    batches = [tuple(jnp.asarray(b) for b in next(batches)) for _ in range(steps)]

    def run(p: Any, cfg: Any, res: ResolvedSpec, rule: str) -> np.ndarray:
        state, losses = width_aware_optimizer(p, res, base, lr, rule=rule, **kw).init(p), []
        coef = _rule_coefficients(res, base, optimizer, parametrization, eps, weight_decay, rule)
        static = {"family": family, "config": cfg, "optimizer": optimizer}
        for x, y in batches:
            p, state, loss = _track_step(p, state, x, y, lr, coef, **static)
            losses.append(loss)
        return np.asarray(jnp.stack(losses), np.float64)

    ref = run(params, config, resolved, "right")
    if not np.all(np.isfinite(ref)):
        raise GrowthError(f"source training diverged (lr={lr}); lower the learning rate")
    out: dict[str, Any] = {
        "family": family,
        "optimizer": optimizer,
        "parametrization": parametrization,
        "steps": steps,
        "lr": lr,
        "eps": eps,
        "weight_decay": weight_decay,
        "batch_size": batch_size,
        "sizes_before": base,
        "sizes_after": dict(big_resolved.sizes),
        "source_loss": ref.tolist(),
        "gaps": {},
        "grown_loss": {},
    }
    for rule in rules:
        got = run(big, big_cfg, big_resolved, rule)
        gap = np.abs(got - ref) / np.maximum(np.abs(ref), 1e-12)
        out["gaps"][rule] = float(np.nanmax(gap)) if np.all(np.isfinite(got)) else float("inf")
        out["grown_loss"][rule] = got.tolist()
    return out


def track_checkpoint(
    path: str | os.PathLike,
    *,
    steps: int = 100,
    optimizer: str = "adam",
    width: str | Mapping[str, int] = "x2",
    method: str = "copy",
    tol: float = 1e-6,
    **kwargs: Any,
) -> dict:
    """Track the checkpoint at ``path`` (its dataset from the checkpoint's meta).

    A grown checkpoint (its meta records ``growth`` and ``source``) is tracked as it is: the
    checkpoint itself against its recorded source (``width`` and ``method`` are then unused; the
    ``growth`` entry of the result is its recorded method and sizes). Any other checkpoint is
    grown by ``method`` to ``width`` first (:func:`track`).

    Adds ``passed``: the right rule's gap is ``<= tol`` and every control's gap is ``> 10 tol``
    (the controls visibly diverge). Only a growth that keeps the function *and* keeps copies
    identical (no symmetry-breaking noise) can pass: its trajectory is the source's
    (``w'(t) = V w(t)[g]``). Extra keyword arguments go to :func:`track_pair`.
    """
    model, meta, config = load_model(path)
    data = load_dataset(meta.get("dataset", "mnist1d"))
    if "growth" in meta and meta.get("source"):
        source = os.path.join(os.path.abspath(path), meta["source"])
        s_model, s_meta, s_config = load_model(source)
        if s_meta["family"] != meta["family"]:
            raise GrowthError(f"{path}: source family {s_meta['family']!r} != {meta['family']!r}")
        res = track_pair(params_of(s_model), s_config, params_of(model), config, meta["family"],
                         data, steps=steps, optimizer=optimizer, **kwargs)  # fmt: skip
        res["source"] = source
        res["growth"] = {"method": meta["growth"]["method"]["name"], "recorded": True}
    else:
        res = track(params_of(model), meta["family"], config, data, width=width, method=method,
                    steps=steps, optimizer=optimizer, **kwargs)  # fmt: skip
        res["growth"] = {"method": method, "recorded": False}
    res["checkpoint"] = str(path)
    gaps = res["gaps"]
    right_ok = gaps.get("right", 0.0) <= tol
    controls_ok = all(v > 10 * tol for k, v in gaps.items() if k != "right")
    res["tol"] = tol
    res["passed"] = bool(right_ok and controls_ok)
    return res


def format_track(res: dict) -> str:
    """Readable summary of a :func:`track` / :func:`track_checkpoint` result."""
    lines = [
        f"{res['family']} {res['sizes_before']} -> {res['sizes_after']} "
        f"({res.get('growth', {}).get('method', '?')} growth), "
        f"{res['optimizer']} lr={res['lr']} eps={res['eps']} wd={res['weight_decay']}, "
        f"{res['steps']} steps on identical batches",
        f"source loss {res['source_loss'][0]:.4f} -> {res['source_loss'][-1]:.4f}",
        f"{'rule':<14} max relative loss gap",
    ]
    for rule, gap in res["gaps"].items():
        tag = "" if rule == "right" else "  (negative control)"
        lines.append(f"{rule:<14} {gap:.3e}{tag}")
    if "passed" in res:
        lines.append(f"passed: {res['passed']} (right <= {res['tol']:g}, controls > 10x that)")
    return "\n".join(lines)
