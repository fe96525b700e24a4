"""Issue 11 (c): rank growth recipes by the distance from their grown unit measure to scratch's.

A source MLP ``40 -> n -> 10`` and from-scratch MLPs at the target width N are trained under the
mean-field rule relative to n (``experiments._rc_common.train_source(param="mf")``), one
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

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _rc_common as common
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


def score(
    recipe: str, seed: int, p: dict, n: int, scratch: jax.Array, scale: jax.Array, perms: int
) -> dict:
    """One row: the energy distance (and permutation p-value) from the units of ``p`` to the
    ``scratch`` types, both divided by ``scale``, and the zero-shot test loss of ``p``."""
    d, pval = permutation_test(
        energy_distance_unbiased, types(p, n) / scale, scratch / scale, jax.random.key(seed), perms
    )
    return {"recipe": recipe, "seed": seed, "distance": float(d), "p": float(pval),
            "loss": common.test_loss(p)}  # fmt: skip


def run(n: int, N: int, seeds: int, steps: int, perms: int) -> dict:
    rows = []
    for seed in range(seeds):
        src = common.train_source(n, seed, steps, "mf", base=n)
        scratch = types(common.train_source(N, 100 + seed, steps, "mf", base=n), n)
        scale = block_scale(scratch, BLOCKS)
        for name in RECIPES:
            grown = common.grow_hidden(src, N, name, seed)
            rows.append(score(name, seed, grown, n, scratch, scale, perms))
        rows.append(score("source (width n)", seed, src, n, scratch, scale, perms))
        print(f"seed {seed} done", flush=True)
    summary = []
    for name in (*RECIPES, "source (width n)"):
        r = [x for x in rows if x["recipe"] == name]
        summary.append(
            {
                "recipe": name,
                **common.mean_sd("distance", [x["distance"] for x in r]),
                "reject_rate": float(np.mean([x["p"] < 0.05 for x in r])),
                "loss_mean": float(np.mean([x["loss"] for x in r])),
            }
        )
    summary.sort(key=lambda r: r["distance_mean"])
    return {"n": n, "N": N, "perms": perms, "rows": rows, "ranking": summary}


def plot(result: dict):
    plt = common.pyplot()
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
    return fig


def main(argv: list[str] | None = None) -> dict:
    ap = common.parser(__doc__, "runs/rc_recipe_ranking")
    ap.add_argument("--perms", type=int, default=200)
    a = ap.parse_args(argv)
    n, N, steps = (16, 64, 300) if a.quick else (32, 128, 1000)
    result = run(n, N, a.seeds, steps, a.perms)
    result.update(quick=a.quick, seeds=a.seeds, steps=steps)
    out = common.save(result, a.out, "ranking.png", plot)
    for r in result["ranking"]:
        print(
            f"{r['recipe']:<18} distance {r['distance_mean']:+.4f} ± {r['distance_sd']:.4f}  "
            f"reject {r['reject_rate']:.2f}  zero-shot loss {r['loss_mean']:.3f}"
        )
    print(f"wrote {out}/results.json, ranking.png")
    return result


if __name__ == "__main__":
    main()
