"""GPT-2 / Llama ``config.json`` <-> :class:`~growth.models.decoder.DecoderConfig`, and the
tensor layouts between stacked HF tensors ``[L, ...]`` and our decoder's stacked leaves
(see :mod:`growth.formats.hf.decoder` for the table and what is matched numerically).

GPT-2 Conv1D weights are ``[in, out]`` (c_attn fuses q, k, v as ``[d, 3D]``, D = heads hd);
Llama's torch Linear weights are ``[out, in]`` and its query head ``h = kv_i group + j`` uses kv
head ``kv_i`` (HF ``repeat_kv``), which is our ``wq [L, d, kv, group, hd]`` order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from growth.errors import CheckpointError, GrowthError
from growth.models.decoder import DecoderConfig

MODEL_TYPES = ("gpt2", "llama")
PREFIX = {"gpt2": "transformer.", "llama": "model."}
GPT2_ACTS = {"gelu_new": True, "gelu_pytorch_tanh": True, "gelu_fast": True, "gelu": False}
HEAD = "lm_head.weight"  # no model prefix in either architecture
# non-block leaves: ours -> HF key (under PREFIX)
TOP = {
    "gpt2": {"embed": "wte.weight", "pos": "wpe.weight", "final_scale": "ln_f.weight",
             "final_bias": "ln_f.bias"},
    "llama": {"embed": "embed_tokens.weight", "final_scale": "norm.weight"},
}  # fmt: skip
# config keys whose non-null/true value our decoder does not reproduce
_REFUSED = (
    "sliding_window",
    "use_sliding_window",
    "add_cross_attention",
    "partial_rotary_factor",
    "scale_attn_by_inverse_layer_idx",
    "attn_logit_softcapping",
)


def _err(key: str, value: Any, expected: str) -> GrowthError:
    return GrowthError(f"config.json {key}={value!r} is not supported: {expected}")


def _need(config: Mapping[str, Any], key: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"config.json {key}={value!r}: expected a positive integer")
    return value


def _rope_theta(config: Mapping[str, Any]) -> float:
    """``rope_theta`` (transformers 4: top level, 5: inside ``rope_parameters``); any rotary
    scaling (``rope_scaling`` / ``rope_parameters.rope_type`` other than ``"default"``) refused."""
    for key in ("rope_scaling", "rope_parameters"):
        val = config.get(key)
        if val is None:
            continue
        kind = val.get("rope_type", val.get("type", "default")) if isinstance(val, dict) else val
        if kind != "default":
            raise _err(key, val, "only unscaled rotary embeddings (rope_type 'default' or null)")
        if float(val.get("partial_rotary_factor", 1.0)) != 1.0:
            raise _err(key, val, "partial_rotary_factor must be 1")
    theta = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta"))
    return 10000.0 if theta is None else float(theta)


def decoder_config(config: Mapping[str, Any]) -> DecoderConfig:
    """The :class:`DecoderConfig` computing what HF computes for this ``config.json``; refuses
    (GrowthError naming the key) anything our decoder does not reproduce exactly."""
    kind = config.get("model_type")
    if kind not in MODEL_TYPES:
        raise GrowthError(f"model_type={kind!r}: expected one of {MODEL_TYPES}")
    for key in _REFUSED:
        val = config.get(key)
        if val not in (None, False) and not (key == "partial_rotary_factor" and val == 1):
            raise _err(key, val, "expected null/false (not reproduced by our decoder)")
    return _gpt2_config(config) if kind == "gpt2" else _llama_config(config)


def _gpt2_config(config: Mapping[str, Any]) -> DecoderConfig:
    """GPT-2: pre-LayerNorm, learned positions, biases everywhere, GELU MLP (``n_inner`` or
    4 d), MHA with head_dim = n_embd / n_head, tied readout unless ``tie_word_embeddings``."""
    d, L, H = _need(config, "n_embd"), _need(config, "n_layer"), _need(config, "n_head")
    act = config.get("activation_function", "gelu_new")
    if act not in GPT2_ACTS:
        raise _err("activation_function", act, f"expected one of {sorted(GPT2_ACTS)}")
    if d % H:
        raise _err("n_head", H, f"must divide n_embd={d} (GPT-2: head_dim = n_embd / n_head)")
    return DecoderConfig(
        vocab=_need(config, "vocab_size"),
        d_model=d,
        n_layers=L,
        n_heads=H,
        d_ff=config.get("n_inner") or 4 * d,
        max_len=_need(config, "n_positions"),
        norm="layer",
        mlp="gelu",
        positions="learned",
        tied=bool(config.get("tie_word_embeddings", True)),
        bias=True,
        eps=float(config.get("layer_norm_epsilon", 1e-5)),
        attn_scale=None if config.get("scale_attn_weights", True) else 1.0,
        gelu_approximate=GPT2_ACTS[act],
    )


def _llama_config(config: Mapping[str, Any]) -> DecoderConfig:
    """Llama: pre-RMSNorm, rotary (rotate-half, ``rope_theta``), SwiGLU, GQA via
    ``num_key_value_heads``, optional ``head_dim``, biases iff ``attention_bias`` (= ``mlp_bias``),
    untied readout unless ``tie_word_embeddings``."""
    d, L = _need(config, "hidden_size"), _need(config, "num_hidden_layers")
    H = _need(config, "num_attention_heads")
    act = config.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise _err("hidden_act", act, "expected 'silu' (SwiGLU silu(gate) * up)")
    bias = bool(config.get("attention_bias", False))
    if bool(config.get("mlp_bias", False)) != bias:
        raise _err(
            "mlp_bias",
            config.get("mlp_bias"),
            f"must equal attention_bias={bias} (our decoder has biases on all projections or none)",
        )
    kv = config.get("num_key_value_heads") or H
    if H % kv:
        raise _err("num_key_value_heads", kv, f"must divide num_attention_heads={H}")
    hd = config.get("head_dim") or d // H
    if not config.get("head_dim") and d % H:
        raise _err("num_attention_heads", H, f"must divide hidden_size={d} (or give head_dim)")
    return DecoderConfig(
        vocab=_need(config, "vocab_size"),
        d_model=d,
        n_layers=L,
        n_heads=H,
        n_kv_heads=kv,
        head_dim=hd,
        d_ff=_need(config, "intermediate_size"),
        max_len=int(config.get("max_position_embeddings", 2048)),
        norm="rms",
        mlp="swiglu",
        positions="rotary",
        tied=bool(config.get("tie_word_embeddings", False)),
        bias=bias,
        eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_base=_rope_theta(config),
    )


# --------------------------------------------------------------------------------------------
# layouts: stacked HF tensors [L, ...] <-> our stacked leaves


def _gpt2_in(get: Callable[[str, tuple], np.ndarray], c: DecoderConfig) -> dict:
    L, d, H, hd, ff = c.n_layers, c.d_model, c.n_heads, c.head_dim, c.d_ff
    D = H * hd
    w, b = get("attn.c_attn.weight", (d, 3 * D)), get("attn.c_attn.bias", (3 * D,))
    return {
        "ln1_scale": get("ln_1.weight", (d,)),
        "ln1_bias": get("ln_1.bias", (d,)),
        "wq": w[..., :D].reshape(L, d, H, 1, hd),
        "wk": w[..., D : 2 * D].reshape(L, d, H, hd),
        "wv": w[..., 2 * D :].reshape(L, d, H, hd),
        "bq": b[:, :D].reshape(L, H, 1, hd),
        "bk": b[:, D : 2 * D].reshape(L, H, hd),
        "bv": b[:, 2 * D :].reshape(L, H, hd),
        "wo": get("attn.c_proj.weight", (D, d)).reshape(L, H, 1, hd, d),
        "bo": get("attn.c_proj.bias", (d,)),
        "ln2_scale": get("ln_2.weight", (d,)),
        "ln2_bias": get("ln_2.bias", (d,)),
        "w_up": get("mlp.c_fc.weight", (d, ff)),
        "b_up": get("mlp.c_fc.bias", (ff,)),
        "w_down": get("mlp.c_proj.weight", (ff, d)),
        "b_down": get("mlp.c_proj.bias", (d,)),
    }


def _gpt2_out(p: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    L, d = p["wq"].shape[:2]
    flat = [p[n].reshape(L, d, -1) for n in ("wq", "wk", "wv")]
    return {
        "ln_1.weight": p["ln1_scale"],
        "ln_1.bias": p["ln1_bias"],
        "attn.c_attn.weight": np.concatenate(flat, -1),
        "attn.c_attn.bias": np.concatenate([p[n].reshape(L, -1) for n in ("bq", "bk", "bv")], -1),
        "attn.c_proj.weight": p["wo"].reshape(L, -1, d),
        "attn.c_proj.bias": p["bo"],
        "ln_2.weight": p["ln2_scale"],
        "ln_2.bias": p["ln2_bias"],
        "mlp.c_fc.weight": p["w_up"],
        "mlp.c_fc.bias": p["b_up"],
        "mlp.c_proj.weight": p["w_down"],
        "mlp.c_proj.bias": p["b_down"],
    }


def _llama_in(get: Callable[[str, tuple], np.ndarray], c: DecoderConfig) -> dict:
    L, d, kv, g, hd, ff = c.n_layers, c.d_model, c.n_kv_heads, c.group, c.head_dim, c.d_ff
    a, m = "self_attn.", "mlp."
    p = {
        "ln1_scale": get("input_layernorm.weight", (d,)),
        "wq": get(a + "q_proj.weight", (kv * g * hd, d))
        .reshape(L, kv, g, hd, d)
        .transpose(0, 4, 1, 2, 3),
        "wk": get(a + "k_proj.weight", (kv * hd, d)).reshape(L, kv, hd, d).transpose(0, 3, 1, 2),
        "wv": get(a + "v_proj.weight", (kv * hd, d)).reshape(L, kv, hd, d).transpose(0, 3, 1, 2),
        "wo": get(a + "o_proj.weight", (d, kv * g * hd))
        .reshape(L, d, kv, g, hd)
        .transpose(0, 2, 3, 4, 1),
        "ln2_scale": get("post_attention_layernorm.weight", (d,)),
        "w_gate": get(m + "gate_proj.weight", (ff, d)).transpose(0, 2, 1),
        "w_up": get(m + "up_proj.weight", (ff, d)).transpose(0, 2, 1),
        "w_down": get(m + "down_proj.weight", (d, ff)).transpose(0, 2, 1),
    }
    if c.bias:
        p |= {
            "bq": get(a + "q_proj.bias", (kv * g * hd,)).reshape(L, kv, g, hd),
            "bk": get(a + "k_proj.bias", (kv * hd,)).reshape(L, kv, hd),
            "bv": get(a + "v_proj.bias", (kv * hd,)).reshape(L, kv, hd),
            "bo": get(a + "o_proj.bias", (d,)),
            "b_gate": get(m + "gate_proj.bias", (ff,)),
            "b_up": get(m + "up_proj.bias", (ff,)),
            "b_down": get(m + "down_proj.bias", (d,)),
        }
    return p


def _llama_out(p: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    L, d = p["wq"].shape[:2]
    a, m = "self_attn.", "mlp."
    out = {
        "input_layernorm.weight": p["ln1_scale"],
        a + "q_proj.weight": p["wq"].transpose(0, 2, 3, 4, 1).reshape(L, -1, d),
        a + "k_proj.weight": p["wk"].transpose(0, 2, 3, 1).reshape(L, -1, d),
        a + "v_proj.weight": p["wv"].transpose(0, 2, 3, 1).reshape(L, -1, d),
        a + "o_proj.weight": p["wo"].transpose(0, 4, 1, 2, 3).reshape(L, d, -1),
        "post_attention_layernorm.weight": p["ln2_scale"],
        m + "gate_proj.weight": p["w_gate"].transpose(0, 2, 1),
        m + "up_proj.weight": p["w_up"].transpose(0, 2, 1),
        m + "down_proj.weight": p["w_down"].transpose(0, 2, 1),
    }
    if "bq" in p:
        out |= {a + f"{n}_proj.bias": p[f"b{n}"].reshape(L, -1) for n in "qkvo"}
        out |= {m + f"{n}_proj.bias": p[f"b_{n}"] for n in ("gate", "up", "down")}
    return out


LAYOUT = {"gpt2": ("h", _gpt2_in, _gpt2_out), "llama": ("layers", _llama_in, _llama_out)}


def hf_config(c: DecoderConfig, config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (a GPT-2 / Llama ``config.json`` dict; other keys kept) with the sizes and eps
    of the decoder ``c``. Refuses what HF cannot express: an attention scale other than
    ``head_dim^-1/2``, non-standard rotary frequencies (a grown ``hd``), GPT-2 with
    ``d != heads * hd`` or grouped queries, Llama with ``hidden_size % heads != 0``. The readout
    multiplier is not checked here (see ``growth.formats.hf.decoder.export_params``)."""
    kind = config["model_type"]
    out = dict(config)
    H, hd, d = c.n_heads, c.head_dim, c.d_model
    if not np.isclose(c.attn_scale, hd**-0.5, rtol=1e-9, atol=0) and not (
        kind == "gpt2" and c.attn_scale == 1.0 and not config.get("scale_attn_weights", True)
    ):
        raise GrowthError(
            f"attn_scale={c.attn_scale!r} != head_dim^-1/2 = {hd**-0.5!r}: HF "
            "derives the attention scale from head_dim; do not grow 'hd'"
        )
    if kind == "gpt2":
        if H * hd != d or c.group != 1:
            raise GrowthError(
                f"GPT-2 needs n_embd = n_head * head_dim and no grouped queries; got "
                f"d={d}, heads={H} (kv={c.n_kv_heads}), head_dim={hd}: grow 'd' and "
                "'heads' by the same factor"
            )
        out |= {
            "n_embd": d,
            "n_head": H,
            "n_layer": c.n_layers,
            "layer_norm_epsilon": c.eps,
            "n_inner": None if c.d_ff == 4 * d and config.get("n_inner") is None else c.d_ff,
        }
    else:
        if c.rope_freqs is not None and not np.allclose(
            c.rope_freqs, replace(c, rope_freqs=None).freqs(), rtol=1e-12
        ):
            raise GrowthError(
                "rotary frequencies are not rope_theta^(-2i/head_dim) (a grown "
                "head_dim): HF Llama cannot express them; do not grow 'hd'"
            )
        if d % H:
            raise GrowthError(
                f"hidden_size={d} is not a multiple of num_attention_heads={H} "
                "(transformers refuses such Llama configs)"
            )
        out |= {
            "hidden_size": d,
            "num_attention_heads": H,
            "num_key_value_heads": c.n_kv_heads,
            "intermediate_size": c.d_ff,
            "num_hidden_layers": c.n_layers,
            "rms_norm_eps": c.eps,
        }
        if "head_dim" in config or hd != d // H:
            out["head_dim"] = hd
    return out
