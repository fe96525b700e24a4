"""Resumable training: ``--out`` checked before the first step, periodic training state,
``--resume`` bit-identical to an uninterrupted run (after a kill or a Ctrl-C), clear refusals."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from growth.apps import commands
from growth.apps.cli import main
from growth.apps.commands import train_model, training_state_dir
from growth.errors import CheckpointError, GrowthError
from growth.formats.checkpoint import load_checkpoint
from growth.models.resmlp import ResMLPConfig
from growth.tasks import train as train_mod
from growth.tasks.data import iterate_batches
from growth.tasks.train import TrainConfig

CFG = ResMLPConfig(40, 8, 16, 2, 10)
TC = TrainConfig(steps=30, batch_size=32, eval_every=10, seed=3)
ARGS = ["train", "--width", "8", "--hidden", "16", "--depth", "2", "--steps", "30",
        "--batch-size", "32", "--eval-every", "10", "--seed", "3",
        "--checkpoint-every", "5"]  # fmt: skip


class _Kill(BaseException):
    """Stands for kill -9: nothing in the loop catches it, so nothing more is saved."""


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}/{k}")
    else:
        yield prefix, tree


def _assert_bit_identical(a: Path, b: Path) -> None:
    (pa, ma), (pb, mb) = load_checkpoint(a), load_checkpoint(b)
    la, lb = dict(_leaves(pa)), dict(_leaves(pb))
    assert la.keys() == lb.keys()
    for k in la:
        assert la[k].dtype == lb[k].dtype and la[k].tobytes() == lb[k].tobytes(), k
    assert ma["history"] == mb["history"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ref"
    train_model(out, "resmlp", CFG, TC, progress=False)
    return out


def _stop_at(k: int, action):
    def hook(step: int) -> None:
        if step == k:
            action()

    return hook


def test_resume_after_a_kill_is_bit_identical(tmp_path, monkeypatch, reference) -> None:
    out = tmp_path / "run"
    monkeypatch.setattr(train_mod, "_after_step", _stop_at(17, lambda: (_ for _ in ()).throw(
        _Kill())))  # fmt: skip
    with pytest.raises(_Kill):
        train_model(out, "resmlp", CFG, TC, progress=False, checkpoint_every=5)
    assert not out.exists()
    assert sorted(os.listdir(training_state_dir(out))) == ["10", "15", "mfgrow-output.json"]
    monkeypatch.setattr(train_mod, "_after_step", None)
    with pytest.raises(GrowthError, match="a partial run is saved.*--resume"):
        train_model(out, "resmlp", CFG, TC, progress=False, checkpoint_every=5)
    other = TrainConfig(steps=30, batch_size=32, eval_every=10, seed=4)
    with pytest.raises(GrowthError, match=r"other settings \(\['train'\]\)"):
        train_model(out, "resmlp", CFG, other, progress=False, checkpoint_every=5, resume=True)
    state = training_state_dir(out)
    shutil.copytree(state, tmp_path / "backup")
    shutil.rmtree(state / "15" / "state")  # step 15's record, step 10's (valid) arrays
    shutil.copytree(state / "10" / "state", state / "15" / "state")
    with pytest.raises(CheckpointError, match=r"15: leaf 0 is corrupt"):
        train_model(out, "resmlp", CFG, TC, progress=False, checkpoint_every=5, resume=True)
    shutil.rmtree(state)
    shutil.move(tmp_path / "backup", state)
    train_model(out, "resmlp", CFG, TC, progress=False, checkpoint_every=5, resume=True)
    _assert_bit_identical(out, reference)
    assert sorted(os.listdir(tmp_path)) == ["run"]


KILLED_RUN = """
import os, sys
from growth.apps.commands import train_model
from growth.models.resmlp import ResMLPConfig
from growth.tasks import train
from growth.tasks.train import TrainConfig

train._after_step = lambda k: os._exit(9) if k == 23 else None
train_model(sys.argv[1], "resmlp", ResMLPConfig(40, 8, 16, 2, 10),
            TrainConfig(steps=30, batch_size=32, eval_every=10, seed=3), progress=False,
            checkpoint_every=5)
"""


def test_resume_after_kill_9_of_a_process_is_bit_identical(tmp_path, reference) -> None:
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    res = subprocess.run([sys.executable, "-c", KILLED_RUN, str(out)], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 9, res.stderr
    assert not out.exists()
    assert sorted(os.listdir(training_state_dir(out))) == ["15", "20", "mfgrow-output.json"]
    train_model(out, "resmlp", CFG, TC, progress=False, checkpoint_every=5, resume=True)
    _assert_bit_identical(out, reference)


def test_ctrl_c_saves_and_resume_is_bit_identical(tmp_path, monkeypatch, capsys, reference):
    out = str(tmp_path / "run")
    interrupt = _stop_at(12, lambda: os.kill(os.getpid(), signal.SIGINT))
    monkeypatch.setattr(train_mod, "_after_step", interrupt)
    assert main([*ARGS, "--out", out]) == 130
    err = capsys.readouterr().err
    assert "interrupted: train resmlp: stopped after step 12; the state is saved in" in err
    assert not Path(out).exists()
    monkeypatch.setattr(train_mod, "_after_step", None)
    assert main([*ARGS, "--out", out, "--resume"]) == 0
    _assert_bit_identical(Path(out), reference)
    assert not training_state_dir(out).exists()


def test_out_is_checked_before_the_first_step(tmp_path, monkeypatch, capsys) -> None:
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")

    def never(*args, **kwargs):
        raise AssertionError("trained although --out is refused")

    monkeypatch.setattr(commands, "train", never)
    assert main([*ARGS, "--out", str(user)]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="directory this tool wrote"):
        train_model(user, "resmlp", CFG, TC, overwrite=True)
    with pytest.raises(GrowthError, match="--resume: no saved training state"):
        train_model(tmp_path / "new", "resmlp", CFG, TC, resume=True)
    assert (user / "notes.txt").read_text() == "keep"


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), bs=st.integers(1, 40), seed=st.integers(0, 2**32 - 1),
       k=st.integers(0, 60))  # fmt: skip
def test_batch_stream_resumes_exactly(n: int, bs: int, seed: int, k: int) -> None:
    bs = min(bs, n)
    x, y = np.arange(n * 2).reshape(n, 2), np.arange(n)
    ref = iterate_batches(x, y, bs, seed)
    first = [next(ref) for _ in range(k)]
    run = iterate_batches(x, y, bs, seed)
    assert all(np.array_equal(a[1], next(run)[1]) for a in first)
    resumed = iterate_batches(x, y, bs, seed)
    resumed.set_state(run.state())
    for _ in range(2 * (n // bs) + 1):
        assert np.array_equal(next(ref)[1], next(resumed)[1])
