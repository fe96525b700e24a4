"""The ``grow`` command line. Every command is a thin wrapper over a Python function in
``growth.commands`` / ``growth.demo``; errors from bad input print one clear line (exit 2)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from growth.errors import GrowthError

METHOD_HELP = "a recipe (growth.METHODS), optionally with field overrides: 'exact:sigma=4'"


def _cmd_train(a: argparse.Namespace) -> int:
    from growth.commands import train_model
    from growth.data import load_dataset
    from growth.models.mlp import MLPConfig
    from growth.models.resmlp import ResMLPConfig
    from growth.train import TrainConfig

    data = load_dataset(a.dataset)
    if a.model == "mlp":
        cfg = MLPConfig(data.input_dim, tuple([a.width] * a.depth), data.num_classes)
    else:
        cfg = ResMLPConfig(
            data.input_dim, a.width, a.hidden or 2 * a.width, a.depth, data.num_classes
        )
    tc = TrainConfig(
        steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed, eval_every=a.eval_every
    )
    path, hist = train_model(a.out, a.model, cfg, tc, dataset=a.dataset, overwrite=a.overwrite)
    print(f"saved {path}: test loss {hist.test_loss[-1]:.4f}, acc {hist.test_acc[-1]:.3f}")
    return 0


def _cmd_grow(a: argparse.Namespace) -> int:
    kw = {"width": a.width, "depth": a.depth, "method": a.method, "seed": a.seed,
          "overwrite": a.overwrite}  # fmt: skip
    if a.from_hf or a.to_hf:
        if not (a.from_hf and a.to_hf) or a.checkpoint:
            raise GrowthError("--from-hf DIR and --to-hf OUT go together, without a checkpoint")
        from growth.hf import grow_hf

        report, path = grow_hf(a.from_hf, a.to_hf, **kw), a.to_hf
    elif not a.checkpoint or not a.out:
        raise GrowthError("grow grow needs CHECKPOINT and --out (or --from-hf DIR --to-hf OUT)")
    else:
        from growth.commands import grow_checkpoint

        path, report = grow_checkpoint(a.checkpoint, a.out, **kw)
    print(report)
    print(f"saved {path}")
    return 0


def _cmd_verify(a: argparse.Namespace) -> int:
    from growth.commands import verify_checkpoint

    res = verify_checkpoint(a.checkpoint, a.source, tol=a.tol)
    print(json.dumps(res, indent=2))
    return 1 if res["passed"] is False else 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from growth.demo import DemoConfig, format_summary, run_demo

    kw = {"method": a.method, "seed": a.seed}
    if a.task == "lm":
        from growth.lm_demo import LMDemoConfig, run_lm_demo

        cfg = LMDemoConfig.quick(**kw) if a.quick else LMDemoConfig(**kw)
        summary = run_lm_demo(a.out or "runs/lm_demo", cfg=cfg)
    else:
        cfg = DemoConfig.quick(**kw) if a.quick else DemoConfig(**kw)
        summary = run_demo(a.out or "runs/demo", cfg, progress=not a.no_progress)
    print(format_summary(summary))
    print(f"wrote {summary['out']}/summary.json, loss_curves.png, grown/")
    return 0


def _cmd_analyze(a: argparse.Namespace) -> int:
    from growth.hf_io import CONFIG

    if (Path(a.checkpoint) / CONFIG).is_file():  # a HF directory (config.json + safetensors)
        from growth.analyze_hf import analyze_hf, format_hf_report

        print(format_hf_report(analyze_hf(a.checkpoint, a.out, draws=a.draws, seed=a.seed)))
        return 0
    from growth.analyze import analyze_checkpoint, format_report

    res = analyze_checkpoint(a.checkpoint, a.out, draws=a.draws, seed=a.seed)
    print(format_report(res))
    return 0


def _cmd_track(a: argparse.Namespace) -> int:
    from growth.track import format_track, track_checkpoint

    kw = {} if a.lr is None else {"lr": a.lr}
    res = track_checkpoint(
        a.checkpoint, steps=a.steps, optimizer=a.optimizer, width=a.width, eps=a.eps, **kw
    )
    print(format_track(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if res["passed"] else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grow", description="Mean-field zero-shot model growth.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on an embedded dataset, save a checkpoint")
    t.add_argument("--model", choices=["mlp", "resmlp"], default="resmlp")
    t.add_argument("--width", type=int, default=16, help="hidden width (resmlp: stream width)")
    t.add_argument("--hidden", type=int, default=None, help="resmlp block hidden width")
    t.add_argument("--depth", type=int, default=2, help="hidden layers (mlp) or blocks (resmlp)")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--eval-every", type=int, default=100)
    t.add_argument("--dataset", default="mnist1d")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True)
    t.add_argument("--overwrite", action="store_true")
    t.set_defaults(func=_cmd_train)

    g = sub.add_parser("grow", help="grow a checkpoint; writes the grown checkpoint + report")
    g.add_argument("checkpoint", nargs="?")
    g.add_argument("--from-hf", default=None, help="HF BERT/GPT-2/Llama directory")
    g.add_argument("--to-hf", default=None, help="write the grown HF checkpoint here")
    g.add_argument("--width", default="x4", help="'x4', or 'd=64,h=x2' per space")
    g.add_argument("--depth", default="x2", help="'x2', or 'blocks=6'; '' for no depth growth")
    g.add_argument("--method", default="exact", help=METHOD_HELP)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default=None)
    g.add_argument("--overwrite", action="store_true")
    g.set_defaults(func=_cmd_grow)

    v = sub.add_parser("verify", help="zero-shot loss check of a grown checkpoint")
    v.add_argument("checkpoint")
    v.add_argument("--source", default=None, help="default: the source recorded at growth")
    v.add_argument("--tol", type=float, default=1e-5)
    v.set_defaults(func=_cmd_verify)

    d = sub.add_parser("demo", help="train small -> grow -> grown vs scratch")
    d.add_argument(
        "--task",
        choices=["mnist1d", "lm"],
        default="mnist1d",
        help="mnist1d: residual MLP classifier; lm: GPT-style decoder on stdlib bytes",
    )
    d.add_argument("--out", default=None, help="default runs/demo (runs/lm_demo for --task lm)")
    d.add_argument("--quick", action="store_true", help="small budget (~2 min on 2 cores)")
    d.add_argument("--method", default="exact", help=METHOD_HELP)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=_cmd_demo)

    an = sub.add_parser("analyze", help="RC tie, negative controls and LLN fits of a checkpoint")
    an.add_argument("checkpoint", help="an mfgrow MLP/resmlp checkpoint or a HF BERT directory")
    an.add_argument("--out", default=None, help="write analysis.json + analysis.png here")
    an.add_argument("--draws", type=int, default=8, help="iid growth draws per width")
    an.add_argument("--seed", type=int, default=0)
    an.set_defaults(func=_cmd_analyze)

    tr = sub.add_parser("track", help="grown (copy) vs source training trajectories + controls")
    tr.add_argument("checkpoint")
    tr.add_argument("--steps", type=int, default=100)
    tr.add_argument("--optimizer", choices=["sgd", "adam"], default="adam")
    tr.add_argument("--width", default="x2", help="'x2', or 'h1=x2,h2=48' per space")
    tr.add_argument("--lr", type=float, default=None, help="default: 0.05 (sgd), 1e-3 (adam)")
    tr.add_argument("--eps", type=float, default=1e-5, help="Adam epsilon")
    tr.add_argument("--json", default=None, help="write the full result here")
    tr.set_defaults(func=_cmd_track)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GrowthError as e:
        print(f"grow {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
