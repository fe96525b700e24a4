"""The grown-vs-scratch protocol shared by every demo (and ``experiments/``).

Both large models take their own best peak LR from one sweep (:func:`best_of_sweep`); the
target is tuned scratch's final test loss at the whole budget ``T``. Two speed-ups are reported:

- **in-run** (``speedup``): scratch's steps to the target over the grown run's, both read off
  runs with the same ``T``-step schedule. It undersells growth: a run at step ``t < T`` of a
  ``T``-step cosine schedule has not annealed yet.
- **budget** (``budget_speedup``, :func:`budget_speedup`): ``T / B*``, where ``B*`` is the
  smallest budget on a grid of fractions of ``T`` such that the grown model, trained for ``B*``
  steps with its own ``B*``-step schedule at its best LR of the same sweep, ends at or below the
  target. This is what a user who wants scratch's quality for less compute would run.

Both are also given with the small model's training charged at its cost in large-model steps
(its steps times its parameter count over the large model's, i.e. FLOPs per example).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from growth.engine import plan_growth
from growth.formats.outdir import write_directory
from growth.models import get_family, grown_config
from growth.tasks.train import History, speedup_curve, steps_to_target

#: budgets probed by :func:`budget_speedup`, as fractions of the whole budget
BUDGET_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def n_params(tree) -> int:
    """Number of scalars in a params pytree."""
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree)))


def scratch_config(
    family: str, config: Any, params: Any, *, width: dict[str, int], depth: dict[str, int]
) -> Any:
    """Config of the same-size model trained from scratch, the grown model's rival.

    The family's config at the grown sizes under balanced (copy) growth of ``config``: the
    width multipliers muP gives a model of these widths with the small model as base (a tied
    readout's multiplier times ``n / N``, as for a copy-grown model), and none of a growth
    method's own adjustments (``plastic``'s stream scale sets eps x a^2 and a tied readout's
    multiplier / a: exact for the grown weights, a handicap for a fresh init). Widths should be
    multiples of the source's (a padded map would also rescale eps).
    """
    fam = get_family(family)
    plan = plan_growth(params, fam.spec(config), width=width, depth=depth, method="copy")
    return grown_config(fam, config, plan)


def best_of_sweep(run: Callable[[float], History], lrs: Sequence[float]) -> tuple[History, dict]:
    """Train once per peak LR in ``lrs`` (``run(lr) -> History``); return the run with the lowest
    final test loss and the sweep record ``{"lr": best, "final_test_loss": {lr: loss}}``."""
    runs = {lr: run(lr) for lr in lrs}
    best = min(runs, key=lambda lr: runs[lr].test_loss[-1])
    return runs[best], {"lr": best, "final_test_loss": {str(k): h.test_loss[-1]
                                                         for k, h in runs.items()}}  # fmt: skip


def budget_grid(steps: int, fractions: Sequence[float] = BUDGET_FRACTIONS) -> list[int]:
    """The budgets ``round(f T)`` (>= 1, < T, increasing, no repeats) followed by ``T`` itself."""
    inner = sorted({max(1, round(f * steps)) for f in fractions} - {steps})
    return [b for b in inner if b < steps] + [steps]


def budget_speedup(
    run: Callable[[float, int], History],
    lrs: Sequence[float],
    *,
    steps: int,
    target: float,
    full_loss: float,
    small_cost: float = 0.0,
    fractions: Sequence[float] = BUDGET_FRACTIONS,
) -> dict:
    """The budget speed-up of one arm (module docstring).

    run(lr, budget) -> History trains the arm for ``budget`` steps with a ``budget``-step
    schedule; full_loss: the arm's best final test loss at the whole budget ``steps`` (already
    run). ``B*`` is found by bisection over :func:`budget_grid`, assuming the arm's best final
    loss does not rise with its budget; every probed budget's sweep is recorded. When even
    ``full_loss`` is above ``target`` the speed-up is None (not reached within ``T``).
    """
    grid = budget_grid(steps, fractions)
    probes: dict[str, dict] = {}

    def reached(i: int) -> bool:
        if grid[i] == steps:
            return full_loss <= target
        hist, sweep = best_of_sweep(lambda lr: run(lr, grid[i]), lrs)
        probes[str(grid[i])] = sweep
        return hist.test_loss[-1] <= target

    if not reached(len(grid) - 1):
        best = None
    else:
        lo, hi = -1, len(grid) - 1  # grid[hi] reaches the target; grid[lo] does not (or lo = -1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if reached(mid) else (mid, hi)
        best = grid[hi]
    return {
        "budget_steps": best,
        "budget_speedup": None if best is None else steps / best,
        "budget_speedup_charging_small_model": None if best is None
        else steps / (best + small_cost),
        "budget_probes": probes,
    }  # fmt: skip


def compare_runs(small: History, grown: History, scratch: History, *, small_cost: float) -> dict:
    """The grown-vs-scratch summary keys shared by every demo (in-run speed-ups; the budget
    speed-up comes from :func:`budget_speedup`).

    small_cost: the small model's training cost in large-model steps (its steps times its
    parameter count over the large model's), charged to the grown model in
    ``speedup_charging_small_model``.
    """
    target = scratch.test_loss[-1]
    curve = speedup_curve(grown, scratch)
    s_grown = steps_to_target(grown, target)
    s_scratch = steps_to_target(scratch, target)
    first = next((k for k in grown.steps if k > 0), 1)
    charged = None if s_grown is None else s_grown + small_cost
    return {
        "small_test_loss": small.test_loss[-1],
        "grown_test_loss_step0": grown.test_loss[0],
        "zero_shot_gap": grown.test_loss[0] - small.test_loss[-1],
        "target_test_loss": target,
        "small_cost_steps": small_cost,
        "steps_to_target_grown": s_grown,
        "steps_to_target_scratch": s_scratch,
        "speedup": None if s_grown is None else s_scratch / max(s_grown, first),
        "speedup_charging_small_model": (s_scratch / charged) if charged else None,
        "speedup_curve": curve,
        "best_speedup": max((r["speedup"] for r in curve if r["speedup"]), default=None),
        "final_test_loss_grown": grown.test_loss[-1],
        "final_test_loss_scratch": target,
        "final_test_acc_grown": grown.test_acc[-1],
        "final_test_acc_scratch": scratch.test_acc[-1],
        "curves": {
            "small": small.to_dict(),
            "grown": grown.to_dict(),
            "scratch": scratch.to_dict(),
        },
    }


def tuned_comparison(
    run: Callable[[float, bool, int], History],
    small: History,
    lrs: Sequence[float],
    *,
    steps: int,
    small_cost: float,
    fractions: Sequence[float] = BUDGET_FRACTIONS,
) -> tuple[dict, History, History]:
    """The whole protocol on one seed: both arms (``run(lr, grown, steps) -> History``) at every
    peak LR of ``lrs``, each keeping its best (:func:`best_of_sweep`), then the grown arm's
    budget speed-up against tuned scratch's final loss (:func:`budget_speedup`).

    Returns ``(summary keys, grown, scratch)``: the keys of :func:`compare_runs`, of
    :func:`budget_speedup` and ``lr_sweep`` (both arms' sweep records), and the best runs.
    """
    grown, grown_sweep = best_of_sweep(lambda lr: run(lr, True, steps), lrs)
    scratch, scratch_sweep = best_of_sweep(lambda lr: run(lr, False, steps), lrs)
    keys = compare_runs(small, grown, scratch, small_cost=small_cost)
    keys |= budget_speedup(
        lambda lr, b: run(lr, True, b), lrs, steps=steps, target=scratch.test_loss[-1],
        full_loss=grown.test_loss[-1], small_cost=small_cost, fractions=fractions,
    )  # fmt: skip
    keys["lr_sweep"] = {"grown": grown_sweep, "scratch": scratch_sweep}
    return keys, grown, scratch


def plot_curves(
    path: Path, small: History, grown: History, scratch: History, *, ylabel: str, title: str = ""
) -> None:
    """Test-loss curves of the small source, the grown model and scratch on one step axis."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    off = small.steps[-1]
    ax.plot(small.steps, small.test_loss, color="0.5", label="small (source)")
    ax.plot([off + s for s in grown.steps], grown.test_loss, label="grown")
    ax.plot([off + s for s in scratch.steps], scratch.test_loss, label="scratch (same size)")
    ax.axhline(scratch.test_loss[-1], color="k", ls=":", lw=1, label="target = scratch final")
    ax.axvline(off, color="0.7", lw=0.8)
    ax.set_xlabel("optimizer step (large models start where the small one stops)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_run_dir(out: str | os.PathLike, build: Callable[[Path], dict]) -> dict:
    """Call ``build(tmp)`` on a temporary sibling of ``out`` and move it into place when it
    succeeds, so a failed run leaves no partial ``out``. An older run there is replaced; any
    other existing folder is refused (``growth.formats.outdir``: only outputs this tool wrote
    are ever replaced)."""
    result: dict = {}

    def fill(tmp: Path) -> tuple[dict, list]:
        result.update(build(tmp))
        return {}, []

    path = write_directory(out, fill, kind="run", overwrite=True)
    return result | {"out": str(path)}
