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

    python -m experiments.plasticity_diagnostics spike --lr 0.01
    python -m experiments.plasticity_diagnostics fitted-units --seeds 0 1 2
    python -m experiments.plasticity_diagnostics schedule --warmups 0 50 100 200 300
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
    ap.add_argument("--out", default="runs/plasticity_diagnostics")
    a = ap.parse_args(argv)
    from growth.formats.outdir import write_json_output

    rows = {"spike": spike, "fitted-units": fitted_units, "schedule": schedule}[a.what](a)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    # tagged and atomic: replaces only a file this script wrote (growth.formats.outdir)
    write_json_output(out / f"{a.what}.json", {"rows": rows}, kind=f"diagnostics-{a.what}")


if __name__ == "__main__":
    main()
