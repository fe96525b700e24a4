"""Training tracking (DESIGN 2.7, theory notes P3 / T8): a copy-grown MLP trained on the same
batches as its source follows it to float32 rounding under the right width rules; each wrong
rule (one global LR, unscaled Adam eps, coupled weight decay) visibly diverges."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from growth.apps import track as track_module
from growth.apps.cli import main
from growth.apps.track import CONTROLS, track, track_checkpoint
from growth.errors import GrowthError
from growth.formats import outdir
from growth.formats.checkpoint import save_checkpoint
from growth.models import config_to_dict, init_model, params_of
from growth.models.mlp import MLPConfig
from growth.models.resmlp import ResMLPConfig
from growth.tasks.data import load_dataset

STEPS = 60
TOL = 1e-6


@pytest.fixture(scope="module")
def results() -> dict:
    data = load_dataset("mnist1d")
    cfg = MLPConfig(data.input_dim, (16, 24), data.num_classes)
    params = params_of(init_model("mlp", cfg, 0))
    return {
        opt: track(params, "mlp", cfg, data, steps=STEPS, optimizer=opt, width="h1=x2,h2=x3")
        for opt in ("sgd", "adam")
    }


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_right_rules_track(results, optimizer) -> None:
    r = results[optimizer]
    assert r["sizes_after"] == {"h1": 32, "h2": 72}
    loss = r["source_loss"]
    assert loss[-1] < loss[0] - 0.1  # it learns: the tracking is not vacuous
    assert r["gaps"]["right"] <= TOL, r["gaps"]


@pytest.mark.parametrize("optimizer,rule", [(o, c) for o, cs in CONTROLS.items() for c in cs])
def test_wrong_rules_diverge(results, optimizer, rule) -> None:
    gaps = results[optimizer]["gaps"]
    assert gaps[rule] > 10 * max(gaps["right"], TOL), gaps


def test_mup_sgd_hidden_rule_needs_equal_growth(results) -> None:
    """muP's hidden SGD factor 1 is the MF factor r_out / r_in only when both sides grow alike:
    with h1 x2, h2 x3 the layer-2 kernel needs 3/2, and muP-SGD drifts."""
    data = load_dataset("mnist1d")
    cfg = MLPConfig(data.input_dim, (16, 24), data.num_classes)
    params = params_of(init_model("mlp", cfg, 0))
    kw = {"steps": STEPS, "optimizer": "sgd", "rules": ("right",)}
    uneven = track(params, "mlp", cfg, data, width="h1=x2,h2=x3", parametrization="mup", **kw)
    even = track(params, "mlp", cfg, data, width="x2", parametrization="mup", **kw)
    assert uneven["gaps"]["right"] > 100 * TOL > even["gaps"]["right"] * 2


def _save(path, family: str, cfg) -> str:
    params = params_of(init_model(family, cfg, 0))
    meta = {"family": family, "config": config_to_dict(cfg), "dataset": "mnist1d"}
    return save_checkpoint(path, params, meta)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("track") / "mlp", "mlp", MLPConfig(40, (8,), 10))


@pytest.mark.slow
def test_track_checkpoint_resmlp(tmp_path) -> None:
    """LayerNorm'd residual MLP (depth axis, norm gains): the same rules track exactly."""
    cfg = ResMLPConfig(input_dim=40, width=8, hidden=16, depth=2, num_classes=10)
    path = _save(tmp_path / "resmlp", "resmlp", cfg)
    res = track_checkpoint(path, steps=20, optimizer="adam", rules=("right",))
    assert res["passed"], res["gaps"]
    assert res["sizes_after"]["d"] == 16 and res["sizes_after"]["blocks"] == 2


@pytest.mark.parametrize("method, width, passes", [
    ("copy", "x2", True),  # copies stay copies: the source's trajectory, to rounding
    ("iid", "h=x2", False),  # sampled: the function moved (+0.24 in loss at scale), no tracking
    ("exact", "x2", False),  # zero-sum noise: function kept at t = 0, copies then separate
])  # fmt: skip
def test_track_grown_checkpoint_tracks_its_recorded_growth(small_ckpt, tmp_path, method, width,
                                                           passes) -> None:  # fmt: skip
    """``grow track GROWN`` trains the checkpoint as grown, not a fresh copy growth; its exit
    code and its --json result (``track_checkpoint``'s) say whether it tracked."""
    from growth.apps.commands import grow_checkpoint

    grow_checkpoint(small_ckpt, tmp_path / "g", width=width, depth="", method=method, seed=1)
    out = tmp_path / "track.json"
    argv = ["track", str(tmp_path / "g"), "--steps", "20", "--eps", "1e-4", "--json", str(out)]
    assert main(argv) == (0 if passes else 1)
    res = json.loads(out.read_text())
    assert res["growth"] == {"method": method, "recorded": True}
    assert res["optimizer"] == "adam" and res["steps"] == 20 and res["eps"] == 1e-4
    assert res["passed"] is passes, res["gaps"]


def test_cli(ckpt, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "track.json"
    argv = ["track", str(ckpt), "--steps", "10", "--optimizer", "sgd", "--json", str(out)]
    assert main(argv) == 0, capsys.readouterr().out
    assert "negative control" in capsys.readouterr().out
    first = json.loads(out.read_text())
    assert first["gaps"]["right"] <= TOL and first["written_by"] == "mfgrow"
    assert main([*argv, "--steps", "12"]) == 0  # its own result: replaced
    assert json.loads(out.read_text())["steps"] == 12
    before = out.read_bytes()
    monkeypatch.setattr(outdir, "write_file", _crash_half_written)
    assert main(argv) == 2  # a crash while writing: the old result is kept whole
    assert "writing" in capsys.readouterr().err
    assert out.read_bytes() == before and os.listdir(tmp_path) == ["track.json"]


def _crash_half_written(path, data):
    Path(path).write_text(data[: len(data) // 2])
    raise OSError(errno.EIO, "simulated crash")


def test_cli_json_refuses_a_file_it_did_not_write_before_training(ckpt, tmp_path, capsys,
                                                                  monkeypatch) -> None:  # fmt: skip
    user = tmp_path / "results.json"
    user.write_text('{"mine": 1}')

    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking --json")

    monkeypatch.setattr(track_module, "track_checkpoint", no_training)
    assert main(["track", str(ckpt), "--json", str(user)]) == 2
    assert "not a track result this tool wrote" in capsys.readouterr().err
    assert user.read_text() == '{"mine": 1}'


def test_bad_input(ckpt) -> None:
    with pytest.raises(GrowthError, match="optimizer"):
        track_checkpoint(ckpt, optimizer="lion")
    with pytest.raises(GrowthError, match="rule"):
        track_checkpoint(ckpt, rules=("nope",))
    assert main(["track", str(ckpt), "--width", "zz=3"]) == 2
