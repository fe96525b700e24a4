"""The ``grow`` command line. Every command is a thin wrapper over a Python function
(``growth.apps.commands``, ``growth.apps.demo``, ``growth.apps.analyze``, ``growth.apps.track``,
``growth.formats.hf``); errors from bad input print one clear line (exit 2). Each command's help
lists its choices (methods with their guarantees, depth rules, families, datasets), defaults and
an example."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence

from growth.errors import GrowthError
from growth.methods import DEFAULT_EXTERNAL_METHOD, DEFAULT_METHOD

METHOD_HELP = "a recipe (see the list below), optionally with field overrides: 'exact:sigma=4'"


def _seed(text: str) -> int:
    """argparse type of ``--seed``: an integer in ``0..2**32 - 1``."""
    from growth.engine import check_seed

    try:
        return check_seed(int(text))
    except GrowthError as e:  # (a ValueError too)
        raise argparse.ArgumentTypeError(str(e)) from None
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: expected an integer") from None


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _nbytes(text: str) -> int:
    """argparse type of ``--max-bytes``: ``1000000``, ``512M``, ``20G`` (binary units)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in _UNITS else ""
    try:
        value = float(t[: len(t) - len(unit)]) * _UNITS[unit]
    except ValueError:
        value = -1.0
    if not 0 < value < 2**63:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: expected e.g. 800M or 20G")
    return int(value)


class _Help(argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option that has one; descriptions and epilogs keep their line
    breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if not (default is None or default is False or default == argparse.SUPPRESS):
            text += " (default: %(default)r)" if action.default == "" else " (default: %(default)s)"
        return text


def _methods_text() -> str:
    from growth.methods import METHODS, RECIPE_INFO

    lines = [
        "methods (--method NAME[:field=value...]); guarantees bound e = max|f' - f| / max|f|",
        "(D: weight matrices, u: unit roundoff of the weights; 'grow verify' checks them):",
    ]
    w = max(map(len, METHODS)) + 1
    for name in METHODS:
        info = RECIPE_INFO[name]
        lines.append(f"  {name:<{w}}{info['summary']}")
        lines.append(f"  {'':<{w}}  guarantee: {info['guarantee']}")
    return "\n".join(lines)


def _depth_text() -> str:
    from growth.depth import DEPTH_RULE_SUMMARY

    lines = ["depth rules (a method's depth field, e.g. 'exact:depth=duplicate'):"]
    lines += [f"  {k:<14}{v}" for k, v in DEPTH_RULE_SUMMARY.items()]
    return "\n".join(lines)


def _families_text() -> str:
    return textwrap.dedent("""\
        model families:
          mlp           plain ReLU MLP (spaces h1, h2, ...)
          resmlp        pre-LN residual MLP (spaces d: stream, h: block hidden; depth: blocks)
          decoder       GPT-style decoder (LayerNorm/RMSNorm, MHA/GQA, rotary, SwiGLU, tied)
          HF (--from-hf) BERT, GPT-2, Llama, Mistral, Qwen2 safetensors directories
                        (single file or sharded; decoders stream one tensor at a time)""")


def _datasets_text() -> str:
    from growth.tasks.data import DATASETS
    from growth.tasks.lm_data import LM_DATASET

    names = ", ".join(sorted(DATASETS))
    return (
        f"datasets (generated offline, no download): {names}; the LM corpus {LM_DATASET!r} "
        "(bytes of the Python standard library)"
    )


def _cmd_train(a: argparse.Namespace) -> int:
    from growth.apps.commands import train_model
    from growth.models.mlp import MLPConfig
    from growth.models.resmlp import ResMLPConfig
    from growth.tasks.data import load_dataset
    from growth.tasks.train import TrainConfig

    data = load_dataset(a.dataset)
    hidden = a.hidden or 2 * a.width
    if a.base_width is not None and a.base_width < 1:
        raise GrowthError(f"--base-width {a.base_width}: must be a positive integer")
    b = (a.base_width or a.width) / a.width  # base widths relative to the model's
    if a.model == "mlp":
        mults = (1.0 / (b * a.width),) * a.depth if a.param == "mf" else None
        cfg = MLPConfig(
            data.input_dim, (a.width,) * a.depth, data.num_classes, param=a.param, mults=mults
        )
        base = {f"h{l + 1}": b * a.width for l in range(a.depth)}
    else:
        mults = (1.0 / (b * a.width), 1.0 / (b * hidden)) if a.param == "mf" else None
        cfg = ResMLPConfig(
            data.input_dim, a.width, hidden, a.depth, data.num_classes, param=a.param,
            mults=mults,
        )  # fmt: skip
        base = {"d": b * a.width, "h": b * hidden}
    tc = TrainConfig(
        steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed, eval_every=a.eval_every
    )
    path, hist = train_model(
        a.out, a.model, cfg, tc, dataset=a.dataset, base_sizes=base, overwrite=a.overwrite,
        checkpoint_every=a.checkpoint_every or None, resume=a.resume,
    )  # fmt: skip
    print(f"saved {path}: test loss {hist.test_loss[-1]:.4f}, acc {hist.test_acc[-1]:.3f}")
    return 0


def _cmd_grow(a: argparse.Namespace) -> int:
    method = a.method or (DEFAULT_EXTERNAL_METHOD if a.from_hf or a.to_hf else DEFAULT_METHOD)
    kw = {"width": a.width, "depth": a.depth, "method": method, "seed": a.seed,
          "overwrite": a.overwrite, "max_bytes": a.max_bytes}  # fmt: skip
    if a.from_hf or a.to_hf:
        if not (a.from_hf and a.to_hf) or a.checkpoint:
            raise GrowthError("--from-hf DIR and --to-hf OUT go together, without a checkpoint")
        from growth.formats.hf import grow_hf

        if a.depth_slices:
            kw["depth"] = None
        kw["depth_slices"] = a.depth_slices
        if a.shard_size is not None:
            kw["shard_size"] = a.shard_size
        report, path = grow_hf(a.from_hf, a.to_hf, **kw), a.to_hf
    elif a.depth_slices or a.shard_size is not None:
        raise GrowthError("--depth-slices and --shard-size apply to --from-hf checkpoints")
    elif not a.checkpoint or not a.out:
        raise GrowthError("grow grow needs CHECKPOINT and --out (or --from-hf DIR --to-hf OUT)")
    else:
        from growth.apps.commands import grow_checkpoint

        path, report = grow_checkpoint(a.checkpoint, a.out, **kw)
    print(report)
    print(f"saved {path}")
    return 0


def _cmd_verify(a: argparse.Namespace) -> int:
    from growth.apps.commands import verify_checkpoint

    res = verify_checkpoint(a.checkpoint, a.source, draws=a.draws)
    print(json.dumps(res, indent=2))
    print(f"{res['verdict']}: {res['method']} ({res['bound']['kind']}): {res['reason']}")
    return 0 if res["passed"] else 1


def _cmd_demo(a: argparse.Namespace) -> int:
    from growth.apps.demo import format_summary, run_task_demo

    summary = run_task_demo(
        a.task, a.out, quick=a.quick, progress=not a.no_progress, method=a.method, seed=a.seed
    )
    print(format_summary(summary))
    print(f"wrote {summary['out']}/summary.json, loss_curves.png, grown/")
    return 0


def _cmd_analyze(a: argparse.Namespace) -> int:
    from growth.apps.analyze import analyze

    report, text = analyze(a.checkpoint, a.out, draws=a.draws, seed=a.seed)
    print(text)
    return report.get("exit_code", 0)


def _cmd_track(a: argparse.Namespace) -> int:
    from growth.apps.track import format_track, track_checkpoint
    from growth.formats.outdir import check_file_out, write_json_output

    if a.json:
        check_file_out(a.json, kind="track")  # refuse a file this tool did not write, up front
    kw = {} if a.lr is None else {"lr": a.lr}
    res = track_checkpoint(
        a.checkpoint, steps=a.steps, optimizer=a.optimizer, width=a.width, method=a.method,
        eps=a.eps, **kw,
    )  # fmt: skip
    print(format_track(res))
    if a.json:
        write_json_output(a.json, res, kind="track")
    return 0 if res["passed"] else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="grow",
        formatter_class=_Help,
        description="mfgrow: mean-field zero-shot weight transfer. Train a small model, grow it "
        "wider and deeper (function kept or sampled from its fitted RC measure), verify and "
        "analyse the result.",
        epilog="\n\n".join([
            _methods_text(),
            "examples:\n  grow demo --quick\n"
            "  grow train --model resmlp --width 16 --depth 2 --steps 2000 --out runs/small\n"
            "  grow grow runs/small --width x4 --depth x2 --out runs/big\n"
            "  grow verify runs/big\n"
            "run 'grow COMMAND --help' for each command's options.",
        ]),
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, epilog: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=summary, description=summary + ".", epilog=epilog, formatter_class=_Help
        )

    t = command(
        "train", "train a model on an embedded dataset and save a checkpoint",
        _families_text() + "\n\n" + _datasets_text() + "\n\nThe training state is saved "
        "every --checkpoint-every steps and on Ctrl-C (exit 130);\n'--resume' continues "
        "from it.\n\nexamples:\n"
        "  grow train --model resmlp --width 16 --depth 2 --steps 2000 --out runs/small\n"
        "  grow train --model mlp --width 64 --param mf --lr 0.03 --out runs/mf64\n"
        "  grow train --model resmlp --width 16 --depth 2 --steps 2000 --out runs/small "
        "--resume",
    )  # fmt: skip
    t.add_argument("--model", choices=["mlp", "resmlp"], default="resmlp", help="model family")
    t.add_argument("--width", type=int, default=16, help="hidden width (resmlp: stream width)")
    t.add_argument("--hidden", type=int, default=None, help="resmlp block hidden (2 x width)")
    t.add_argument("--depth", type=int, default=2, help="hidden layers (mlp) or blocks (resmlp)")
    t.add_argument(
        "--param", choices=["sp", "mup", "mf"], default="sp",
        help="parametrization: sp (one Adam LR), mup (muP-Adam LRs and readout init relative "
        "to --base-width), mf (mean field: 1/n multipliers, N(0,1) types, width-free Adam LR)",
    )  # fmt: skip
    t.add_argument(
        "--base-width", type=int, default=None,
        help="base width of mup/mf (default: --width; resmlp hidden scales with it)",
    )  # fmt: skip
    t.add_argument("--steps", type=int, default=2000, help="optimizer steps")
    t.add_argument("--batch-size", type=int, default=128, help="examples per step")
    t.add_argument("--lr", type=float, default=3e-3, help="peak Adam learning rate")
    t.add_argument("--eval-every", type=int, default=100, help="steps between test evaluations")
    t.add_argument("--dataset", default="mnist1d", help="an embedded dataset (listed below)")
    t.add_argument("--seed", type=_seed, default=0, help="seed of the init and the data order")
    t.add_argument("--out", required=True, help="checkpoint directory to write")
    t.add_argument("--overwrite", action="store_true",
                   help="replace an existing checkpoint that this tool wrote")  # fmt: skip
    t.add_argument("--checkpoint-every", type=int, default=500,
                   help="steps between saves of the training state (OUT.training/); 0: none")
    t.add_argument("--resume", action="store_true",
                   help="continue the interrupted run saved in OUT.training/ (same options); "
                   "the result is bit-identical to an uninterrupted run")  # fmt: skip
    t.set_defaults(func=_cmd_train)

    g = command(
        "grow", "grow a checkpoint wider and deeper; writes the grown checkpoint and its report",
        _methods_text() + "\n\n" + _depth_text() + "\n\n" + _families_text() + "\n\n"
        "targets: --width 'x4' grows every width space 4x; 'd=64,h=x2' sets sizes per space;\n"
        "--depth 'x2' doubles every depth stack, 'blocks=6' sets it; '' leaves it alone.\n\n"
        "examples:\n"
        "  grow grow runs/small --width x4 --depth x2 --out runs/big\n"
        "  grow grow runs/small --width d=64,h=x2 --depth '' --method exact:sigma=4 --out runs/b\n"
        "  grow grow --from-hf MINILM_DIR --to-hf runs/minilm2x --width x2 --depth ''\n"
        "  grow grow --from-hf LLAMA --to-hf runs/dus --width '' --depth-slices 0:24,8:32\n"
        "  grow grow --from-hf LLAMA --to-hf runs/pro --width '' --depth layers=40 "
        "--method copy:depth=llama-pro",
    )  # fmt: skip
    g.add_argument("checkpoint", nargs="?", help="an mfgrow checkpoint (or use --from-hf)")
    g.add_argument("--from-hf", default=None, help="HF BERT/GPT-2/Llama directory to grow")
    g.add_argument("--to-hf", default=None, help="write the grown HF checkpoint here")
    g.add_argument("--width", default="x4", help="'x4', or 'd=64,h=x2' per space")
    g.add_argument("--depth", default="x2", help="'x2', or 'blocks=6'; '' for no depth growth")
    g.add_argument(
        "--method", default=None,
        help=METHOD_HELP + f" (default: {DEFAULT_METHOD}; with --from-hf: "
        f"{DEFAULT_EXTERNAL_METHOD}, as stream scaling needs our configs and pre-norm streams)",
    )  # fmt: skip
    g.add_argument("--seed", type=_seed, default=0, help="seed of the method's random draws")
    g.add_argument(
        "--depth-slices", default=None,
        help="HF decoders: stack these half-open source layer ranges, e.g. '0:24,8:32' "
        "(SOLAR depth up-scaling, mergekit passthrough); replaces --depth",
    )  # fmt: skip
    g.add_argument("--shard-size", default=None,
                   help="HF output: largest safetensors shard ('5GB', '500MB', bytes; default: "
                   "growth.formats.hf.io.DEFAULT_SHARD_SIZE, Hugging Face's)")  # fmt: skip
    g.add_argument("--out", default=None, help="grown checkpoint directory")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing output that this tool wrote")  # fmt: skip
    g.add_argument("--max-bytes", type=_nbytes, default=None,
                   help="largest grown model to build, e.g. 20G (default: what fits in the "
                   "available memory and the free disk)")  # fmt: skip
    g.set_defaults(func=_cmd_grow)

    v = command(
        "verify", "check a grown checkpoint against its source and its method's declared bound",
        "measures the loss gap and the relative logit error on the held-out set and judges them\n"
        "against the growth's bound (rounding, noise, sampling; a method with no guarantee\n"
        "fails).\n\nexit status: 0 passed, 1 failed, 2 bad input.\n\nexample:\n"
        "  grow verify runs/big",
    )  # fmt: skip
    v.add_argument("checkpoint", help="a checkpoint written by 'grow grow'")
    v.add_argument("--source", default=None, help="default: the source recorded at growth")
    v.add_argument("--draws", type=int, default=8,
                   help="fresh draws that set a sampling method's bound")  # fmt: skip
    v.set_defaults(func=_cmd_verify)

    d = command(
        "demo", "train small -> grow -> check the zero-shot loss -> grown vs scratch",
        _demo_text() + "\n\n" + _methods_text() + "\n\nexamples:\n  grow demo --quick\n"
        "  grow demo --task lm --quick --method msg",
    )  # fmt: skip
    d.add_argument("--task", choices=["mnist1d", "lm"], default="mnist1d", help="the demo task")
    d.add_argument("--out", default=None, help="default runs/demo (runs/lm_demo for --task lm)")
    d.add_argument("--quick", action="store_true", help="small budget (~2 min on 2 cores)")
    d.add_argument("--method", default=DEFAULT_METHOD, help=METHOD_HELP)
    d.add_argument("--seed", type=_seed, default=0, help="seed of data order, inits and growth")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_demo)

    an = command(
        "analyze", "RC-ansatz diagnostics of a trained network (RC tie, controls, LLN fits)",
        "reads an mfgrow MLP/resmlp checkpoint (on its dataset's test split), a HF BERT\n"
        "directory (on its sentence embeddings) or a HF GPT-2/Llama/Mistral/Qwen2 directory\n"
        "(relative logit error on fixed probe tokens; per-layer and per-head RC tie plot).\n"
        "Each diagnostic states its null hypothesis, a calibrated threshold (permutation /\n"
        "bootstrap) and a verdict; identities are labelled as such (docs/verdicts.md).\n\n"
        "exit status: 0 the positive control passes on the network and fails on its destroyed\n"
        "copy and the identities hold, 1 otherwise, 2 bad input.\n\n"
        "examples:\n  grow analyze runs/small\n"
        "  grow analyze MINILM_DIR --out runs/minilm_analysis\n"
        "  grow analyze GPT2_DIR --out runs/gpt2_analysis",
    )  # fmt: skip
    an.add_argument("checkpoint", help="an mfgrow MLP/resmlp checkpoint or a HF BERT / "
                    "GPT-2 / Llama / Mistral / Qwen2 directory")
    an.add_argument("--out", default=None, help="write analysis.json + analysis.png here")
    an.add_argument("--draws", type=int, default=8, help="iid growth draws per width")
    an.add_argument("--seed", type=_seed, default=0, help="seed of the random controls and draws")
    an.set_defaults(func=_cmd_analyze)

    tr = command(
        "track", "train a grown copy beside its source: trajectories must match; controls must not",
        "a grown checkpoint (from 'grow grow') is tracked as grown, against its recorded\n"
        "source: a growth that does not keep the function, or breaks the copies' symmetry,\n"
        "fails. Any other checkpoint is grown by --method to --width first.\n\n"
        "exit status: 0 passed, 1 failed, 2 bad input.\n\nexamples:\n"
        "  grow track runs/big --optimizer adam --steps 100\n"
        "  grow track runs/small --width x2 --method copy",
    )  # fmt: skip
    tr.add_argument("checkpoint", help="a grown checkpoint, or a source to grow")
    tr.add_argument("--steps", type=int, default=100, help="training steps of both runs")
    tr.add_argument("--optimizer", choices=["sgd", "adam"], default="adam", help="optimizer")
    tr.add_argument("--width", default="x2", help="'x2', or 'h1=x2,h2=48' (source only)")
    tr.add_argument("--method", default="copy", help="growth of a source checkpoint")
    tr.add_argument("--lr", type=float, default=None, help="default: 0.05 (sgd), 1e-3 (adam)")
    tr.add_argument("--eps", type=float, default=1e-5, help="Adam epsilon")
    tr.add_argument("--json", default=None,
                    help="write the full result here (replaces only this command's own result)")
    tr.set_defaults(func=_cmd_track)
    return p


def _demo_text() -> str:
    from growth.apps.demo import TASKS

    return "tasks:\n" + "\n".join(f"  {k:<14}{v}" for k, v in TASKS.items())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GrowthError as e:
        print(f"grow {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"grow {args.command}: interrupted{f': {e}' if str(e) else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
