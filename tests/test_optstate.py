"""Optimizer state across growth: round trips, pad/depth rules, and the strongest check -- a
grown decoder trained with Adam tracks its source step for step (with negative controls)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_params, xent

from growth import apply_plan, plan_growth
from growth.models import get_family, grown_config, model_from_params
from growth.models.decoder import DecoderConfig
from growth.recipes.optstate import (
    adam_scales,
    gradient_map,
    grow_opt_state,
    tracking_adam,
)

FAM = get_family("decoder")
CFG = DecoderConfig(
    vocab=16, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=4, d_ff=12, max_len=8
)
WIDTH = {"d": 16, "ff": 24, "kv": 2, "group": 4, "hd": 8}  # every space x2: balanced, no pads


@functools.cache
def _value_and_grad(cfg: DecoderConfig):
    def loss(params, tok):
        return xent(model_from_params("decoder", cfg, params)(tok[:, :-1]), tok[:, 1:])

    return jax.jit(jax.value_and_grad(loss))


def _batches(n: int) -> list[jax.Array]:
    rng = np.random.default_rng(0)
    # a learnable stream: a noisy cyclic pattern
    base = (np.arange(9)[None, :] + rng.integers(0, 16, (n, 4, 1))) % 16
    noise = rng.integers(0, 16, (n, 4, 9))
    return [
        jnp.asarray(np.where(rng.random((4, 9)) < 0.8, b, z))
        for b, z in zip(base, noise, strict=True)
    ]


def _train(params, opt, state, batches, cfg):
    losses = []
    vg = _value_and_grad(cfg)
    for tok in batches:
        value, grads = vg(params, tok)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        losses.append(float(value))
    return params, state, np.array(losses)


def _first_copies(plan, tree):
    """Undo a width map without pads: keep the first copy of every source unit on each axis."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    out = []
    for x, spec in zip(leaves, plan.resolved.leaves, strict=True):
        for ax, a in enumerate(spec.axes):
            if a and a.space in plan.maps:
                index = np.asarray(plan.maps[a.space].index)
                first = np.argmax(
                    index[None, :] == np.arange(plan.resolved.sizes[a.space])[:, None], 1
                )
                x = jnp.take(x, first, axis=ax)
        out.append(x)
    return jax.tree_util.tree_unflatten(treedef, out)


@pytest.mark.parametrize(
    "opt", [optax.adam(1e-2), tracking_adam(1e-2), optax.sgd(1e-2, momentum=0.9)]
)
def test_opt_state_round_trip(opt) -> None:
    params = random_params("decoder", CFG, 0)
    params, state, _ = _train(params, opt, opt.init(params), _batches(3), CFG)
    plan = plan_growth(params, FAM.spec(CFG), width=WIDTH, method="copy")
    grown = grow_opt_state(plan, state)
    like = opt.init(apply_plan(plan, params))
    assert jax.tree.structure(grown) == jax.tree.structure(like)
    assert all(
        a.shape == b.shape
        for a, b in zip(jax.tree.leaves(grown), jax.tree.leaves(like), strict=True)
    )
    # back: first copies, divided by the gradient scale (1/2 per grown out axis; squared for nu)
    g = gradient_map(plan, jax.tree.map(jnp.ones_like, params))
    g_small = _first_copies(plan, g)
    for field, power in (("mu", 1), ("nu", 2), ("trace", 1)):
        for s_new, s_old in zip(_states(grown, field), _states(state, field), strict=True):
            back = jax.tree.map(lambda x, f, p=power: x / f**p, _first_copies(plan, s_new), g_small)
            for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(s_old), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-30)
    # the gradient scale is the product of the fan-out scales: wq has out:kv,group,hd -> 1/8
    assert float(g["blocks"]["wq"][0, 0, 0, 0, 0]) == pytest.approx(1 / 8)
    assert float(g["blocks"]["wo"][0, 0, 0, 0, 0]) == pytest.approx(1 / 2)  # out:d only
    assert float(g["embed"][0, 0]) == pytest.approx(1 / 2)


def _states(state, field):
    found = []

    def visit(node):
        if hasattr(node, "_fields"):
            if field in node._fields:
                found.append(getattr(node, field))
            for f in node._fields:
                visit(getattr(node, f))
        elif isinstance(node, (tuple, list)):
            for v in node:
                visit(v)

    visit(state)
    return found


def test_pads_and_new_blocks() -> None:
    cfg = DecoderConfig(vocab=16, d_model=4, n_layers=2, n_heads=2, head_dim=2, d_ff=6, max_len=8)
    params = random_params("decoder", cfg, 1)
    opt = tracking_adam(1e-2)
    params, state, _ = _train(params, opt, opt.init(params), _batches(2), cfg)
    plan = plan_growth(params, FAM.spec(cfg), width={"d": 6}, depth={"blocks": 4})
    mu, nu = grow_opt_state(plan, state)[0].mu, grow_opt_state(plan, state)[0].nu
    old_mu, old_nu = state[0].mu, state[0].nu
    # d = 4 -> 6 = 1*4 + 2 pads (LayerNorm): pad moments 0 (mu) and the mean (nu)
    np.testing.assert_array_equal(mu["embed"][:, 4:], 0.0)
    pad_nu = np.broadcast_to(old_nu["embed"].mean(1, keepdims=True), (16, 2))
    np.testing.assert_allclose(nu["embed"][:, 4:], pad_nu, rtol=1e-6)
    # identity depth 2 -> 4: block l is followed by a copy; both carry block l's state (the
    # residual output too: only its weights are zeroed)
    np.testing.assert_allclose(nu["blocks"]["w_down"][1], nu["blocks"]["w_down"][0])
    np.testing.assert_allclose(mu["blocks"]["w_up"][:, :4][2], old_mu["blocks"]["w_up"][1])


def test_tracking_adam_without_scales_is_adam() -> None:
    params = random_params("decoder", CFG, 2)
    batches = _batches(4)
    reference = optax.adam(1e-2, eps=1e-6)
    _, _, la = _train(params, reference, reference.init(params), batches, CFG)
    opt = tracking_adam(1e-2, eps=1e-6)
    _, _, lb = _train(params, opt, opt.init(params), batches, CFG)
    np.testing.assert_allclose(la, lb, rtol=1e-6)


def _weights_like_state(plan, state):
    """DESIGN.md's first guess: moments mapped like the weights (fan-in axes scaled)."""
    adam = state[0]
    nu = jax.tree.map(jnp.square, apply_plan(plan, jax.tree.map(jnp.sqrt, adam.nu)))
    return (adam._replace(mu=apply_plan(plan, adam.mu), nu=nu), *state[1:])


def test_grown_model_tracks_source_under_adam() -> None:
    """Grow after 10 Adam steps (balanced copies, no symmetry breaking), continue 20 steps on the
    same batches: with moments on the gradient map, lr x fan-in scales and eps x fan-out scales
    the grown losses equal the source's; each wrong rule visibly diverges."""
    lr, eps = 3e-2, 3e-4
    batches = _batches(30)
    params = random_params("decoder", CFG, 3)
    opt = tracking_adam(lr, eps=eps)
    params, state, _ = _train(params, opt, opt.init(params), batches[:10], CFG)
    _, _, ref = _train(params, opt, state, batches[10:], CFG)

    plan = plan_growth(params, FAM.spec(CFG), width=WIDTH, method="copy")
    big, cfg2 = apply_plan(plan, params), grown_config("decoder", CFG, plan)
    scales = adam_scales(plan, params)
    ones = jax.tree.map(jnp.ones_like, scales.lr)

    def gap(scales, state2) -> float:
        _, _, losses = _train(big, tracking_adam(lr, scales, eps=eps), state2, batches[10:], cfg2)
        return float(np.abs(losses - ref).max() / np.abs(ref).max())

    right = gap(scales, grow_opt_state(plan, state))
    assert right <= 1e-5, right
    assert ref[-1] < ref[0]  # the run does learn: the tracking is not vacuous
    controls = {
        "moments like the weights": gap(scales, _weights_like_state(plan, state)),
        "one global learning rate": gap(scales._replace(lr=ones), grow_opt_state(plan, state)),
        "unscaled eps": gap(scales._replace(eps=ones), grow_opt_state(plan, state)),
        "fresh optimizer state": gap(scales, opt.init(big)),
    }
    print(f"tracking gap {right:.2e}; controls", {k: f"{v:.1e}" for k, v in controls.items()})
    for name, value in controls.items():
        assert value > 20 * max(right, 1e-6), (name, value, right)
