"""Issue 11 (a): zero-shot loss gap of ``fitted`` growth against target width N and source width n.

Sources: MLPs ``40 -> n -> 10`` (ReLU, one hidden space ``h1``) trained on MNIST-1D with Adam,
``n`` in ``--widths``, ``--seeds`` seeds each, under ``--param sp`` (the family's init, one
learning rate) or ``--param mf`` (mean-field relative to the smallest width, see
:func:`train_source`).
Each source is grown to ``N = k n`` (k in ``--factors``; k = 1 resamples all n units) with
``fitted`` (every unit drawn from the RC measure fitted to the source's units, fan-out times
``n / N``), ``--draws`` draws per source. Gap = test loss of the grown net - test loss of the
source (zero-shot, no training).

Reported (JSON + ``gap.png``): per (n, k) the gap's mean and sd over seeds (each seed's gap is
the mean over its draws) and the draw-to-draw sd of the test loss; the fitted log-log slope of
the mean gap against N for each n, and against n for each k (OLS over the per-seed points,
95% t CI, ``theory.ansatz.loglog_slope``; only where every per-seed gap is > 0).

    python -m experiments.rc_fitted_gap --quick     # n in {16, 32}, k in {1, 2, 4}, 5 seeds
    python -m experiments.rc_fitted_gap             # n in {16, 32, 64}, k in {1, 2, 4, 8}
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

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


def _slope(xs: list[float], ys: list[float]) -> dict | None:
    if min(ys) <= 0 or len(set(xs)) < 2:
        return None
    return loglog_slope(xs, ys).to_dict()


def run(widths, factors, seeds, draws, steps, method="fitted", param="sp") -> dict:
    rows = []
    for n in widths:
        for seed in range(seeds):
            p = train_source(n, seed, steps, param, base=min(widths))
            base = test_loss(p)
            for k in factors:
                losses = [
                    test_loss(
                        grow(
                            p,
                            MLP.spec(mlp_config(n)),
                            width={"h1": k * n},
                            method=method,
                            key=1000 * seed + r,
                        )[0]
                    )
                    for r in range(draws)
                ]
                rows.append(
                    {
                        "n": n,
                        "k": k,
                        "N": k * n,
                        "seed": seed,
                        "source_loss": base,
                        "gap": float(np.mean(losses) - base),
                        "draw_sd": float(np.std(losses, ddof=1)) if draws > 1 else 0.0,
                    }
                )
            print(
                f"n={n} seed={seed} source loss {base:.3f} gaps "
                + " ".join(f"{r['gap']:+.3f}" for r in rows[-len(factors) :]),
                flush=True,
            )
    summary = []
    for n in widths:
        for k in factors:
            g = [r["gap"] for r in rows if r["n"] == n and r["k"] == k]
            sd = [r["draw_sd"] for r in rows if r["n"] == n and r["k"] == k]
            summary.append(
                {
                    "n": n,
                    "k": k,
                    "N": n * k,
                    "gap_mean": float(np.mean(g)),
                    "gap_sd": float(np.std(g, ddof=1)),
                    "draw_sd": float(np.mean(sd)),
                }
            )
    slopes_N = {
        str(n): _slope(
            [r["N"] for r in rows if r["n"] == n], [r["gap"] for r in rows if r["n"] == n]
        )
        for n in widths
    }
    slopes_n = {
        str(k): _slope(
            [r["n"] for r in rows if r["k"] == k], [r["gap"] for r in rows if r["k"] == k]
        )
        for k in factors
    }
    return {
        "param": param,
        "method": method,
        "rows": rows,
        "summary": summary,
        "slope_gap_vs_N_at_n": slopes_N,
        "slope_gap_vs_n_at_k": slopes_n,
    }


def _yscale(values: list[float]) -> tuple:
    """Log scale when every value is positive, else symmetric log (gaps can be negative)."""
    return ("log",) if min(values) > 0 else ("symlog",)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    s = result["summary"]
    for n in sorted({r["n"] for r in s}):
        pts = [r for r in s if r["n"] == n]
        ax[0].errorbar(
            [r["N"] for r in pts],
            [r["gap_mean"] for r in pts],
            [r["gap_sd"] for r in pts],
            marker="o",
            capsize=3,
            label=f"n = {n}",
        )
    for k in sorted({r["k"] for r in s}):
        pts = [r for r in s if r["k"] == k]
        ax[1].errorbar(
            [r["n"] for r in pts],
            [r["gap_mean"] for r in pts],
            [r["gap_sd"] for r in pts],
            marker="o",
            capsize=3,
            label=f"k = {k}",
        )
    for a, xl in zip(ax, ("target width N", "source width n"), strict=True):
        a.set_xscale("log", base=2)
        a.set_yscale(*_yscale([r["gap_mean"] for r in s]))
        a.set_xlabel(xl)
        a.set_ylabel("zero-shot test loss gap (mean ± sd over seeds)")
        a.legend()
    fig.suptitle(f"{result['method']} growth of {result['param']}-trained MLPs (MNIST-1D)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--method", default="fitted")
    ap.add_argument("--param", choices=("sp", "mf"), default="sp", help="sources' training rule")
    ap.add_argument("--out", default="runs/rc_fitted_gap")
    a = ap.parse_args(argv)
    widths = (16, 32) if a.quick else (16, 32, 64)
    factors = (1, 2, 4) if a.quick else (1, 2, 4, 8)
    steps = 300 if a.quick else 1000
    result = run(widths, factors, a.seeds, a.draws, steps, a.method, a.param)
    result.update(quick=a.quick, seeds=a.seeds, draws=a.draws, steps=steps)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "gap.png")
    for r in result["summary"]:
        print(
            f"n={r['n']:>3} k={r['k']:>2}  gap {r['gap_mean']:+.4f} ± {r['gap_sd']:.4f}  "
            f"draw sd {r['draw_sd']:.4f}"
        )
    for name in ("slope_gap_vs_N_at_n", "slope_gap_vs_n_at_k"):
        for key, s in result[name].items():
            if s:
                print(
                    f"{name}[{key}]: {s['slope']:.2f} (95% CI {s['ci'][0]:.2f} .. {s['ci'][1]:.2f})"
                )
    print(f"wrote {out}/results.json, gap.png")
    return result


if __name__ == "__main__":
    main()
