"""End-to-end checks of the `grow` commands (train, grow, verify, demo) and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from growth.apps.cli import main
from growth.apps.commands import grow_checkpoint, verify_checkpoint
from growth.errors import GrowthError
from growth.formats.checkpoint import load_checkpoint, save_checkpoint
from growth.methods import DEFAULT_METHOD
from growth.spec import parse_targets


def _verify_cli(path, capsys) -> tuple[int, dict, str]:
    """``grow verify PATH``: its exit code, the result it prints (``verify_checkpoint``'s) and
    its last line."""
    capsys.readouterr()  # what earlier commands printed
    code = main(["verify", str(path)])
    out = capsys.readouterr().out
    return code, json.JSONDecoder().raw_decode(out)[0], out.strip().splitlines()[-1]


def test_train_grow_verify_roundtrip(small_ckpt, tmp_path, capsys):
    assert (
        main(
            [
                "grow",
                str(small_ckpt),
                "--width",
                "d=x2,h=24",
                "--depth",
                "blocks=3",
                "--out",
                str(tmp_path / "big"),
            ]
        )
        == 0
    )
    params, meta = load_checkpoint(tmp_path / "big")
    assert meta["config"]["width"] == 16 and meta["config"]["hidden"] == 24
    assert meta["config"]["depth"] == 3 and params["w1"].shape == (3, 16, 24)
    code, res, _ = _verify_cli(tmp_path / "big", capsys)
    assert code == 0
    assert res["bound"]["kind"] == "rounding" and res["passed"] and res["verdict"] == "pass"
    assert res["max_rel_logit_error"] <= res["bound"]["rel_error"] < 1e-4
    assert abs(res["zero_shot_gap"]) <= 1e-5 * max(1.0, res["source_test_loss"])
    assert meta["growth"]["function_check"] == "measured" and meta["growth"]["function_preserving"]


def test_non_multiple_width_is_exact_through_the_commands(small_ckpt, tmp_path):
    """d 8 -> 12 (not a multiple) pads the normalised space; the grown config's LayerNorm eps
    must follow (``resmlp.grown``), else the zero-shot check fails."""
    grow_checkpoint(small_ckpt, tmp_path / "pad", width="d=12", depth="", method="exact")
    _, meta = load_checkpoint(tmp_path / "pad")
    assert meta["config"]["eps"] == pytest.approx(1e-5 * 8 / 12)
    res = verify_checkpoint(tmp_path / "pad")
    assert res["bound"]["kind"] == "rounding" and res["passed"], res
    assert res["max_rel_logit_error"] < 1e-5


def _tampered(src, out, edit):
    params, meta = load_checkpoint(src)
    edit(params)
    save_checkpoint(out, params, meta)
    return out


def test_verify_sampling_bound_passes_a_draw_and_fails_entrywise_resampling(small_ckpt, tmp_path,
                                                                           capsys):  # fmt: skip
    """iid growth of the block hidden space (no norm on it): judged against fresh draws; the
    same checkpoint with the grown block kernels resampled entrywise (the RC structure
    destroyed) is outside the law-of-large-numbers bound."""
    grow_checkpoint(small_ckpt, tmp_path / "iid", width="h=x2", depth="", method="iid", seed=3)
    res = verify_checkpoint(tmp_path / "iid")
    assert res["bound"]["kind"] == "sampling" and res["passed"], res["reason"]
    assert res["zero_shot_gap"] != 0.0 and len(res["bound"]["draw_errors"]) == 8

    def resample(p):
        rng = np.random.default_rng(0)
        for k in ("w1", "w2"):
            p[k] = rng.permutation(p[k].ravel()).reshape(p[k].shape) * 4

    code, bad, _ = _verify_cli(_tampered(tmp_path / "iid", tmp_path / "bad", resample), capsys)
    assert code == 1 and bad["passed"] is False and bad["verdict"] == "fail", bad["reason"]


def test_verify_method_without_guarantee_fails(small_ckpt, tmp_path, capsys):
    """An approximate depth rule promises nothing: verify says so and exits 1, never None."""
    grow_checkpoint(small_ckpt, tmp_path / "st", width="x2", depth="x2", method="stack")
    code, res, last = _verify_cli(tmp_path / "st", capsys)
    assert code == 1 and res["bound"]["kind"] == "none" and res["passed"] is False
    assert "approximate depth rule 'stack'" in res["reason"]
    assert last.startswith("fail: stack (none)")


@pytest.mark.parametrize("method", ["net2net-noise", "rc"])
def test_verify_noise_bound(small_ckpt, tmp_path, method):
    """Noise methods pass their sigma / h^2 bound; the same growth with 30x the noise fails."""
    grow_checkpoint(small_ckpt, tmp_path / "ok", width="x2", depth="", method=method)
    res = verify_checkpoint(tmp_path / "ok")
    assert res["bound"]["kind"] == "noise" and res["passed"], res["reason"]
    louder = "sigma=0.3" if method == "net2net-noise" else "bandwidth=1"
    grow_checkpoint(small_ckpt, tmp_path / "loud", width="x2", depth="",
                    method=f"{method}:{louder}")
    _, meta = load_checkpoint(tmp_path / "ok")
    params, _ = load_checkpoint(tmp_path / "loud")
    save_checkpoint(tmp_path / "claimed", params, meta)  # louder noise, the quiet one's claim
    assert verify_checkpoint(tmp_path / "claimed")["passed"] is False


def test_verify_fails_on_tampered_checkpoint(small_ckpt, tmp_path, capsys):
    grow_checkpoint(small_ckpt, tmp_path / "big", width="x2", depth="x2")
    params, meta = load_checkpoint(tmp_path / "big")
    params["head"]["bias"] = params["head"]["bias"] + 0.5 * np.arange(10, dtype=np.float32)
    save_checkpoint(tmp_path / "bad", params, meta)
    code, res, _ = _verify_cli(tmp_path / "bad", capsys)
    assert code == 1 and res["passed"] is False


def test_verify_exact_fails_on_readout_x1001_and_untied_maps(small_ckpt, tmp_path):
    """The rounding bound is tight enough to catch a readout scaled by 1.001, and copies whose
    fan-in and fan-out no longer use the same index map (the grown block units permuted on the
    incoming side only)."""
    grow_checkpoint(small_ckpt, tmp_path / "big", width="x2", depth="")
    assert verify_checkpoint(tmp_path / "big")["passed"]

    def readout(p):
        p["head"]["kernel"] = p["head"]["kernel"] * np.float32(1.001)

    def untie(p):
        perm = np.random.default_rng(0).permutation(p["w1"].shape[-1])
        p["w1"], p["b1"] = p["w1"][..., perm], p["b1"][..., perm]

    for name, edit in (("readout", readout), ("untied", untie)):
        res = verify_checkpoint(_tampered(tmp_path / "big", tmp_path / name, edit))
        assert res["passed"] is False and res["max_rel_logit_error"] > res["bound"]["rel_error"]


@pytest.mark.parametrize(
    "width, message",
    [
        ("x0", "positive"),
        ("q=3", "unknown space"),
        ("d=-4", "positive integer"),
        ("banana", "expected"),
        ("d=0", "positive integer"),
    ],
)
def test_bad_width_targets(small_ckpt, tmp_path, capsys, width, message):
    assert main(["grow", str(small_ckpt), "--width", width, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    assert list(tmp_path.iterdir()) == []


def test_bad_checkpoints(small_ckpt, tmp_path, capsys):
    assert main(["grow", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "meta.json").write_text("{not json")
    assert main(["grow", str(tmp_path / "corrupt"), "--out", str(tmp_path / "o")]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_nan_weights_rejected_without_output(small_ckpt, tmp_path):
    params, meta = load_checkpoint(small_ckpt)
    params["w2"] = params["w2"].copy()
    params["w2"][1, 2, 3] = np.nan
    save_checkpoint(tmp_path / "nan", params, meta)
    with pytest.raises(GrowthError, match="'w2' contains NaN"):
        grow_checkpoint(tmp_path / "nan", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_existing_output_is_not_overwritten(small_ckpt, tmp_path):
    grow_checkpoint(small_ckpt, tmp_path / "big", width="x2", depth="")
    with pytest.raises(GrowthError, match="exists"):
        grow_checkpoint(small_ckpt, tmp_path / "big", width="x2", depth="")


def test_parse_targets():
    sizes = {"d": 8, "h": 16}
    assert parse_targets("x4", sizes, "width") == {"d": 32, "h": 64}
    assert parse_targets("2x", sizes, "width") == {"d": 16, "h": 32}
    assert parse_targets("d=12,h=x1.5", sizes, "width") == {"d": 12, "h": 24}
    assert parse_targets("", sizes, "width") == {}
    assert parse_targets("5", {"blocks": 2}, "depth") == {"blocks": 5}
    with pytest.raises(GrowthError, match="unknown space 'z'"):
        parse_targets("z=3", sizes, "width")


def test_module_entry_point_help():
    out = subprocess.run(
        [sys.executable, "-m", "growth", "--help"], capture_output=True, text=True, check=True
    )
    assert "demo" in out.stdout and "verify" in out.stdout


def test_demo_quick_end_to_end(tmp_path, monkeypatch):
    """`grow demo --quick` through the CLI, on a shorter budget (the demo's measured numbers
    are benchmarks, experiments/demo_ablation.py)."""
    from growth.apps.demo.mlp import DemoConfig

    short = DemoConfig(small_steps=300, steps=300, eval_every=50)
    monkeypatch.setattr(DemoConfig, "quick", staticmethod(lambda **kw: replace(short, **kw)))
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "method",
        "small_test_loss",
        "grown_test_loss_step0",
        "zero_shot_gap",
        "steps_to_target_grown",
        "steps_to_target_scratch",
        "speedup",
    ):
        assert key in summary
    assert summary["method"] == DEFAULT_METHOD
    sweep = summary["lr_sweep"]  # both arms tuned on the same sweep; the best is the minimum
    for arm in ("grown", "scratch"):
        losses = sweep[arm]["final_test_loss"]
        assert set(losses) == {str(lr) for lr in summary["demo_config"]["lr_sweep"]}
        assert losses[str(sweep[arm]["lr"])] == min(losses.values())
    assert summary["target_test_loss"] == min(sweep["scratch"]["final_test_loss"].values())
    # budget speed-up: the budget found reaches the target at its best LR; a probed smaller
    # budget does not (or the budget is the grid's first)
    target, steps = summary["target_test_loss"], summary["demo_config"]["steps"]
    probes = {int(k): min(v["final_test_loss"].values())
              for k, v in summary["budget_probes"].items()}  # fmt: skip
    if (b := summary["budget_steps"]) is not None:
        assert summary["budget_speedup"] == pytest.approx(steps / b)
        assert (probes[b] if b < steps else summary["final_test_loss_grown"]) <= target
        assert all(loss > target for k, loss in probes.items() if k < b)
    else:
        assert summary["final_test_loss_grown"] > target
    assert abs(summary["zero_shot_gap"]) <= 1e-5 * max(1.0, summary["small_test_loss"])
    assert summary["growth"]["sizes_after"] == {"d": 64, "h": 128, "blocks": 4}
    assert (out / "loss_curves.png").stat().st_size > 1000
    _, meta = load_checkpoint(out / "grown")
    assert meta["growth"]["function_preserving"] is True
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def _help(*argv: str) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main([*argv, "--help"])
    return buf.getvalue()


def test_help_lists_every_choice_with_an_example():
    from growth.depth import DEPTH_RULES
    from growth.methods import METHODS, RECIPE_INFO

    top, grow = _help(), _help("grow")
    for text in (top, grow):
        for name in METHODS:
            assert f"  {name} " in text, name
            assert RECIPE_INFO[name]["guarantee"] in text, name
        assert "example" in text
    for rule in DEPTH_RULES:
        assert f"  {rule} " in grow
    assert "resmlp" in grow and f"(default: {DEFAULT_METHOD};" in grow
    for cmd in ("train", "grow", "verify", "demo", "analyze", "track"):
        text = _help(cmd)
        assert "example" in text and "(default:" in text, cmd
        assert text.split("\n\n")[1].strip(), f"{cmd}: no description"
    assert "mnist1d" in _help("train") and "lm " in _help("demo")
