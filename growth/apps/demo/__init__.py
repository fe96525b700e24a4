"""``grow demo``: train a small model, grow it, check the zero-shot loss, then train the grown
model and a same-size model from scratch on the same budget, for either task:

- ``mnist1d`` (:mod:`.mlp`): a residual MLP classifier on MNIST-1D (generated offline);
- ``lm`` (:mod:`.lm`): a GPT-style decoder on bytes of the Python standard library.

Both write ``summary.json`` (same keys), ``loss_curves.png`` and the grown checkpoint.
"""

from __future__ import annotations

import os

from growth.errors import GrowthError

# the task modules import the training stack; they load on first use, so `grow --help` is quick
TASKS = {
    "mnist1d": "residual MLP classifier on MNIST-1D (40 features, 10 classes)",
    "lm": "GPT-style decoder (RMSNorm, GQA, rotary, SwiGLU, tied) on stdlib bytes",
}


def run_task_demo(
    task: str = "mnist1d",
    out: str | os.PathLike | None = None,
    *,
    quick: bool = False,
    progress: bool = True,
    **overrides,
) -> dict:
    """Run the demo of ``task`` (a key of :data:`TASKS`) into ``out`` (default ``runs/demo`` or
    ``runs/lm_demo``); ``overrides`` are fields of the task's config (``method``, ``seed``, ...).
    Returns the summary dict (also written to ``out/summary.json``)."""
    if task == "lm":
        from growth.apps.demo.lm import LMDemoConfig, run_lm_demo

        cfg = LMDemoConfig.quick(**overrides) if quick else LMDemoConfig(**overrides)
        return run_lm_demo(out or "runs/lm_demo", cfg=cfg)
    if task == "mnist1d":
        from growth.apps.demo.mlp import DemoConfig, run_demo

        cfg = DemoConfig.quick(**overrides) if quick else DemoConfig(**overrides)
        return run_demo(out or "runs/demo", cfg, progress=progress)
    raise GrowthError(f"demo task {task!r}: expected one of {sorted(TASKS)}")


def format_summary(summary: dict) -> str:
    """The demo's result table (both tasks write the same summary keys)."""
    from growth.apps.demo.mlp import format_summary as table

    return table(summary)


__all__ = ["TASKS", "format_summary", "run_task_demo"]
