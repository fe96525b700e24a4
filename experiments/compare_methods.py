"""Compare growth methods on the demo task: same small model, same target, same training budget.

For each seed a small ResMLP (``growth.apps.demo.mlp`` defaults: width 16, hidden 32, depth 2) is
trained on
MNIST-1D, then grown with every method to the same large config (width x4, hidden x4, depth x2),
and every grown model -- and a from-scratch model of the same config -- is trained with the same
batches, schedule and muP-Adam multipliers (base widths = the small model's), each arm at its own
best peak LR of the same sweep (``--lrs``; recorded per run as ``lr`` and ``lr_sweep``). Per
method, over seeds (mean and std):

- ``zero_shot_gap``: grown test loss at step 0 minus the small model's final test loss;
- ``steps_to_target``: first evaluated step at which the grown model's test loss is <= the
  scratch model's final test loss (same seed); None if never within the budget;
- ``speedup``: scratch steps to its own final loss (the budget's last evaluation that reached
  it) / grown steps to it; ``flops_to_target``: 6 N_large B steps (training FLOPs ~ 6 x params x
  examples) plus, for the grown model, the small model's training (6 N_small B steps_small);
- ``final_test_loss``.

``msg`` (Masked Structural Growth) is grown by ``growth.recipes.msg.grow_msg`` and trained with its
mask ramping 0 -> 1 over ``--ramp-steps`` updates (``fit(..., transform=...)``), on the same
batches, schedule and budget; its step-0 loss is at mask 0. ``ligo`` learns its growth operators
for 100 steps on training batches (``growth.recipes.ligo.grow_ligo``) before the common budget;
those
steps are charged in its FLOPs (one large-model step each), not in its step counts.

Writes ``summary.json``, ``table.md`` and ``loss_curves.png`` under ``--out``.

    python -m experiments.compare_methods --quick          # smoke run (~1 min)
    python -m experiments.compare_methods --seeds 3        # the reported comparison
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

DEFAULT_METHODS = (
    "plastic",
    "copy",
    "exact",
    "iid",
    "smoothed",
    "rc",
    "net2net-noise",
    "net2net",
    "bert2bert-fpi",
    "bert2bert-aki",
    "hypercloning",
    "lemon",
    "stack",
    "tleg",
    "msg",
    "ligo",
)


def _n_params(tree) -> int:
    import jax

    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree)))


def best_lr(train_at, lrs) -> dict:
    """Train once per peak LR (``train_at(lr) -> history dict``) and keep the run with the lowest
    final test loss, recording ``lr`` and the sweep's final losses (``lr_sweep``)."""
    hists = {lr: train_at(lr) for lr in lrs}
    best = min(hists, key=lambda lr: hists[lr]["test_loss"][-1])
    sweep = {str(lr): h["test_loss"][-1] for lr, h in hists.items()}
    return hists[best] | {"lr": best, "lr_sweep": sweep}


def grow_and_train(
    family, small_cfg, small_hist, p_small, methods, width, depth, fit, seed, ramp_steps=None,
    task=None, lrs=(None,),
):  # fmt: skip
    """Grow ``p_small`` with every method, train each with ``fit(model, desc, transform, lr) ->
    history dict`` on the same budget, then a same-size model from scratch; every arm is trained
    at each peak LR of ``lrs`` and keeps its best run (:func:`best_lr`; None: ``fit``'s default
    LR); returns the per-seed record. Masked methods (``ramp_steps`` > 0: msg) are grown by
    ``growth.recipes.msg.grow_msg`` and trained with their mask ramp over ``ramp_steps`` updates
    (None: the recipe's). Learned operators (``operator_steps`` > 0: ligo) are trained by
    ``growth.recipes.ligo.grow_ligo`` on ``task = (loss_fn, batches)`` (the training loss and an
    iterator of training batches); their steps are recorded as ``extra_large_steps`` (each
    costs about one large-model step)."""
    import jax

    from growth.engine import apply_plan, plan_growth
    from growth.methods import get_method
    from growth.models import get_family, grown_config, init_model, model_from_params, params_of
    from growth.recipes.ligo import grow_ligo
    from growth.recipes.msg import grow_msg, msg_transform

    fam = get_family(family)
    out = {"small": small_hist, "n_small": _n_params(p_small)}
    big_cfg = None
    for name in methods:
        t0 = time.perf_counter()
        method, transform = get_method(name), None
        kw = dict(width=width, depth=depth, method=method, key=seed)
        extra = {}
        if method.operator_steps:
            loss_fn, batches = task
            big_cfg, new, info = grow_ligo(
                family, small_cfg, p_small, width, depth, loss_fn, batches,
                steps=method.operator_steps, depth_rule=method.depth, seed=seed,
            )  # fmt: skip
            extra = {"extra_large_steps": method.operator_steps,
                     "operator_loss": [info["loss_curve"][0], info["loss_curve"][-1]]}  # fmt: skip
            preserving = info["function_preserving"]
        else:
            if method.ramp_steps:
                new, info, plan = grow_msg(p_small, fam.spec(small_cfg), **kw)
                r = method.ramp_steps if ramp_steps is None else ramp_steps
                transform = msg_transform(info, r)
            else:
                plan = plan_growth(p_small, fam.spec(small_cfg), **kw)
                new = apply_plan(plan, p_small)
            big_cfg = grown_config(family, small_cfg, plan)
            preserving = plan.report.function_preserving
        new = jax.block_until_ready(new)
        grow_s = time.perf_counter() - t0

        def train_at(lr, cfg=big_cfg, params=new, desc=name, transform=transform):
            return fit(model_from_params(family, cfg, params), desc, transform, lr)

        hist = best_lr(train_at, lrs)
        if not method.operator_steps and plan.report.function_check == "unmeasured":
            # exact only in exact arithmetic: measured here by the step-0 held-out loss
            s_loss, g_loss = small_hist["test_loss"][-1], hist["test_loss"][0]
            preserving = abs(g_loss - s_loss) <= 1e-5 * max(1.0, abs(s_loss))
        out[name] = hist | extra | {"grow_s": grow_s, "function_preserving": preserving}
        print(
            f"  seed {seed} {name:<14} step0 {hist['test_loss'][0]:.4f} "
            f"final {hist['test_loss'][-1]:.4f}",
            flush=True,
        )
    out["n_large"] = _n_params(params_of(init_model(family, big_cfg, seed=seed + 1)))
    out["scratch"] = best_lr(
        lambda lr: fit(init_model(family, big_cfg, seed=seed + 1), "scratch", None, lr), lrs
    )
    print(f"  seed {seed} {'scratch':<14} final {out['scratch']['test_loss'][-1]:.4f}", flush=True)
    return out


def run_seed(
    seed: int, methods, *, small_steps, steps, lr, eval_every, dataset, factors, ramp_steps,
    lrs=(None,),
):  # fmt: skip
    """One seed: small model, every method and scratch. Returns {name: history dict, ...}."""

    from growth.models import get_family, init_model, params_of
    from growth.models.resmlp import ResMLPConfig
    from growth.tasks.data import iterate_batches, load_dataset
    from growth.tasks.train import TrainConfig, cross_entropy, train
    from theory.parametrization import adam_lr_multipliers

    fam = get_family("resmlp")
    data = load_dataset(dataset)
    wf, df = factors
    small_cfg = ResMLPConfig(data.input_dim, 16, 32, 2, data.num_classes)
    small = init_model("resmlp", small_cfg, seed=seed)
    tc = TrainConfig(steps=small_steps, lr=lr, eval_every=eval_every, seed=seed)
    small_hist = train(small, data, tc, desc="small", progress=False)
    p_small = params_of(small)
    base = fam.sizes(small_cfg)
    base = {k: v for k, v in base.items() if k != "blocks"}
    width = {"d": 16 * wf, "h": 32 * wf}
    depth = {"blocks": 2 * df}
    tc_big = TrainConfig(steps=steps, lr=lr, eval_every=eval_every, seed=seed + 7)

    def fit(model, desc, transform, peak=None):
        mults = adam_lr_multipliers(fam.spec(model.config).resolve(params_of(model)), base)
        tc = tc_big if peak is None else dataclasses.replace(tc_big, lr=peak)
        hist = train(
            model, data, tc, lr_multipliers=mults, desc=desc, progress=False,
            transform=transform,
        )  # fmt: skip
        return hist.to_dict()

    task = (
        lambda m, x, y: cross_entropy(m(x), y),
        iterate_batches(data.x_train, data.y_train, tc_big.batch_size, seed + 11),
    )
    return grow_and_train(
        "resmlp", small_cfg, small_hist.to_dict(), p_small, methods, width, depth, fit, seed,
        ramp_steps, task, lrs,
    )  # fmt: skip


def run_seed_lm(
    seed: int, methods, *, small_steps, steps, lr, eval_every, factors, ramp_steps,
    lrs=(None,), **_
):  # fmt: skip
    """The LM task (``growth.apps.demo.lm``, quick decoder on stdlib bytes): same protocol."""
    import dataclasses

    from flax import nnx

    from growth.apps.demo.lm import LMDemoConfig, next_byte_loss, train_lm
    from growth.models import get_family, params_of
    from growth.models.decoder import Decoder
    from growth.tasks.lm_data import eval_windows, lm_batches, load_corpus
    from theory.parametrization import adam_lr_multipliers

    cfg = LMDemoConfig.quick(small_steps=small_steps, steps=steps, eval_every=eval_every, lr=lr)
    fam = get_family("decoder")
    corpus = load_corpus(cfg.corpus_bytes)
    test = eval_windows(corpus.test, cfg.seq_len, cfg.eval_windows)
    small_cfg = cfg.decoder()
    small = Decoder(small_cfg, rngs=nnx.Rngs(seed))
    small_hist = train_lm(small, cfg, small_steps, test, seed=seed)
    p_small = params_of(small)
    f, g = factors
    width = {"d": f * small_cfg.d_model, "ff": f * small_cfg.d_ff, "kv": f * small_cfg.n_kv_heads}
    depth = {"blocks": g * small_cfg.n_layers}
    base = fam.sizes(small_cfg)

    def fit(model, desc, transform, peak=None):
        mults = adam_lr_multipliers(fam.spec(model.config).resolve(params_of(model)), base)
        hist = train_lm(model, cfg, steps, test, seed=seed + 7, lr_multipliers=mults, desc=desc,
                        transform=transform, lr=peak)  # fmt: skip
        return dataclasses.asdict(hist)

    task = (next_byte_loss, ((b,) for b in lm_batches(corpus.train, cfg.batch, cfg.seq_len,
                                                        seed + 11)))  # fmt: skip
    out = grow_and_train(
        "decoder", small_cfg, dataclasses.asdict(small_hist), p_small, methods, width, depth,
        fit, seed, ramp_steps, task, lrs,
    )  # fmt: skip
    out["batch"] = cfg.batch * cfg.seq_len  # tokens per step
    return out


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

    lines = [
        "| method | exact | zero-shot gap | steps to scratch final | speed-up (steps) "
        "| speed-up (FLOPs, incl. small) | final test loss |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, a in agg.items():
        if name == "scratch":
            continue
        lines.append(
            f"| {name} | {'yes' if a['function_preserving'] else 'no'} | "
            f"{f(a['zero_shot_gap'], '{:+.4f}')} | {f(a['steps_to_target'], '{:.0f}')} | "
            f"{f(a['speedup'], '{:.2f}')} | {f(a['speedup_flops'], '{:.2f}')} | "
            f"{f(a['final_test_loss'], '{:.4f}')} |"
        )
    s = agg["scratch"]
    lines.append(
        f"| scratch | - | - | {f(s['steps_to_target'], '{:.0f}')} | 1 | 1 | "
        f"{f(s['final_test_loss'], '{:.4f}')} |"
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


def _sweep(a: argparse.Namespace) -> tuple[float, ...]:
    if a.lrs:
        return tuple(float(x) for x in a.lrs.split(","))
    if a.quick:
        return (a.lr,)
    return (0.003, 0.01, 0.03) if a.task == "lm" else (0.01, 0.03, 0.1)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, few steps, 5 methods")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--small-steps", type=int, default=1500)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=1e-2, help="the small model's peak LR")
    p.add_argument(
        "--lrs",
        default=None,
        help="comma-separated peak LRs; every large arm (scratch and each method) keeps its "
        "best; default 0.01,0.03,0.1 (mlp), 0.003,0.01,0.03 (lm); --quick: --lr only",
    )
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--dataset", default="mnist1d")
    p.add_argument(
        "--task",
        choices=("mlp", "lm"),
        default="mlp",
        help="mlp: ResMLP on MNIST-1D (demo); "
        "lm: quick decoder on stdlib bytes (lm_demo; width x2, depth x2 by default)",
    )
    p.add_argument("--width-factor", type=int, default=None, help="default 4 (mlp), 2 (lm)")
    p.add_argument("--depth-factor", type=int, default=2)
    p.add_argument(
        "--ramp-steps",
        type=int,
        default=None,
        help="msg's mask ramp (updates); default the recipe's (100), a quarter of --steps "
        "with --quick",
    )
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    methods = tuple(a.methods.split(","))
    seeds, small_steps, steps, every = a.seeds, a.small_steps, a.steps, a.eval_every
    if a.quick:
        seeds, small_steps, steps, every = 1, 100, 100, 25
        if a.methods == ",".join(DEFAULT_METHODS):
            methods = ("plastic", "exact", "iid", "net2net", "tleg", "msg", "ligo")
    name = "compare_methods" + ("_lm" if a.task == "lm" else "") + ("_quick" if a.quick else "")
    out = a.out or Path("runs") / name
    out.mkdir(parents=True, exist_ok=True)
    kw = dict(
        small_steps=small_steps,
        steps=steps,
        lr=a.lr,
        eval_every=every,
        dataset=a.dataset,
        factors=(a.width_factor or (2 if a.task == "lm" else 4), a.depth_factor),
        ramp_steps=a.ramp_steps if a.ramp_steps is not None else (steps // 4 if a.quick else None),
        lrs=_sweep(a),
    )
    run = run_seed_lm if a.task == "lm" else run_seed
    runs = [run(seed, methods, **kw) for seed in range(seeds)]
    per_seed = [
        metrics(r, methods, batch=r.get("batch", 128), small_steps=small_steps) for r in runs
    ]
    agg = aggregate(per_seed)
    table = markdown(agg, seeds)
    summary = {
        "config": kw | {"seeds": seeds, "methods": methods, "task": a.task},
        "aggregate": agg,
        "per_seed": per_seed,
        "runs": runs,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "table.md").write_text(table + "\n")
    plot(out / "loss_curves.png", runs, methods)
    print(table)
    print(f"wrote {out}")
    return summary


if __name__ == "__main__":
    main()
