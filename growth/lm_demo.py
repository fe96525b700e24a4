"""LM growth demo: train a small decoder on the stdlib byte corpus, grow it, check the zero-shot
loss, then train the grown model and a same-size model from scratch on the same budget.

Mirrors ``growth.demo`` (same summary keys): both large models get the same config (the grown
config, so eps, logit scale and readout multiplier match), batches, schedule and muP-Adam
learning-rate multipliers (base widths = the small model's); only the initialisation differs.
Target = the scratch model's final held-out loss; speed-up = ``steps_to_target_scratch /
steps_to_target_grown``. Writes ``summary.json``, ``loss_curves.png`` and the grown checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from growth.checkpoint import save_checkpoint  # noqa: E402
from growth.engine import apply_plan, plan_growth  # noqa: E402
from growth.lm_data import eval_windows, lm_batches, load_corpus  # noqa: E402
from growth.models import (  # noqa: E402
    config_to_dict,
    get_family,
    grown_config,
    model_from_params,
    params_of,
)
from growth.models.decoder import Decoder, DecoderConfig  # noqa: E402
from growth.train import History, TrainConfig, make_optimizer, steps_to_target  # noqa: E402
from theory.parametrization import adam_lr_multipliers  # noqa: E402


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
    method: str = "exact"
    small_steps: int = 2000
    steps: int = 2000
    lr: float = 3e-3
    warmup: int = 50
    eval_every: int = 100
    eval_windows: int = 128
    corpus_bytes: int = 4_000_000
    seed: int = 0

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


def _loss_fn(graphdef: Any, rest: Any):
    def loss(params: Any, w: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = nnx.merge(graphdef, params, rest)(w[:, :-1])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, w[:, 1:])
        return ce.mean(), (logits.argmax(-1) == w[:, 1:]).mean()

    return loss


def train_lm(
    model: Decoder,
    cfg: LMDemoConfig,
    steps: int,
    test: np.ndarray,
    *,
    seed: int,
    lr_multipliers: tuple[float, ...] | None = None,
) -> History:
    """Train ``model`` in place with the project's AdamW (warm-up + cosine) on stdlib bytes;
    evaluate the held-out windows ``test`` every ``eval_every`` steps (step 0 included)."""
    corpus = load_corpus(cfg.corpus_bytes)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tc = TrainConfig(
        steps=steps, batch_size=cfg.batch, lr=cfg.lr, warmup=cfg.warmup,
        eval_every=cfg.eval_every, seed=seed,
    )  # fmt: skip
    opt = make_optimizer(tc, lr_multipliers)
    opt_state = opt.init(params)
    loss = _loss_fn(graphdef, rest)

    @jax.jit
    def step(params, opt_state, w):
        (value, _), grads = jax.value_and_grad(loss, has_aux=True)(params, w)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    evaluate = jax.jit(loss)
    test = jnp.asarray(test)
    hist = History()

    def record(k: int) -> None:
        value, acc = evaluate(params, test)
        hist.steps.append(k)
        hist.test_loss.append(float(value))
        hist.test_acc.append(float(acc))

    record(0)
    batches = lm_batches(corpus.train, cfg.batch, cfg.seq_len, seed)
    running = []
    for k in range(1, steps + 1):
        params, opt_state, value = step(params, opt_state, jnp.asarray(next(batches)))
        running.append(value)
        if k % cfg.eval_every == 0 or k == steps:
            hist.train_loss.append(float(jnp.mean(jnp.stack(running))))
            running = []
            record(k)
    nnx.update(model, params)
    return hist


def _plot(path: Path, small: History, grown: History, scratch: History, target: float) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    off = small.steps[-1]
    ax.plot(small.steps, small.test_loss, color="0.5", label="small (source)")
    ax.plot([off + s for s in grown.steps], grown.test_loss, label="grown")
    ax.plot([off + s for s in scratch.steps], scratch.test_loss, label="scratch (same size)")
    ax.axhline(target, color="k", ls=":", lw=1, label="target = scratch final")
    ax.axvline(off, color="0.7", lw=0.8)
    ax.set_xlabel("optimizer step (large models start where the small one stops)")
    ax.set_ylabel("held-out cross-entropy (nats/byte)")
    ax.set_title("decoder on stdlib bytes")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _n_params(tree: Any) -> int:
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree)))


def run_lm_demo(
    out_dir: str | os.PathLike = "runs/lm_demo",
    quick: bool = False,
    cfg: LMDemoConfig | None = None,
    **overrides: Any,
) -> dict:
    """Run the LM demo; write ``summary.json``, ``loss_curves.png`` and ``grown/`` (checkpoint)
    under ``out_dir``; return the summary (keys as in ``growth.demo``)."""
    cfg = cfg or (LMDemoConfig.quick() if quick else LMDemoConfig())
    cfg = replace(cfg, **overrides) if overrides else cfg
    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
    p_grown = apply_plan(plan, p_small)
    grown = model_from_params("decoder", big_cfg, p_grown)
    scratch = Decoder(big_cfg, rngs=nnx.Rngs(cfg.seed + 1))

    w = jnp.asarray(test)
    ref = np.asarray(small(w[:8, :-1]))
    logit_err = float(np.abs(np.asarray(grown(w[:8, :-1])) - ref).max() / np.abs(ref).max())
    base = fam.sizes(small_cfg)
    mults = adam_lr_multipliers(fam.spec(big_cfg).resolve(p_grown), base)
    seed_big = cfg.seed + 7
    grown_hist = train_lm(grown, cfg, cfg.steps, test, seed=seed_big, lr_multipliers=mults)
    scratch_hist = train_lm(scratch, cfg, cfg.steps, test, seed=seed_big, lr_multipliers=mults)

    target = scratch_hist.test_loss[-1]
    s_grown = steps_to_target(grown_hist, target)
    s_scratch = steps_to_target(scratch_hist, target)
    ratio = _n_params(p_small) / _n_params(p_grown)
    charged = None if s_grown is None else s_grown + cfg.small_steps * ratio
    small_loss, grown0 = small_hist.test_loss[-1], grown_hist.test_loss[0]
    save_checkpoint(
        out / "grown",
        params_of(grown),
        {"family": "decoder", "config": config_to_dict(big_cfg), "dataset": "stdlib-bytes",
         "growth": plan.report.to_dict(), "test_loss": grown_hist.test_loss[-1]},
        overwrite=True,
    )  # fmt: skip
    summary = {
        "method": cfg.method,
        "task": "stdlib bytes (vocab 256)",
        "corpus_fingerprint": corpus.fingerprint,
        "small_config": config_to_dict(small_cfg),
        "grown_config": config_to_dict(big_cfg),
        "growth": plan.report.to_dict(),
        "small_test_loss": small_loss,
        "grown_test_loss_step0": grown0,
        "zero_shot_gap": grown0 - small_loss,
        "max_rel_logit_error": logit_err,
        "target_test_loss": target,
        "steps_to_target_grown": s_grown,
        "steps_to_target_scratch": s_scratch,
        "speedup": (s_scratch / max(s_grown, 1)) if s_grown is not None else None,
        "speedup_charging_small_model": (s_scratch / charged) if charged else None,
        "final_test_loss_grown": grown_hist.test_loss[-1],
        "final_test_loss_scratch": target,
        "final_test_acc_grown": grown_hist.test_acc[-1],
        "final_test_acc_scratch": scratch_hist.test_acc[-1],
        "params_small": _n_params(p_small),
        "params_grown": _n_params(p_grown),
        "seconds": time.time() - t0,
        "demo_config": asdict(cfg),
        "curves": {
            "small": small_hist.to_dict(),
            "grown": grown_hist.to_dict(),
            "scratch": scratch_hist.to_dict(),
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _plot(out / "loss_curves.png", small_hist, grown_hist, scratch_hist, target)
    summary["out"] = str(out)
    return summary


if __name__ == "__main__":  # python -m growth.lm_demo [--quick] [OUT]
    import sys

    args = [a for a in sys.argv[1:] if a != "--quick"]
    s = run_lm_demo(args[0] if args else "runs/lm_demo", quick="--quick" in sys.argv)
    keys = ("small_test_loss", "grown_test_loss_step0", "zero_shot_gap", "max_rel_logit_error",
            "steps_to_target_grown", "steps_to_target_scratch", "speedup", "seconds")  # fmt: skip
    print("\n".join(f"{k:<28} {s[k]}" for k in keys))
