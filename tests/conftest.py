"""Shared helpers and fixtures for the growth tests.

Helpers build random parameter pytrees for the reference model families (without running the
modules' initialisers, which would compile every new shape eagerly), run the library's own models
under ``jax.jit``, and train a small MLP on MNIST-1D once per session for the RC negative controls.
"""

from __future__ import annotations

import functools
import gc
import os
from collections.abc import Callable
from typing import Any, NamedTuple

# One BLAS thread: on the shared 2-core test machine OpenBLAS's worker threads spin against the
# other processes, and numpy matmuls (the BERT forward of `grow analyze`) ran ~50x slower
# (MiniLM FFN: 1.85 s vs 0.036 s per forward). Set before numpy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import settings

from growth.models import get_family, model_from_params, params_of
from growth.spec import leaves_with_paths

# Property checks draw the same examples on every machine (seeded by each test's source), so
# `make test` here and in CI test the same cases; `HYPOTHESIS_PROFILE=explore` draws fresh ones
# (pytest --hypothesis-seed=K to repeat a draw) to hunt for counterexamples during development.
settings.register_profile("mfgrow", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "mfgrow"))

ACTS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
}


# ---------------------------------------------------------------------------------------------
# parameters and forward passes
# ---------------------------------------------------------------------------------------------


def abstract_params(family: str, config: Any) -> dict:
    """The family's params pytree as ``jax.ShapeDtypeStruct`` leaves (nothing is computed)."""
    fam = get_family(family)
    module = nnx.eval_shape(lambda: fam.module(config, rngs=nnx.Rngs(0)))
    return params_of(module)


def random_params(family: str, config: Any, seed: int = 0) -> dict:
    """Random float32 params for ``family``/``config`` with every leaf non-trivial.

    Kernels ~ N(0, 1/fan_in) (fan_in = the second-to-last axis), biases ~ N(0, 0.3^2), norm
    gains ~ 1 + N(0, 0.3^2): unlike the initialisers (zero biases, unit gains) this exercises
    every leaf's growth rule.
    """
    rng = np.random.default_rng(seed)
    tree = abstract_params(family, config)
    out = []
    for name, leaf in leaves_with_paths(tree):
        z = rng.normal(size=leaf.shape)
        if name.endswith("scale"):
            value = 1.0 + 0.3 * z
        elif len(leaf.shape) >= 2:
            value = z / np.sqrt(leaf.shape[-2])
        else:
            value = 0.3 * z
        out.append(jnp.asarray(value, jnp.float32))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(tree), out)


@functools.cache
def model_fn(family: str, config: Any) -> Callable[[Any, jax.Array], jax.Array]:
    """``jit(params, x -> logits)`` running the library's own module for ``family``/``config``."""
    return jax.jit(lambda params, x: model_from_params(family, config, params)(x))


def mlp_apply(params: dict, x: jax.Array, activation: str = "relu") -> jax.Array:
    """Pure MLP forward on the ``{"layers": {i: {"kernel", "bias"}}}`` pytree (jit/vmap-able)."""
    layers = params["layers"]
    keys = sorted(layers)
    act = ACTS[activation]
    for k in keys[:-1]:
        x = act(x @ layers[k]["kernel"] + layers[k]["bias"])
    return x @ layers[keys[-1]]["kernel"] + layers[keys[-1]]["bias"]


def rel_err(new: jax.Array, old: jax.Array) -> float:
    """``max |new - old| / max |old|`` (the exactness metric of the growth tests)."""
    new, old = np.asarray(new, np.float64), np.asarray(old, np.float64)
    return float(np.abs(new - old).max() / max(np.abs(old).max(), 1e-30))


def tree_equal(a: Any, b: Any) -> bool:
    """Bit-identical pytrees (same structure, shapes, dtypes and values)."""
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    if ta != tb:
        return False
    return all(
        x.shape == y.shape and x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb, strict=True)
    )


def xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


# ---------------------------------------------------------------------------------------------
# a small MLP trained on MNIST-1D (session fixture)
# ---------------------------------------------------------------------------------------------


class Trained(NamedTuple):
    config: Any
    init_params: dict
    params: dict
    x_test: jax.Array
    y_test: jax.Array
    init_loss: float
    loss: float
    accuracy: float


def _mnist1d() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        from growth.tasks.data import load_dataset
    except ImportError:  # growth.tasks.data not there yet: generate (never download) MNIST-1D
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples, args.train_split, args.seed = 6000, 0.8, 42
        data = make_dataset(args)
        x, xt = (np.asarray(a, np.float32) for a in (data["x"], data["x_test"]))
        mu, sd = x.mean(0), x.std(0) + 1e-6
        return (x - mu) / sd, np.asarray(data["y"]), (xt - mu) / sd, np.asarray(data["y_test"])
    ds = load_dataset("mnist1d")
    return ds.x_train, ds.y_train, ds.x_test, ds.y_test


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop every compiled XLA program after each test module. XLA's CPU backend maps each
    executable's code into memory; one process running the whole suite otherwise accumulates
    them until it hits the kernel's mapping limit (vm.max_map_count, 65530 here) and the next
    compilation crashes with a segfault."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def small_ckpt(tmp_path_factory):
    """A small ResMLP checkpoint (8/16/2) trained 60 steps by ``grow train``'s code path; tests
    only read it (grow from it, load it)."""
    from growth.apps.commands import train_model
    from growth.models.resmlp import ResMLPConfig
    from growth.tasks.train import TrainConfig

    out = tmp_path_factory.mktemp("ckpt") / "small"
    cfg = ResMLPConfig(input_dim=40, width=8, hidden=16, depth=2, num_classes=10)
    train_model(out, "resmlp", cfg, TrainConfig(steps=60, eval_every=30), progress=False)
    return out


@pytest.fixture(scope="session")
def trained_mlp() -> Trained:
    """MLP(40 -> 64 -> 64 -> 10, relu) trained with Adam for 800 steps on MNIST-1D."""
    x, y, xt, yt = _mnist1d()
    x, y = jnp.asarray(x), jnp.asarray(y, jnp.int32)
    xt, yt = jnp.asarray(xt), jnp.asarray(yt, jnp.int32)
    fam = get_family("mlp")
    config = fam.config(input_dim=x.shape[1], hidden=(64, 64), num_classes=10)
    p0 = random_params("mlp", config, seed=0)
    opt = optax.adam(3e-3)

    def loss_fn(p, xb, yb):
        return xent(mlp_apply(p, xb), yb)

    @jax.jit
    def train(p, key):
        def step(carry, k):
            p, s = carry
            idx = jax.random.randint(k, (256,), 0, x.shape[0])
            g = jax.grad(loss_fn)(p, x[idx], y[idx])
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (p, opt.init(p)), jax.random.split(key, 800))
        return p

    p = train(p0, jax.random.key(0))
    logits = mlp_apply(p, xt)
    return Trained(
        config,
        p0,
        p,
        xt,
        yt,
        float(loss_fn(p0, xt, yt)),
        float(xent(logits, yt)),
        float((logits.argmax(-1) == yt).mean()),
    )
