"""Do MLPs trained independently at different widths share one per-layer unit measure?

Trains MLPs ``40 -> n -> n -> 10`` (ReLU) on MNIST-1D at several widths n, several seeds each,
under the mean-field parametrization (``param="mf"``: ``1/n`` multipliers, N(0, 1) types, one
width-free Adam rate) and, as the contrast, under SP (one global Adam rate), and compares the
layers' empirical unit measures on width-free features:

- ``act/h1``, ``act/h2``: unit i's post-activation on a fixed probe batch of P test inputs
  (``theory.ansatz.unit_features``), a point of ``R^P`` whatever the width;
- ``type/h1``: unit i's incoming row and bias ``(w1[:, i], b1[i])`` in ``R^41`` (fan-in fixed);
- ``type/h2``: unit i's bias and readout type ``(b2[i], n m W_out[i, :])`` in ``R^11`` (MF units).

Statistic: the unbiased energy distance ``ED_u = 2E|X-Y| - E|X-X'| - E|Y-Y'|`` (parameter-free,
``theory.distance.energy_distance_unbiased``), calibrated by a permutation test of units
(``theory.distance.permutation_test``; units of one net are exchangeable). For each width n and
seed s it reports, per feature set:

- ``across``: net (n, s) vs the widest net of another seed, ``(N_max, s+1)``;
- ``same_width``: net (n, s) vs net (n, s+1) -- the "another seed at the same width" baseline;
- ``init``: trained net (n, s) vs an untrained net (n, s+1) -- the init-law baseline;
- ``power``: (n, s) vs (n, s+1) with the second sample's units shifted by ``delta`` times its
  total standard deviation along a random direction (``delta = 0`` is the test's size), at the
  smallest and largest width, MF only: the rejection rate at level 0.05 over seeds.

Writes ``results.json`` and ``distance_vs_width.png`` to ``--out`` (default
``runs/measure_across_widths``). ``--quick``: widths 16 and 64, 300 steps, 100 permutations.

    nice -n 10 python experiments/measure_across_widths.py --quick
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from growth.models import init_model, params_of
from growth.models.mlp import MLPConfig
from growth.tasks.data import load_dataset
from growth.tasks.train import TrainConfig, train
from theory.ansatz import unit_features
from theory.distance import energy_distance_unbiased, permutation_test

ALPHA = 0.05
LR = {"mf": 0.1, "sp": 1e-2}  # each parametrization near its best Adam rate (see docs/theory.md)
FEATURES = ("act/h1", "act/h2", "type/h1", "type/h2")
DELTAS = (0.0, 0.25, 0.5, 1.0)


def features(config: MLPConfig, params: dict, probe: jax.Array) -> dict[str, np.ndarray]:
    """Width-free unit features of a 2-hidden-layer MLP (module doc), each ``[n_units, D]``."""
    k = [jnp.asarray(params["layers"][i]["kernel"]) for i in range(3)]
    b = [jnp.asarray(params["layers"][i]["bias"]) for i in range(3)]
    h1 = jax.nn.relu(probe @ k[0] + b[0])
    h2 = jax.nn.relu(config.mults[0] * (h1 @ k[1]) + b[1])
    readout = config.hidden[1] * config.mults[1] * k[2]  # [n2, C] types in MF units
    out = {
        "act/h1": unit_features(h1),
        "act/h2": unit_features(h2),
        "type/h1": jnp.concatenate([k[0].T, b[0][:, None]], axis=1),
        "type/h2": jnp.concatenate([b[1][:, None], readout], axis=1),
    }
    return {name: np.asarray(v, np.float32) for name, v in out.items()}


def train_net(data, param: str, width: int, seed: int, steps: int) -> tuple[MLPConfig, dict, dict]:
    """A fresh ``param`` MLP of ``width`` trained with Adam (its own base: every LR factor 1)."""
    config = MLPConfig(data.input_dim, (width, width), data.num_classes, param=param)
    model = init_model("mlp", config, seed=seed)
    init = params_of(model)
    tc = TrainConfig(steps=steps, lr=LR[param], eval_every=steps, warmup=min(100, steps // 5),
                     seed=seed)  # fmt: skip
    hist = train(model, data, tc, progress=False)
    return config, init, {"params": params_of(model), "test_loss": hist.test_loss[-1],
                          "test_acc": hist.test_acc[-1]}  # fmt: skip


def test(x: np.ndarray, y: np.ndarray, key: jax.Array, perms: int) -> dict:
    """Energy distance (U-statistic) of units ``x`` vs ``y``, its permutation p-value, and the
    normalised ``ed / (2 mean|x_i - y_j|)`` (scale-free, ~0 for one law, <= 1)."""
    stat, p = permutation_test(energy_distance_unbiased, x, y, key, perms)
    cross = float(np.mean(np.linalg.norm(x[:, None, :] - y[None, :, :], axis=-1)))
    return {"ed": float(stat), "p": float(p), "ed_norm": float(stat) / (2 * cross)}


def shifted(y: np.ndarray, delta: float, key: jax.Array) -> np.ndarray:
    """``y`` moved by ``delta`` times its total standard deviation ``sqrt(tr Cov y)`` (the RMS
    distance of a unit to the mean unit) along a random unit direction: the stated effect
    size of the power check, free of the feature scale and dimension."""
    u = np.array(jax.random.normal(key, (y.shape[1],)))
    u = u / np.linalg.norm(u)
    return y + delta * float(np.sqrt(y.var(0).sum())) * u[None, :]


def mean_sd(values: list[float]) -> dict:
    v = np.asarray(values, float)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "n": int(v.size)}  # fmt: skip


def summarise(rows: list[dict]) -> dict:
    """Mean ± sd of the normalised energy distance over seeds, of the raw one, the rate of
    rejections at ``ALPHA`` and the p-values."""
    return {**mean_sd([r["ed_norm"] for r in rows]), "ed": mean_sd([r["ed"] for r in rows]),
            "reject_rate": float(np.mean([r["p"] <= ALPHA for r in rows])),
            "p_values": [r["p"] for r in rows]}  # fmt: skip


def run(widths: list[int], seeds: int, steps: int, perms: int, params: list[str]) -> dict:
    data = load_dataset("mnist1d")
    probe = jnp.asarray(data.x_test[:32])
    key = jax.random.key(0)
    feats: dict = {}  # (param, width, seed) -> {"trained": feats, "init": feats}
    losses: dict = {}
    for param in params:
        for w in widths:
            rows = []
            for s in range(seeds):
                t = time.time()
                config, init, res = train_net(data, param, w, s, steps)
                feats[param, w, s] = {"trained": features(config, res["params"], probe),
                                      "init": features(config, init, probe)}  # fmt: skip
                rows.append(res["test_loss"])
                print(f"{param} n={w} seed={s}: test loss {res['test_loss']:.3f} "
                      f"({time.time() - t:.1f}s)", flush=True)  # fmt: skip
            losses[f"{param}/{w}"] = mean_sd(rows)

    widest = widths[-1]
    out: dict = {"losses": losses, "comparisons": {}, "power": {}}
    for pi, param in enumerate(params):
        for fi, name in enumerate(FEATURES):
            per_width = {}
            for w in widths:
                rows = {"across": [], "same_width": [], "init": []}
                for s in range(seeds):
                    k = jax.random.fold_in(key, ((pi * 10 + fi) * 10000 + w) * 100 + s)
                    ks = jax.random.split(k, 3)
                    x = feats[param, w, s]["trained"][name]
                    other = (s + 1) % seeds
                    rows["across"].append(
                        test(x, feats[param, widest, other]["trained"][name], ks[0], perms))
                    rows["same_width"].append(
                        test(x, feats[param, w, other]["trained"][name], ks[1], perms))
                    rows["init"].append(
                        test(x, feats[param, w, other]["init"][name], ks[2], perms))
                per_width[str(w)] = {c: summarise(r) for c, r in rows.items()}
            out["comparisons"][f"{param}/{name}"] = per_width
            for w, v in per_width.items():
                print(f"{param} {name} n={w}: " + ", ".join(
                    f"{c} {v[c]['mean']:+.4f}±{v[c]['sd']:.4f} (reject {v[c]['reject_rate']:.1f})"
                    for c in v), flush=True)  # fmt: skip
    for fi, name in enumerate(FEATURES):
        for w in sorted({widths[0], widest}):
            by_delta = {}
            for delta in DELTAS:
                rows = []
                for s in range(seeds):
                    k = jax.random.fold_in(key, (fi * 10000 + w) * 100 + s + 7_000_000)
                    kd, kt = jax.random.split(k)
                    x = feats["mf", w, s]["trained"][name]
                    y = shifted(feats["mf", w, (s + 1) % seeds]["trained"][name], delta, kd)
                    rows.append(test(x, y, kt, perms))
                by_delta[str(delta)] = summarise(rows)
            out["power"][f"mf/{name}/{w}"] = by_delta
            print(f"power mf {name} n={w}: " + ", ".join(
                f"delta={d} reject {v['reject_rate']:.1f}" for d, v in by_delta.items()))
    return out


def plot(result: dict, path: Path) -> None:
    """Normalised distance against width per feature set (2 x 2 panels; MF solid, SP dashed),
    and, right, the power check: rejection rate against the effect size delta."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 7))
    grid = fig.add_gridspec(2, 3)
    for i, name in enumerate(FEATURES):
        ax = fig.add_subplot(grid[i // 2, i % 2])
        for param, style in (("mf", "-"), ("sp", "--")):
            rows = result["comparisons"].get(f"{param}/{name}")
            if rows is None:
                continue
            ws = [int(w) for w in rows]
            for comp, color in (("across", "C0"), ("same_width", "C1"), ("init", "C3")):
                m = np.array([rows[str(w)][comp]["mean"] for w in ws])
                sd = np.array([rows[str(w)][comp]["sd"] for w in ws])
                ax.errorbar(ws, m, sd, ls=style, color=color, marker="o", ms=3, capsize=2,
                            label=f"{param} {comp.replace('_', ' ')}")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("width n")
        ax.set_ylabel("normalised energy distance")
        if i == 0:
            ax.legend(fontsize=7, ncol=2)
    ax = fig.add_subplot(grid[:, 2])
    for j, (key, rows) in enumerate(result["power"].items()):
        deltas = [float(d) for d in rows]
        ax.plot(deltas, [rows[d]["reject_rate"] for d in rows], marker="o", color=f"C{j}",
                label=key.removeprefix("mf/"))  # fmt: skip
    ax.axhline(ALPHA, color="k", lw=0.8, ls=":")
    ax.set_xlabel("shift delta (x total sd of the units)")
    ax.set_ylabel(f"rejection rate at level {ALPHA}")
    ax.set_title("power (MF, same width, another seed)", fontsize=10)
    ax.legend(fontsize=7)
    fig.suptitle("unit measures across widths: mean ± sd over seeds; 'across' = vs the widest "
                 "net of another seed")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="widths 16, 64; 300 steps; 100 perms")
    p.add_argument("--widths", default=None, help="comma list (default 16,32,64,128,256)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=None, help="default 1500 (quick: 300)")
    p.add_argument("--perms", type=int, default=None, help="default 200 (quick: 100)")
    p.add_argument("--params", default="mf,sp", help="parametrizations to train")
    p.add_argument("--out", default="runs/measure_across_widths")
    a = p.parse_args(argv)
    widths = sorted(int(w) for w in (a.widths or ("16,64" if a.quick else
                                                   "16,32,64,128,256")).split(","))  # fmt: skip
    steps = a.steps or (300 if a.quick else 1500)
    perms = a.perms or (100 if a.quick else 200)
    params = a.params.split(",")
    if len(widths) < 2 or a.seeds < 2 or "mf" not in params:
        p.error("need >= 2 widths, >= 2 seeds and the mf parametrization")
    t = time.time()
    result = run(widths, a.seeds, steps, perms, params)
    result["setup"] = {"widths": widths, "seeds": a.seeds, "steps": steps, "perms": perms,
                       "lr": {k: LR[k] for k in params}, "alpha": ALPHA, "probes": 32,
                       "deltas": list(DELTAS), "seconds": time.time() - t}  # fmt: skip
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "distance_vs_width.png")
    print(f"wrote {out}/results.json, distance_vs_width.png ({time.time() - t:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
