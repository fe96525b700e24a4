"""GPT-2 / Llama safetensors import, export and growth (growth.formats.hf.decoder) on synthetic
HF-layout
checkpoints, checked against the independent numpy forwards of tests.oracles.hf_reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from growth.apps.cli import main
from growth.errors import CheckpointError, GrowthError
from growth.formats import hf
from growth.formats.hf import decoder as hf_decoder
from growth.models import model_from_params
from tests.oracles.hf_reference import reference_logits

safetensors_numpy = pytest.importorskip("safetensors.numpy")

IMPORT_TOL = 1e-5  # float32 decoder vs float64 reference, relative to the largest logit
GROW_TOL = 1e-5  # grown vs source reference logits (float32 weights)


def rel_err(new, old) -> float:
    new, old = np.asarray(new, np.float64), np.asarray(old, np.float64)
    return float(np.abs(new - old).max() / np.abs(old).max())


def _save(path, tensors, config, prefix=""):
    path.mkdir(parents=True, exist_ok=True)
    out = {(k if k == "lm_head.weight" else prefix + k): v for k, v in tensors.items()}
    safetensors_numpy.save_file(out, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def write_gpt2(path, *, d=8, H=2, L=2, V=11, P=16, ff=None, tied=True, prefix="transformer.",
               buffers=True, act="gelu_new", head_in_file=False, seed=0, dtype=np.float32,
               **extra):  # fmt: skip
    rng = np.random.default_rng(seed)

    def r(*shape, s=0.5, mean=0.0):
        return (mean + s * rng.standard_normal(shape)).astype(dtype)

    f = ff or 4 * d
    t = {"wte.weight": r(V, d), "wpe.weight": r(P, d, s=0.2)}
    for i in range(L):
        p = f"h.{i}."
        t |= {
            p + "ln_1.weight": r(d, s=0.2, mean=1), p + "ln_1.bias": r(d, s=0.2),
            p + "attn.c_attn.weight": r(d, 3 * d, s=1.5 * d**-0.5),
            p + "attn.c_attn.bias": r(3 * d),
            p + "attn.c_proj.weight": r(d, d, s=d**-0.5), p + "attn.c_proj.bias": r(d, s=0.2),
            p + "ln_2.weight": r(d, s=0.2, mean=1), p + "ln_2.bias": r(d, s=0.2),
            p + "mlp.c_fc.weight": r(d, f, s=d**-0.5), p + "mlp.c_fc.bias": r(f, s=0.2),
            p + "mlp.c_proj.weight": r(f, d, s=f**-0.5), p + "mlp.c_proj.bias": r(d, s=0.2),
        }  # fmt: skip
        if buffers:
            t[p + "attn.bias"] = np.tril(np.ones((P, P), bool)).reshape(1, 1, P, P)
            t[p + "attn.masked_bias"] = np.array(-1e4, np.float32)
    t |= {"ln_f.weight": r(d, s=0.2, mean=1), "ln_f.bias": r(d, s=0.2)}
    if not tied:
        t["lm_head.weight"] = r(V, d)
    elif head_in_file:
        t["lm_head.weight"] = t["wte.weight"]
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": V,
              "n_positions": P, "n_ctx": P, "n_embd": d, "n_layer": L, "n_head": H,
              "n_inner": ff, "activation_function": act, "layer_norm_epsilon": 1e-5,
              "tie_word_embeddings": tied, "bos_token_id": 0} | extra  # fmt: skip
    return _save(path, t, config, prefix)


def write_llama(
    path,
    *,
    d=8,
    H=2,
    KV=None,
    hd=None,
    L=2,
    V=11,
    ff=12,
    tied=False,
    bias=False,
    prefix="model.",
    inv_freq=False,
    v5_rope=False,
    theta=1000.0,
    seed=0,
    model_type="llama",
    qkv_bias=False,
    dtype=np.float32,
    **extra,
):
    """A random Llama-layout checkpoint (``model_type`` llama / mistral / qwen2; ``qkv_bias``:
    Qwen2's q/k/v biases alone; ``bias``: biases on every projection)."""
    rng = np.random.default_rng(seed)

    def r(*shape, s=0.5, mean=0.0):
        return (mean + s * rng.standard_normal(shape)).astype(dtype)

    KV, h = KV or H, hd or d // H
    t = {"embed_tokens.weight": r(V, d)}
    for i in range(L):
        p = f"layers.{i}."
        a, m = p + "self_attn.", p + "mlp."
        t |= {
            p + "input_layernorm.weight": r(d, s=0.2, mean=1),
            a + "q_proj.weight": r(H * h, d, s=1.5 * d**-0.5),
            a + "k_proj.weight": r(KV * h, d, s=1.5 * d**-0.5),
            a + "v_proj.weight": r(KV * h, d, s=d**-0.5),
            a + "o_proj.weight": r(d, H * h, s=(H * h) ** -0.5),
            p + "post_attention_layernorm.weight": r(d, s=0.2, mean=1),
            m + "gate_proj.weight": r(ff, d, s=d**-0.5), m + "up_proj.weight": r(ff, d, s=d**-0.5),
            m + "down_proj.weight": r(d, ff, s=ff**-0.5),
        }  # fmt: skip
        if bias or qkv_bias:
            t |= {a + "q_proj.bias": r(H * h, s=0.2), a + "k_proj.bias": r(KV * h, s=0.2),
                  a + "v_proj.bias": r(KV * h, s=0.2)}  # fmt: skip
        if bias:
            t |= {a + "o_proj.bias": r(d, s=0.2), m + "gate_proj.bias": r(ff, s=0.2),
                  m + "up_proj.bias": r(ff, s=0.2), m + "down_proj.bias": r(d, s=0.2)}  # fmt: skip
        if inv_freq:
            inv = 1.0 / theta ** (np.arange(0, h, 2, dtype=np.float32) / h)
            t[a + "rotary_emb.inv_freq"] = inv.astype(np.float32)
    t["norm.weight"] = r(d, s=0.2, mean=1)
    if not tied:
        t["lm_head.weight"] = r(V, d)
    arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
            "qwen2": "Qwen2ForCausalLM"}[model_type]  # fmt: skip
    config = {"model_type": model_type, "architectures": [arch], "vocab_size": V,
              "hidden_size": d, "intermediate_size": ff, "num_hidden_layers": L,
              "num_attention_heads": H, "num_key_value_heads": KV, "hidden_act": "silu",
              "max_position_embeddings": 32, "rms_norm_eps": 1e-6, "tie_word_embeddings": tied,
              "attention_bias": bias, "mlp_bias": bias}  # fmt: skip
    if hd:
        config["head_dim"] = hd
    if v5_rope:
        config["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    else:
        config |= {"rope_theta": theta, "rope_scaling": None}
    return _save(path, t, config | extra, prefix)


CASES = {
    "gpt2-tied": (write_gpt2, {}),
    "gpt2-untied-bare-erf": (write_gpt2, dict(tied=False, prefix="", buffers=False, act="gelu")),
    "gpt2-head-in-file-ff": (write_gpt2, dict(head_in_file=True, ff=12)),
    "llama-gqa-untied": (write_llama, dict(H=4, KV=2, d=16)),
    "llama-mqa-tied-bias": (write_llama, dict(H=4, KV=1, d=16, tied=True, bias=True)),
    "llama-hd-v5-invfreq": (write_llama, dict(H=2, hd=6, d=8, v5_rope=True, inv_freq=True)),
}


def _ids(V=11, B=2, T=7, seed=1):
    return np.random.default_rng(seed).integers(0, V, (B, T))


def our_logits(path, ids):
    params, config, _ = hf.load_hf(path)
    model = model_from_params("decoder", hf_decoder.decoder_config(config), params)
    return np.asarray(model(ids))


def _tensors(path):
    return safetensors_numpy.load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_matches_reference(case, tmp_path):
    write, kw = CASES[case]
    src = write(tmp_path / "src", **kw)
    ids = _ids()
    ref = reference_logits(src, ids)
    err = rel_err(our_logits(src, ids), ref)
    print(f"{case}: import rel err {err:.2e}")
    assert err < IMPORT_TOL


@pytest.mark.parametrize("case", sorted(CASES) + ["gpt2-bf16"])
def test_round_trip_bit_identical(case, tmp_path):
    if case == "gpt2-bf16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        write, kw = write_gpt2, {"dtype": ml_dtypes.bfloat16}
    else:
        write, kw = CASES[case]
    src = write(tmp_path / "src", **kw)
    params, config, spec = hf.load_hf(src)
    spec.resolve(params)
    hf.save_hf(tmp_path / "rt", params, config)
    t0, t1 = _tensors(src), _tensors(tmp_path / "rt")
    assert t0.keys() == t1.keys()
    for k in t0:
        assert t0[k].dtype == t1[k].dtype and t0[k].shape == t1[k].shape, k
        assert np.array_equal(t0[k], t1[k]), k
    cfg0 = json.loads((src / "config.json").read_text())
    assert json.loads((tmp_path / "rt" / "config.json").read_text()) == cfg0
    with pytest.raises(CheckpointError, match="exists"):
        hf.save_hf(tmp_path / "rt", params, config)


GROW_CASES = ["gpt2-tied", "gpt2-untied-bare-erf", "llama-gqa-untied", "llama-mqa-tied-bias"]


@pytest.mark.parametrize("method", ["exact", "copy"])
@pytest.mark.parametrize("case", GROW_CASES)
def test_exact_growth_keeps_logits(case, method, tmp_path):
    write, kw = CASES[case]
    src = write(tmp_path / "src", **kw)
    _, c0, _ = hf.load_hf(src)
    report = hf.grow_hf(src, tmp_path / "big", width="x2", depth="x2", method=method)
    # streamed: copies are proved, zero-sum noise is left unmeasured (no forward pass)
    assert report.function_check == ("proved" if method == "copy" else "unmeasured"), report
    ids = _ids()
    ref = reference_logits(src, ids)
    err = rel_err(reference_logits(tmp_path / "big", ids), ref)  # the exported file itself
    ours = rel_err(our_logits(tmp_path / "big", ids), ref)
    print(f"{case} {method}: grown rel err (reference) {err:.2e}, (our decoder) {ours:.2e}")
    assert err < GROW_TOL and ours < GROW_TOL
    assert report.record_error(err).function_preserving, report.notes
    c = hf_decoder.decoder_config(json.loads((tmp_path / "big" / "config.json").read_text()))
    c0 = hf_decoder.decoder_config(c0)
    assert (c.d_model, c.n_heads, c.n_kv_heads, c.d_ff, c.n_layers, c.head_dim) == (
        2 * c0.d_model, 2 * c0.n_heads, 2 * c0.n_kv_heads, 2 * c0.d_ff, 2 * c0.n_layers,
        c0.head_dim)  # fmt: skip
    assert c.tied == c0.tied and c.readout_mult == 1.0
    if c0.tied:
        assert any("folded" in n for n in report.notes)


def test_llama_non_multiple_width_exact(tmp_path):
    """d 8 -> 12 (padded RMSNorm: eps x 8/12), heads 2 -> 3, ff 12 -> 20, tied readout; then d
    alone (head_dim no longer hidden/heads: written to config.json)."""
    src = write_llama(tmp_path / "src", tied=True)
    ids = _ids()
    ref = reference_logits(src, ids)
    report = hf.grow_hf(src, tmp_path / "big", width="d=12,heads=3,ff=20", method="copy")
    assert report.function_preserving and report.eps_scale
    cfg = json.loads((tmp_path / "big" / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["intermediate_size"]) == (12, 3, 20)
    assert cfg.get("head_dim", 4) == 4
    assert cfg["rms_norm_eps"] == pytest.approx(1e-6 * report.eps_scale["d"])
    err = rel_err(reference_logits(tmp_path / "big", ids), ref)
    hf.grow_hf(src, tmp_path / "wide", width="d=x2", depth="layers=3", method="exact")
    cfg = json.loads((tmp_path / "wide" / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["head_dim"]) == (16, 2, 4)
    assert cfg["num_hidden_layers"] == 3
    err2 = rel_err(reference_logits(tmp_path / "wide", ids), ref)
    print(f"llama non-multiple width: rel err {err:.2e}; d-only x2 + depth 3: {err2:.2e}")
    assert err < GROW_TOL and err2 < GROW_TOL


def test_engine_growth_through_spec_then_export(tmp_path):
    """The Python path: load -> plan_growth on the decoder spec (here the query-group space,
    which grow_hf does not offer) -> decoder.grown -> export_params -> save_hf; a grown head_dim
    is refused on export (HF derives the attention scale and rotary frequencies from it)."""
    from growth import apply_plan, plan_growth
    from growth.models import decoder

    src = write_llama(tmp_path / "src", H=4, KV=2, d=16, tied=True)
    params, config, spec = hf.load_hf(src)
    c = hf_decoder.decoder_config(config)
    plan = plan_growth(params, spec, width={"group": 4, "d": 32}, method="copy")
    c2 = decoder.grown(c, plan)
    assert c2.readout_mult == 0.5
    grown, cfg = hf_decoder.export_params(apply_plan(plan, params), c2, config)
    hf.save_hf(tmp_path / "big", grown, cfg)
    cfg = json.loads((tmp_path / "big" / "config.json").read_text())
    sizes = (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"])
    assert sizes == (32, 8, 2)
    assert "head_dim" not in cfg  # 32 / 8 = 4, HF's default
    ids = _ids()
    assert rel_err(reference_logits(tmp_path / "big", ids), reference_logits(src, ids)) < GROW_TOL
    plan = plan_growth(params, spec, width={"hd": 8}, method="copy")
    with pytest.raises(GrowthError, match="attn_scale"):
        hf_decoder.export_params(apply_plan(plan, params), decoder.grown(c, plan), config)


@settings(max_examples=4, deadline=None)
@given(
    kind=st.sampled_from(["gpt2", "llama"]),
    heads=st.sampled_from([(2, 2), (4, 2), (4, 1), (1, 1)]),
    hd=st.sampled_from([2, 4]),
    L=st.integers(1, 3),
    tied=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_import_and_growth_random_configs(tmp_path_factory, kind, heads, hd, L, tied, seed):
    """Over random sizes: import == reference, and exact x2 growth keeps the reference logits."""
    tmp = tmp_path_factory.mktemp("h")
    H, KV = heads
    if kind == "gpt2":
        src = write_gpt2(tmp / "src", d=H * hd, H=H, L=L, tied=tied, seed=seed)
    else:
        src = write_llama(tmp / "src", d=H * hd, H=H, KV=KV, L=L, ff=6, tied=tied, seed=seed)
    ids = _ids(seed=seed)
    ref = reference_logits(src, ids)
    assert rel_err(our_logits(src, ids), ref) < IMPORT_TOL
    hf.grow_hf(src, tmp / "big", width="x2", depth="x2", method="exact", seed=seed)
    assert rel_err(reference_logits(tmp / "big", ids), ref) < GROW_TOL


def _bad_config(tmp_path, write, kw, **overrides):
    src = write(tmp_path / "src", **kw)
    cfg = json.loads((src / "config.json").read_text()) | overrides
    (src / "config.json").write_text(json.dumps(cfg))
    return src


@pytest.mark.parametrize(
    "write, overrides, match",
    [
        (write_llama, {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
        (write_llama, {"rope_parameters": {"rope_type": "yarn", "factor": 4}}, "rope_parameters"),
        (write_llama, {"sliding_window": 4096}, "sliding_window"),
        (write_llama, {"hidden_act": "gelu"}, "hidden_act"),
        (write_llama, {"mlp_bias": True}, "mlp_bias"),
        (write_llama, {"num_key_value_heads": 3}, "num_key_value_heads"),
        (write_gpt2, {"activation_function": "relu"}, "activation_function"),
        (write_gpt2, {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse"),
        (write_gpt2, {"add_cross_attention": True}, "add_cross_attention"),
        (write_gpt2, {"n_head": 3}, "n_head"),
        (write_gpt2, {"n_embd": None}, "n_embd"),
        (write_gpt2, {"n_inner": 16}, "shape"),
    ],
)
def test_unsupported_configs_refused(tmp_path, write, overrides, match):
    src = _bad_config(tmp_path, write, {}, **overrides)
    with pytest.raises(GrowthError, match=match):
        hf.load_hf(src)


def test_bad_tensors_refused(tmp_path):
    src = write_gpt2(tmp_path / "a")
    t = _tensors(src)
    del t["transformer.h.1.mlp.c_fc.bias"]
    safetensors_numpy.save_file(t, str(src / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'transformer.h.1.mlp.c_fc.bias'"):
        hf.load_hf(src)
    src = write_llama(tmp_path / "b")
    t = _tensors(src) | {"model.layers.0.extra.weight": np.zeros(3, np.float32)}
    safetensors_numpy.save_file(t, str(src / "model.safetensors"))
    with pytest.raises(GrowthError, match="unsupported tensors.*extra"):
        hf.load_hf(src)
    src = write_llama(tmp_path / "c", tied=True)
    t = _tensors(src)
    t["lm_head.weight"] = t["model.embed_tokens.weight"] + 1
    safetensors_numpy.save_file(t, str(src / "model.safetensors"))
    with pytest.raises(GrowthError, match="tie_word_embeddings"):
        hf.load_hf(src)
    src = write_llama(tmp_path / "d", tied=True)
    cfg = json.loads((src / "config.json").read_text()) | {"tie_word_embeddings": False}
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="lm_head"):
        hf.load_hf(src)
    src = write_gpt2(tmp_path / "e")
    t = _tensors(src)
    t["transformer.h.0.attn.bias"] = np.ones_like(t["transformer.h.0.attn.bias"])
    safetensors_numpy.save_file(t, str(src / "model.safetensors"))
    with pytest.raises(GrowthError, match="attn.bias"):
        hf.load_hf(src)


def test_inexpressible_growth_refused(tmp_path):
    gpt2 = write_gpt2(tmp_path / "g")
    with pytest.raises(GrowthError, match="same factor"):
        hf.grow_hf(gpt2, tmp_path / "o", width="d=x2")
    with pytest.raises(GrowthError, match="unknown space 'hd'"):
        hf.grow_hf(gpt2, tmp_path / "o", width="hd=x2")
    with pytest.raises(GrowthError, match="new_block_ln"):
        hf.grow_hf(gpt2, tmp_path / "o", depth="x2", new_block_ln="unit")
    llama = write_llama(tmp_path / "l", H=4, KV=2, d=16)
    with pytest.raises(GrowthError, match="multiple of the query group size 2"):
        hf.grow_hf(llama, tmp_path / "o", width="heads=5")
    with pytest.raises(GrowthError, match="not a multiple of num_attention_heads"):
        hf.grow_hf(llama, tmp_path / "o", width="d=18")
    assert not (tmp_path / "o").exists()
    params, config, _ = hf.load_hf(llama)
    c = hf_decoder.decoder_config(config)
    import dataclasses

    with pytest.raises(GrowthError, match="attn_scale"):
        hf_decoder.export_params(params, dataclasses.replace(c, attn_scale=0.1), config)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_cli_grow_from_hf(kind, tmp_path, capsys):
    src = (write_gpt2 if kind == "gpt2" else write_llama)(tmp_path / "src", tied=True)
    out = tmp_path / "big"
    argv = ["grow", "--from-hf", str(src), "--to-hf", str(out), "--width", "x2", "--depth", "x2"]
    assert main(argv) == 0
    # the default (exact: zero-sum noise) is streamed without a forward pass: not claimed
    assert "function preserving: False (unmeasured)" in capsys.readouterr().out
    ids = _ids()
    err = rel_err(reference_logits(out, ids), reference_logits(src, ids))
    print(f"cli {kind}: rel err {err:.2e}")
    assert err < GROW_TOL
    assert main(argv) == 2  # exists
    assert "exists" in capsys.readouterr().err
    if kind == "gpt2":
        assert main(["grow", "--from-hf", str(src), "--to-hf", str(tmp_path / "o2"),
                     "--width", "d=x2", "--depth", ""]) == 2  # fmt: skip
        assert "same factor" in capsys.readouterr().err
