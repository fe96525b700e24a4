"""Streaming growth (safetensors -> safetensors, leaf by leaf) equals in-memory growth."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import growth
from growth.errors import CheckpointError
from growth.models import get_family, init_model, params_of
from growth.models.resmlp import ResMLPConfig
from growth.spec import NeuronSpec
from growth.stream import grow_safetensors


def _flat_resmlp():
    cfg = ResMLPConfig(40, 8, 16, 2, 10)
    nested = params_of(init_model("resmlp", cfg))
    flat = {}
    for path, leaf in growth.spec.leaves_with_paths(nested):
        flat[path.replace("/", ".")] = np.asarray(leaf)
    patterns = get_family("resmlp").spec(cfg).patterns
    return flat, NeuronSpec({p.replace("/", "."): s for p, s in patterns.items()})


@pytest.mark.parametrize("method", ["exact", "iid", "rc"])
def test_streaming_equals_in_memory(tmp_path, method):
    flat, spec = _flat_resmlp()
    save_file(flat, str(tmp_path / "src.safetensors"))
    target = dict(width={"d": 24, "h": 40}, depth={"blocks": 4}, method=method, key=5)
    report = grow_safetensors(tmp_path / "src.safetensors", tmp_path / "out.safetensors", spec,
                              **target)  # fmt: skip
    streamed = load_file(str(tmp_path / "out.safetensors"))
    in_memory, ref = growth.grow(flat, spec, **target)
    assert report.sizes_after == ref.sizes_after
    assert set(streamed) == set(flat)
    for name, x in in_memory.items():
        assert streamed[name].dtype == x.dtype and np.array_equal(streamed[name], np.asarray(x))


def test_streaming_errors_leave_nothing(tmp_path):
    flat, spec = _flat_resmlp()
    with pytest.raises(CheckpointError, match="no such"):
        grow_safetensors(tmp_path / "nope.safetensors", tmp_path / "o.safetensors", spec)
    flat["w2"] = flat["w2"].copy()
    flat["w2"][0, 0, 0] = np.nan
    save_file(flat, str(tmp_path / "src.safetensors"))
    with pytest.raises(growth.GrowthError, match="'w2' contains NaN"):
        grow_safetensors(tmp_path / "src.safetensors", tmp_path / "o.safetensors", spec,
                         width={"d": 16})  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.safetensors"]
