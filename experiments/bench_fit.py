"""Fitting cost of the RC measure (``theory.rc_measure``): is it linear in the number of weights?

For a grid of unit counts n and type dimensions D, random types ``[n, D]`` (a rank-8 signal plus
noise, like a trained layer) are fitted with the default rank 8 and 2 components. Per point:
``fit_s`` (fastest of ``--repeats`` runs after a compile run, ``block_until_ready``: the
minimum, since the machine is shared and slower runs measure other load) and
``sample_s`` (drawing 4n types). The log-log slope of ``fit_s`` on ``n D`` (OLS with a 95% t CI,
``theory.ansatz.loglog_slope``) is reported separately along n (D fixed) and along D (n fixed);
1 is linear. Points under 1 ms are dominated by dispatch and are left out of the slopes.

Writes ``runs/bench/fit_<backend>.json`` and prints a table.

    python -m experiments.bench_fit --quick     # n, D up to 512 x 4096 (seconds)
    python -m experiments.bench_fit             # up to 4096 x 16384
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from theory.ansatz import loglog_slope
from theory.rc_measure import fit_rc_measure, sample_rc_measure


def _types(n: int, D: int, seed: int) -> jax.Array:
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(n, 8)) @ rng.normal(size=(8, D)) / np.sqrt(8)
    return jax.numpy.asarray(signal + 0.5 * rng.normal(size=(n, D)), jax.numpy.float32)


def _min_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(n: int, D: int, repeats: int) -> dict:
    x = _types(n, D, 0)
    key = jax.random.key(0)
    fit_s = _min_time(lambda: fit_rc_measure(x, key), repeats)
    m = fit_rc_measure(x, key)
    sample_s = _min_time(lambda: sample_rc_measure(m, key, 4 * n), repeats)
    return {"n": n, "D": D, "weights": n * D, "fit_s": fit_s, "sample_s": sample_s}


def _slope(rows: list[dict]) -> dict | None:
    rows = [r for r in rows if r["fit_s"] > 1e-3]
    if len({r["weights"] for r in rows}) < 2:
        return None
    return loglog_slope([r["weights"] for r in rows], [r["fit_s"] for r in rows]).to_dict()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    ns = (64, 128, 256, 512) if a.quick else (256, 512, 1024, 2048, 4096)
    Ds = (512, 1024, 2048, 4096) if a.quick else (2048, 4096, 8192, 16384)
    n0, D0 = ns[len(ns) // 2], Ds[len(Ds) // 2]
    measure(ns[0], D0, 1)  # warm-up: the first timed run of a process is slow (thread pools)
    along_n = [measure(n, D0, a.repeats) for n in ns]
    along_D = [measure(n0, D, a.repeats) for D in Ds]
    result = {
        "backend": jax.default_backend(),
        "rank": 8,
        "components": 2,
        "along_n": along_n,
        "along_D": along_D,
        "slope_along_n": _slope(along_n),
        "slope_along_D": _slope(along_D),
    }
    out = Path(a.out or f"runs/bench/fit_{jax.default_backend()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"{'n':>6} {'D':>6} {'weights':>10} {'fit ms':>9} {'sample ms':>10}")
    for r in along_n + along_D:
        print(
            f"{r['n']:>6} {r['D']:>6} {r['weights']:>10} {1e3 * r['fit_s']:>9.2f} "
            f"{1e3 * r['sample_s']:>10.2f}"
        )
    for name in ("slope_along_n", "slope_along_D"):
        s = result[name]
        if s:
            print(f"{name}: {s['slope']:.2f} (95% CI {s['ci'][0]:.2f} .. {s['ci'][1]:.2f})")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
