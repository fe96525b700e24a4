"""Issue 11 (a): zero-shot loss gap of ``fitted`` growth against target width N and source width n.

Sources: MLPs ``40 -> n -> 10`` (ReLU, one hidden space ``h1``) trained on MNIST-1D with Adam,
``n`` in ``--widths``, ``--seeds`` seeds each, under ``--param sp`` (the family's init, one
learning rate) or ``--param mf`` (mean-field relative to the smallest width, see
:func:`experiments._rc_common.init_source`).
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

import numpy as np

from experiments import _rc_common as common


def run(widths, factors, seeds, draws, steps, method="fitted", param="sp") -> dict:
    rows = []
    for n in widths:
        for seed in range(seeds):
            p = common.train_source(n, seed, steps, param, base=min(widths))
            base = common.test_loss(p)
            for k in factors:
                losses = [
                    common.test_loss(common.grow_hidden(p, k * n, method, 1000 * seed + r))
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
                    **common.mean_sd("gap", g),
                    "draw_sd": float(np.mean(sd)),
                }
            )
    slopes_N = {
        str(n): common.positive_slope(
            [r["N"] for r in rows if r["n"] == n], [r["gap"] for r in rows if r["n"] == n]
        )
        for n in widths
    }
    slopes_n = {
        str(k): common.positive_slope(
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


def plot(result: dict):
    plt = common.pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    s = result["summary"]
    for n in sorted({r["n"] for r in s}):
        common.errorbar_gaps(ax[0], [r for r in s if r["n"] == n], "N", f"n = {n}")
    for k in sorted({r["k"] for r in s}):
        common.errorbar_gaps(ax[1], [r for r in s if r["k"] == k], "n", f"k = {k}")
    for a, xl in zip(ax, ("target width N", "source width n"), strict=True):
        a.set_xscale("log", base=2)
        a.set_yscale(*common.gap_yscale([r["gap_mean"] for r in s]))
        a.set_xlabel(xl)
        a.set_ylabel("zero-shot test loss gap (mean ± sd over seeds)")
        a.legend()
    fig.suptitle(f"{result['method']} growth of {result['param']}-trained MLPs (MNIST-1D)")
    return fig


def main(argv: list[str] | None = None) -> dict:
    ap = common.parser(__doc__, "runs/rc_fitted_gap")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--method", default="fitted")
    ap.add_argument("--param", choices=("sp", "mf"), default="sp", help="sources' training rule")
    a = ap.parse_args(argv)
    widths = (16, 32) if a.quick else (16, 32, 64)
    factors = (1, 2, 4) if a.quick else (1, 2, 4, 8)
    steps = 300 if a.quick else 1000
    result = run(widths, factors, a.seeds, a.draws, steps, a.method, a.param)
    result.update(quick=a.quick, seeds=a.seeds, draws=a.draws, steps=steps)
    out = common.save(result, a.out, "gap.png", plot)
    for r in result["summary"]:
        print(
            f"n={r['n']:>3} k={r['k']:>2}  gap {r['gap_mean']:+.4f} ± {r['gap_sd']:.4f}  "
            f"draw sd {r['draw_sd']:.4f}"
        )
    for name in ("slope_gap_vs_N_at_n", "slope_gap_vs_n_at_k"):
        common.print_slopes({f"{name}[{key}]": fit for key, fit in result[name].items()})
    print(f"wrote {out}/results.json, gap.png")
    return result


if __name__ == "__main__":
    main()
