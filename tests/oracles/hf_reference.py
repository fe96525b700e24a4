"""Independent float64 numpy forwards of GPT-2 and Llama causal LMs, straight from the flat HF
tensor dict (``model.safetensors`` keys) and ``config.json``, written from the published
architectures and *not* using :mod:`growth.models.decoder` -- the tests check our import, growth
and export against these.

GPT-2 (Radford et al. 2019; HF ``GPT2LMHeadModel``), pre-LayerNorm, Conv1D weights ``[in, out]``:

    x = wte[u] + wpe[t]
    per block:  a = LN_1(x);  [q | k | v] = a W_attn + b_attn   (W_attn [d, 3d], heads of hd)
                x += softmax_causal(q k^T * s) v W_proj + b_proj      (s = hd^-1/2)
                x += gelu(LN_2(x) W_fc + b_fc) W_proj2 + b_proj2      (gelu_new: tanh form)
    logits = LN_f(x) wte^T   (or lm_head^T when untied)

Llama (Touvron et al. 2023; HF ``LlamaForCausalLM``), pre-RMSNorm, torch Linear ``[out, in]``:

    x = E[u]
    per block:  a = RMS(x) g_1;  q = a Wq^T, k = a Wk^T, v = a Wv^T (H query, KV kv heads)
                q, k <- q cos + rotate_half(q) sin  (rotate_half(x) = [-x2, x1],
                        angle t * theta^(-2i/hd) repeated for both halves)
                query head h attends with kv head h // (H / KV)      (repeat_kv)
                x += softmax_causal(q k^T hd^-1/2) v Wo^T
                x += (silu(b Wg^T) * (b Wu^T)) Wd^T,  b = RMS(x) g_2
    logits = RMS(x) g_f lm_head^T   (E^T when tied)

Mistral (Jiang et al. 2023; HF ``MistralForCausalLM``): Llama with sliding-window attention,
position t sees positions s with ``t - W < s <= t`` (``sliding_window`` W; null: all). Qwen2
(HF ``Qwen2ForCausalLM``): Llama with biases on q, k and v (applied when present in the file).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _f64(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def rms_norm(x: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g


def gelu(x: np.ndarray, flavour: str = "gelu_new") -> np.ndarray:
    """``gelu``: x Phi(x) (erf); ``gelu_new`` / ``gelu_pytorch_tanh`` / ``gelu_fast``:
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    if flavour == "gelu":
        erf = np.vectorize(math.erf)
        return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def causal_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, window: int | None = None
) -> np.ndarray:
    """q, k, v [B, heads, T, hd] -> [B, heads, T, hd]; position t sees positions s <= t (and
    ``s > t - window`` with a sliding window)."""
    s = np.einsum("bhtd,bhsd->bhts", q, k) * scale
    T = q.shape[2]
    t, r = np.arange(T)[:, None], np.arange(T)[None, :]
    seen = (r <= t) & ((r > t - window) if window else True)
    s = np.where(seen, s, -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhts,bhsd->bhtd", s / s.sum(-1, keepdims=True), v)


def gpt2_logits(tensors: Mapping[str, np.ndarray], config: Mapping, ids: np.ndarray) -> np.ndarray:
    """Logits [B, T, V] of a GPT-2 checkpoint for token ids [B, T] (float64)."""
    pre = "transformer." if any(k.startswith("transformer.") for k in tensors) else ""

    def t(key: str) -> np.ndarray:
        return _f64(tensors[pre + key])

    d, H = int(config["n_embd"]), int(config["n_head"])
    hd, eps = d // H, float(config.get("layer_norm_epsilon", 1e-5))
    scale = hd**-0.5 if config.get("scale_attn_weights", True) else 1.0
    act = config.get("activation_function", "gelu_new")
    B, T = ids.shape
    x = t("wte.weight")[ids] + t("wpe.weight")[:T]
    for i in range(int(config["n_layer"])):
        p = f"h.{i}."
        a = layer_norm(x, t(p + "ln_1.weight"), t(p + "ln_1.bias"), eps)
        qkv = a @ t(p + "attn.c_attn.weight") + t(p + "attn.c_attn.bias")
        q, k, v = (z.reshape(B, T, H, hd).transpose(0, 2, 1, 3) for z in np.split(qkv, 3, -1))
        o = causal_attention(q, k, v, scale).transpose(0, 2, 1, 3).reshape(B, T, d)
        x = x + o @ t(p + "attn.c_proj.weight") + t(p + "attn.c_proj.bias")
        m = layer_norm(x, t(p + "ln_2.weight"), t(p + "ln_2.bias"), eps)
        h = gelu(m @ t(p + "mlp.c_fc.weight") + t(p + "mlp.c_fc.bias"), act)
        x = x + h @ t(p + "mlp.c_proj.weight") + t(p + "mlp.c_proj.bias")
    x = layer_norm(x, t("ln_f.weight"), t("ln_f.bias"), eps)
    tied = config.get("tie_word_embeddings", True)
    return x @ (t("wte.weight") if tied else _f64(tensors["lm_head.weight"])).T


def rotate_half(x: np.ndarray) -> np.ndarray:
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], -1)


def llama_logits(tensors: Mapping[str, np.ndarray], config: Mapping, ids: np.ndarray) -> np.ndarray:
    """Logits [B, T, V] of a Llama checkpoint for token ids [B, T] (float64)."""
    pre = "model." if any(k.startswith("model.") for k in tensors) else ""

    def t(key: str) -> np.ndarray:
        return _f64(tensors[pre + key])

    def lin(x: np.ndarray, key: str) -> np.ndarray:  # torch Linear: x W^T (+ b)
        y = x @ t(key + ".weight").T
        return y + t(key + ".bias") if pre + key + ".bias" in tensors else y

    d, H = int(config["hidden_size"]), int(config["num_attention_heads"])
    KV = int(config.get("num_key_value_heads") or H)
    hd = int(config.get("head_dim") or d // H)
    eps = float(config.get("rms_norm_eps", 1e-6))
    rp = config.get("rope_parameters") or {}
    theta = float(rp.get("rope_theta", config.get("rope_theta", 10000.0)))
    window = config.get("sliding_window") if config["model_type"] == "mistral" else None
    B, T = ids.shape
    inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(T, dtype=np.float64)[:, None] * np.concatenate([inv, inv])[None]
    cos, sin = np.cos(ang), np.sin(ang)  # [T, hd]
    x = t("embed_tokens.weight")[ids]
    for i in range(int(config["num_hidden_layers"])):
        p = f"layers.{i}."
        a = rms_norm(x, t(p + "input_layernorm.weight"), eps)
        q = lin(a, p + "self_attn.q_proj").reshape(B, T, H, hd).transpose(0, 2, 1, 3)
        k = lin(a, p + "self_attn.k_proj").reshape(B, T, KV, hd).transpose(0, 2, 1, 3)
        v = lin(a, p + "self_attn.v_proj").reshape(B, T, KV, hd).transpose(0, 2, 1, 3)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        rep = np.arange(H) // (H // KV)  # query head h uses kv head h // group
        o = causal_attention(q, k[:, rep], v[:, rep], hd**-0.5, window)
        x = x + lin(o.transpose(0, 2, 1, 3).reshape(B, T, H * hd), p + "self_attn.o_proj")
        b = rms_norm(x, t(p + "post_attention_layernorm.weight"), eps)
        g = lin(b, p + "mlp.gate_proj")
        x = x + lin(g / (1.0 + np.exp(-g)) * lin(b, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = rms_norm(x, t("norm.weight"), eps)
    head = "lm_head.weight"
    tied = config.get("tie_word_embeddings", False)
    return x @ (t("embed_tokens.weight") if tied or head not in tensors else _f64(tensors[head])).T


def read_checkpoint(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """``(config, tensors)`` of a HF checkpoint directory: ``model.safetensors`` or the shards
    named by ``model.safetensors.index.json`` (read with ``safetensors.numpy``)."""
    import json

    from safetensors.numpy import load_file

    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    if (path / "model.safetensors").exists():
        return config, load_file(str(path / "model.safetensors"))
    index = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    tensors = {}
    for file in sorted(set(index.values())):
        tensors |= load_file(str(path / file))
    assert set(tensors) == set(index), "index and shards disagree"
    return config, tensors


def reference_logits(path: str | Path, ids: np.ndarray) -> np.ndarray:
    """Logits of the checkpoint directory ``path`` (GPT-2, Llama, Mistral or Qwen2; single file
    or sharded) for ids [B, T]."""
    config, tensors = read_checkpoint(path)
    fn = {"gpt2": gpt2_logits, "llama": llama_logits, "mistral": llama_logits,
          "qwen2": llama_logits}[config["model_type"]]  # fmt: skip
    return fn(tensors, config, np.asarray(ids))
