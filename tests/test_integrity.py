"""Per-tensor checksums: recorded at save, verified at load, for orbax checkpoints (in memory
and streamed) and HF directories; bit flips and truncations never load silently."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from growth.errors import CheckpointError
from growth.formats import hf, outdir
from growth.formats.checkpoint import load_checkpoint, save_checkpoint
from growth.formats.stream import CheckpointLeaf, _open_checkpoint
from tests.test_hf_decoder import write_gpt2

W = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)


def _flip(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def _files_holding(root: Path, raw: bytes) -> list[tuple[Path, int]]:
    hits = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            at = p.read_bytes().find(raw)
            if at >= 0:
                hits.append((p, at))
    return hits


def test_low_mantissa_bit_flip_in_orbax_data_never_loads(tmp_path: Path) -> None:
    """Flip the lowest mantissa bit of W[0, 0] wherever its bytes are stored: the load fails,
    or (for a copy orbax does not read) returns W unchanged."""
    ck = save_checkpoint(tmp_path / "ck", {"a": {0: W}, "b": np.ones(3)}, {})
    hits = _files_holding(ck / "params", W.tobytes())
    assert hits, "the array's bytes are stored raw"
    failed = 0
    for path, at in hits:
        original = path.read_bytes()
        _flip(path, at)
        try:
            loaded = load_checkpoint(ck)[0]["a"][0]
        except CheckpointError as e:
            assert str(ck) in str(e)
            failed += 1
        else:
            np.testing.assert_array_equal(loaded, W)
        path.write_bytes(original)
    assert failed >= 1


def test_altered_orbax_data_is_caught_by_its_checksum(tmp_path: Path) -> None:
    """Data that orbax reads without complaint (a valid store holding other values, here one
    low mantissa bit apart) fails the recorded checksum, which names the tensor, in memory and
    in the streaming reader."""
    flipped = W.copy()
    flipped.view(np.uint32)[0, 0] ^= 1
    ck = save_checkpoint(tmp_path / "ck", {"a": {0: W}, "b": np.ones(3)}, {})
    other = save_checkpoint(tmp_path / "other", {"a": {0: flipped}, "b": np.ones(3)}, {})
    shutil.rmtree(ck / "params")
    shutil.copytree(other / "params", ck / "params")
    with pytest.raises(CheckpointError, match=r"tensor params\['a'\]\[0\] is corrupt"):
        load_checkpoint(ck)
    leaf = _open_checkpoint(ck).tree["a"][0]
    assert isinstance(leaf, CheckpointLeaf)
    with pytest.raises(CheckpointError, match=r"params\['a'\]\[0\] is corrupt"):
        np.asarray(leaf)
    np.testing.assert_array_equal(np.asarray(_open_checkpoint(ck).tree["b"]), np.ones(3))
    np.testing.assert_array_equal(load_checkpoint(other)[0]["a"][0], flipped)


def test_unflipped_checkpoint_loads(tmp_path: Path) -> None:
    ck = save_checkpoint(tmp_path / "ck", {"a": {0: W}}, {})
    np.testing.assert_array_equal(load_checkpoint(ck)[0]["a"][0], W)


def test_truncated_orbax_data_is_caught(tmp_path: Path) -> None:
    ck = save_checkpoint(tmp_path / "ck", {"w": W}, {})
    for path, _ in _files_holding(ck / "params", W.tobytes()):
        path.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(CheckpointError, match=str(ck)):
        load_checkpoint(ck)


@pytest.mark.parametrize("name", ["meta.json", "tree.json"])
def test_edited_json_is_caught(tmp_path: Path, name: str) -> None:
    ck = save_checkpoint(tmp_path / "ck", {"w": W}, {"lr": 0.001})
    text = (ck / name).read_text()
    (ck / name).write_text(text.replace("0.001", "0.002").replace("16", "17"))
    with pytest.raises(CheckpointError, match=f"{name} is missing or corrupt"):
        load_checkpoint(ck)


def test_marker_damage_is_caught(tmp_path: Path) -> None:
    ck = save_checkpoint(tmp_path / "ck", {"w": W}, {})
    (ck / outdir.MARKER).write_text('{"marker_version": 99}')
    with pytest.raises(CheckpointError, match="unknown marker version 99"):
        load_checkpoint(ck)
    (ck / outdir.MARKER).write_text('{"marker_ver')
    with pytest.raises(CheckpointError, match="unreadable marker"):
        load_checkpoint(ck)


def _hf(tmp_path: Path) -> Path:
    src = write_gpt2(tmp_path / "gpt2", d=8, L=1, V=7, P=8)
    params, config, _ = hf.load_hf(src)
    return hf.save_hf(tmp_path / "out", params, config)


def _data_start(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


@settings(max_examples=25, deadline=None)
@given(frac=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_any_bit_flip_in_hf_tensor_data_is_caught(tmp_path_factory, frac: float, bit: int) -> None:
    out = _hf(tmp_path_factory.mktemp("hf"))
    weights = out / hf.WEIGHTS
    start, size = _data_start(weights), weights.stat().st_size
    _flip(weights, start + int(frac * (size - start)), bit)
    with pytest.raises(CheckpointError, match=r"tensor '.*' is corrupt"):
        hf.load_hf(out)


def test_hf_flip_names_the_tensor_and_truncation_is_caught(tmp_path: Path) -> None:
    from safetensors import safe_open

    out = _hf(tmp_path)
    weights = out / hf.WEIGHTS
    with safe_open(str(weights), framework="numpy") as f:
        name = sorted(f.keys())[0]
    header = __import__("json").loads(weights.read_bytes()[8:_data_start(weights)])
    begin = header[name]["data_offsets"][0]
    original = weights.read_bytes()
    _flip(weights, _data_start(weights) + begin)
    with pytest.raises(CheckpointError, match=f"tensor '{name}' is corrupt"):
        hf.load_hf(out)
    weights.write_bytes(original[:-8])
    with pytest.raises(CheckpointError, match="truncated|corrupt"):
        hf.load_hf(out)
    weights.write_bytes(original)
    hf.load_hf(out)


def test_hf_config_edit_is_caught(tmp_path: Path) -> None:
    out = _hf(tmp_path)
    cfg = (out / hf.CONFIG).read_text()
    (out / hf.CONFIG).write_text(cfg.replace('"n_positions": 8', '"n_positions": 9'))
    with pytest.raises(CheckpointError, match="config.json is missing or corrupt"):
        hf.load_hf(out)
