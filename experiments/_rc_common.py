"""Shared scaffolding of the RC experiments (``rc_fitted_gap``, ``rc_control``,
``rc_recipe_ranking``, ``rc_fit_choice``).

Sources: MLPs ``40 -> n -> 10`` (ReLU, one hidden space ``h1``) trained on MNIST-1D with Adam
(:func:`train_source`), scored by their test cross-entropy (:func:`test_loss`). Around them:
the common command line (:func:`parser`), the output folder (:func:`save`: ``results.json`` and
one figure), mean ± sd summaries and log-log slopes of gaps.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from growth.engine import grow
from growth.models import get_family, init_model, model_from_params, params_of
from growth.tasks.data import load_dataset
from growth.tasks.train import TrainConfig, cross_entropy, train
from theory.ansatz import loglog_slope
from theory.parametrization import leaf_rules, lr_multipliers

MLP = get_family("mlp")


@functools.cache
def _data():
    return load_dataset("mnist1d")


def mlp_config(n: int):
    return MLP.config(input_dim=_data().x_train.shape[1], hidden=(n,), num_classes=10)


def init_source(n: int, seed: int, param: str = "sp", base: int = 16) -> tuple:
    """An untrained ``40 -> n -> 10`` MLP and its per-leaf Adam LR factors (None: one LR).

    param ``"sp"``: the family's init, one learning rate. ``"mf"``: mean-field relative to base
    width ``base`` (``theory.parametrization``, in SP storage): each leaf's init std times
    ``init_std * multiplier`` of the ``mf`` rule over that of ``sp`` (the readout's init is
    ``O(1/n)`` instead of ``O(n^-1/2)``) and the ``mf`` Adam learning-rate factors (``1/r_in``).
    At ``n = base`` both are the same model.
    """
    cfg = mlp_config(n)
    model = init_model("mlp", cfg, seed=seed)
    if param == "sp":
        return model, None
    resolved = MLP.spec(cfg).resolve(params_of(model))
    rules = {p: leaf_rules(resolved, {"h1": base}, p) for p in ("sp", "mf")}
    factors = [
        m.init_std * m.multiplier / s.init_std
        for m, s in zip(rules["mf"], rules["sp"], strict=True)
    ]
    leaves, tree = jax.tree_util.tree_flatten(params_of(model))
    scaled = [x * f for x, f in zip(leaves, factors, strict=True)]
    nnx.update(model, jax.tree_util.tree_unflatten(tree, scaled))
    return model, lr_multipliers(resolved, {"h1": base}, "mf", "adam")


def train_source(n: int, seed: int, steps: int, param: str = "sp", base: int = 16) -> dict:
    """A trained ``40 -> n -> 10`` MLP's params (Adam, default learning rate; ``param`` and
    ``base``: see :func:`init_source`)."""
    model, mults = init_source(n, seed, param, base)
    cfg = TrainConfig(steps=steps, eval_every=steps, seed=seed)
    train(model, _data(), cfg, lr_multipliers=mults, progress=False)
    return params_of(model)


@functools.cache
def _loss_fn(n: int):
    cfg = mlp_config(n)
    return jax.jit(lambda p, x, y: cross_entropy(model_from_params("mlp", cfg, p)(x), y))


def test_loss(params: dict) -> float:
    """Mean test cross-entropy of an MLP with params ``params`` (any hidden width)."""
    d = _data()
    n = params["layers"][0]["kernel"].shape[1]
    return float(_loss_fn(n)(params, d.x_test, d.y_test))


def grow_hidden(params: dict, N: int, method: Any, key: Any) -> dict:
    """A source MLP's ``params`` with its hidden space ``h1`` grown (or resampled) to ``N`` units
    by the engine's ``method`` (a name or a ``Method``) under ``key`` (a PRNG key or an int)."""
    n = params["layers"][0]["kernel"].shape[1]
    return grow(params, MLP.spec(mlp_config(n)), width={"h1": N}, method=method, key=key)[0]


# ------------------------------------------------------------------------------ summaries


def mean_sd(name: str, values: Sequence[float]) -> dict:
    """``{name_mean, name_sd}`` of ``values`` (sample sd, ddof 1); both None when empty."""
    if not len(values):
        return {f"{name}_mean": None, f"{name}_sd": None}
    return {f"{name}_mean": float(np.mean(values)), f"{name}_sd": float(np.std(values, ddof=1))}


def positive_slope(xs: Sequence[float], ys: Sequence[float]) -> dict | None:
    """Log-log OLS slope of ``ys`` against ``xs`` with its 95% CI
    (``theory.ansatz.loglog_slope``); None unless every y is > 0 and there are two distinct x."""
    if min(ys) <= 0 or len(set(xs)) < 2:
        return None
    return loglog_slope(xs, ys).to_dict()


def print_slopes(fits: dict[str, dict | None]) -> None:
    """One line ``label: slope (95% CI lo .. hi)`` per fitted slope (None: not fitted, skipped)."""
    for label, fit in fits.items():
        if fit:
            print(f"{label}: {fit['slope']:.2f} (95% CI {fit['ci'][0]:.2f} .. {fit['ci'][1]:.2f})")


# --------------------------------------------------------------------- command line, output


def parser(doc: str, out: str) -> argparse.ArgumentParser:
    """The flags every RC experiment takes: ``--quick``, ``--seeds`` (5), ``--out`` (``out``);
    the description is the first line of ``doc``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", default=out)
    return ap


def save(result: dict, out: str, figure: str, plot: Callable[[dict], Any]) -> Path:
    """Write ``result`` to ``out/results.json`` and the matplotlib figure ``plot(result)`` to
    ``out/figure``; returns the folder (created if missing)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(result, indent=1))
    fig = plot(result)
    fig.tight_layout()
    fig.savefig(folder / figure, dpi=120)
    return folder


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def gap_yscale(values: Sequence[float]) -> tuple:
    """Log scale when every value is positive, else symmetric log (gaps can be negative)."""
    return ("log",) if min(values) > 0 else ("symlog",)


def errorbar_gaps(ax, points: Sequence[dict], x: str, label: str) -> None:
    """``gap_mean ± gap_sd`` of summary ``points`` against their field ``x`` on ``ax``."""
    ax.errorbar(
        [r[x] for r in points],
        [r["gap_mean"] for r in points],
        [r["gap_sd"] for r in points],
        marker="o",
        capsize=3,
        label=label,
    )
