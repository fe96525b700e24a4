"""Which plasticity piece pays off? Grow a trained small model with method variants, train the
grown model and scratch over a small LR sweep, and record every run (one JSON line per run).

    python -m experiments.plasticity_probe --task mnist --steps 1000 --seeds 0 1 2 \\
        --lrs 0.01 0.03 0.1 --variants scratch exact plastic --out runs/probe/mnist1000.jsonl
    python -m experiments.plasticity_table runs/probe/mnist1000.jsonl

Each line: task, steps, seed, variant (``small``, ``scratch`` or a method string), lr and the
test-loss curve. Protocol as in ``grow demo``: the small model trains for ``steps`` steps at
``--small-lr``; the large models train ``steps`` steps at each LR of the sweep with muP-Adam
multipliers (base = small widths); scratch is initialised with seed + 1. Fresh units and blocks
come from the engine's stand-ins (source leaf spreads); ``METHOD@init`` takes them from a fresh
init of the large model instead (seed + 101).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


def _mnist_setup(seed: int, steps: int, small_lr: float, eval_every: int):
    from growth.models import init_model, params_of
    from growth.models.resmlp import ResMLPConfig
    from growth.tasks.data import load_dataset
    from growth.tasks.train import TrainConfig, train

    data = load_dataset("mnist1d-large")
    small_cfg = ResMLPConfig(data.input_dim, 16, 32, 2, data.num_classes)
    small = init_model("resmlp", small_cfg, seed=seed)
    tc = TrainConfig(steps=steps, lr=small_lr, eval_every=eval_every, seed=seed)
    hist = train(small, data, tc, progress=False)

    def fit(model, lr, mults):
        tc_big = TrainConfig(steps=steps, lr=lr, eval_every=eval_every, seed=seed + 7)
        return train(model, data, tc_big, lr_multipliers=mults, progress=False)

    return "resmlp", small_cfg, params_of(small), hist, {"d": 64, "h": 128}, {"blocks": 4}, fit


def _lm_setup(seed: int, steps: int, small_lr: float, eval_every: int):
    from flax import nnx

    from growth.apps.demo.lm import LMDemoConfig, train_lm
    from growth.models import params_of
    from growth.models.decoder import Decoder
    from growth.tasks.lm_data import eval_windows, load_corpus

    cfg = LMDemoConfig.quick(small_steps=steps, steps=steps, eval_every=eval_every, lr=small_lr)
    corpus = load_corpus(cfg.corpus_bytes)
    test = eval_windows(corpus.test, cfg.seq_len, cfg.eval_windows)
    small_cfg = cfg.decoder()
    small = Decoder(small_cfg, rngs=nnx.Rngs(seed))
    hist = train_lm(small, cfg, steps, test, seed=seed)

    def fit(model, lr, mults):
        c = dataclasses.replace(cfg, lr=lr)
        return train_lm(model, c, steps, test, seed=seed + 7, lr_multipliers=mults)

    c = small_cfg
    width = {"d": 2 * c.d_model, "ff": 2 * c.d_ff, "kv": 2 * c.n_kv_heads}
    return "decoder", c, params_of(small), hist, width, {"blocks": 2 * c.n_layers}, fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", choices=("mnist", "lm"), default="mnist")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--small-lr", type=float, default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.03])
    ap.add_argument("--variants", nargs="+", default=["scratch", "exact"])
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--out", default="runs/probe/probe.jsonl")
    args = ap.parse_args()

    from growth.engine import apply_plan, plan_growth
    from growth.models import get_family, grown_config, init_model, model_from_params, params_of
    from theory.parametrization import adam_lr_multipliers

    setup = _mnist_setup if args.task == "mnist" else _lm_setup
    small_lr = args.small_lr or (1e-2 if args.task == "mnist" else 3e-3)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        family, small_cfg, p_small, small_hist, width, depth, fit = setup(
            seed, args.steps, small_lr, args.eval_every
        )
        fam = get_family(family)
        base = {k: v for k, v in fam.sizes(small_cfg).items() if k != "blocks"}
        rec = {"task": args.task, "steps": args.steps, "seed": seed}
        with out.open("a") as f:
            f.write(json.dumps(rec | {"variant": "small", "curve": small_hist.to_dict()}) + "\n")
        for variant in args.variants:
            name, _, src = ("exact" if variant == "scratch" else variant).partition("@")
            plan = plan_growth(p_small, fam.spec(small_cfg), width=width, depth=depth,
                               method=name, key=seed)  # fmt: skip
            big_cfg = grown_config(family, small_cfg, plan)
            fresh = params_of(init_model(family, big_cfg, seed=seed + 101))
            for lr in args.lrs:
                t0 = time.time()
                if variant == "scratch":
                    model = init_model(family, big_cfg, seed=seed + 1)
                else:
                    fr = fresh if src == "init" else None
                    model = model_from_params(family, big_cfg, apply_plan(plan, p_small, fr))
                mults = adam_lr_multipliers(fam.spec(big_cfg).resolve(params_of(model)), base)
                hist = fit(model, lr, mults)
                row = rec | {"variant": variant, "lr": lr, "curve": hist.to_dict(),
                             "seconds": time.time() - t0}  # fmt: skip
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"seed {seed} {variant:<40} lr {lr:g} step0 {hist.test_loss[0]:.4f} "
                      f"final {hist.test_loss[-1]:.4f} ({time.time() - t0:.0f}s)",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
