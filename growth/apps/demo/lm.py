"""LM growth demo: train a small decoder on the stdlib byte corpus, grow it, check the zero-shot
loss, then train the grown model and a same-size model from scratch on the same budget.

Mirrors ``growth.apps.demo.mlp`` (same summary keys and protocol, :mod:`.protocol`): both large
models have the same sizes, batches, schedule and muP-Adam learning-rate multipliers (base widths
= the small model's), and each its best peak LR from the same sweep (``lr_sweep``). The scratch
model's config is :func:`~.protocol.scratch_config` (muP's readout multiplier), not the grown
config: ``plastic``'s stream scale sets the grown model's eps x a^2 and tied readout multiplier
/ a, exact for the grown weights but a handicap for a fresh init. Target = the scratch model's
final held-out loss; in-run and budget speed-ups as in :mod:`.protocol`. Writes
``summary.json``, ``loss_curves.png`` and the checkpoints.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from growth.apps.demo.protocol import (
    BUDGET_FRACTIONS,
    n_params,
    plot_curves,
    scratch_config,
    tuned_comparison,
    write_run_dir,
)
from growth.engine import apply_plan, plan_growth
from growth.formats.checkpoint import save_checkpoint
from growth.methods import DEFAULT_METHOD
from growth.models import (
    config_to_dict,
    get_family,
    grown_config,
    model_from_params,
    params_of,
)
from growth.models.decoder import Decoder, DecoderConfig
from growth.tasks.lm_data import LM_DATASET, eval_windows, lm_batches, load_corpus
from growth.tasks.train import History, TrainConfig, cross_entropy, fit
from theory.parametrization import adam_lr_multipliers


@dataclass(frozen=True)
class LMDemoConfig:
    """Small model, growth factors and training budget (both phases use the same LR/schedule).

    Width growth multiplies ``d``, ``ff`` and the number of kv heads (head_dim and the query
    group size are kept); depth growth multiplies the number of blocks.
    """

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    d_ff: int = 128
    norm: str = "rms"
    mlp: str = "swiglu"
    positions: str = "rotary"
    tied: bool = True
    seq_len: int = 128
    batch: int = 32
    width_factor: int = 2
    depth_factor: int = 2
    method: str = DEFAULT_METHOD
    small_steps: int = 2000
    steps: int = 2000
    lr: float = 3e-3  # the small model's peak LR
    lr_sweep: tuple[float, ...] = (3e-3, 1e-2, 3e-2)  # each large model takes its best of these
    warmup: int = 50
    eval_every: int = 100
    eval_windows: int = 128
    corpus_bytes: int = 4_000_000
    seed: int = 0
    budget_fractions: tuple[float, ...] = BUDGET_FRACTIONS  # () skips the budget speed-up

    @staticmethod
    def quick(**kw: Any) -> LMDemoConfig:
        """About a minute on 2 CPU cores: d=32, 2 layers, seq 64."""
        base = dict(
            d_model=32, n_heads=2, n_kv_heads=2, d_ff=64, seq_len=64, batch=16,
            small_steps=300, steps=300, eval_every=25, eval_windows=64, corpus_bytes=2_000_000,
        )  # fmt: skip
        return LMDemoConfig(**(base | kw))

    def decoder(self) -> DecoderConfig:
        return DecoderConfig(
            vocab=256,
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            d_ff=self.d_ff,
            max_len=self.seq_len,
            norm=self.norm,
            mlp=self.mlp,
            positions=self.positions,
            tied=self.tied,
        )


def next_byte_loss(model: Decoder, w: jax.Array) -> jax.Array:
    """Mean next-byte cross-entropy of ``model`` on windows w [B, T+1] (nats/byte)."""
    return cross_entropy(model(w[:, :-1]), w[:, 1:])


@jax.jit
def _eval_windows(graphdef: Any, state: Any, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = nnx.merge(graphdef, state)(w[:, :-1])
    return cross_entropy(logits, w[:, 1:]), (logits.argmax(-1) == w[:, 1:]).mean()


def train_lm(
    model: Decoder,
    cfg: LMDemoConfig,
    steps: int,
    test: np.ndarray,
    *,
    seed: int,
    lr_multipliers: tuple[float, ...] | None = None,
    desc: str = "lm",
    transform: Callable[[Any, jax.Array], Any] | None = None,
    lr: float | None = None,
    eval_every: int | None = None,
) -> History:
    """Train ``model`` in place with the project's loop (``growth.tasks.train.fit``) on stdlib
    bytes;
    evaluate the held-out windows ``test`` every ``eval_every`` steps (step 0 included).
    transform: per-step params transform passed to ``fit`` (e.g. msg's mask ramp); lr: peak LR
    (None: ``cfg.lr``); eval_every: None for ``cfg.eval_every``."""
    corpus = load_corpus(cfg.corpus_bytes)
    tc = TrainConfig(
        steps=steps, batch_size=cfg.batch, lr=cfg.lr if lr is None else lr, warmup=cfg.warmup,
        eval_every=cfg.eval_every if eval_every is None else eval_every, seed=seed,
    )  # fmt: skip
    windows = jnp.asarray(test)

    def evaluate(m: Decoder) -> tuple[float, float]:
        loss, acc = _eval_windows(*nnx.split(m), windows)
        return float(loss), float(acc)

    batches = ((b,) for b in lm_batches(corpus.train, cfg.batch, cfg.seq_len, seed))
    return fit(
        model,
        batches,
        next_byte_loss,
        evaluate,
        tc,
        lr_multipliers=lr_multipliers,
        desc=desc,
        progress=False,
        transform=transform,
    )


def run_lm_demo(
    out_dir: str | os.PathLike = "runs/lm_demo",
    quick: bool = False,
    cfg: LMDemoConfig | None = None,
    **overrides: Any,
) -> dict:
    """Run the LM demo; write ``summary.json``, ``loss_curves.png`` and the checkpoints ``small/``
    (trained) and ``grown/`` (grown from it, before training: ``grow verify OUT/grown``)
    under ``out_dir`` (atomically); return the summary (keys as in ``growth.apps.demo.mlp``)."""
    cfg = cfg or (LMDemoConfig.quick() if quick else LMDemoConfig())
    cfg = replace(cfg, **overrides) if overrides else cfg
    return write_run_dir(out_dir, lambda tmp: _run(tmp, cfg))


def _run(out: Path, cfg: LMDemoConfig) -> dict:
    t0 = time.time()
    corpus = load_corpus(cfg.corpus_bytes)
    test = eval_windows(corpus.test, cfg.seq_len, cfg.eval_windows)
    fam = get_family("decoder")

    small_cfg = cfg.decoder()
    small = Decoder(small_cfg, rngs=nnx.Rngs(cfg.seed))
    small_hist = train_lm(small, cfg, cfg.small_steps, test, seed=cfg.seed)

    p_small = params_of(small)
    f, g = cfg.width_factor, cfg.depth_factor
    width = {"d": f * small_cfg.d_model, "ff": f * small_cfg.d_ff, "kv": f * small_cfg.n_kv_heads}
    plan = plan_growth(
        p_small, fam.spec(small_cfg), width=width,
        depth={"blocks": g * small_cfg.n_layers}, method=cfg.method, key=cfg.seed,
    )  # fmt: skip
    big_cfg = grown_config("decoder", small_cfg, plan)
    rival_cfg = scratch_config("decoder", small_cfg, p_small, width=width,
                               depth={"blocks": g * small_cfg.n_layers})  # fmt: skip
    p_grown = apply_plan(plan, p_small)

    w = jnp.asarray(test)
    ref = np.asarray(small(w[:8, :-1]))
    logits = np.asarray(model_from_params("decoder", big_cfg, p_grown)(w[:8, :-1]))
    logit_err = plan.report.measured(ref, logits).max_rel_output_error
    base = fam.sizes(small_cfg)
    mults = adam_lr_multipliers(fam.spec(big_cfg).resolve(p_grown), base)

    def run(lr: float, grown: bool, steps: int) -> History:
        model = (
            model_from_params("decoder", big_cfg, p_grown)
            if grown
            else Decoder(rival_cfg, rngs=nnx.Rngs(cfg.seed + 1))
        )
        every = None if steps == cfg.steps else steps  # budget probes: final loss only
        return train_lm(model, cfg, steps, test, seed=cfg.seed + 7, lr_multipliers=mults,
                        lr=lr, eval_every=every)  # fmt: skip

    small_cost = cfg.small_steps * n_params(p_small) / n_params(p_grown)
    comparison, grown_hist, scratch_hist = tuned_comparison(
        run, small_hist, cfg.lr_sweep, steps=cfg.steps, small_cost=small_cost,
        fractions=cfg.budget_fractions,
    )  # fmt: skip
    data = {"corpus_bytes": cfg.corpus_bytes, "seq_len": cfg.seq_len,
            "eval_windows": cfg.eval_windows}  # fmt: skip
    save_checkpoint(
        out / "small",
        p_small,
        {"family": "decoder", "config": config_to_dict(small_cfg), "dataset": LM_DATASET,
         "data": data, "test_loss": small_hist.test_loss[-1]},
    )  # fmt: skip
    save_checkpoint(  # the grown model at step 0: `grow verify` checks it against small/
        out / "grown",
        p_grown,
        {"family": "decoder", "config": config_to_dict(big_cfg), "dataset": LM_DATASET,
         "data": data, "source": "../small", "growth": plan.report.to_dict(),
         "seed": cfg.seed},
    )  # fmt: skip
    summary = {
        "method": cfg.method,
        "task": "stdlib bytes (vocab 256)",
        "corpus_fingerprint": corpus.fingerprint,
        "small_config": config_to_dict(small_cfg),
        "grown_config": config_to_dict(big_cfg),
        "scratch_config": config_to_dict(rival_cfg),
        "growth": plan.report.to_dict(),
        **comparison,
        "max_rel_logit_error": logit_err,
        "params_small": n_params(p_small),
        "params_grown": n_params(p_grown),
        "seconds": time.time() - t0,
        "demo_config": asdict(cfg),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_curves(
        out / "loss_curves.png", small_hist, grown_hist, scratch_hist,
        ylabel="held-out cross-entropy (nats/byte)", title="decoder on stdlib bytes",
    )  # fmt: skip
    return summary


if __name__ == "__main__":  # python -m growth.apps.demo.lm [--quick] [OUT]
    import sys

    args = [a for a in sys.argv[1:] if a != "--quick"]
    s = run_lm_demo(args[0] if args else "runs/lm_demo", quick="--quick" in sys.argv)
    keys = ("small_test_loss", "grown_test_loss_step0", "zero_shot_gap", "max_rel_logit_error",
            "steps_to_target_grown", "steps_to_target_scratch", "speedup", "seconds")  # fmt: skip
    print("\n".join(f"{k:<28} {s[k]}" for k in keys))
