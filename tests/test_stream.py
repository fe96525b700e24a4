"""Streaming growth (safetensors or orbax checkpoint -> safetensors or checkpoint, leaf by leaf)
equals in-memory growth bit for bit and never leaves a partial output."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import growth
import growth.formats.stream
from growth.errors import CheckpointError
from growth.formats.checkpoint import load_checkpoint, save_checkpoint
from growth.formats.outdir import MARKER
from growth.formats.stream import grow_stream
from growth.models import get_family, init_model, params_of
from growth.models.resmlp import ResMLPConfig
from growth.spec import NeuronSpec


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
    report = grow_stream(tmp_path / "src.safetensors", tmp_path / "out.safetensors", spec,
                         **target)  # fmt: skip
    streamed = load_file(str(tmp_path / "out.safetensors"))
    in_memory, ref = growth.grow(flat, spec, **target)
    assert report.sizes_after == ref.sizes_after
    assert set(streamed) == set(flat)
    for name, x in in_memory.items():
        assert streamed[name].dtype == x.dtype and np.array_equal(streamed[name], np.asarray(x))
    # safetensors source -> checkpoint directory
    grow_stream(tmp_path / "src.safetensors", tmp_path / "out", spec, **target)
    _assert_same(load_checkpoint(tmp_path / "out")[0], in_memory)


def test_streaming_padded_norm_width_equals_in_memory(tmp_path):
    """d 8 -> 12 under LayerNorm: a padded map, whose norm kind lives on leaves other than the
    one being grown (regression: leaf-by-leaf growth used to refuse it)."""
    flat, spec = _flat_resmlp()
    save_file(flat, str(tmp_path / "src.safetensors"))
    target = dict(width={"d": 12}, method="exact", key=1)
    report = grow_stream(tmp_path / "src.safetensors", tmp_path / "out.safetensors", spec,
                         **target)  # fmt: skip
    assert report.eps_scale  # padded: the eps factor is reported
    streamed = load_file(str(tmp_path / "out.safetensors"))
    in_memory, _ = growth.grow(flat, spec, **target)
    for name, x in in_memory.items():
        assert np.array_equal(streamed[name], np.asarray(x)), name


def test_streaming_errors_leave_nothing(tmp_path):
    flat, spec = _flat_resmlp()
    with pytest.raises(CheckpointError, match="no such"):
        grow_stream(tmp_path / "nope.safetensors", tmp_path / "o.safetensors", spec)
    flat["w2"] = flat["w2"].copy()
    flat["w2"][0, 0, 0] = np.nan
    save_file(flat, str(tmp_path / "src.safetensors"))
    with pytest.raises(growth.GrowthError, match="'w2' contains NaN"):
        grow_stream(tmp_path / "src.safetensors", tmp_path / "o.safetensors", spec,
                    width={"d": 16})  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.safetensors"]


# ---------------------------------------------------------------- orbax checkpoint as the source


def _int_keyed():
    """Nested dict with int keys (a 2-layer MLP stored as ``layers/{0,1}``) and its spec."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    params = {
        "layers": {
            0: {"kernel": rng.normal(size=(6, 8)).astype(f32), "bias": np.zeros(8, f32)},
            1: {"kernel": rng.normal(size=(8, 3)).astype(f32), "bias": np.zeros(3, f32)},
        },
        "empty": np.zeros((0, 8), np.float32),  # not stored by the checkpoint format
    }
    spec = NeuronSpec({"layers/0/kernel": ("-", "out:h"), "layers/0/bias": ("out:h",),
                       "layers/1/kernel": ("in:h", "-"), "layers/1/bias": ("-",),
                       "empty": ("-", "in:h")})  # fmt: skip
    return params, spec


def _assert_same(got, want):
    for (p, x), (q, y) in zip(growth.spec.leaves_with_paths(got),
                              growth.spec.leaves_with_paths(want), strict=True):  # fmt: skip
        assert p == q and x.dtype == y.dtype and np.array_equal(x, np.asarray(y)), p


@pytest.mark.parametrize("method", ["exact", "copy", "iid"])
def test_checkpoint_source_equals_in_memory(tmp_path, method):
    flat, spec = _flat_resmlp()
    save_checkpoint(tmp_path / "src", flat, {"family": "resmlp"})
    target = dict(width={"d": 24, "h": 40}, depth={"blocks": 4}, method=method, key=5)
    loaded, _ = load_checkpoint(tmp_path / "src")
    ref, report = growth.grow(loaded, spec, **target)
    r1 = grow_stream(tmp_path / "src", tmp_path / "out", spec, **target)
    r2 = grow_stream(tmp_path / "src", tmp_path / "out.safetensors", spec, **target)
    assert r1.sizes_after == r2.sizes_after == report.sizes_after
    got, meta = load_checkpoint(tmp_path / "out")
    assert meta["source_meta"] == {"family": "resmlp"} and meta["growth"]["sizes_after"]["h"] == 40
    _assert_same(got, ref)
    _assert_same(load_file(str(tmp_path / "out.safetensors")), ref)


def test_checkpoint_source_int_keys_and_empty_leaves(tmp_path):
    params, spec = _int_keyed()
    save_checkpoint(tmp_path / "src", params, {})
    target = dict(width={"h": 20}, method="iid", key=1)
    ref, _ = growth.grow(params, spec, **target)
    grow_stream(tmp_path / "src", tmp_path / "out", spec, meta={"note": "x"}, **target)
    got, meta = load_checkpoint(tmp_path / "out")
    assert meta == {"note": "x"} and set(got["layers"]) == {0, 1}  # int keys kept
    assert got["empty"].shape == (0, 20)
    _assert_same(got, ref)
    # a safetensors output of it grows again with the same spec (names are the tree paths)
    grow_stream(tmp_path / "src", tmp_path / "o.safetensors", spec, **target)
    names = sorted(load_file(str(tmp_path / "o.safetensors")))
    assert names == ["empty", *(f"layers/{i}/{k}" for i in (0, 1) for k in ("bias", "kernel"))]


@pytest.mark.parametrize("out", ["out", "out.safetensors"])
def test_failed_stream_leaves_nothing(tmp_path, monkeypatch, out):
    flat, spec = _flat_resmlp()
    save_checkpoint(tmp_path / "src", flat, {})
    real = growth.formats.stream.apply_leaves

    def failing(plan, leaves, first_leaf=0, **kw):
        if first_leaf == 3:
            raise RuntimeError("disk on fire")
        return real(plan, leaves, first_leaf, **kw)

    monkeypatch.setattr(growth.formats.stream, "apply_leaves", failing)
    with pytest.raises((RuntimeError, CheckpointError), match="disk on fire"):
        grow_stream(tmp_path / "src", tmp_path / out, spec, width={"h": 32})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / out)


def test_checkpoint_source_bad_input(tmp_path):
    flat, spec = _flat_resmlp()
    (tmp_path / "notckpt").mkdir()
    with pytest.raises(CheckpointError, match=r"notckpt is incomplete"):
        grow_stream(tmp_path / "notckpt", tmp_path / "o", spec)
    (tmp_path / "junk").write_bytes(b"12345678")
    with pytest.raises(CheckpointError, match=r"junk.*not a safetensors file"):
        grow_stream(tmp_path / "junk", tmp_path / "o", spec)
    with pytest.raises(CheckpointError, match="no such"):
        grow_stream(tmp_path / "nope", tmp_path / "o", spec)
    save_checkpoint(tmp_path / "src", flat, {})
    with pytest.raises(CheckpointError, match="would replace the source"):
        grow_stream(tmp_path / "src", tmp_path / "src", spec)
    # spec does not fit the leaves: the error names the source and the leaf
    bad = NeuronSpec({k: v for k, v in spec.patterns.items() if k != "w2"})
    with pytest.raises(growth.SpecError, match=r"src: leaf 'w2' is not described"):
        grow_stream(tmp_path / "src", tmp_path / "o", bad, width={"h": 32})
    # tree.json disagrees with orbax's metadata
    tree = json.loads((tmp_path / "src" / "tree.json").read_text())
    for k, leaf in tree["tree"]["dict"]:
        if k == "w1":
            leaf["shape"][0] += 1
    (tmp_path / "src" / "tree.json").write_text(json.dumps(tree))
    with pytest.raises(CheckpointError, match=r"src: tree.json is missing or corrupt"):
        grow_stream(tmp_path / "src", tmp_path / "o", spec)
    (tmp_path / "src" / MARKER).unlink()  # as written before checksums: the shapes still disagree
    with pytest.raises(CheckpointError, match=r"src: params\['w1'\]: params/ holds float32"):
        grow_stream(tmp_path / "src", tmp_path / "o", spec)
    # NaN: refused at plan time, before anything is written
    flat["w1"] = flat["w1"].copy()
    flat["w1"][0, 0, 0] = np.inf
    save_checkpoint(tmp_path / "nan", flat, {})
    with pytest.raises(growth.GrowthError, match="'w1' contains NaN"):
        grow_stream(tmp_path / "nan", tmp_path / "o", spec, width={"h": 32})
    assert not (tmp_path / "o").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk", "nan", "notckpt", "src"]


@pytest.mark.slow
def test_bench_stream_quick_runs(tmp_path) -> None:
    """The CI-sized streaming benchmark end to end (one subprocess per row)."""
    from experiments.bench_stream import FORMATS, main

    rows = main(["--quick", "--out", str(tmp_path)])
    assert len(rows) == len(FORMATS) * 2 * 2  # formats x K in (1, 8) x (copy, exact)
    assert (tmp_path / "stream.json").exists()
