"""``grow demo``: train small -> grow -> check zero-shot loss -> grown vs scratch, same budget.

Both large models (grown and from scratch) have the same config and are trained with the same
budget, batches, schedule and muP-Adam learning-rate multipliers (base widths = the small
model's), so the only difference is the initialisation. The target is the scratch model's final
test loss; the speed-up is ``steps_to_target_scratch / steps_to_target_grown``. Because the
grown model also cost the small model's training, the summary also gives the speed-up with the
small model's steps charged at their relative cost (parameter count ~ FLOPs per example),
and the speed-up at every intermediate target the scratch run passes (``speedup_curve``).

Both large models take their own best peak LR from the same sweep (``lr_sweep``, lowest final
test loss; recorded in the summary), so the target is a tuned scratch run. The default method
is ``plastic`` (``growth.plasticity``: fresh new units and blocks, stream writers x0.1);
``experiments/plasticity_probe.py`` and docs/results.md hold the ablation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from growth.apps.commands import (
    grow_checkpoint,
    load_model,
    train_model,
    verify_checkpoint,
)
from growth.formats.outdir import write_directory
from growth.methods import DEFAULT_METHOD, get_method
from growth.models import get_family, init_model, params_of
from growth.models.resmlp import ResMLPConfig
from growth.tasks.data import load_dataset
from growth.tasks.train import History, TrainConfig, speedup_curve, steps_to_target, train
from theory.parametrization import adam_lr_multipliers


@dataclass(frozen=True)
class DemoConfig:
    width: int = 16
    hidden: int = 32
    depth: int = 2
    width_factor: int = 4
    depth_factor: int = 2
    method: str = DEFAULT_METHOD
    sigma: float | None = None  # override of the recipe's zero-sum size (None: the recipe's)
    mup: bool = True  # muP-Adam LR multipliers (base = small widths) for both large models
    small_steps: int = 3000
    steps: int = 3000
    lr: float = 1e-2  # the small model's peak LR
    lr_sweep: tuple[float, ...] = (1e-2, 3e-2, 1e-1)  # each large model takes its best of these
    eval_every: int = 100
    seed: int = 0
    dataset: str = "mnist1d-large"

    @staticmethod
    def quick(**kw) -> DemoConfig:
        return DemoConfig(**({"small_steps": 1000, "steps": 1000, "eval_every": 50} | kw))


def n_params(tree) -> int:
    """Number of scalars in a params pytree."""
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree)))


def best_of_sweep(run: Callable[[float], History], lrs: tuple[float, ...]) -> tuple[History, dict]:
    """Train once per peak LR in ``lrs`` (``run(lr) -> History``); return the run with the lowest
    final test loss and the sweep record ``{"lr": best, "final_test_loss": {lr: loss}}``."""
    runs = {lr: run(lr) for lr in lrs}
    best = min(runs, key=lambda lr: runs[lr].test_loss[-1])
    return runs[best], {"lr": best, "final_test_loss": {str(k): h.test_loss[-1]
                                                         for k, h in runs.items()}}  # fmt: skip


def compare_runs(small: History, grown: History, scratch: History, *, small_cost: float) -> dict:
    """The grown-vs-scratch summary keys shared by every demo.

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


def run_demo(
    out: str | os.PathLike = "runs/demo", cfg: DemoConfig | None = None, *, progress: bool = True
) -> dict:
    """Run the whole demo; write ``summary.json``, ``loss_curves.png`` and checkpoints to ``out``
    (atomically, see :func:`write_run_dir`)."""
    cfg = cfg or DemoConfig()
    return write_run_dir(out, lambda tmp: _run(tmp, cfg, progress))


def _run(tmp: Path, cfg: DemoConfig, progress: bool) -> dict:
    data = load_dataset(cfg.dataset)
    small_cfg = ResMLPConfig(data.input_dim, cfg.width, cfg.hidden, cfg.depth, data.num_classes)
    tc = TrainConfig(steps=cfg.small_steps, lr=cfg.lr, eval_every=cfg.eval_every, seed=cfg.seed)
    _, small_hist = train_model(
        tmp / "small", "resmlp", small_cfg, tc, dataset=cfg.dataset, progress=progress
    )

    _, report = grow_checkpoint(
        tmp / "small",
        tmp / "grown",
        width=f"x{cfg.width_factor}",
        depth=f"x{cfg.depth_factor}",
        method=get_method(cfg.method, **({} if cfg.sigma is None else {"sigma": cfg.sigma})),
        seed=cfg.seed,
    )
    check = verify_checkpoint(tmp / "grown")

    fam = get_family("resmlp")
    _, grown_meta, big_cfg = load_model(tmp / "grown")
    base = grown_meta["base_sizes"]
    resolved_params = params_of(init_model("resmlp", big_cfg))
    resolved = fam.spec(big_cfg).resolve(resolved_params)
    mults = adam_lr_multipliers(resolved, base) if cfg.mup else None

    def run(lr: float, desc: str) -> History:
        model = (
            load_model(tmp / "grown")[0]
            if desc == "grown"
            else init_model("resmlp", big_cfg, seed=cfg.seed + 1)
        )
        tc_big = TrainConfig(steps=cfg.steps, lr=lr, eval_every=cfg.eval_every, seed=cfg.seed + 7)
        return train(model, data, tc_big, lr_multipliers=mults, desc=f"{desc} lr {lr:g}",
                     progress=progress)  # fmt: skip

    grown_hist, grown_sweep = best_of_sweep(lambda lr: run(lr, "grown"), cfg.lr_sweep)
    scratch_hist, scratch_sweep = best_of_sweep(lambda lr: run(lr, "scratch"), cfg.lr_sweep)

    cost = cfg.small_steps * n_params(params_of(init_model("resmlp", small_cfg)))
    summary = {
        "method": cfg.method,
        "small_config": small_cfg.__dict__,
        "grown_config": big_cfg.__dict__,
        "growth": report.to_dict(),
        **compare_runs(
            small_hist,
            grown_hist,
            scratch_hist,
            small_cost=cost / n_params(resolved_params),
        ),
        "lr_sweep": {"grown": grown_sweep, "scratch": scratch_sweep},
        "max_rel_logit_error": check["max_rel_logit_error"],
        "verify": check,
        "demo_config": cfg.__dict__,
    }
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_curves(
        tmp / "loss_curves.png", small_hist, grown_hist, scratch_hist, ylabel="test cross-entropy"
    )
    return summary


def format_summary(s: dict) -> str:
    """The demo's table, as printed by ``grow demo``."""

    def f(v):
        return "n/a" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

    rows = [
        ("method", s["method"]),
        ("small test loss", s["small_test_loss"]),
        ("grown test loss at step 0", s["grown_test_loss_step0"]),
        ("zero-shot gap", s["zero_shot_gap"]),
        ("max relative logit error", s["max_rel_logit_error"]),
        (
            "peak LR grown / scratch (best of sweep)",
            f"{s['lr_sweep']['grown']['lr']:g} / {s['lr_sweep']['scratch']['lr']:g}",
        ),
        ("target (scratch final test loss)", s["target_test_loss"]),
        ("steps to target: grown", s["steps_to_target_grown"]),
        ("steps to target: scratch", s["steps_to_target_scratch"]),
        ("speed-up", s["speedup"]),
        ("speed-up, small model's cost charged", s["speedup_charging_small_model"]),
        ("best speed-up over scratch's targets", s["best_speedup"]),
        (
            "final test acc grown / scratch",
            f"{s['final_test_acc_grown']:.3f} / {s['final_test_acc_scratch']:.3f}",
        ),
    ]
    return "\n".join(f"{k:<38} {f(v)}" for k, v in rows)
