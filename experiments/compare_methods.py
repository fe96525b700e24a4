"""Compare growth methods on the demo task: same small model, same target, same training budget.

For each seed a small ResMLP (``growth.apps.demo.mlp`` defaults: width 16, hidden 32, depth 2) is
trained on MNIST-1D, then grown with every method to the same large config (width x4, hidden x4,
depth x2), and every grown model -- and a from-scratch model of the same sizes
(``scratch_config``: the muP widths, none of a method's stream scale) -- is trained with the
same batches, schedule and muP-Adam multipliers (base widths = the small model's). The
protocol is the demos' (``growth.apps.demo.protocol``): each arm takes its best peak LR of the
same sweep (``--lrs``, :func:`~growth.apps.demo.protocol.best_of_sweep`; recorded per run as
``lr`` and ``lr_sweep``), and the target is tuned scratch's final test loss at the whole budget
``T`` (same seed). Per method, over seeds (mean and std):

- ``zero_shot_gap``: grown test loss at step 0 minus the small model's final test loss;
- ``steps_to_target``: first evaluated step at which the grown model's test loss is <= the
  target; None if never within the budget;
- in-run ``speedup``: scratch steps to its own final loss (the budget's last evaluation that
  reached it) / grown steps to it, both on ``T``-step schedules; ``flops_to_target``:
  6 N_large B steps (training FLOPs ~ 6 x params x examples) plus, for the grown model, the
  small model's training (6 N_small B steps_small); ``speedup_flops`` charges it;
- ``budget_speedup`` (``--budget``, on by default): ``T / B*``, ``B*`` the smallest budget on a
  grid of fractions of ``T`` (bisection, :func:`~growth.apps.demo.protocol.budget_speedup`) at
  which the grown model, trained ``B*`` steps with its own ``B*``-step schedule at its best LR
  of the same sweep, ends at or below the target (budget probes evaluate only at their end);
  None if the full run does not reach it. ``budget_speedup_flops`` charges the same growth cost
  as ``speedup_flops``: ``T / (B* + steps_small N_small / N_large + operator steps)``;
- ``final_test_loss``.

``msg`` (Masked Structural Growth) is grown by ``growth.recipes.msg.grow_msg`` and trained with its
mask ramping 0 -> 1 (``fit(..., transform=...)``) over ``min(--ramp-steps, budget // 2)``
updates of each budget, the full one included, so that the mask is fully open for at least the
second half of every run (:func:`msg_ramp`); its step-0 loss is at mask 0. ``ligo`` learns its
growth operators for 100 steps on training batches (``growth.recipes.ligo.grow_ligo``) once,
before the common budget; those steps are charged in its FLOPs (one large-model step each) at
every budget, not in its step counts.

Writes ``summary.json``, ``table.md`` and ``loss_curves.png`` under ``--out``.

    python -m experiments.compare_methods --quick          # smoke run (budget grid 1/4, 1/2, 3/4)
    python -m experiments.compare_methods --seeds 3        # the reported comparison
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from experiments._compare_report import aggregate, markdown, metrics, plot
from growth.apps.demo.protocol import (
    BUDGET_FRACTIONS,
    best_of_sweep,
    budget_speedup,
    n_params,
    scratch_config,
)

#: the budget grid of ``--quick`` (fractions of ``T``)
QUICK_FRACTIONS = (0.25, 0.5, 0.75)

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


def msg_ramp(ramp_steps: int, budget: int) -> int:
    """msg's mask ramp (updates) in a ``budget``-step run: ``max(1, min(ramp_steps, budget // 2))``
    (the mask is fully open for at least the second half of the run)."""
    return max(1, min(ramp_steps, budget // 2))


def _record(hist, sweep: dict) -> dict:
    """A best-of-sweep run as stored in ``summary.json``: its history, ``lr`` and ``lr_sweep``."""
    return hist.to_dict() | {"lr": sweep["lr"], "lr_sweep": sweep["final_test_loss"]}


def grow_and_train(
    family, small_cfg, small_hist, p_small, fit, *, methods, width, depth, seed, steps,
    lrs=(None,), ramp_steps=None, task=None, fractions=BUDGET_FRACTIONS,
):  # fmt: skip
    """Grow ``p_small`` with every method and train each, then a same-size model from scratch,
    with ``fit(model, desc, transform, lr, budget) -> History`` (a ``budget``-step run; ``steps``
    = the whole budget ``T``); every arm keeps its best run over the peak LRs ``lrs`` (None:
    ``fit``'s default LR). Then, unless ``fractions`` is None, each method's budget ``B*``
    (``budget_steps``, with the probes' sweeps as ``budget_probes``) against scratch's final
    loss (``experiments._compare_report.metrics`` turns it into the speed-ups, charging the
    small model and ligo's operator steps as in ``speedup_flops``). Returns the per-seed record.

    Masked methods (``ramp_steps`` > 0: msg) are grown by ``growth.recipes.msg.grow_msg`` and
    trained with their mask ramp over :func:`msg_ramp` of ``ramp_steps`` (None: the recipe's)
    and the budget. Learned operators (``operator_steps`` > 0: ligo) are trained once by
    ``growth.recipes.ligo.grow_ligo`` on ``task = (loss_fn, batches)`` (the training loss and an
    iterator of training batches); their steps are recorded as ``extra_large_steps`` (each costs
    about one large-model step)."""
    import jax

    from growth.engine import apply_plan, plan_growth
    from growth.methods import get_method
    from growth.models import get_family, grown_config, init_model, model_from_params, params_of
    from growth.recipes.ligo import grow_ligo
    from growth.recipes.msg import grow_msg, msg_transform

    fam = get_family(family)
    out = {"small": small_hist, "n_small": n_params(p_small)}
    big_cfg, arms = None, {}
    for name in methods:
        t0 = time.perf_counter()
        method, mask = get_method(name), None
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
                mask = (info, method.ramp_steps if ramp_steps is None else ramp_steps)
            else:
                plan = plan_growth(p_small, fam.spec(small_cfg), **kw)
                new = apply_plan(plan, p_small)
            big_cfg = grown_config(family, small_cfg, plan)
            preserving = plan.report.function_preserving
        new = jax.block_until_ready(new)
        grow_s = time.perf_counter() - t0

        def train_at(lr, budget, cfg=big_cfg, params=new, desc=name, mask=mask):
            transform = None if mask is None else msg_transform(mask[0], msg_ramp(mask[1], budget))
            return fit(model_from_params(family, cfg, params), desc, transform, lr, budget)

        hist = _record(*best_of_sweep(lambda lr, run=train_at: run(lr, steps), lrs))
        if not method.operator_steps and plan.report.function_check == "unmeasured":
            # exact only in exact arithmetic: measured here by the step-0 held-out loss
            s_loss, g_loss = small_hist["test_loss"][-1], hist["test_loss"][0]
            preserving = abs(g_loss - s_loss) <= 1e-5 * max(1.0, abs(s_loss))
        out[name] = hist | extra | {"grow_s": grow_s, "function_preserving": preserving}
        arms[name] = train_at
        print(
            f"  seed {seed} {name:<14} step0 {hist['test_loss'][0]:.4f} "
            f"final {hist['test_loss'][-1]:.4f}",
            flush=True,
        )
    rival = scratch_config(family, small_cfg, p_small, width=width, depth=depth)
    out["n_large"] = n_params(params_of(init_model(family, rival, seed=seed + 1)))
    out["scratch"] = _record(*best_of_sweep(
        lambda lr: fit(init_model(family, rival, seed=seed + 1), "scratch", None, lr, steps), lrs
    ))  # fmt: skip
    target = out["scratch"]["test_loss"][-1]
    print(f"  seed {seed} {'scratch':<14} final {target:.4f}", flush=True)
    if fractions is None:
        return out
    for name in methods:  # B* only: the speed-ups and their charges come from metrics()
        b = budget_speedup(arms[name], lrs, steps=steps, target=target,
                           full_loss=out[name]["test_loss"][-1], fractions=fractions)  # fmt: skip
        out[name] |= {"budget_steps": b["budget_steps"], "budget_probes": b["budget_probes"]}
        print(f"  seed {seed} {name:<14} budget to target {b['budget_steps']} of {steps}",
              flush=True)  # fmt: skip
    return out


def run_seed(
    seed: int, methods, *, small_steps, steps, lr, eval_every, dataset, factors, ramp_steps,
    lrs=(None,), fractions=BUDGET_FRACTIONS,
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

    def fit(model, desc, transform, peak, budget):
        mults = adam_lr_multipliers(fam.spec(model.config).resolve(params_of(model)), base)
        every = eval_every if budget == steps else budget  # budget probes: final loss only
        tc = dataclasses.replace(tc_big, steps=budget, eval_every=every,
                                 lr=tc_big.lr if peak is None else peak)  # fmt: skip
        return train(model, data, tc, lr_multipliers=mults, desc=desc, progress=False,
                     transform=transform)  # fmt: skip

    task = (
        lambda m, x, y: cross_entropy(m(x), y),
        iterate_batches(data.x_train, data.y_train, tc_big.batch_size, seed + 11),
    )
    return grow_and_train(
        "resmlp", small_cfg, small_hist.to_dict(), p_small, fit, methods=methods, width=width,
        depth=depth, seed=seed, steps=steps, lrs=lrs, ramp_steps=ramp_steps, task=task,
        fractions=fractions,
    )  # fmt: skip


def run_seed_lm(
    seed: int, methods, *, small_steps, steps, lr, eval_every, factors, ramp_steps,
    lrs=(None,), fractions=BUDGET_FRACTIONS, **_
):  # fmt: skip
    """The LM task (``growth.apps.demo.lm``, quick decoder on stdlib bytes): same protocol."""
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

    def fit(model, desc, transform, peak, budget):
        mults = adam_lr_multipliers(fam.spec(model.config).resolve(params_of(model)), base)
        every = None if budget == steps else budget  # budget probes: final loss only
        return train_lm(model, cfg, budget, test, seed=seed + 7, lr_multipliers=mults, desc=desc,
                        transform=transform, lr=peak, eval_every=every)  # fmt: skip

    task = (next_byte_loss, ((b,) for b in lm_batches(corpus.train, cfg.batch, cfg.seq_len,
                                                        seed + 11)))  # fmt: skip
    out = grow_and_train(
        "decoder", small_cfg, small_hist.to_dict(), p_small, fit, methods=methods, width=width,
        depth=depth, seed=seed, steps=steps, lrs=lrs, ramp_steps=ramp_steps, task=task,
        fractions=fractions,
    )  # fmt: skip
    out["batch"] = cfg.batch * cfg.seq_len  # tokens per step
    return out


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
        "with --quick; each run (budget B) ramps over min(this, B // 2)",
    )
    p.add_argument(
        "--budget",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="budget speed-up per method (bisection over fractions of --steps: "
        f"{', '.join(map(str, BUDGET_FRACTIONS))}; --quick: "
        f"{', '.join(map(str, QUICK_FRACTIONS))})",
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
        fractions=(QUICK_FRACTIONS if a.quick else BUDGET_FRACTIONS) if a.budget else None,
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
