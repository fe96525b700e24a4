"""Across-width test of the RC ansatz (DESIGN 2.7 "across widths", theory notes P4, T3/T4, T11).

Trains MLPs ``40 -> w -> w -> 10`` (ReLU) of widths ``w = 32 .. 1024`` on MNIST-1D under one
rule -- muP-Adam relative to base width 32 (``theory.parametrization``: muP init, Adam LR factors
``1 / r_in``), same steps, batches, learning rate and seed -- and measures

1. the distance between the layers' empirical unit measures on width-free features: unit ``i``
   of hidden layer l is its activation vector on a fixed probe batch of B test inputs,
   ``phi_i in R^B`` (``theory.ansatz.unit_features``); for each width vs the widest, the sliced
   Wasserstein distance ``SW_2`` and the unbiased ``MMD_u^2`` (``theory.distance``), with the
   widest model's half-vs-half split as the finite-sample floor;
2. the fitted log-log slope of ``SW_2`` against width (95% CI; ``theory.ansatz.loglog_slope``);
   under the ansatz the distance shrinks like ``w^-1/2`` (sampling error of the smaller measure);
3. for sources of width 32 and 64 (and 128 in the full run), the iid-growth law-of-large-numbers
   fit of ``growth.apps.analyze.native`` (growth factors 2..16): slope of ``E|loss gap|`` and of
   the logits'
   draw-to-draw sd in the grown width N, with CIs. For muP/SP-trained sources the gap keeps an
   ``O(1/k)`` bias in the growth factor k that does not shrink with the source width.

Writes ``results.json``, ``distances.png`` and ``lln.png`` to ``--out`` (default
``runs/width_sweep``; ``--quick``: widths 32..256, few steps, a CI-sized smoke run).

    python experiments/width_sweep.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from growth.apps.analyze.native import analyze_checkpoint
from growth.formats.checkpoint import save_checkpoint
from growth.models import config_to_dict, get_family, init_model, params_of
from growth.models.mlp import MLPConfig
from growth.tasks.data import load_dataset
from growth.tasks.train import TrainConfig, train
from theory.ansatz import loglog_slope, unit_features
from theory.distance import mmd_unbiased, sliced_wasserstein
from theory.parametrization import adam_lr_multipliers, leaf_rules

BASE = 32


def mup_init(model, config: MLPConfig, base: int = BASE) -> None:
    """Rescale a fresh SP-initialised model to muP init (TP V Table 3): each leaf times
    ``init_std(muP) / init_std(SP)`` -- only the readout changes (``r_in^-1/2``)."""
    params = params_of(model)
    resolved = get_family("mlp").spec(config).resolve(params)
    base_sizes = {s: base for s in resolved.width_spaces()}
    mup, sp = leaf_rules(resolved, base_sizes, "mup"), leaf_rules(resolved, base_sizes, "sp")
    leaves, treedef = jax.tree_util.tree_flatten(params)
    leaves = [x * (a.init_std / b.init_std) for x, a, b in zip(leaves, mup, sp, strict=True)]
    from flax import nnx

    nnx.update(model, jax.tree_util.tree_unflatten(treedef, leaves))


def hidden_acts(params: dict, x: jax.Array) -> list[jax.Array]:
    """Post-activation hidden layers of an MLP on ``x [B, d]`` -> list of ``[B, n_l]``."""
    layers = params["layers"]
    acts, h = [], x
    for l in range(len(layers) - 1):
        h = jax.nn.relu(h @ layers[l]["kernel"] + layers[l]["bias"])
        acts.append(h)
    return acts


def train_width(width: int, data, cfg: TrainConfig, depth: int = 2) -> tuple[dict, MLPConfig, dict]:
    config = MLPConfig(data.input_dim, (width,) * depth, data.num_classes)
    model = init_model("mlp", config, seed=cfg.seed)
    mup_init(model, config)
    resolved = get_family("mlp").spec(config).resolve(params_of(model))
    mults = adam_lr_multipliers(resolved, {s: BASE for s in resolved.width_spaces()})
    hist = train(model, data, cfg, lr_multipliers=mults, desc=f"w={width}", progress=False)
    return params_of(model), config, hist.to_dict()


def run(widths: list[int], steps: int, out: Path, lln_sources: list[int], draws: int) -> dict:
    data = load_dataset("mnist1d")
    cfg = TrainConfig(
        steps=steps, eval_every=max(steps // 4, 1), lr=3e-3, warmup=min(100, steps // 5)
    )
    probe = jnp.asarray(data.x_test[:256])
    key = jax.random.key(0)
    models, losses, feats = {}, {}, {}
    for w in widths:
        t = time.time()
        params, config, hist = train_width(w, data, cfg)
        models[w] = (params, config)
        losses[w] = {"test_loss": hist["test_loss"][-1], "test_acc": hist["test_acc"][-1]}
        feats[w] = [unit_features(a) for a in hidden_acts(params, probe)]
        print(f"width {w}: test loss {losses[w]['test_loss']:.4f} ({time.time() - t:.1f}s)")

    widest = widths[-1]
    dist: dict[str, dict] = {}
    for l in range(len(feats[widest])):
        ref = feats[widest][l]
        rows = {"width": [], "sw2": [], "mmd2_u": []}
        for w in widths[:-1]:
            kl = jax.random.fold_in(key, 100 * l + w)
            rows["width"].append(w)
            rows["sw2"].append(float(sliced_wasserstein(feats[w][l], ref, kl, 512)))
            rows["mmd2_u"].append(float(mmd_unbiased(feats[w][l], ref)))
        perm = np.random.default_rng(l).permutation(ref.shape[0])
        a, b = ref[perm[: widest // 2]], ref[perm[widest // 2 :]]
        rows["floor_sw2_half_split"] = float(sliced_wasserstein(a, b, key, 512))
        rows["floor_mmd2_u_half_split"] = float(mmd_unbiased(a, b))
        if len(rows["width"]) >= 2:
            rows["sw2_fit"] = loglog_slope(rows["width"], rows["sw2"]).to_dict()
            pos = [(w, m) for w, m in zip(rows["width"], rows["mmd2_u"], strict=True) if m > 0]
            if len(pos) >= 3:
                rows["mmd2_u_fit"] = loglog_slope(*zip(*pos, strict=True)).to_dict()
        dist[f"h{l + 1}"] = rows

    lln = {}
    with tempfile.TemporaryDirectory() as tmp:
        for w in lln_sources:
            params, config = models[w]
            path = save_checkpoint(
                Path(tmp) / f"w{w}",
                params,
                {"family": "mlp", "config": config_to_dict(config), "dataset": "mnist1d"},
            )
            res = analyze_checkpoint(path, draws=draws, factors=(2, 4, 8, 16))
            lln[str(w)] = {
                "test_loss": res["test_loss"],
                "rc_tie": res["rc_tie"],
                "controls": res["controls"],
                **res["lln"],
            }
            fit = res["lln"]["gap_fit"]
            print(f"source {w}: iid gap slope {fit['slope']:.2f} CI {fit['ci']}")

    result = {
        "widths": widths,
        "base_width": BASE,
        "train": cfg.to_dict(),
        "rule": "muP-Adam (TP V Table 3): muP init, LR x base/fan_in on hidden and readout",
        "probe_batch": int(probe.shape[0]),
        "losses": {str(w): v for w, v in losses.items()},
        "distances_vs_widest": dist,
        "lln": lln,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    _plots(result, out)
    return result


def _plots(r: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in r["distances_vs_widest"].items():
        ax[0].loglog(rows["width"], rows["sw2"], "o-", label=f"{name} SW2")
        ax[0].axhline(rows["floor_sw2_half_split"], ls=":", lw=1)
        pos = [(w, m) for w, m in zip(rows["width"], rows["mmd2_u"], strict=True) if m > 0]
        if pos:
            ax[1].loglog(*zip(*pos, strict=True), "o-", label=f"{name} MMD2_u")
    ax[0].set(xlabel="width", ylabel="distance to widest", title="SW2 (dotted: half-split floor)")
    ax[1].set(xlabel="width", title="unbiased MMD^2 (positive values; <= 0: not resolved)")
    for a in ax:
        if a.get_legend_handles_labels()[0]:
            a.legend()
    fig.tight_layout()
    fig.savefig(out / "distances.png", dpi=100)
    plt.close(fig)
    if r["lln"]:
        fig, ax = plt.subplots(figsize=(5, 4))
        for w, lln in r["lln"].items():
            ax.loglog(lln["factors"], lln["mean_abs_gap"], "o-", label=f"source {w}: E|gap|")
        ax.set(xlabel="growth factor k", ylabel="iid growth |loss gap|", title="iid growth")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "lln.png", dpi=100)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="widths 32..256, 300 steps")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--max-width", type=int, default=None)
    p.add_argument("--draws", type=int, default=None)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    top = a.max_width or (256 if a.quick else 1024)
    widths = [w for w in (32, 64, 128, 256, 512, 1024) if w <= top]
    steps = a.steps or (300 if a.quick else 2000)
    draws = a.draws or (4 if a.quick else 8)
    sources = [w for w in (32, 64) if w in widths] + ([128] if not a.quick else [])
    out = Path(a.out or ("runs/width_sweep/quick" if a.quick else "runs/width_sweep"))
    run(widths, steps, out, sources, draws)
    print(f"wrote {out}/results.json, distances.png, lln.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
