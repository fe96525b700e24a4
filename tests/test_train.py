"""The training loop (growth.tasks.train.fit): its AdamW updates are optax's, with the warm-up +
cosine schedule, per-leaf multipliers and decoupled decay; the learning rate enters the compiled
step as an argument, so runs of one model that differ only in their schedule or length (an LR
sweep, the budget probes) compile one step, and another model compiles its own."""

from __future__ import annotations

import jax
import numpy as np
import optax
from flax import nnx

from growth.models import init_model
from growth.models.mlp import MLPConfig
from growth.tasks.train import TrainConfig, _train_step, cross_entropy, fit, make_optimizer

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 6)).astype(np.float32)
Y = RNG.integers(0, 3, size=64).astype(np.int32)
BATCH = 8


def _loss(model, x, y):
    return cross_entropy(model(x), y)


def _batches():
    while True:
        for i in range(0, len(X), BATCH):
            yield X[i : i + BATCH], Y[i : i + BATCH]


def _fit(config: MLPConfig, cfg: TrainConfig, mults) -> dict:
    model = init_model("mlp", config, 0)
    fit(model, _batches(), _loss, lambda m: (0.0, 0.0), cfg, lr_multipliers=mults,
        progress=False)  # fmt: skip
    return nnx.state(model, nnx.Param)


def _optax_loop(config: MLPConfig, cfg: TrainConfig, mults) -> dict:
    """The same training written directly with optax: ``make_optimizer``'s schedule evaluated
    inside the step from the optimizer's own update count."""
    graphdef, params, rest = nnx.split(init_model("mlp", config, 0), nnx.Param, ...)
    opt = make_optimizer(cfg, mults)
    state = opt.init(params)

    @jax.jit
    def step(p, s, x, y):
        grads = jax.grad(lambda q: _loss(nnx.merge(graphdef, q, rest), x, y))(p)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    batches = _batches()
    for _ in range(cfg.steps):
        params, state = step(params, state, *next(batches))
    return params


def _max_diff(a, b) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in pairs)


def test_fit_is_optax_adamw_on_its_schedule():
    config = MLPConfig(6, (8,), 3)
    mults = (0.5, 2.0, 1.0, 0.25)  # kernel/bias of both layers
    cfg = TrainConfig(steps=9, batch_size=BATCH, lr=3e-2, warmup=3, weight_decay=0.1, eval_every=4)
    got = _fit(config, cfg, mults)
    assert _max_diff(got, _optax_loop(config, cfg, mults)) < 1e-6
    # must-fail: a schedule shifted by one update (warm-up 2, not 3) or other multipliers differ
    shifted = TrainConfig(steps=9, batch_size=BATCH, lr=3e-2, warmup=2, weight_decay=0.1)
    assert _max_diff(got, _optax_loop(config, shifted, mults)) > 1e-4
    assert _max_diff(got, _optax_loop(config, cfg, (1.0,) * 4)) > 1e-4


def test_runs_differing_in_schedule_share_one_compiled_step():
    small, other = MLPConfig(6, (8,), 3), MLPConfig(6, (12,), 3)
    _fit(small, TrainConfig(steps=4, batch_size=BATCH, lr=1e-2, eval_every=4), None)
    compiled = _train_step._cache_size()
    for lr, steps in ((3e-2, 4), (1e-3, 7)):  # an LR sweep, a shorter budget
        _fit(small, TrainConfig(steps=steps, batch_size=BATCH, lr=lr, eval_every=4), None)
    assert _train_step._cache_size() == compiled
    _fit(other, TrainConfig(steps=4, batch_size=BATCH, lr=1e-2, eval_every=4), None)
    assert _train_step._cache_size() == compiled + 1
