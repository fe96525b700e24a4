"""The report of ``experiments.compare_methods``: per-seed metrics of each method against tuned
scratch (:func:`metrics`), their mean ± sd over seeds (:func:`aggregate`), the markdown table
(:func:`markdown`) and the test-loss curves (:func:`plot`). Definitions of every metric: the
docstring of ``experiments.compare_methods``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _first_at_or_below(steps, losses, target):
    return next((k for k, v in zip(steps, losses, strict=True) if v <= target), None)


def metrics(run: dict, methods, *, batch: int, small_steps: int) -> dict:
    """Per-method metrics of one seed's run."""
    sc = run["scratch"]
    target = sc["test_loss"][-1]
    s_scratch = _first_at_or_below(sc["steps"], sc["test_loss"], target)
    small_loss = run["small"]["test_loss"][-1]
    fl_step = 6 * run["n_large"] * batch
    fl_small = 6 * run["n_small"] * batch * small_steps
    res = {
        "scratch": {
            "final_test_loss": target,
            "steps_to_target": s_scratch,
            "flops_to_target": s_scratch * fl_step,
            "speedup": 1.0,
        }
    }
    for m in methods:
        h = run[m]
        s = _first_at_or_below(h["steps"], h["test_loss"], target)
        first = next((k for k in h["steps"] if k > 0), 1)
        fl_grow = fl_small + h.get("extra_large_steps", 0) * fl_step  # ligo's operator steps
        res[m] = {
            "zero_shot_gap": h["test_loss"][0] - small_loss,
            "steps_to_target": s,
            "flops_to_target": None if s is None else s * fl_step + fl_grow,
            "speedup": None if s is None else s_scratch / max(s, first),
            "speedup_flops": None if s is None else s_scratch * fl_step / (s * fl_step + fl_grow),
            "final_test_loss": h["test_loss"][-1],
            "function_preserving": h["function_preserving"],
        }
        if "budget_steps" in h:  # T / B*, and charged like speedup_flops
            b, whole = h["budget_steps"], h["steps"][-1]
            res[m]["budget_speedup"] = None if b is None else whole / b
            res[m]["budget_speedup_flops"] = (
                None if b is None else whole * fl_step / (b * fl_step + fl_grow)
            )
    return res


def aggregate(per_seed: list[dict]) -> dict:
    """mean/std over seeds of each metric; steps/speed-ups over the seeds that reached target."""
    out = {}
    for name in per_seed[0]:
        rows = [r[name] for r in per_seed]
        agg = {}
        for key in rows[0]:
            vals = [r[key] for r in rows]
            if isinstance(vals[0], bool):
                agg[key] = all(vals)
                continue
            got = [float(v) for v in vals if v is not None]
            agg[key] = {
                "mean": float(np.mean(got)) if got else None,
                "std": float(np.std(got)) if got else None,
                "reached": len(got),
            }
        out[name] = agg
    return out


def markdown(agg: dict, n_seeds: int) -> str:
    def f(d, fmt="{:.3f}"):
        if d["mean"] is None:
            return "never"
        s = (fmt + " ± " + fmt).format(d["mean"], d["std"])
        return s if d["reached"] == n_seeds else f"{s} ({d['reached']}/{n_seeds})"

    budget = any("budget_speedup" in a for a in agg.values())
    head = "| budget speed-up | budget speed-up (FLOPs, incl. small) " if budget else ""
    lines = [
        "| method | exact | zero-shot gap | steps to scratch final | speed-up (steps) "
        f"| speed-up (FLOPs, incl. small) {head}| final test loss |",
        "|---|---|---:|---:|---:|---:" + "|---:" * (2 * budget) + "|---:|",
    ]
    for name, a in agg.items():
        if name == "scratch":
            continue
        cols = (
            f"{f(a['budget_speedup'], '{:.2f}')} | {f(a['budget_speedup_flops'], '{:.2f}')} | "
            if budget
            else ""
        )
        lines.append(
            f"| {name} | {'yes' if a['function_preserving'] else 'no'} | "
            f"{f(a['zero_shot_gap'], '{:+.4f}')} | {f(a['steps_to_target'], '{:.0f}')} | "
            f"{f(a['speedup'], '{:.2f}')} | {f(a['speedup_flops'], '{:.2f}')} | "
            f"{cols}{f(a['final_test_loss'], '{:.4f}')} |"
        )
    s = agg["scratch"]
    lines.append(
        f"| scratch | - | - | {f(s['steps_to_target'], '{:.0f}')} | 1 | 1 | "
        f"{'1 | 1 | ' if budget else ''}{f(s['final_test_loss'], '{:.4f}')} |"
    )
    return "\n".join(lines)


def plot(path: Path, runs: list[dict], methods) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colors = plt.cm.tab20(np.linspace(0, 1, 20))
    for i, name in enumerate((*methods, "scratch")):
        steps = runs[0][name]["steps"]
        losses = np.array([r[name]["test_loss"] for r in runs])
        mu = losses.mean(0)
        kw = {"color": "k", "lw": 2} if name == "scratch" else {"lw": 1, "color": colors[i % 20]}
        ax.plot(steps, mu, label=name, **kw)
        if len(runs) > 1:
            ax.fill_between(steps, losses.min(0), losses.max(0), alpha=0.12, color=kw["color"])
    ax.set_xlabel("optimizer step of the large model")
    ax.set_ylabel("test cross-entropy (mean over seeds, band = min..max)")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
