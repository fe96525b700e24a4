"""Peak memory of streaming growth vs model size (``growth.stream.grow_safetensors``).

Builds safetensors files of K leaves, each a [d, d] float32 matrix with axes (out:h, in:h) of
one space grown d -> 2d (each grown leaf is 4x its source), for increasing K at a fixed leaf
size, and measures the peak resident memory (VmHWM) of a fresh process that streams the growth.
If streaming works, the peak stays flat in K (bounded by one leaf's input + output + XLA
temporaries + the runtime's baseline) while the model size grows linearly. Writes
``runs/bench_stream/stream.json``.

    python experiments/bench_stream.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = """
import sys, numpy as np
from growth.spec import NeuronSpec
from growth.stream import grow_safetensors
src, out = sys.argv[1], sys.argv[2]
spec = NeuronSpec({"w*": ("out:h", "in:h")})
d = int(sys.argv[3])
grow_safetensors(src, out, spec, width={"h": 2 * d}, method=sys.argv[4])
print([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1])
"""


def run(d: int, k: int, method: str, tmp: Path) -> dict:
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    src = tmp / f"src-{k}.safetensors"
    save_file({f"w{i:03d}": rng.normal(size=(d, d)).astype(np.float32) for i in range(k)}, str(src))
    out = tmp / f"out-{k}-{method}.safetensors"
    res = subprocess.run([sys.executable, "-c", WORKER, str(src), str(out), str(d), method],
                         capture_output=True, text=True, check=True)  # fmt: skip
    leaf_mb = d * d * 4 / 2**20
    row = {"leaves": k, "method": method, "leaf_in_mb": leaf_mb, "leaf_out_mb": 4 * leaf_mb,
           "model_in_mb": k * leaf_mb, "model_out_mb": 4 * k * leaf_mb,
           "peak_rss_mb": int(res.stdout.strip().splitlines()[-1]) / 1024}  # fmt: skip
    src.unlink()
    out.unlink()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="runs/bench_stream")
    a = ap.parse_args()
    d, ks = (1024, (1, 4, 16)) if a.quick else (2048, (1, 4, 16, 32))
    rows = []
    with tempfile.TemporaryDirectory() as t:
        for method in ("copy", "exact"):
            for k in ks:
                rows.append(run(d, k, method, Path(t)))
                print(json.dumps(rows[-1]), flush=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "stream.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
