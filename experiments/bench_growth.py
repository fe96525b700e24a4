"""Growth throughput: how fast does ``growth.engine`` write a grown model, against memcpy?

A parameter set is a stack of L transformer-MLP-like matrices, a plain dict pytree

    {"w_in": [L, d, 4d], "w_out": [L, 4d, d]}   spec: w_in ("-", "in:d", "out:h"),
                                                      w_out ("-", "in:h", "out:d")

grown 2x in both spaces (d -> 2d, h = 4d -> 8d), so the output is 4x the input. For each output
size and method (copy, exact = zero-sum noise, iid, smoothed) a *fresh subprocess* measures:

- ``plan_s``: drawing the index maps (``plan_growth``, host side, small);
- ``first_s``: the first ``apply_plan`` (jit compile + one run), ``compile_s = first_s - steady``;
- ``steady_s``: median of ``--repeats`` further runs (``block_until_ready``);
- baselines of the *same output size* in the same process: ``np.copyto`` into a preallocated
  array (``memcpy_np``) and a jitted ``x + 0`` in JAX (``memcpy_jax``, allocates its output like
  growth does);
- ``ratio_np`` / ``ratio_jax``: growth's output bytes per second divided by the baseline's
  (1 = as fast as a plain copy of the output; < 1 = slower);
- peak memory: ``VmHWM`` of the process (from ``/proc/self/status``) after the growth runs,
  minus ``VmRSS`` right after the input was built (``peak_extra_mb``), in units of the output
  size (``peak_extra_x_out``); on GPU also the device's ``peak_bytes_in_use``.

Writes ``runs/bench/growth_<backend>.json`` and prints a table.

    python -m experiments.bench_growth --quick        # up to ~32 MB outputs (CI-sized)
    python -m experiments.bench_growth                # up to ~1 GB outputs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

L = 4
METHODS = ("copy", "exact", "iid", "smoothed")
# output bytes = 2 * L * (2d) * (8d) * 4 = 128 L d^2 = 512 d^2 (float32, L = 4)
D_QUICK = (32, 64, 128, 256)  # 0.5, 2, 8, 32 MB out
D_FULL = (45, 90, 181, 362, 724, 1448)  # ~1, 4, 16, 64, 256, 1024 MB out


def _vm(field: str) -> float:
    """``field`` (VmHWM, VmRSS) of this process in MB, from /proc/self/status (0 if absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _np_copy_time(n: int, repeats: int) -> float:
    """Median time of ``np.copyto`` of n float32 into a preallocated array."""
    import numpy as np

    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    return _median_time(lambda: np.copyto(dst, src), repeats)


def worker(d: int, method: str, repeats: int) -> dict:
    """Measure one (size, method) in this process; returns the result row."""
    import jax
    import jax.numpy as jnp

    from growth.engine import apply_plan, plan_growth
    from growth.spec import NeuronSpec

    spec = NeuronSpec({"w_in": ("-", "in:d", "out:h"), "w_out": ("-", "in:h", "out:d")})
    key = jax.random.key(0)
    k1, k2 = jax.random.split(key)
    params = {
        "w_in": jax.random.normal(k1, (L, d, 4 * d), jnp.float32),
        "w_out": jax.random.normal(k2, (L, 4 * d, d), jnp.float32),
    }
    jax.block_until_ready(params)
    rss0 = _vm("VmRSS")
    in_bytes = sum(x.nbytes for x in params.values())

    t0 = time.perf_counter()
    plan = plan_growth(params, spec, width={"d": 2 * d, "h": 8 * d}, method=method, key=1)
    jax.block_until_ready(plan.maps)
    plan_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    out = jax.block_until_ready(apply_plan(plan, params))
    first_s = time.perf_counter() - t0
    out_bytes = sum(x.nbytes for x in out.values())
    del out
    steady_s = _median_time(lambda: jax.block_until_ready(apply_plan(plan, params)), repeats)
    hwm = _vm("VmHWM")
    dev = jax.devices()[0]
    dev_peak = None
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        dev_peak = stats.get("peak_bytes_in_use")

    # baselines of the output size, same process, after growth (so they do not raise VmHWM
    # above growth's own peak: each needs at most two output-sized buffers)
    n_out = out_bytes // 4
    reps = max(repeats, 10)
    np_s = _np_copy_time(n_out, reps)
    copy = jax.jit(lambda x: x + 0)
    x = jnp.ones(n_out, jnp.float32)
    jax.block_until_ready(copy(x))
    jax_s = _median_time(lambda: jax.block_until_ready(copy(x)), reps)

    return {
        "d": d,
        "L": L,
        "method": method,
        "backend": dev.platform,
        "in_mb": in_bytes / 2**20,
        "out_mb": out_bytes / 2**20,
        "plan_s": plan_s,
        "first_s": first_s,
        "compile_s": max(first_s - steady_s, 0.0),
        "steady_s": steady_s,
        "grow_gbps": out_bytes / steady_s / 1e9,
        "memcpy_np_s": np_s,
        "memcpy_jax_s": jax_s,
        "memcpy_np_gbps": out_bytes / np_s / 1e9,
        "memcpy_jax_gbps": out_bytes / jax_s / 1e9,
        "ratio_np": np_s / steady_s,
        "ratio_jax": jax_s / steady_s,
        "rss_before_mb": rss0,
        "vmhwm_mb": hwm,
        "peak_extra_mb": hwm - rss0,
        "peak_extra_x_out": (hwm - rss0) / (out_bytes / 2**20),
        "device_peak_mb": None if dev_peak is None else dev_peak / 2**20,
    }


def run(sizes: tuple[int, ...], methods: tuple[str, ...], repeats: int, out: Path) -> list[dict]:
    rows = []
    for d in sizes:
        for m in methods:
            cmd = [sys.executable, "-m", "experiments.bench_growth", "--worker", str(d), m]
            cmd += ["--repeats", str(repeats)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                print(res.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"worker d={d} method={m} failed (rc {res.returncode})")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(_fmt(row), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "repeats": repeats,
        "spec": "w_in [L,d,4d] (-, in:d, out:h), w_out [L,4d,d] (-, in:h, out:d); d->2d, h->8d",
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return rows


HEADER = (
    f"{'out MB':>8} {'method':<9} {'compile s':>9} {'steady s':>9} {'GB/s':>6} "
    f"{'np GB/s':>7} {'jax GB/s':>8} {'vs np':>6} {'vs jax':>6} {'peak+ MB':>8} {'x out':>5}"
)


def _fmt(r: dict) -> str:
    return (
        f"{r['out_mb']:>8.1f} {r['method']:<9} {r['compile_s']:>9.3f} {r['steady_s']:>9.4f} "
        f"{r['grow_gbps']:>6.2f} {r['memcpy_np_gbps']:>7.2f} {r['memcpy_jax_gbps']:>8.2f} "
        f"{r['ratio_np']:>6.3f} {r['ratio_jax']:>6.3f} {r['peak_extra_mb']:>8.1f} "
        f"{r['peak_extra_x_out']:>5.2f}"
    )


def markdown(rows: list[dict]) -> str:
    """Ratio table: growth throughput / jitted-copy throughput, sizes x methods."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    sizes = list(dict.fromkeys(round(r["out_mb"], 1) for r in rows))
    lines = ["| out MB | " + " | ".join(methods) + " |", "|---:|" + "---:|" * len(methods)]
    for s in sizes:
        cells = []
        for m in methods:
            r = next(r for r in rows if r["method"] == m and round(r["out_mb"], 1) == s)
            cells.append(f"{r['ratio_jax']:.2f} / {r['ratio_np']:.2f}")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="outputs up to ~32 MB")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--sizes", default="", help="comma-separated d values (overrides the set)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--worker", nargs=2, metavar=("D", "METHOD"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(int(a.worker[0]), a.worker[1], a.repeats)))
        return
    sizes = D_QUICK if a.quick else D_FULL
    if a.sizes:
        sizes = tuple(int(s) for s in a.sizes.split(","))
    methods = tuple(a.methods.split(","))
    import jax

    backend = jax.default_backend()
    out = a.out or Path("runs/bench") / f"growth_{backend}{'_quick' if a.quick else ''}.json"
    print(HEADER)
    rows = run(sizes, methods, a.repeats, out)
    print("\nthroughput ratio (growth / jitted x+0 copy  /  growth / np.copyto), same output size:")
    print(markdown(rows))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
