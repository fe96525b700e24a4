"""Issue 11 (c): rank growth recipes by the distance from their grown unit measure to scratch's.

A source MLP ``40 -> n -> 10`` and from-scratch MLPs at the target width N are trained under the
mean-field rule relative to n (``experiments.rc_fitted_gap.train_source(param="mf")``), one
source and one scratch net per seed. The source is grown to N by each recipe (engine methods,
width only), and the grown hidden units' types in type units, ``(w_in[:, i], b[i],
(N / n) w_out[i, :])`` in R^51 (the mean-field storage of a width-N net relative to n), are
compared with the scratch net's by the unbiased energy distance on block-standardised types
(each block divided by the scratch net's RMS), calibrated by a permutation test. Also reported:
the grown net's zero-shot test loss. Recipes are ranked by the mean distance over seeds.

Writes ``results.json`` and ``ranking.png`` to ``--out``.

    python -m experiments.rc_recipe_ranking --quick    # n = 16 -> N = 64, 300 steps
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.rc_fitted_gap import MLP, mlp_config, test_loss, train_source
from growth.engine import grow
from theory.distance import energy_distance_unbiased, permutation_test
from theory.rc_measure import block_scale

RECIPES = (
    "copy",
    "exact",
    "iid",
    "smoothed",
    "rc",
    "net2net",
    "hypercloning",
    "fitted",
    "fitted-preserving",
)
BLOCKS = (40, 1, 10)


def types(p: dict, n: int) -> jax.Array:
    """[N, 51] hidden-unit types in mean-field units relative to width n."""
    w_in, b, w_out = p["layers"][0]["kernel"], p["layers"][0]["bias"], p["layers"][1]["kernel"]
    return jnp.concatenate([w_in.T, b[:, None], (w_in.shape[1] / n) * w_out], 1)


def run(n: int, N: int, seeds: int, steps: int, perms: int) -> dict:
    rows = []
    for seed in range(seeds):
        src = train_source(n, seed, steps, "mf", base=n)
        scratch = types(train_source(N, 100 + seed, steps, "mf", base=n), n)
        scale = block_scale(scratch, BLOCKS)
        for name in RECIPES:
            grown, _ = grow(src, MLP.spec(mlp_config(n)), width={"h1": N}, method=name, key=seed)
            d, p = permutation_test(
                energy_distance_unbiased,
                types(grown, n) / scale,
                scratch / scale,
                jax.random.key(seed),
                perms,
            )
            rows.append(
                {
                    "recipe": name,
                    "seed": seed,
                    "distance": float(d),
                    "p": float(p),
                    "loss": test_loss(grown),
                }
            )
        d, p = permutation_test(
            energy_distance_unbiased,
            types(src, n) / scale,
            scratch / scale,
            jax.random.key(seed),
            perms,
        )
        rows.append(
            {
                "recipe": "source (width n)",
                "seed": seed,
                "distance": float(d),
                "p": float(p),
                "loss": test_loss(src),
            }
        )
        print(f"seed {seed} done", flush=True)
    summary = []
    for name in (*RECIPES, "source (width n)"):
        r = [x for x in rows if x["recipe"] == name]
        summary.append(
            {
                "recipe": name,
                "distance_mean": float(np.mean([x["distance"] for x in r])),
                "distance_sd": float(np.std([x["distance"] for x in r], ddof=1)),
                "reject_rate": float(np.mean([x["p"] < 0.05 for x in r])),
                "loss_mean": float(np.mean([x["loss"] for x in r])),
            }
        )
    summary.sort(key=lambda r: r["distance_mean"])
    return {"n": n, "N": N, "perms": perms, "rows": rows, "ranking": summary}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = result["ranking"]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(
        [x["recipe"] for x in r],
        [x["distance_mean"] for x in r],
        xerr=[x["distance_sd"] for x in r],
    )
    ax.invert_yaxis()
    ax.set_xlabel(f"energy distance to scratch at N = {result['N']} (mean ± sd over seeds)")
    ax.set_title(f"grown {result['n']} -> {result['N']} vs trained from scratch (MF, MNIST-1D)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--perms", type=int, default=200)
    ap.add_argument("--out", default="runs/rc_recipe_ranking")
    a = ap.parse_args(argv)
    n, N, steps = (16, 64, 300) if a.quick else (32, 128, 1000)
    result = run(n, N, a.seeds, steps, a.perms)
    result.update(quick=a.quick, seeds=a.seeds, steps=steps)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "ranking.png")
    for r in result["ranking"]:
        print(
            f"{r['recipe']:<18} distance {r['distance_mean']:+.4f} ± {r['distance_sd']:.4f}  "
            f"reject {r['reject_rate']:.2f}  zero-shot loss {r['loss_mean']:.3f}"
        )
    print(f"wrote {out}/results.json, ranking.png")
    return result


if __name__ == "__main__":
    main()
