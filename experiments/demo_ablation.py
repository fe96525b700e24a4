"""Which part of the demo's growth pays off? Width only, depth only, both; symmetry breaking.

Runs ``growth.apps.demo.mlp`` with the same budget for each variant and writes
``runs/ablation/ablation.json`` and a markdown table. ``--quick`` uses the demo's quick budget.

    python experiments/demo_ablation.py --quick
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from growth.apps.demo.mlp import DemoConfig, run_demo

VARIANTS = {
    "width x4, depth x2": {},
    "width x4 only": {"depth_factor": 1},
    "depth x2 only": {"width_factor": 1},
    "width x4, depth x2, sigma 1": {"sigma": 1.0},
    "width x4, depth x2, copy (no symmetry breaking)": {"method": "copy"},
}
KEYS = (
    "zero_shot_gap",
    "target_test_loss",
    "final_test_loss_grown",
    "steps_to_target_grown",
    "steps_to_target_scratch",
    "speedup",
    "best_speedup",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="runs/ablation")
    args = ap.parse_args()
    base = DemoConfig.quick() if args.quick else DemoConfig()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, kw in VARIANTS.items():
        s = run_demo(out / "run", replace(base, **kw), progress=False)
        rows[name] = {k: s[k] for k in KEYS}
        print(name, json.dumps(rows[name]), flush=True)
    (out / "ablation.json").write_text(
        json.dumps({"config": base.__dict__, "rows": rows}, indent=2)
    )
    lines = ["| variant | " + " | ".join(KEYS) + " |", "|---" * (len(KEYS) + 1) + "|"]
    for name, r in rows.items():
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
