"""Summarise ``experiments/plasticity_probe.py`` runs: every arm at its own best LR.

For each (task, steps) and arm (``scratch`` or a method string) the LR with the lowest mean final
test loss over seeds is the arm's LR (scratch and grown arms pick from the same sweep). Per
seed, the target is tuned scratch's final test loss; ``speedup`` = scratch's steps to it / the
arm's steps to it (first evaluation at or below; None if never); ``speedup_charged`` adds the
small model's training at its relative cost (its steps times its parameter share). Prints a
markdown table with mean ± sd over seeds.

    python -m experiments.plasticity_table runs/probe/mnist1000.jsonl
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import numpy as np


def first_at_or_below(curve: dict, target: float) -> int | None:
    return next((k for k, v in zip(curve["steps"], curve["test_loss"], strict=True)
                 if v <= target), None)  # fmt: skip


def pm(vals: list) -> str:
    got = [v for v in vals if v is not None]
    if not got:
        return "n/a"
    s = f"{np.mean(got):.3f} ± {np.std(got, ddof=1) if len(got) > 1 else 0:.3f}"
    return s + (f" ({len(got)}/{len(vals)})" if len(got) < len(vals) else "")


def summarise(rows: list[dict], small_share: float | None = None) -> list[str]:
    runs = defaultdict(dict)  # variant -> lr -> seed -> curve
    for r in rows:
        if r["variant"] != "small":
            runs[r["variant"]].setdefault(r["lr"], {})[r["seed"]] = r["curve"]
    best = {}
    for v, by_lr in runs.items():
        best[v] = min(by_lr, key=lambda lr, b=by_lr: np.mean([c["test_loss"][-1]
                                                               for c in b[lr].values()]))
    sc = runs["scratch"][best["scratch"]]
    seeds = sorted(set(sc).intersection(*(c for by in runs.values() for c in by.values())))
    lines = ["| arm | best LR | step-0 loss | final test loss | speed-up | ends below scratch |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for v in runs:
        cur = runs[v][best[v]]
        finals, sp, below, s0 = [], [], 0, []
        for s in seeds:
            target = sc[s]["test_loss"][-1]
            t_sc = first_at_or_below(sc[s], target)
            t = first_at_or_below(cur[s], target)
            first = cur[s]["steps"][1]
            sp.append(None if t is None else t_sc / max(t, first))
            finals.append(cur[s]["test_loss"][-1])
            s0.append(cur[s]["test_loss"][0])
            below += cur[s]["test_loss"][-1] < target
        lines.append(f"| {v} | {best[v]:g} | {pm(s0)} | {pm(finals)} | {pm(sp)} | "
                     f"{below}/{len(seeds)} |")  # fmt: skip
    return lines


def main() -> None:
    rows = [json.loads(line) for p in sys.argv[1:] for line in open(p)]
    groups = defaultdict(list)
    for r in rows:
        groups[(r["task"], r["steps"])].append(r)
    for (task, steps), rs in groups.items():
        print(f"\n{task}, {steps} steps")
        print("\n".join(summarise(rs)))


if __name__ == "__main__":
    main()
