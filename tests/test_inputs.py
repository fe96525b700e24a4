"""Bad inputs get clear errors before any work: integer weights, configs that disagree with
their tensors, non-finite method fields, outputs too large for memory or disk, bad seeds; and
mixed dtypes survive growth."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import growth
from growth.apps.cli import main
from growth.apps.commands import grow_checkpoint
from growth.errors import CheckpointError, GrowthError
from growth.formats import hf
from growth.formats.checkpoint import save_checkpoint
from growth.formats.hf.bert import bert_shapes
from growth.methods import get_method
from growth.models import get_family, init_model, params_of
from growth.models.resmlp import ResMLPConfig
from growth.tasks.train import TrainConfig
from tests.test_hf_decoder import write_gpt2

BERT = {"model_type": "bert", "architectures": ["BertModel"], "num_hidden_layers": 2,
        "num_attention_heads": 2, "hidden_size": 8, "intermediate_size": 16,
        "max_position_embeddings": 12, "vocab_size": 20, "type_vocab_size": 2,
        "layer_norm_eps": 1e-12, "hidden_act": "gelu"}  # fmt: skip


def write_bert(path: Path, config: dict = BERT, dtypes: dict | None = None, **wrong) -> Path:
    """A random BertModel directory; ``wrong`` overrides config.json keys after the tensors
    were made from ``config``."""
    rng = np.random.default_rng(0)
    tensors = {}
    for suffix, shape in bert_shapes(path, config).items():
        if suffix.startswith("embeddings.position_ids"):
            continue
        names = (
            [f"encoder.layer.{i}.{suffix}" for i in range(config["num_hidden_layers"])]
            if suffix.startswith(("attention.", "intermediate.", "output."))
            else [suffix]
        )
        for name in names:
            dtype = (dtypes or {}).get(name, np.float32)
            tensors[name] = (0.3 * rng.standard_normal(shape)).astype(dtype)
    path.mkdir(parents=True)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config | wrong))
    return path


def test_consistent_bert_loads_and_grows(tmp_path: Path) -> None:
    src = write_bert(tmp_path / "bert")
    hf.grow_hf(src, tmp_path / "out", width="x2")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["hidden_size"] == 16


@pytest.mark.parametrize(
    ("wrong", "match"),
    [
        ({"max_position_embeddings": 16}, "position_embeddings.weight' has shape \\(12, 8\\)"),
        ({"hidden_size": 16, "num_attention_heads": 4}, "has shape .*config.json implies"),
        ({"intermediate_size": 32}, "intermediate.dense.weight' has shape \\(16, 8\\)"),
        ({"num_hidden_layers": 2.5}, "num_hidden_layers=2.5: expected a positive integer"),
        ({"num_hidden_layers": "2"}, "num_hidden_layers='2': expected a positive integer"),
        ({"hidden_size": 9}, "hidden_size=9 is not divisible"),
    ],
)
def test_bert_config_disagreeing_with_tensors_is_refused(tmp_path: Path, wrong, match) -> None:
    src = write_bert(tmp_path / "bert", **wrong)
    with pytest.raises(CheckpointError, match=match):
        hf.grow_hf(src, tmp_path / "out", width="x2")
    assert not (tmp_path / "out").exists()


def test_integer_weights_are_refused(tmp_path: Path) -> None:
    src = write_gpt2(tmp_path / "gpt2", dtype=np.int32)
    with pytest.raises(GrowthError, match="has dtype int32.*refusing to grow it"):
        hf.grow_hf(src, tmp_path / "out", width="x2")
    spec = growth.NeuronSpec({"w": growth.LeafSpec.of(("out:h", "-"))})
    with pytest.raises(GrowthError, match="'w' has dtype int64"):
        growth.plan_growth({"w": np.ones((2, 3), np.int64)}, spec, width={"h": 4})
    growth.plan_growth({"w": np.ones((2, 3), np.float16)}, spec, width={"h": 4})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("kind", "depth"), [("gpt2", ""), ("gpt2", "x2"), ("bert", "")])
def test_mixed_dtypes_are_preserved(tmp_path: Path, kind: str, depth: str) -> None:
    """One fp16 tensor among fp32 ones stays fp16 (GPT-2 streams each tensor in its source's
    dtype, new blocks in their source block's; BERT restores each name's import dtype)."""
    if kind == "gpt2":
        odd = "transformer.h.1.mlp.c_fc.weight"
        src = write_gpt2(tmp_path / "src")
        tensors = load_file(str(src / "model.safetensors"))
        tensors[odd] = tensors[odd].astype(np.float16)
        save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    else:
        odd = "encoder.layer.1.intermediate.dense.weight"
        src = write_bert(tmp_path / "src", dtypes={odd: np.float16})
    hf.grow_hf(src, tmp_path / "out", width="x2", depth=depth, method="copy")
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    halves = sorted(k for k, v in out.items() if v.dtype == np.float16)
    floats = {k for k, v in out.items() if v.dtype.kind == "f"}
    if depth:  # the grown stack: source block 1 and the new block copied from it
        assert halves and all(".mlp.c_fc.weight" in k for k in halves), halves
        assert len(halves) in (1, 2) and len(floats) > len(halves)
    else:
        assert halves == [odd]


def test_bert_depth_growth_never_narrows_a_dtype(tmp_path: Path) -> None:
    """After BERT depth growth a layer index no longer names its source: per-layer tensors keep
    the stack's promoted dtype (lossless) rather than a neighbour's narrower one."""
    odd = "encoder.layer.1.intermediate.dense.weight"
    src = write_bert(tmp_path / "src", dtypes={odd: np.float16})
    hf.grow_hf(src, tmp_path / "out", width="x2", depth="x2", method="copy")
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert {str(v.dtype) for v in out.values() if v.dtype.kind == "f"} == {"float32"}


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e400"])
def test_non_finite_method_fields_are_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(GrowthError, match="expected a finite number >= 0"):
        get_method(f"exact:sigma={value}")
    with pytest.raises(GrowthError, match="expected a finite number >= 0"):
        get_method(f"smoothed:bandwidth={value}")
    assert get_method("exact:sigma=4").sigma == 4.0


def _small(tmp_path: Path) -> Path:
    cfg = ResMLPConfig(40, 4, 8, 1, 10)
    model = init_model("resmlp", cfg, seed=0)
    from growth.models import config_to_dict

    meta = {"family": "resmlp", "config": config_to_dict(cfg), "dataset": "mnist1d"}
    return save_checkpoint(tmp_path / "small", params_of(model), meta)


def test_output_size_is_bounded_before_allocating(tmp_path: Path, capsys) -> None:
    small = _small(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="more than the available memory.*--max-bytes"):
        grow_checkpoint(small, tmp_path / "big", width="x1000000", depth="")
    with pytest.raises(CheckpointError, match="more than the available memory"):
        grow_checkpoint(small, tmp_path / "deep", width="", depth="blocks=100000000")
    assert time.perf_counter() - t0 < 5  # refused from the shapes, nothing drawn or allocated
    with pytest.raises(CheckpointError, match="above --max-bytes"):
        grow_checkpoint(small, tmp_path / "o", width="x2", depth="", max_bytes=1000)
    grow_checkpoint(small, tmp_path / "o", width="x2", depth="", max_bytes=10**6)
    args = ["grow", str(small), "--out", str(tmp_path / "c"), "--width", "x2", "--depth", ""]
    assert main([*args, "--max-bytes", "1K"]) == 2
    assert "above --max-bytes" in capsys.readouterr().err
    assert main([*args, "--max-bytes", "1M"]) == 0
    src = write_gpt2(tmp_path / "gpt2")
    with pytest.raises(CheckpointError, match="above --max-bytes"):
        hf.grow_hf(src, tmp_path / "h", width="x2", max_bytes=1000)
    with pytest.raises(CheckpointError, match="more than the free disk"):  # decoders stream
        hf.grow_hf(src, tmp_path / "h", width="x100000")
    bert = write_bert(tmp_path / "bert")
    with pytest.raises(CheckpointError, match="more than the available memory"):  # in memory
        hf.grow_hf(bert, tmp_path / "h", width="x100000")
    assert not (tmp_path / "h").exists()


def test_stream_output_is_bounded_by_the_disk(tmp_path: Path, monkeypatch) -> None:
    from growth.formats import size_bound
    from growth.formats.stream import grow_stream

    small = _small(tmp_path)
    spec = get_family("resmlp").spec(ResMLPConfig(40, 4, 8, 1, 10))
    monkeypatch.setattr(size_bound, "free_disk", lambda path: 10_000)
    with pytest.raises(CheckpointError, match="more than the free disk"):
        grow_stream(small, tmp_path / "o", spec, width={"d": 64, "h": 128})
    grow_stream(small, tmp_path / "o", spec, width={"d": 8, "h": 16}, max_bytes=10**6)


def test_seeds_are_validated(tmp_path: Path, capsys) -> None:
    spec = growth.NeuronSpec({"w": growth.LeafSpec.of(("out:h", "-"))})
    params = {"w": np.ones((2, 3), np.float32)}
    for bad in (10**23, -1, 2**32):
        with pytest.raises(GrowthError, match=f"seed={bad}: expected an integer in 0..4294967295"):
            growth.plan_growth(params, spec, width={"h": 4}, key=bad)
        with pytest.raises(GrowthError, match="train seed"):
            TrainConfig(seed=bad)
    growth.plan_growth(params, spec, width={"h": 4}, key=2**32 - 1)
    with pytest.raises(SystemExit) as e:
        main(["grow", "x", "--out", str(tmp_path / "o"), "--seed", str(10**23)])
    assert e.value.code == 2
    assert "expected an integer in 0..4294967295" in capsys.readouterr().err


def test_track_refuses_bad_eps(tmp_path: Path, capsys) -> None:
    small = _small(tmp_path)
    assert main(["track", str(small), "--eps", "-1", "--steps", "1"]) == 2
    assert "eps=-1.0: Adam's epsilon must be a finite number > 0" in capsys.readouterr().err
