"""Peak memory of streaming growth vs model size (``growth.formats.stream``).

Builds sources of K leaves, each a [d, d] float32 matrix with axes (out:h, in:h) of one space
grown d -> 2d (each grown leaf is 4x its source), for increasing K at a fixed leaf size, and
measures the peak resident memory (VmHWM) of a fresh process that streams the growth. Sources
and outputs: safetensors -> safetensors, orbax checkpoint (``growth.formats.checkpoint``) ->
safetensors, and checkpoint -> checkpoint. If streaming works, the peak stays flat in K
(bounded by one leaf's input + output + XLA temporaries + the runtime's baseline) while the
model size grows linearly. ``--leaf-count`` instead grows many small leaves ([256, 256],
K = 32 / 512 / 2048, method copy) to measure the cost per leaf rather than per byte. Writes
``runs/bench_stream/stream.json`` (``leaf_count.json``).

    python experiments/bench_stream.py [--quick | --leaf-count]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = """
import sys, numpy as np
from growth.spec import NeuronSpec
from growth.formats.stream import grow_stream
src, out, d, method = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
spec = NeuronSpec({"w*": ("out:h", "in:h")})
grow_stream(src, out, spec, width={"h": 2 * d}, method=method)
print([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1])
"""

FORMATS = (("safetensors", "safetensors"), ("checkpoint", "safetensors"),
           ("checkpoint", "checkpoint"))  # fmt: skip


def _source(d: int, k: int, fmt: str, tmp: Path) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    tensors = {f"w{i:03d}": rng.normal(size=(d, d)).astype(np.float32) for i in range(k)}
    if fmt == "safetensors":
        from safetensors.numpy import save_file

        src = tmp / f"src-{k}.safetensors"
        save_file(tensors, str(src))
    else:
        from growth.formats.checkpoint import save_checkpoint

        src = save_checkpoint(tmp / f"src-{k}", tensors, {})
    return src


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def run(d: int, k: int, method: str, src: Path, out_fmt: str, tmp: Path) -> dict:
    out = tmp / f"out-{k}-{method}{'.safetensors' if out_fmt == 'safetensors' else ''}"
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", WORKER, str(src), str(out), str(d), method],
                         capture_output=True, text=True, check=True)  # fmt: skip
    leaf_mb = d * d * 4 / 2**20
    row = {"source": "safetensors" if src.is_file() else "checkpoint", "output": out_fmt,
           "leaves": k, "method": method, "leaf_in_mb": leaf_mb, "leaf_out_mb": 4 * leaf_mb,
           "model_in_mb": k * leaf_mb, "model_out_mb": 4 * k * leaf_mb,
           "peak_rss_mb": int(res.stdout.strip().splitlines()[-1]) / 1024,
           "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    _remove(out)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--leaf-count", action="store_true")
    ap.add_argument("--out", default="runs/bench_stream")
    a = ap.parse_args(argv)
    d, ks = (512, (1, 8)) if a.quick else (2048, (1, 4, 16, 32))
    methods = ("copy", "exact")
    if a.leaf_count:
        d, ks, methods = 256, (32, 512, 2048), ("copy",)
    rows = []
    with tempfile.TemporaryDirectory() as t:
        for src_fmt, out_fmt in FORMATS:
            for k in ks:
                src = _source(d, k, src_fmt, Path(t))
                for method in methods:
                    rows.append(run(d, k, method, src, out_fmt, Path(t)))
                    print(json.dumps(rows[-1]), flush=True)
                _remove(src)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    name = "leaf_count.json" if a.leaf_count else "stream.json"
    (Path(a.out) / name).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
