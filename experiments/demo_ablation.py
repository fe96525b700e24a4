"""Demo variants over seeds: the numbers behind the README and docs/results.md.

Runs the demo (``growth.apps.demo``, the full protocol: both arms tuned on the same LR sweep,
in-run and budget speed-ups, the zero-shot gap) once per variant and seed, appends each
summary to ``OUT/runs.jsonl`` (a run already there is skipped, so an interrupted sweep resumes)
and writes ``OUT/table.md`` with mean ± sd over seeds.

A variant is ``NAME=field:value,field:value`` over the task's demo config fields (a bare
``NAME`` is the default config); ``method`` values may carry overrides
(``plastic:stream_scale=1``), so use ``;`` inside them: ``nostream=method:plastic;stream_scale=1``.

    python -m experiments.demo_ablation --task mnist1d --quick --seeds 0 1 2 \\
        --variants plastic exact=method:exact long_small=small_steps:4000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np

COLUMNS = (
    ("final test loss", "final_test_loss_grown"),
    ("scratch (target)", "target_test_loss"),
    ("budget speed-up", "budget_speedup"),
    ("budget speed-up, charged", "budget_speedup_charging_small_model"),
    ("in-run speed-up", "speedup"),
    ("in-run, charged", "speedup_charging_small_model"),
    ("small model", "small_test_loss"),
    ("zero-shot gap", "zero_shot_gap"),
)


def parse_variant(text: str, fields: dict[str, type]) -> tuple[str, dict]:
    """``"name=width:32,method:plastic;stream_scale=1"`` -> ``("name", {...})`` typed by field."""
    name, _, body = text.partition("=")
    kw: dict = {}
    for item in filter(None, body.split(",")):
        key, sep, value = item.partition(":")
        if not sep or key not in fields:
            raise SystemExit(f"variant {text!r}: {item!r} should be field:value, field one of "
                             f"{sorted(fields)}")  # fmt: skip
        kw[key] = value.replace(";", ":") if key == "method" else fields[key](value)
    return name, kw


def config_fields(task: str) -> tuple[type, dict[str, type]]:
    from growth.apps.demo.lm import LMDemoConfig
    from growth.apps.demo.mlp import DemoConfig

    cls = LMDemoConfig if task == "lm" else DemoConfig
    types = {"int": int, "float": float, "str": str, "bool": lambda v: v == "True"}
    return cls, {f.name: types.get(str(f.type), str) for f in dataclasses.fields(cls)}


def pm(values: list) -> str:
    """``mean ± sd`` over the non-None values, with ``(k/n)`` when some are None."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "never"
    sd = np.std(vals, ddof=1) if len(vals) > 1 else 0.0
    text = f"{np.mean(vals):.3g} ± {sd:.2g}"
    return text + (f" ({len(vals)}/{len(values)})" if len(vals) < len(values) else "")


def table(rows: list[dict]) -> str:
    """Markdown: one line per variant, mean ± sd over its seeds."""
    head = ["variant", "seeds", "best LR grown/scratch", *(c for c, _ in COLUMNS), "below scratch"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name in dict.fromkeys(r["variant"] for r in rows):
        runs = [r["summary"] for r in rows if r["variant"] == name]
        lrs = sorted({f"{s['lr_sweep']['grown']['lr']:g}/{s['lr_sweep']['scratch']['lr']:g}"
                      for s in runs})  # fmt: skip
        below = sum(s["final_test_loss_grown"] < s["target_test_loss"] for s in runs)
        cells = [name, str(len(runs)), ", ".join(lrs)]
        cells += [pm([s.get(k) for s in runs]) for _, k in COLUMNS]
        lines.append("| " + " | ".join(cells + [f"{below}/{len(runs)}"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--task", choices=("mnist1d", "lm"), default="mnist1d")
    ap.add_argument("--quick", action="store_true", help="the demo's quick budget")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["default"])
    ap.add_argument("--out", default="runs/demo_ablation")
    a = ap.parse_args(argv)

    from growth.apps.demo import run_task_demo
    from growth.formats.outdir import replace_file

    cls, fields = config_fields(a.task)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"
    if (out / "table.md").exists() and not log.exists():
        raise SystemExit(f"{out}: has a table.md but no runs.jsonl, so it is not a folder this "
                         "script wrote; choose another --out")  # fmt: skip
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    for text in a.variants:
        name, kw = parse_variant(text, fields)
        for seed in a.seeds:
            if any(r["variant"] == name and r["seed"] == seed for r in done):
                continue
            with tempfile.TemporaryDirectory() as tmp:
                s = run_task_demo(a.task, Path(tmp) / "run", quick=a.quick, progress=False,
                                  **kw, seed=seed)  # fmt: skip
            row = {"variant": name, "seed": seed, "overrides": kw, "summary": s}
            done.append(row)
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{name} seed {seed}: grown {s['final_test_loss_grown']:.4f} scratch "
                  f"{s['target_test_loss']:.4f} in-run {s['speedup']} budget "
                  f"{s['budget_speedup']}", flush=True)  # fmt: skip
    md = table(done)
    replace_file(out / "table.md", md)  # atomic
    print(md)


if __name__ == "__main__":
    main()
