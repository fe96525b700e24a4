"""Issue 11 (b): do networks trained independently at different widths share one unit measure?

Sources: MLPs ``40 -> n -> 10`` trained on MNIST-1D under the mean-field rule relative to the
smallest width (``experiments.rc_fitted_gap.train_source(param="mf")``), widths ``--widths``,
``--seeds`` seeds each. A unit's type in *type units* is ``(w_in[:, i], b[i], r w_out[i, :])``
with ``r = n / n_base`` (mean-field storage ``W_out = w / r``), a point in R^51 whatever n.
Types are standardised per block (fan-in, bias, fan-out) by the RMS of the widest reference.

Distance: the unbiased energy distance (``theory.distance.energy_distance_unbiased``),
calibrated by a permutation test (``--perms`` permutations, ``theory.distance.permutation_test``).
Per width n and seed s (s >= 1), against the widest network of seed 0:

- ``trained``: width n, seed s vs the reference (H0 of the ansatz: one measure);
- ``same width``: width n seed s vs width n seed 0 (another seed at the same width);
- ``init``: the untrained width-n network of seed s vs the reference (the init law);
- ``shifted`` (power): the trained width-n types with their fan-out block shifted by
  ``--effect`` x its RMS, vs the reference: must be rejected.

Reported: distance and p-value per comparison; the rejection rate at alpha = 0.05 over seeds;
the log-log slope of the ``trained`` distance against n (where all are > 0). ``results.json``,
``distances.png`` in ``--out``.

    python -m experiments.rc_across_widths --quick    # widths 16, 32, 64; 300 steps
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.rc_fitted_gap import init_source, train_source
from growth.models import params_of
from theory.distance import energy_distance_unbiased, permutation_test
from theory.rc_measure import block_scale

COMPARISONS = ("trained", "same width", "init", "shifted")


def types(p: dict, base: int) -> jax.Array:
    """[n, 51] types in type units (fan-out row times ``n / base``)."""
    w_in, b, w_out = p["layers"][0]["kernel"], p["layers"][0]["bias"], p["layers"][1]["kernel"]
    r = w_in.shape[1] / base
    return jnp.concatenate([w_in.T, b[:, None], r * w_out], 1)


def run(widths, seeds, steps, perms, effect) -> dict:
    base, top = min(widths), max(widths)
    blocks = (40, 1, 10)
    ref = types(train_source(top, 0, steps, "mf", base), base)
    scale = block_scale(ref, blocks)
    shift = jnp.zeros(51).at[41:].set(effect)  # in standardised units of the fan-out block
    rows = []
    for n in widths:
        first = types(train_source(n, 0, steps, "mf", base), base) if n != top else ref
        for s in range(1, seeds + 1):
            t = types(train_source(n, s, steps, "mf", base), base)
            init = types(params_of(init_source(n, s, "mf", base)[0]), base)  # the init law
            pairs = {
                "trained": (t, ref),
                "same width": (t, first),
                "init": (init, ref),
                "shifted": (t + shift * scale, ref),
            }
            for name, (x, y) in pairs.items():
                d, p = permutation_test(
                    energy_distance_unbiased,
                    x / scale,
                    y / scale,
                    jax.random.key(1000 * n + s),
                    perms,
                )
                rows.append(
                    {"n": n, "seed": s, "comparison": name, "distance": float(d), "p": float(p)}
                )
        print(f"n={n} done", flush=True)
    summary = []
    for n in widths:
        for c in COMPARISONS:
            r = [x for x in rows if x["n"] == n and x["comparison"] == c]
            summary.append(
                {
                    "n": n,
                    "comparison": c,
                    "distance_mean": float(np.mean([x["distance"] for x in r])),
                    "distance_sd": float(np.std([x["distance"] for x in r], ddof=1)),
                    "reject_rate": float(np.mean([x["p"] < 0.05 for x in r])),
                }
            )
    return {
        "widths": list(widths),
        "base": base,
        "reference_width": top,
        "effect": effect,
        "perms": perms,
        "rows": rows,
        "summary": summary,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for c in COMPARISONS:
        pts = [r for r in result["summary"] if r["comparison"] == c]
        ax[0].errorbar(
            [r["n"] for r in pts],
            [r["distance_mean"] for r in pts],
            [r["distance_sd"] for r in pts],
            marker="o",
            capsize=3,
            label=c,
        )
        ax[1].plot([r["n"] for r in pts], [r["reject_rate"] for r in pts], "o-", label=c)
    ax[0].set_ylabel(f"energy distance to width {result['reference_width']} (mean ± sd)")
    ax[0].set_yscale("symlog", linthresh=1e-3)
    ax[1].set_ylabel("rejection rate at alpha = 0.05")
    ax[1].axhline(0.05, color="grey", ls=":")
    for a in ax:
        a.set_xscale("log", base=2)
        a.set_xlabel("width n")
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--perms", type=int, default=200)
    ap.add_argument("--effect", type=float, default=0.5)
    ap.add_argument("--out", default="runs/rc_across_widths")
    a = ap.parse_args(argv)
    widths = (16, 32, 64) if a.quick else (16, 32, 64, 128)
    steps = 300 if a.quick else 1000
    result = run(widths, a.seeds, steps, a.perms, a.effect)
    result.update(quick=a.quick, seeds=a.seeds, steps=steps)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "distances.png")
    for r in result["summary"]:
        print(
            f"n={r['n']:>4} {r['comparison']:<11} distance {r['distance_mean']:+.4f} ± "
            f"{r['distance_sd']:.4f}  reject {r['reject_rate']:.2f}"
        )
    print(f"wrote {out}/results.json, distances.png")
    return result


if __name__ == "__main__":
    main()
