"""Issue 11 (d): the RC control -- tied vs untied index maps vs entrywise resampling, gap vs k.

A trained MLP ``40 -> n -> 10`` (``experiments._rc_common.train_source``) is grown to
``N = k n`` hidden units by four samplers, all with fan-out (the readout rows) times ``n / N``:

- ``tied``: one i.i.d. map ``g: [N] -> [n]`` for the unit's fan-in column, bias and fan-out row
  (the engine's ``iid`` method: a draw from the empirical RC measure);
- ``untied``: independent maps for the fan-in side (column and bias) and the fan-out row (each
  marginal kept, the row-column tie destroyed);
- ``entrywise``: every entry redrawn i.i.d. from its leaf's pooled entries (no unit structure);
- ``fitted``: every unit drawn from the fitted RC measure (``theory.rc_measure``).

Gap = zero-shot test loss (grown) - test loss (source), mean over ``--draws`` draws per source;
reported as mean ± sd over ``--seeds`` sources, and per sampler the log-log slope of the gap
against k (95% CI; where every per-seed gap is > 0). Under the RC ansatz the tied gap falls
towards 0 with k (law of large numbers for an unbiased estimator) while the untied and entrywise
gaps plateau (they estimate a different function).

    python -m experiments.rc_control --quick     # n = 32, k in {1, 4, 16, 64}, 5 seeds
    python -m experiments.rc_control             # k in {1, 2, ..., 256}
"""

from __future__ import annotations

import jax
import numpy as np

from experiments import _rc_common as common

SAMPLERS = ("tied", "untied", "entrywise", "fitted")


def grow_by(sampler: str, p: dict, N: int, key: jax.Array) -> dict:
    """``p`` (a one-hidden-layer MLP) with its hidden space resampled to N units by ``sampler``."""
    n = p["layers"][0]["kernel"].shape[1]
    if sampler == "fitted":
        return common.grow_hidden(p, N, "fitted", key)
    w_in, b, w_out = p["layers"][0]["kernel"], p["layers"][0]["bias"], p["layers"][1]["kernel"]
    k_in, k_out = jax.random.split(key)
    if sampler == "entrywise":
        k_b, k_in = jax.random.split(k_in)
        w_in = jax.random.choice(k_in, w_in.ravel(), (w_in.shape[0], N))
        b = jax.random.choice(k_b, b, (N,))
        w_out = jax.random.choice(k_out, w_out.ravel(), (N, w_out.shape[1]))
    else:
        g_in = jax.random.randint(k_in, (N,), 0, n)
        g_out = g_in if sampler == "tied" else jax.random.randint(k_out, (N,), 0, n)
        w_in, b, w_out = w_in[:, g_in], b[g_in], w_out[g_out]
    return {
        "layers": {
            0: {"kernel": w_in, "bias": b},
            1: {"kernel": w_out * (n / N), "bias": p["layers"][1]["bias"]},
        }
    }


def run(n: int, factors, seeds: int, draws: int, steps: int) -> dict:
    rows = []
    for seed in range(seeds):
        p = common.train_source(n, seed, steps)
        base = common.test_loss(p)
        for k in factors:
            for s in SAMPLERS:
                keys = [jax.random.key(10_000 * seed + 100 * k + r) for r in range(draws)]
                gap = float(
                    np.mean([common.test_loss(grow_by(s, p, k * n, kk)) for kk in keys]) - base
                )
                rows.append({"sampler": s, "k": k, "seed": seed, "gap": gap, "source_loss": base})
        print(f"seed {seed}: source loss {base:.3f}", flush=True)
    summary, slopes = [], {}
    for s in SAMPLERS:
        for k in factors:
            g = [r["gap"] for r in rows if r["sampler"] == s and r["k"] == k]
            summary.append({"sampler": s, "k": k, **common.mean_sd("gap", g)})
        pts = [r for r in rows if r["sampler"] == s]
        slopes[s] = common.positive_slope([r["k"] for r in pts], [r["gap"] for r in pts])
    return {"n": n, "rows": rows, "summary": summary, "slope_gap_vs_k": slopes}


def plot(result: dict):
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in SAMPLERS:
        common.errorbar_gaps(ax, [r for r in result["summary"] if r["sampler"] == s], "k", s)
    ax.set_xscale("log", base=2)
    ax.set_yscale(*common.gap_yscale([r["gap_mean"] for r in result["summary"]]))
    ax.set_xlabel("growth factor k = N / n")
    ax.set_ylabel("zero-shot test loss gap (mean ± sd over seeds)")
    ax.set_title(f"RC control: trained MLP, n = {result['n']} (MNIST-1D)")
    ax.legend()
    return fig


def main(argv: list[str] | None = None) -> dict:
    ap = common.parser(__doc__, "runs/rc_control")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--n", type=int, default=32)
    a = ap.parse_args(argv)
    factors = (1, 4, 16, 64) if a.quick else (1, 2, 4, 8, 16, 32, 64, 128, 256)
    steps = 300 if a.quick else 1000
    result = run(a.n, factors, a.seeds, a.draws, steps)
    result.update(quick=a.quick, seeds=a.seeds, draws=a.draws, steps=steps)
    out = common.save(result, a.out, "control.png", plot)
    for r in result["summary"]:
        print(f"{r['sampler']:<10} k={r['k']:>3}  gap {r['gap_mean']:+.4f} ± {r['gap_sd']:.4f}")
    common.print_slopes({f"slope {s}": fit for s, fit in result["slope_gap_vs_k"].items()})
    print(f"wrote {out}/results.json, control.png")
    return result


if __name__ == "__main__":
    main()
