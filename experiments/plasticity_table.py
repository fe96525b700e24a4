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


def small_share(task: str) -> float:
    """Parameters of the probe's small model over its large one (the small model's training
    costs ``steps * share`` large-model steps)."""
    import jax

    from growth.models import get_family, init_model, params_of

    if task == "mnist":
        fam, small = get_family("resmlp"), get_family("resmlp").config(40, 16, 32, 2, 10)
        big = fam.resize(small, {"d": 64, "h": 128, "blocks": 4})
    else:
        from growth.apps.demo.lm import LMDemoConfig

        fam, small = get_family("decoder"), LMDemoConfig.quick().decoder()
        big = fam.resize(small, {"d": 64, "ff": 128, "kv": 4, "blocks": 4})

    def count(cfg):
        return sum(x.size for x in jax.tree.leaves(params_of(init_model(fam.name, cfg))))

    return count(small) / count(big)


def summarise(rows: list[dict], share: float) -> list[str]:
    runs = defaultdict(dict)  # variant -> lr -> seed -> curve
    for r in rows:
        if r["variant"] != "small":
            runs[r["variant"]].setdefault(r["lr"], {})[r["seed"]] = r["curve"]
    best = {}
    for v, by_lr in runs.items():  # LR chosen on the seeds that every LR of the arm ran
        common = set.intersection(*(set(c) for c in by_lr.values()))
        best[v] = min(
            by_lr, key=lambda lr, b=by_lr, c=common: np.mean([b[lr][s]["test_loss"][-1] for s in c])
        )
    sc = runs["scratch"][best["scratch"]]
    small = {r["seed"]: r["curve"] for r in rows if r["variant"] == "small"}
    lines = ["| arm | best LR | seeds | zero-shot gap | final test loss | speed-up | speed-up, "
             "small model charged | ends below scratch |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for v in runs:
        cur = runs[v][best[v]]
        seeds = sorted(set(sc) & set(cur))
        finals, sp, charged, below, gap = [], [], [], 0, []
        for s in seeds:
            target = sc[s]["test_loss"][-1]
            t_sc = first_at_or_below(sc[s], target)
            t = first_at_or_below(cur[s], target)
            first = cur[s]["steps"][1]
            sp.append(None if t is None else t_sc / max(t, first))
            cost = 0 if v == "scratch" else share * small[s]["steps"][-1]
            charged.append(None if t is None else t_sc / (max(t, first) + cost))
            finals.append(cur[s]["test_loss"][-1])
            gap.append(cur[s]["test_loss"][0] - small[s]["test_loss"][-1])
            below += cur[s]["test_loss"][-1] < target
        g = "—" if v == "scratch" else f"{max(abs(x) for x in gap):.1g} (max)"
        lines.append(f"| {v} | {best[v]:g} | {len(seeds)} | {g} | {pm(finals)} | {pm(sp)} | "
                     f"{pm(charged)} | {below}/{len(seeds)} |")  # fmt: skip
    return lines


def main() -> None:
    rows = [json.loads(line) for p in sys.argv[1:] for line in open(p)]
    groups = defaultdict(list)
    for r in rows:
        groups[(r["task"], r["steps"])].append(r)
    for (task, steps), rs in groups.items():
        print(f"\n{task}, {steps} steps")
        print("\n".join(summarise(rs, small_share(task))))


if __name__ == "__main__":
    main()
