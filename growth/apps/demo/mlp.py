"""``grow demo``: train small -> grow -> check zero-shot loss -> grown vs scratch, same budget.

Both large models (grown, and from scratch with :func:`~.protocol.scratch_config`) have the same
sizes and are trained with the same budget, batches, schedule and muP-Adam learning-rate
multipliers (base widths = the small model's), so the only difference is the initialisation.
Each takes its own best peak LR from the same sweep (``lr_sweep``, recorded in the summary), so
the target -- scratch's final test loss -- is a tuned run. The summary gives the in-run and the
budget speed-up (:mod:`.protocol`), each also with the small model's training charged at its
relative cost (parameter count ~ FLOPs per example), the zero-shot gap, and the speed-up at
every intermediate target the scratch run passes (``speedup_curve``). The default method is
``plastic`` (``growth.plasticity``); docs/results.md has the measurements over seeds
(``experiments/demo_ablation.py``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from growth.apps.commands import (
    grow_checkpoint,
    load_model,
    train_model,
    verify_checkpoint,
)
from growth.apps.demo.protocol import (
    BUDGET_FRACTIONS,
    n_params,
    plot_curves,
    scratch_config,
    tuned_comparison,
    write_run_dir,
)
from growth.methods import DEFAULT_METHOD, get_method
from growth.models import get_family, init_model, params_of
from growth.models.resmlp import ResMLPConfig
from growth.tasks.data import load_dataset
from growth.tasks.train import History, TrainConfig, train
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
    budget_fractions: tuple[float, ...] = BUDGET_FRACTIONS  # () skips the budget speed-up

    @staticmethod
    def quick(**kw) -> DemoConfig:
        return DemoConfig(**({"small_steps": 1000, "steps": 1000, "eval_every": 50} | kw))


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
    sizes = fam.sizes(big_cfg)
    p_small = params_of(load_model(tmp / "small")[0])
    rival_cfg = scratch_config("resmlp", small_cfg, p_small,
                               width={s: sizes[s] for s in ("d", "h")},
                               depth={"blocks": sizes["blocks"]})  # fmt: skip

    def run(lr: float, grown: bool, steps: int) -> History:
        model = (
            load_model(tmp / "grown")[0]
            if grown
            else init_model("resmlp", rival_cfg, seed=cfg.seed + 1)
        )
        every = cfg.eval_every if steps == cfg.steps else steps  # budget probes: final loss only
        tc_big = TrainConfig(steps=steps, lr=lr, eval_every=every, seed=cfg.seed + 7)
        desc = f"{'grown' if grown else 'scratch'} lr {lr:g} steps {steps}"
        return train(model, data, tc_big, lr_multipliers=mults, desc=desc, progress=progress)

    small_cost = cfg.small_steps * n_params(p_small) / n_params(resolved_params)
    comparison, grown_hist, scratch_hist = tuned_comparison(
        run, small_hist, cfg.lr_sweep, steps=cfg.steps, small_cost=small_cost,
        fractions=cfg.budget_fractions,
    )  # fmt: skip
    summary = {
        "method": cfg.method,
        "small_config": small_cfg.__dict__,
        "grown_config": big_cfg.__dict__,
        "scratch_config": rival_cfg.__dict__,
        "growth": report.to_dict(),
        **comparison,
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
        ("in-run speed-up (same schedule)", s["speedup"]),
        ("in-run speed-up, small model charged", s["speedup_charging_small_model"]),
        ("budget to target: grown (own schedule)", s.get("budget_steps")),
        ("budget speed-up", s.get("budget_speedup")),
        ("budget speed-up, small model charged", s.get("budget_speedup_charging_small_model")),
        (
            "final test acc grown / scratch",
            f"{s['final_test_acc_grown']:.3f} / {s['final_test_acc_scratch']:.3f}",
        ),
    ]
    return "\n".join(f"{k:<38} {f(v)}" for k, v in rows)
