"""Which fitted measure? Rank and mixture size of ``theory.rc_measure`` measured on trained units.

Sources: MLPs ``40 -> n -> 10`` trained on MNIST-1D (``experiments._rc_common``), ``--seeds``
seeds. A unit's type is ``(w_in[:, i], b[i], w_out[i, :])``. For each model choice
(rank r, components K) and two references -- ``empirical`` (draws
are copies of the fitting units: the iid bootstrap) and ``kde`` (copies plus Gaussian noise of
0.3 x each block's spread) -- two scores:

- held-out MMD: the units are split in two halves A and B; the measure is fitted to A, |B| types
  are drawn, and the unbiased MMD^2 (Gaussian kernel, median bandwidth,
  ``theory.distance.mmd_unbiased``) to B is computed on block-standardised types (each block
  divided by its RMS over A). 0 = the draws are as close to B as another sample of the same
  law; mean over ``--splits`` random splits;
- zero-shot gap: test loss after ``fitted`` growth x4 with that choice minus the source's
  (mean over ``--draws`` draws).

Writes ``results.json`` and ``choice.png`` to ``--out``.

    python -m experiments.rc_fit_choice --quick    # n = 32, 300 training steps
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _rc_common as common
from growth.methods import get_method
from theory.distance import mmd_unbiased
from theory.rc_measure import block_scale, fit_rc_measure, sample_rc_measure

CHOICES = ((1, 1), (2, 1), (8, 1), (8, 2), (8, 4), (16, 2))


def unit_types(p: dict) -> tuple[jax.Array, tuple[int, ...]]:
    """[n, D] types of the hidden units and the block widths (fan-in, bias, fan-out)."""
    w_in, b, w_out = p["layers"][0]["kernel"], p["layers"][0]["bias"], p["layers"][1]["kernel"]
    return jnp.concatenate([w_in.T, b[:, None], w_out], 1), (w_in.shape[0], 1, w_out.shape[1])


def draw(choice, a: jax.Array, blocks, key: jax.Array, num: int) -> jax.Array:
    """``num`` types drawn by ``choice`` ((r, K), ``"empirical"`` or ``"kde"``) fitted to ``a``."""
    k1, k2 = jax.random.split(key)
    if choice in ("empirical", "kde"):
        x = a[jax.random.randint(k1, (num,), 0, a.shape[0])]
        if choice == "kde":
            spread = block_scale(a - a.mean(0), blocks)
            x = x + 0.3 * spread * jax.random.normal(k2, x.shape)
        return x
    r, K = choice
    return sample_rc_measure(fit_rc_measure(a, k1, rank=r, components=K, blocks=blocks), k2, num)


def held_out_mmd(p: dict, choice, splits: int, seed: int) -> float:
    x, blocks = unit_types(p)
    n = x.shape[0]
    vals = []
    for s in range(splits):
        key = jax.random.key(1000 * seed + s)
        perm = jax.random.permutation(key, n)
        a, b = x[perm[: n // 2]], x[perm[n // 2 :]]
        d = draw(choice, a, blocks, jax.random.fold_in(key, 1), b.shape[0])
        scale = block_scale(a, blocks)
        vals.append(float(mmd_unbiased(d / scale, b / scale)))
    return float(np.mean(vals))


def zero_shot_gap(p: dict, choice, draws: int, seed: int) -> float | None:
    if not isinstance(choice, tuple):
        return None
    n = p["layers"][0]["kernel"].shape[1]
    m = get_method("fitted", fit_rank=choice[0], fit_components=choice[1])
    losses = [
        common.test_loss(common.grow_hidden(p, 4 * n, m, r))
        for r in range(1000 * seed, 1000 * seed + draws)
    ]
    return float(np.mean(losses) - common.test_loss(p))


def main(argv: list[str] | None = None) -> dict:
    ap = common.parser(__doc__, "runs/rc_fit_choice")
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--n", type=int, default=64)
    a = ap.parse_args(argv)
    steps = 300 if a.quick else 1000
    names = [f"r={r},K={k}" for r, k in CHOICES] + ["empirical", "kde"]
    choices = list(CHOICES) + ["empirical", "kde"]
    rows = []
    for seed in range(a.seeds):
        p = common.train_source(a.n, seed, steps)
        for name, c in zip(names, choices, strict=True):
            rows.append(
                {
                    "choice": name,
                    "seed": seed,
                    "mmd": held_out_mmd(p, c, a.splits, seed),
                    "gap": zero_shot_gap(p, c, a.draws, seed),
                }
            )
        print(f"seed {seed} done", flush=True)
    summary = []
    for name in names:
        mm = [r["mmd"] for r in rows if r["choice"] == name]
        gg = [r["gap"] for r in rows if r["choice"] == name and r["gap"] is not None]
        summary.append({"choice": name, **common.mean_sd("mmd", mm), **common.mean_sd("gap", gg)})
    result = {"n": a.n, "steps": steps, "seeds": a.seeds, "rows": rows, "summary": summary}
    out = common.save(result, a.out, "choice.png", _plot)
    for r in summary:
        gap = "" if r["gap_mean"] is None else f"  gap x4 {r['gap_mean']:+.3f} ± {r['gap_sd']:.3f}"
        print(f"{r['choice']:<12} MMD^2 {r['mmd_mean']:+.4f} ± {r['mmd_sd']:.4f}{gap}")
    print(f"wrote {out}/results.json, choice.png")
    return result


def _plot(result: dict):
    plt = common.pyplot()
    summary = result["summary"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    names = [r["choice"] for r in summary]
    ax[0].bar(names, [r["mmd_mean"] for r in summary], yerr=[r["mmd_sd"] for r in summary])
    ax[0].set_ylabel("held-out MMD^2 (mean ± sd over seeds)")
    fitted = [r for r in summary if r["gap_mean"] is not None]
    ax[1].bar(
        [r["choice"] for r in fitted],
        [r["gap_mean"] for r in fitted],
        yerr=[r["gap_sd"] for r in fitted],
    )
    ax[1].set_ylabel("zero-shot gap, fitted x4")
    for a in ax:
        a.tick_params(axis="x", rotation=45)
    return fig


if __name__ == "__main__":
    main()
