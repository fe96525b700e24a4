"""Tests for growth.formats.checkpoint: round trips, validation, and atomicity under failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest

from growth.errors import CheckpointError
from growth.formats import checkpoint as ckpt_mod
from growth.formats.checkpoint import load_checkpoint, save_checkpoint


def _params() -> dict:
    rng = np.random.default_rng(0)
    return {
        "layers": {
            0: {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": np.zeros(4, np.float32)},
            1: {"w": jnp.asarray(rng.normal(size=(4, 2)), dtype=jnp.bfloat16)},
        },
        "1": {"count": np.int64(7), "mask": np.array([True, False])},
        "step": np.array(12, np.int32),
        "empty_arr": np.zeros((0, 5), np.float32),
        "empty_dict": {},
        "f64": np.linspace(0, 1, 5),
    }


META = {"family": "mlp", "config": {"widths": [8, 16], "act": "relu"}, "loss": 0.25}


def _assert_same(a: object, b: object) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            assert type(k) is type(next(kk for kk in b if kk == k))
            _assert_same(a[k], b[k])
    else:
        ea = np.asarray(a)
        assert isinstance(b, np.ndarray)
        assert b.dtype == ea.dtype and b.shape == ea.shape
        np.testing.assert_array_equal(b, ea)


def test_round_trip(tmp_path: Path) -> None:
    params = _params()
    out = save_checkpoint(tmp_path / "ck", params, META)
    assert out == (tmp_path / "ck").absolute()
    assert os.listdir(tmp_path) == ["ck"]
    loaded, meta = load_checkpoint(out)
    assert meta == META
    _assert_same(params, loaded)
    assert 0 in loaded["layers"] and "0" not in loaded["layers"]
    assert loaded["layers"][1]["w"].dtype == ml_dtypes.bfloat16


def test_relative_path_and_repeated_saves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for i in range(3):
        save_checkpoint(f"runs/ck{i}", {"w": np.full(3, i, np.float32)}, {"i": i})
    for i in range(3):
        params, meta = load_checkpoint(tmp_path / "runs" / f"ck{i}")
        assert meta == {"i": i} and params["w"].tolist() == [i, i, i]


def test_all_empty_params(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "a", {}, {})
    assert load_checkpoint(tmp_path / "a") == ({}, {})
    save_checkpoint(tmp_path / "b", {"x": {}, "z": np.zeros(0, np.int8)}, {})
    params, _ = load_checkpoint(tmp_path / "b")
    assert params["x"] == {} and params["z"].shape == (0,) and params["z"].dtype == np.int8


def test_fresh_process_loads(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ck", {"a": {3: np.arange(4, dtype=np.int16)}}, {"ok": True})
    code = (
        "import sys; from growth.formats.checkpoint import load_checkpoint, save_checkpoint; "
        "p, m = load_checkpoint(sys.argv[1]); "
        "print(p['a'][3].dtype, p['a'][3].tolist(), m); "
        "save_checkpoint(sys.argv[1], p, {'ok': False}, overwrite=True)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "ck")], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert "int16 [0, 1, 2, 3] {'ok': True}" in res.stdout
    assert load_checkpoint(tmp_path / "ck")[1] == {"ok": False}


def test_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "ck"
    save_checkpoint(path, {"w": np.ones(2)}, {"v": 1})
    with pytest.raises(CheckpointError, match=f"{path}.*already exists"):
        save_checkpoint(path, {"w": np.zeros(2)}, {"v": 2})
    assert load_checkpoint(path)[1] == {"v": 1}
    save_checkpoint(path, {"w": np.zeros(3)}, {"v": 2}, overwrite=True)
    params, meta = load_checkpoint(path)
    assert meta == {"v": 2} and params["w"].tolist() == [0, 0, 0]
    assert os.listdir(tmp_path) == ["ck"]


def test_overwrite_refuses_non_checkpoint(tmp_path: Path) -> None:
    other = tmp_path / "notes"
    other.mkdir()
    (other / "important.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        save_checkpoint(other, {"w": np.ones(2)}, {}, overwrite=True)
    assert (other / "important.txt").read_text() == "keep me"
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        save_checkpoint(f, {"w": np.ones(2)}, {}, overwrite=True)


def test_load_missing_and_not_dir(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        load_checkpoint(tmp_path / "file")


def _saved(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "ck", {"w": np.ones((2, 2), np.float32)}, META)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda p: (p / "COMPLETE").unlink(), "incomplete"),
        (lambda p: (p / "meta.json").write_text("{not json"), "meta.json.*JSONDecodeError"),
        (lambda p: (p / "meta.json").write_text("[1, 2]"), "JSON object"),
        (lambda p: (p / "meta.json").unlink(), "missing meta.json"),
        (lambda p: (p / "tree.json").unlink(), "missing tree.json"),
        (lambda p: (p / "tree.json").write_text('{"format": 99}'), "unknown format"),
        (lambda p: __import__("shutil").rmtree(p / "params"), "params/"),
        (lambda p: (p / "params" / "_METADATA").write_text("{garbage"), "orbax restore"),
    ],
)
def test_load_corrupt(tmp_path: Path, damage, match: str) -> None:
    path = _saved(tmp_path)
    damage(path)
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_failure_during_orbax_save_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = ocp.StandardCheckpointer.save

    def save_then_fail(self, directory, state, **kwargs):  # partial data exists, then failure
        original(self, directory, state, **kwargs)
        self.wait_until_finished()
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", save_then_fail)
    with pytest.raises(CheckpointError, match="RuntimeError: disk full"):
        save_checkpoint(tmp_path / "ck", {"w": np.ones(3)}, META)
    assert os.listdir(tmp_path) == []


def test_failure_late_in_save_keeps_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_checkpoint(tmp_path / "ck", {"w": np.ones(3)}, {"v": 1})
    original = ckpt_mod._write_text

    def fail_on_marker(p: Path, text: str) -> None:
        if p.name == "COMPLETE":
            raise OSError("interrupted (simulated)")
        original(p, text)

    monkeypatch.setattr(ckpt_mod, "_write_text", fail_on_marker)
    with pytest.raises(CheckpointError, match="interrupted"):
        save_checkpoint(path, {"w": np.zeros(3)}, {"v": 2}, overwrite=True)
    with pytest.raises(CheckpointError):
        save_checkpoint(tmp_path / "new", {"w": np.zeros(3)}, {"v": 2})
    assert sorted(os.listdir(tmp_path)) == ["ck"]
    assert load_checkpoint(path)[1] == {"v": 1}


class _Interrupt(BaseException):
    pass


def test_interrupt_removes_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(p: Path, text: str) -> None:
        raise _Interrupt

    monkeypatch.setattr(ckpt_mod, "_write_text", interrupted)
    with pytest.raises(_Interrupt):
        save_checkpoint(tmp_path / "ck", {"w": np.ones(3)}, {})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "meta",
    [{"x": object()}, {"a": {1: "int key"}}, {"s": {1, 2}}, ["not", "a", "dict"]],
)
def test_bad_meta_creates_nothing(tmp_path: Path, meta: object) -> None:
    target = tmp_path / "sub" / "ck"
    with pytest.raises(CheckpointError, match="meta"):
        save_checkpoint(target, {"w": np.ones(2)}, meta)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"w": [np.ones(2)]}, "nested dict"),
        ({"w": None}, "nested dict"),
        ({1: np.ones(1), "1": np.ones(1)}, "collide"),
        ({(1, 2): np.ones(1)}, "keys must be str or int"),
        ({"w": np.array(["a", "b"])}, "unsupported dtype"),
        ([np.ones(2)], "nested dict"),
    ],
)
def test_bad_params_creates_nothing(tmp_path: Path, params: object, match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        save_checkpoint(tmp_path / "ck", params, {})
    assert os.listdir(tmp_path) == []


def test_meta_json_is_plain_json(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    assert json.loads((path / "meta.json").read_text()) == META


def test_unwritable_parent(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="cannot create"):
        save_checkpoint(tmp_path / "file" / "ck", {"w": np.ones(2)}, {})
