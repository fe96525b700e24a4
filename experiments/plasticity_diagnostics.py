"""Diagnostics behind docs/results.md "Where the head start goes" (MNIST-1D, demo sizes).

``spike``: the first 200 steps of the large models after growth (test loss every 20 steps, one
peak LR, the demo's warm-up + cosine schedule over 200 steps), next to the small model itself
re-warmed to the same LR: how much of the zero-shot head start the LR warm-up takes back, and
which piece of ``plastic`` makes the rise.

``fitted-units``: ``plastic`` whose new hidden units take their fan-in from the fitted RC measure
(``theory.rc_measure``) instead of fresh noise: ``h`` is grown first by ``fitted-preserving``
(source units kept, drawn units at zero fan-out: exact), then ``d`` and the blocks by
``plastic``; both arms are trained for budgets ``--budgets`` at each LR of ``--lrs``.

``schedule``: grown models (``--methods``) trained for budgets ``--budgets`` at every peak LR of
``--lrs`` and LR warm-up of ``--warmups``: does another schedule keep more of the head start?

``worth``: what a head start is worth, in large-model steps. Scratch trains ``--steps`` T steps
at each LR of ``--lrs`` (the best one's final loss is the target, as in ``grow demo``), and its
own un-annealed states at steps ``s`` of that best run are retrained with a fresh schedule of
``--budget`` B steps (best LR of ``--lrs``), as are the grown models (``--methods``) of a small
model trained T steps. The grown model is *worth* ``s`` steps when it ends where scratch's state
at step ``s`` ends; the speed-up ``T / B`` needs a start worth the smallest ``s`` that ends at or
below the target. A perfect growth could at most hand over the large model's own state.

    python -m experiments.plasticity_diagnostics spike --lr 0.01
    python -m experiments.plasticity_diagnostics fitted-units --seeds 0 1 2
    python -m experiments.plasticity_diagnostics schedule --warmups 0 50 100 200 300
    python -m experiments.plasticity_diagnostics worth --seeds 0 1 2 --steps 1000 --budget 500
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

SMALL, WIDTH, DEPTH = (16, 32, 2), {"d": 64, "h": 128}, {"blocks": 4}


def small_model(seed: int, steps: int = 1000):
    from growth.models import init_model
    from growth.models.resmlp import ResMLPConfig
    from growth.tasks.data import load_dataset
    from growth.tasks.train import TrainConfig, train

    data = load_dataset("mnist1d-large")
    cfg = ResMLPConfig(data.input_dim, *SMALL, data.num_classes)
    model = init_model("resmlp", cfg, seed=seed)
    train(model, data, TrainConfig(steps=steps, lr=1e-2, eval_every=steps, seed=seed),
          progress=False)  # fmt: skip
    return data, cfg, model


def grown(cfg, params, method: str, seed: int, width=WIDTH, depth=DEPTH):
    from growth.engine import apply_plan, plan_growth
    from growth.models import get_family, grown_config

    plan = plan_growth(params, get_family("resmlp").spec(cfg), width=width, depth=depth,
                       method=method, key=seed)  # fmt: skip
    return grown_config("resmlp", cfg, plan), apply_plan(plan, params)


def fit(data, cfg, params, *, steps: int, lr: float, every: int, seed: int, base=None,
        warmup: int = 100):  # fmt: skip
    from growth.models import get_family, model_from_params
    from growth.tasks.train import TrainConfig, train
    from theory.parametrization import adam_lr_multipliers

    model = model_from_params("resmlp", cfg, params)
    mults = None if base is None else adam_lr_multipliers(
        get_family("resmlp").spec(cfg).resolve(params), base)  # fmt: skip
    tc = TrainConfig(steps=steps, lr=lr, warmup=warmup, eval_every=every, seed=seed + 7)
    return train(model, data, tc, lr_multipliers=mults, progress=False)


def spike(a: argparse.Namespace) -> list[dict]:
    from growth.models import params_of

    data, cfg, small = small_model(a.seed)
    p, base = params_of(small), {"d": SMALL[0], "h": SMALL[1]}
    arms = {"small model itself, re-warmed": (cfg, p, None)}
    for m in a.methods:
        arms[m] = (*grown(cfg, p, m, a.seed), base)
    rows = []
    for name, (c, params, b) in arms.items():
        h = fit(data, c, params, steps=200, lr=a.lr, every=20, seed=a.seed, base=b)
        rows.append({"arm": name, "steps": h.steps, "test_loss": h.test_loss})
        print(f"{name:<32}", " ".join(f"{v:.2f}" for v in h.test_loss), flush=True)
    return rows


def fitted_units(a: argparse.Namespace) -> list[dict]:
    from growth.models import params_of

    rows = []
    for seed in a.seeds:
        data, cfg, small = small_model(seed)
        p, base = params_of(small), {"d": SMALL[0], "h": SMALL[1]}
        c1, p1 = grown(cfg, p, "fitted-preserving", seed, width={"h": WIDTH["h"]}, depth={})
        arms = {"plastic": grown(cfg, p, "plastic", seed),
                "plastic, fitted new units": grown(c1, p1, "plastic", seed,
                                                   width={"d": WIDTH["d"]})}  # fmt: skip
        for (name, (c, params)), b, lr in itertools.product(arms.items(), a.budgets, a.lrs):
            h = fit(data, c, params, steps=b, lr=lr, every=b, seed=seed, base=base)
            rows.append({"arm": name, "seed": seed, "budget": b, "lr": lr,
                         "step0": h.test_loss[0], "final": h.test_loss[-1]})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def schedule(a: argparse.Namespace) -> list[dict]:
    from growth.models import params_of

    data, cfg, small = small_model(a.seed)
    p, base = params_of(small), {"d": SMALL[0], "h": SMALL[1]}
    rows = []
    for m in a.methods:
        c, params = grown(cfg, p, m, a.seed)
        for b, lr, w in itertools.product(a.budgets, a.lrs, a.warmups):
            h = fit(data, c, params, steps=b, lr=lr, every=b, seed=a.seed, base=base, warmup=w)
            rows.append({"method": m, "budget": b, "lr": lr, "warmup": w,
                         "final": h.test_loss[-1]})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def scratch_states(data, cfg, *, steps: int, lr: float, at, seed: int, base) -> tuple:
    """Scratch (the demo's rival init, seed + 1) trained ``steps`` steps with its warm-up +
    cosine schedule at peak ``lr``; returns (final test loss, {s: host copy of params at s})."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from growth.models import get_family, init_model, params_of
    from growth.tasks.data import iterate_batches
    from growth.tasks.train import TrainConfig, cross_entropy, evaluate, make_optimizer
    from theory.parametrization import adam_lr_multipliers

    model = init_model("resmlp", cfg, seed=seed + 1)
    mults = adam_lr_multipliers(get_family("resmlp").spec(cfg).resolve(params_of(model)), base)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt = make_optimizer(TrainConfig(steps=steps, lr=lr), mults)
    state = opt.init(params)

    @jax.jit
    def step(p, state, x, y):
        grads = jax.grad(lambda q: cross_entropy(nnx.merge(graphdef, q, rest)(x), y))(p)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state

    batches, states = iterate_batches(data.x_train, data.y_train, 128, seed + 7), {}
    if 0 in at:  # the init itself: what a start worth nothing ends at
        states[0] = jax.tree_util.tree_map(np.array, params_of(model))
    for k in range(1, steps + 1):
        params, state = step(params, state, *map(jnp.asarray, next(batches)))
        if k in at:  # host copies: a module built from them must not alias the loop's arrays
            held = params_of(nnx.merge(graphdef, params, rest))
            states[k] = jax.tree_util.tree_map(np.array, held)
    final = evaluate(nnx.merge(graphdef, params, rest), data.x_test, data.y_test)[0]
    return final, states


def crossing_step(finals: dict[int, float], level: float) -> dict:
    """The first step at which the piecewise-linear curve through ``{s: final loss}`` is at or
    below ``level``: ``{"steps": s*}`` (interpolated between the two grid steps around it),
    ``{"at_most": s_0}`` when already the first grid step is, ``{"more_than": s_max}`` when no
    grid step is. Applied to the scratch states' finals it gives the head start a speed-up needs
    (level = target) and what a grown model is worth (level = its own final)."""
    grid = sorted(finals)
    for i, s in enumerate(grid):
        if finals[s] <= level:
            if i == 0:
                return {"at_most": s}
            r, f0, f1 = grid[i - 1], finals[grid[i - 1]], finals[s]
            return {"steps": r + (s - r) * (f0 - level) / (f0 - f1)}
    return {"more_than": grid[-1]}


def worth(a: argparse.Namespace) -> list[dict]:
    from growth.apps.demo.protocol import scratch_config
    from growth.models import params_of

    rows, at = [], [round(f * a.steps) for f in a.fractions]
    for seed in a.seeds:
        data, cfg, small = small_model(seed, a.steps)
        p, base = params_of(small), {"d": SMALL[0], "h": SMALL[1]}
        rival = scratch_config("resmlp", cfg, p, width=WIDTH, depth=DEPTH)
        runs = {lr: scratch_states(data, rival, steps=a.steps, lr=lr, at=at, seed=seed, base=base)
                for lr in a.lrs}  # fmt: skip
        best = min(runs, key=lambda lr: runs[lr][0])
        target, states = runs[best][0], runs[best][1]
        arms = {f"scratch state at step {s}": (rival, states[s], s) for s in at}
        arms |= {m: (*grown(cfg, p, m, seed), None) for m in a.methods}
        for name, (c, params, s) in arms.items():
            finals = {lr: fit(data, c, params, steps=a.budget, lr=lr, every=a.budget, seed=seed,
                              base=base).test_loss[-1] for lr in a.lrs}  # fmt: skip
            lr = min(finals, key=finals.get)
            rows.append({"arm": name, "seed": seed, "start_step": s, "budget": a.budget,
                         "steps": a.steps, "target": target, "scratch_lr": best, "lr": lr,
                         "final": finals[lr], "reaches_target": finals[lr] <= target})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
        arms_rows = [r for r in rows if r["seed"] == seed and "arm" in r]
        finals = {r["start_step"]: r["final"] for r in arms_rows if r["start_step"] is not None}
        worths = {f"worth {r['arm']}": crossing_step(finals, r["final"])
                  for r in arms_rows if r["start_step"] is None}  # fmt: skip
        rows.append({"seed": seed, "needed": crossing_step(finals, target)} | worths)
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("spike")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--lr", type=float, default=0.01)
    s.add_argument("--methods", nargs="+", default=["plastic", "plastic:stream_scale=1",
                                                    "plastic:new_units=copy", "exact"])  # fmt: skip
    f = sub.add_parser("fitted-units")
    f.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    f.add_argument("--budgets", type=int, nargs="+", default=[500, 1000])
    f.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.03])
    t = sub.add_parser("schedule")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--methods", nargs="+", default=["plastic"])
    t.add_argument("--budgets", type=int, nargs="+", default=[500])
    t.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.03])
    t.add_argument("--warmups", type=int, nargs="+", default=[0, 50, 100, 200, 300])
    w = sub.add_parser("worth")
    w.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    w.add_argument("--steps", type=int, default=1000)
    w.add_argument("--budget", type=int, default=500)
    w.add_argument("--fractions", type=float, nargs="+", default=[0, 0.1, 0.2, 0.3, 0.4, 0.5])
    w.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    w.add_argument("--methods", nargs="+", default=["plastic"])
    ap.add_argument("--out", default="runs/plasticity_diagnostics")
    a = ap.parse_args(argv)
    from growth.formats.outdir import write_json_output

    what = {"spike": spike, "fitted-units": fitted_units, "schedule": schedule, "worth": worth}
    rows = what[a.what](a)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    # tagged and atomic: replaces only a file this script wrote (growth.formats.outdir)
    write_json_output(out / f"{a.what}.json", {"rows": rows}, kind=f"diagnostics-{a.what}")


if __name__ == "__main__":
    main()
