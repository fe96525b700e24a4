"""Safe overwrite and crash recovery (growth.formats.outdir) for orbax checkpoints and HF
directories: only outputs this tool wrote are replaced, never the source, an ancestor of it or
the current directory; interrupted replaces and debris of killed runs are recovered."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from growth.apps.cli import main
from growth.apps.commands import grow_checkpoint, train_model
from growth.errors import CheckpointError
from growth.formats import hf, outdir
from growth.formats.checkpoint import load_checkpoint, save_checkpoint
from growth.models.resmlp import ResMLPConfig
from growth.tasks.train import TrainConfig
from tests.test_hf_decoder import write_gpt2

ROOT = Path(__file__).resolve().parents[1]


def _user_folder(path: Path, *names: str) -> Path:
    path.mkdir(parents=True)
    for name in names:
        (path / name).write_text(f"user data {name}")
    return path


def _hf_out(src: Path, out: Path, **kw) -> Path:
    params, config, _ = hf.load_hf(src)
    return hf.save_hf(out, params, config, **kw)


@pytest.mark.parametrize("names", [("notes.txt",), ("meta.json", "params", "COMPLETE")])
def test_overwrite_refuses_user_folders(tmp_path: Path, names) -> None:
    """A folder of user files, even named like checkpoint files, is never replaced."""
    src = write_gpt2(tmp_path / "gpt2")
    for writer in ("orbax", "hf"):
        user = _user_folder(tmp_path / f"user_{writer}", *names)
        with pytest.raises(CheckpointError, match="directory this tool wrote"):
            if writer == "orbax":
                save_checkpoint(user, {"w": np.ones(2)}, {}, overwrite=True)
            else:
                _hf_out(src, user, overwrite=True)
        assert sorted(os.listdir(user)) == sorted(names)
        assert (user / names[0]).read_text() == f"user data {names[0]}"


def test_overwrite_replaces_own_outputs(tmp_path: Path) -> None:
    src = write_gpt2(tmp_path / "gpt2")
    out = _hf_out(src, tmp_path / "hf_out")
    assert (out / outdir.MARKER).is_file()
    assert oct(os.stat(out / hf.WEIGHTS).st_mode & 0o777) == oct(0o666 & ~_umask())
    with pytest.raises(CheckpointError, match="already exists"):
        _hf_out(src, out)
    _hf_out(src, out, overwrite=True)
    ck = save_checkpoint(tmp_path / "ck", {"w": np.ones(2)}, {"v": 1})
    save_checkpoint(ck, {"w": np.zeros(2)}, {"v": 2}, overwrite=True)
    assert load_checkpoint(ck)[1] == {"v": 2}
    assert sorted(os.listdir(tmp_path)) == ["ck", "gpt2", "hf_out"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_never_the_source_its_ancestors_or_cwd(tmp_path: Path, monkeypatch) -> None:
    small = tmp_path / "runs" / "small"
    cfg = ResMLPConfig(40, 4, 8, 1, 10)
    train_model(small, "resmlp", cfg, TrainConfig(steps=2, eval_every=1), progress=False)
    before = load_checkpoint(small)
    for out in (small, small.parent, tmp_path):
        with pytest.raises(CheckpointError, match="would replace the source"):
            grow_checkpoint(small, out, width="x2", depth="", overwrite=True)
    src = write_gpt2(tmp_path / "gpt2")
    (src / "tokenizer.json").write_text("{}")
    with pytest.raises(CheckpointError, match="would replace the source"):
        hf.grow_hf(src, src, width="x2", overwrite=True)
    assert (src / "tokenizer.json").exists()
    work = tmp_path / "runs" / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for out in (".", work, work.parent):
        with pytest.raises(CheckpointError, match="current directory or one of its ancestors"):
            save_checkpoint(out, {"w": np.ones(2)}, {}, overwrite=True)
    with pytest.raises(CheckpointError, match="output path ''"):
        save_checkpoint("", {"w": np.ones(2)}, {}, overwrite=True)
    assert main(["train", "--out", "", "--steps", "1"]) == 2
    after = load_checkpoint(small)
    assert after[1] == before[1]
    assert sorted(os.listdir(tmp_path / "runs")) == ["small", "work"]


def test_empty_directory_may_be_replaced(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="already exists"):
        save_checkpoint(tmp_path / "empty", {"w": np.ones(2)}, {})
    save_checkpoint(tmp_path / "empty", {"w": np.ones(2)}, {}, overwrite=True)
    assert load_checkpoint(tmp_path / "empty")[0]["w"].tolist() == [1, 1]


# ------------------------------------------------------------------------ crashes (real kills)


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


KILL_BETWEEN_RENAMES = """
    import os, sys
    import numpy as np
    from pathlib import Path
    from growth.formats import hf, outdir
    from growth.formats.checkpoint import save_checkpoint

    def crash(tmp, target):
        if sys.argv[2] == "unsealed":
            os.unlink(tmp / outdir.MARKER)
        os._exit(9)

    outdir._between_renames = crash
    path = Path(sys.argv[1])
    if path.name == "ck":
        save_checkpoint(path, {"w": np.full(3, 2.0)}, {"v": 2}, overwrite=True)
    else:
        params, config, _ = hf.load_hf(path)
        params["final_scale"] = params["final_scale"] * 0 + 2
        hf.save_hf(path, params, config, overwrite=True)
"""


@pytest.mark.parametrize("sealed", ["sealed", "unsealed"])
def test_kill_between_the_renames_is_recovered(tmp_path: Path, sealed: str) -> None:
    """A kill after ``name -> name.old-*`` leaves no output at ``name``; the next load
    completes the replace (the new output was sealed) or rolls it back (it was not)."""
    ck = save_checkpoint(tmp_path / "ck", {"w": np.full(3, 1.0)}, {"v": 1})
    src = write_gpt2(tmp_path / "gpt2")
    out = _hf_out(src, tmp_path / "hf_out")
    for path in (ck, out):
        res = _run(KILL_BETWEEN_RENAMES.replace("sys.argv[1]", repr(str(path))).replace(
            "sys.argv[2]", repr(sealed)))  # fmt: skip
        assert res.returncode == 9, res.stderr
        assert not path.exists()
        assert len([p for p in os.listdir(tmp_path) if p.startswith(path.name + ".")]) == 2
    v = 2 if sealed == "sealed" else 1
    assert load_checkpoint(ck)[1] == {"v": v}
    params, _, _ = hf.load_hf(out)
    assert (params["final_scale"] == 2).all() == (sealed == "sealed")
    assert sorted(os.listdir(tmp_path)) == ["ck", "gpt2", "hf_out"]


KILL_DURING_WRITE = """
    import os
    import numpy as np
    from growth.formats import checkpoint
    from growth.formats.checkpoint import save_checkpoint

    checkpoint._write_text = lambda path, text: os._exit(9)
    save_checkpoint(PATH, {"w": np.zeros(1 << 16)}, {}, overwrite=True)
"""


def test_debris_of_a_killed_run_is_removed_by_the_next_write(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    res = _run(KILL_DURING_WRITE.replace("PATH", repr(str(ck))))
    assert res.returncode == 9, res.stderr
    (debris,) = os.listdir(tmp_path)
    assert debris.startswith("ck.tmp-")
    live = outdir.temp_path(ck)  # a concurrent writer's work in progress: left alone
    live.mkdir()
    save_checkpoint(ck, {"w": np.ones(2)}, {})
    assert sorted(os.listdir(tmp_path)) == sorted(["ck", live.name])


# ------------------------------------------------------------------------- full disk (ENOSPC)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_gives_a_clear_error_and_keeps_the_old_output(tmp_path, monkeypatch) -> None:
    from growth.formats import checkpoint

    ck = save_checkpoint(tmp_path / "ck", {"w": np.ones(2)}, {"v": 1})
    src = write_gpt2(tmp_path / "gpt2")
    out = _hf_out(src, tmp_path / "hf_out")
    params, config, _ = hf.load_hf(src)
    monkeypatch.setattr(checkpoint, "_write_text", _enospc)
    with pytest.raises(CheckpointError, match="no space left on the device"):
        save_checkpoint(ck, {"w": np.zeros(2)}, {"v": 2}, overwrite=True)
    monkeypatch.setattr(outdir, "write_file", _enospc)
    with pytest.raises(CheckpointError, match=f"{out}.*no space left on the device"):
        hf.save_hf(out, params, config, overwrite=True)
    monkeypatch.undo()
    assert load_checkpoint(ck)[1] == {"v": 1}
    hf.load_hf(out)
    assert sorted(os.listdir(tmp_path)) == ["ck", "gpt2", "hf_out"]


def test_full_disk_on_the_cli_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    src = write_gpt2(tmp_path / "gpt2")
    monkeypatch.setattr(outdir, "write_file", _enospc)
    code = main(["grow", "--from-hf", str(src), "--to-hf", str(tmp_path / "o"), "--width", "x2",
                 "--depth", ""])  # fmt: skip
    assert code == 2
    assert "no space left on the device" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["gpt2"]


def test_demo_refuses_a_user_folder_before_running(tmp_path: Path, capsys) -> None:
    user = _user_folder(tmp_path / "docs", "thesis.tex")
    assert main(["demo", "--quick", "--no-progress", "--out", str(user)]) == 2
    assert "directory this tool wrote" in capsys.readouterr().err
    assert os.listdir(user) == ["thesis.tex"]


_PLACES = ["", "a", "a/b", "a/b/src", "a/b/src/inner", "a/sib", "x", "x/cwd", "x/cwd/new", "q"]
_FORBIDDEN = {"", "a", "a/b", "a/b/src", "x", "x/cwd"}  # the source, the cwd, their ancestors


@settings(max_examples=40, deadline=None)
@given(place=st.sampled_from(_PLACES), spelling=st.sampled_from(["abs", "rel", "dots", "link"]))
def test_check_out_refuses_exactly_the_source_the_cwd_and_their_ancestors(
    tmp_path_factory, place: str, spelling: str
) -> None:
    """However the path is spelled (absolute, relative to the cwd, through '..', through a
    symlink), ``check_out`` refuses exactly the source, the cwd and their ancestors."""
    root = tmp_path_factory.mktemp("tree").resolve()
    (root / "a" / "b" / "src").mkdir(parents=True)
    (root / "x" / "cwd").mkdir(parents=True)
    here = os.getcwd()
    os.chdir(root / "x" / "cwd")
    try:
        _check_places(root, place, spelling)
    finally:
        os.chdir(here)


def _check_places(root: Path, place: str, spelling: str) -> None:
    target = root / place
    if spelling == "rel":
        target = Path(os.path.relpath(target))
    elif spelling == "dots":
        target = root / "x" / ".." / place
    elif spelling == "link":
        (root / "link").symlink_to(target.parent if place else root)
        target = root / "link" / target.name if place else root / "link"
    if place in _FORBIDDEN:
        with pytest.raises(CheckpointError, match="source|current directory"):
            outdir.check_out(target, overwrite=True, protect=[root / "a" / "b" / "src"])
    else:
        outdir.check_out(target, overwrite=True, protect=[root / "a" / "b" / "src"])


# ------------------------------------------------------- single-file JSON outputs (track --json)


def _json_out(path: Path, value: int) -> Path:
    return outdir.write_json_output(path, {"v": value}, kind="track")


def test_json_output_replaces_only_its_own_file(tmp_path: Path) -> None:
    """A ``track`` result this tool wrote is replaced; any other file, a folder or a link is
    refused with the path named and left byte for byte as it was."""
    own = _json_out(tmp_path / "r.json", 1)
    assert _json_out(own, 2) == own
    assert json.loads(own.read_text()) == {"written_by": "mfgrow", "kind": "track", "v": 2}
    foreign = {
        "user.json": '{"v": 1}',
        "notes.txt": "user data",
        "other_kind.json": '{"written_by": "mfgrow", "kind": "analysis"}',
        "truncated.json": '{"written_by": "mfgrow", "kind": "track", "v"',
    }
    for name, text in foreign.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "folder").mkdir()
    (tmp_path / "link.json").symlink_to(own)
    for name in (*foreign, "folder", "link.json"):
        with pytest.raises(CheckpointError, match=f"{name}.*not a track result this tool wrote"):
            _json_out(tmp_path / name, 3)
    for name, text in foreign.items():
        assert (tmp_path / name).read_text() == text
    assert json.loads(own.read_text())["v"] == 2
    assert sorted(os.listdir(tmp_path)) == sorted([*foreign, "folder", "link.json", "r.json"])


def _half_then_enospc(path, data):
    Path(path).write_text(data[: len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


def test_failed_json_write_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    path = _json_out(tmp_path / "r.json", 1)
    before = path.read_bytes()
    monkeypatch.setattr(outdir, "write_file", _half_then_enospc)
    with pytest.raises(CheckpointError, match=f"{path}.*no space left on the device"):
        _json_out(path, 2)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["r.json"]


KILL_DURING_JSON_WRITE = """
    import os
    from growth.formats import outdir

    def half_then_kill(path, data):
        with open(path, "w") as f:
            f.write(data[: len(data) // 2])
        os._exit(9)

    outdir.write_file = half_then_kill
    outdir.write_json_output(PATH, {"v": 2}, kind="track")
"""


def test_kill_while_writing_a_json_output_keeps_the_old_file(tmp_path: Path) -> None:
    """A kill in the middle of the write leaves the old result whole and a half-written
    ``.tmp-`` sibling, which the next write removes."""
    path = _json_out(tmp_path / "r.json", 1)
    before = path.read_bytes()
    res = _run(KILL_DURING_JSON_WRITE.replace("PATH", repr(str(path))))
    assert res.returncode == 9, res.stderr
    assert path.read_bytes() == before
    (debris,) = set(os.listdir(tmp_path)) - {"r.json"}
    assert debris.startswith("r.json.tmp-")
    _json_out(path, 3)
    assert os.listdir(tmp_path) == ["r.json"]
    assert json.loads(path.read_text())["v"] == 3
