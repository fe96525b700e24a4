"""GPT-2 / Llama / Mistral / Qwen2 ``config.json`` <-> :class:`~growth.models.decoder.
DecoderConfig`, and the tensor layouts between HF tensors and our decoder's leaves (see
:mod:`growth.formats.hf.decoder` for the table and what is matched numerically).

GPT-2 Conv1D weights are ``[in, out]`` (c_attn fuses q, k, v as ``[d, 3D]``, D = heads hd);
Llama's torch Linear weights are ``[out, in]`` and its query head ``h = kv_i group + j`` uses kv
head ``kv_i`` (HF ``repeat_kv``), which is our ``wq [L, d, kv, group, hd]`` order. Mistral is
Llama's layout (plus a sliding attention window, carried unchanged by growth); Qwen2 is Llama's
layout with q/k/v biases (no o_proj / MLP biases).

A layout is a list of :class:`Unit`: one HF tensor and the leaves of ours it holds, converted in
both directions on arrays with a leading layer axis, so the same table serves the in-memory
import (all layers stacked) and streaming growth (one layer, axis of size 1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np

from growth.errors import CheckpointError, GrowthError
from growth.models.decoder import DecoderConfig

MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2")
LLAMA_LIKE = ("llama", "mistral", "qwen2")
PREFIX = {"gpt2": "transformer.", "llama": "model.", "mistral": "model.", "qwen2": "model."}
BLOCK = {"gpt2": "h", "llama": "layers", "mistral": "layers", "qwen2": "layers"}
GPT2_ACTS = {"gelu_new": True, "gelu_pytorch_tanh": True, "gelu_fast": True, "gelu": False}
HEAD = "lm_head.weight"  # no model prefix in any of these architectures
# config keys whose non-null/true value our decoder does not reproduce, per model type
_REFUSED = {
    "gpt2": ("add_cross_attention", "scale_attn_by_inverse_layer_idx", "sliding_window"),
    "llama": ("sliding_window", "use_sliding_window", "partial_rotary_factor",
              "attn_logit_softcapping"),
    "mistral": ("partial_rotary_factor", "attn_logit_softcapping"),
    "qwen2": ("use_sliding_window", "partial_rotary_factor", "attn_logit_softcapping"),
}  # fmt: skip


def _err(key: str, value: Any, expected: str) -> GrowthError:
    return GrowthError(f"config.json {key}={value!r} is not supported: {expected}")


def need(config: Mapping[str, Any], key: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"config.json {key}={value!r}: expected a positive integer")
    return value


def rope_scaled(config: Mapping[str, Any]) -> list[str]:
    """The keys of ``config`` that change the rotary map from plain ``theta^(-2i/hd)`` on every
    pair (scaling of any ``rope_type``, a partial rotary factor)."""
    out = []
    for key in ("rope_scaling", "rope_parameters"):
        val = config.get(key)
        if isinstance(val, dict):
            kind = val.get("rope_type", val.get("type", "default"))
            partial = float(val.get("partial_rotary_factor", 1.0))
        else:
            kind, partial = ("default" if val is None else val), 1.0
        if kind != "default" or partial != 1.0:
            out.append(key)
    if config.get("partial_rotary_factor") not in (None, 1, 1.0):
        out.append("partial_rotary_factor")
    return out


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


def decoder_config(config: Mapping[str, Any], *, growth_only: bool = False) -> DecoderConfig:
    """The :class:`DecoderConfig` computing what HF computes for this ``config.json``; refuses
    (GrowthError naming the key) anything our decoder does not reproduce exactly.

    growth_only: the config only sizes a growth (``growth.formats.hf.stream``), our decoder
    never runs it: rotary scaling and partial rotary factors (:func:`rope_scaled`) are then
    accepted, since HF growth never changes ``head_dim`` and carries those keys unchanged, so
    every head keeps its source's rotary map (the DecoderConfig's ``rope_base`` is then nominal).
    """
    kind = config.get("model_type")
    if kind not in MODEL_TYPES:
        raise GrowthError(f"model_type={kind!r}: expected one of {MODEL_TYPES}")
    if growth_only and rope_scaled(config):
        plain = {k: v for k, v in config.items() if k not in rope_scaled(config)}
        return decoder_config(plain)
    for key in _REFUSED[kind]:
        val = config.get(key)
        if val not in (None, False) and not (key == "partial_rotary_factor" and val == 1):
            raise _err(key, val, "expected null/false (not reproduced by our decoder)")
    types = config.get("layer_types")
    if types is not None and set(types) - {"full_attention", "sliding_attention"}:
        raise _err("layer_types", types, "only 'full_attention' / 'sliding_attention' layers")
    return _gpt2_config(config) if kind == "gpt2" else _llama_config(config)


def _gpt2_config(config: Mapping[str, Any]) -> DecoderConfig:
    """GPT-2: pre-LayerNorm, learned positions, biases everywhere, GELU MLP (``n_inner`` or
    4 d), MHA with head_dim = n_embd / n_head, tied readout unless ``tie_word_embeddings``."""
    d, L, H = need(config, "n_embd"), need(config, "n_layer"), need(config, "n_head")
    act = config.get("activation_function", "gelu_new")
    if act not in GPT2_ACTS:
        raise _err("activation_function", act, f"expected one of {sorted(GPT2_ACTS)}")
    if d % H:
        raise _err("n_head", H, f"must divide n_embd={d} (GPT-2: head_dim = n_embd / n_head)")
    return DecoderConfig(
        vocab=need(config, "vocab_size"),
        d_model=d,
        n_layers=L,
        n_heads=H,
        d_ff=config.get("n_inner") or 4 * d,
        max_len=need(config, "n_positions"),
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
    untied readout unless ``tie_word_embeddings``. Mistral: the same; its ``sliding_window`` is
    not applied by our decoder (it equals HF on sequences of at most that many tokens; growth
    carries the window unchanged). Qwen2: the same with q/k/v biases (``bias=True``; the o_proj
    and MLP biases, absent from the checkpoint, are zeros on import and must stay zero)."""
    qwen2 = config.get("model_type") == "qwen2"
    d, L = need(config, "hidden_size"), need(config, "num_hidden_layers")
    H = need(config, "num_attention_heads")
    act = config.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise _err("hidden_act", act, "expected 'silu' (SwiGLU silu(gate) * up)")
    bias = qwen2 or bool(config.get("attention_bias", False))
    if not qwen2 and bool(config.get("mlp_bias", False)) != bias:
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
        vocab=need(config, "vocab_size"),
        d_model=d,
        n_layers=L,
        n_heads=H,
        n_kv_heads=kv,
        head_dim=hd,
        d_ff=need(config, "intermediate_size"),
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
# layouts: HF tensors <-> our leaves, both with a leading layer axis


class Unit(NamedTuple):
    """One HF tensor (``hf``: suffix under ``{block}.{i}.`` or a top-level key) and the leaves of
    ours it holds. ``shape(c)``: its HF shape (no layer axis); ``inward(x, c)``: ``x [L, *shape]``
    -> our leaves ``[L, ...]``; ``outward(leaves, c)`` the inverse (``c`` gives the sizes)."""

    hf: str
    ours: tuple[str, ...]
    shape: Callable[[DecoderConfig], tuple[int, ...]]
    inward: Callable[[np.ndarray, DecoderConfig], tuple[np.ndarray, ...]]
    outward: Callable[[tuple[np.ndarray, ...], DecoderConfig], np.ndarray]


def _plain(hf: str, ours: str, split: Callable, perm: tuple[int, ...]) -> Unit:
    """A 1:1 unit: HF axis k is the product of the sizes ``split(c)[k]`` (row-major), and our
    leaf's axes are those split axes in the order ``perm``."""

    def flat(c: DecoderConfig) -> list[int]:
        return [n for group in split(c) for n in group]

    def inward(x: np.ndarray, c: DecoderConfig) -> tuple[np.ndarray]:
        return (x.reshape(x.shape[0], *flat(c)).transpose(0, *(p + 1 for p in perm)),)

    def outward(leaves: tuple[np.ndarray, ...], c: DecoderConfig) -> np.ndarray:
        (y,) = leaves
        y = y.transpose(0, *(int(i) + 1 for i in np.argsort(perm)))
        return y.reshape(y.shape[0], *(int(np.prod(g)) for g in split(c)))

    def shape(c: DecoderConfig) -> tuple[int, ...]:
        return tuple(int(np.prod(g)) for g in split(c))

    return Unit(hf, (ours,), shape, inward, outward)


def _fused(hf: str, ours: tuple[str, ...], weight: bool) -> Unit:
    """GPT-2's ``c_attn`` (weight ``[d, 3D]`` or bias ``[3D]``) <-> ``wq|bq`` (one query per kv
    head: ``[.., H, 1, hd]``), ``wk|bk``, ``wv|bv`` (``[.., H, hd]``)."""

    def inward(x: np.ndarray, c: DecoderConfig) -> tuple[np.ndarray, ...]:
        lead, D = x.shape[:-1], c.n_heads * c.head_dim
        parts = [x[..., i * D : (i + 1) * D] for i in range(3)]
        q = parts[0].reshape(*lead, c.n_heads, 1, c.head_dim)
        return (q, *(p.reshape(*lead, c.n_heads, c.head_dim) for p in parts[1:]))

    def outward(leaves: tuple[np.ndarray, ...], c: DecoderConfig) -> np.ndarray:
        lead = leaves[0].shape[: 2 if weight else 1]
        return np.concatenate([y.reshape(*lead, -1) for y in leaves], -1)

    def shape(c: DecoderConfig) -> tuple[int, ...]:
        D = 3 * c.n_heads * c.head_dim
        return (c.d_model, D) if weight else (D,)

    return Unit(hf, ours, shape, inward, outward)


def _d(c):
    return ((c.d_model,),)


def _q(c):  # query heads: kv, group, head_dim
    return (c.n_kv_heads, c.group, c.head_dim)


def _kv(c):
    return (c.n_kv_heads, c.head_dim)


def block_units(kind: str, c: DecoderConfig) -> list[Unit]:
    """The HF tensors of one block of a ``kind`` model with config ``c``, as units."""
    if kind == "gpt2":
        return [
            _plain("ln_1.weight", "ln1_scale", _d, (0,)),
            _plain("ln_1.bias", "ln1_bias", _d, (0,)),
            _fused("attn.c_attn.weight", ("wq", "wk", "wv"), weight=True),
            _fused("attn.c_attn.bias", ("bq", "bk", "bv"), weight=False),
            _plain("attn.c_proj.weight", "wo", lambda c: (_q(c), (c.d_model,)), (0, 1, 2, 3)),
            _plain("attn.c_proj.bias", "bo", _d, (0,)),
            _plain("ln_2.weight", "ln2_scale", _d, (0,)),
            _plain("ln_2.bias", "ln2_bias", _d, (0,)),
            _plain("mlp.c_fc.weight", "w_up", lambda c: ((c.d_model,), (c.d_ff,)), (0, 1)),
            _plain("mlp.c_fc.bias", "b_up", lambda c: ((c.d_ff,),), (0,)),
            _plain("mlp.c_proj.weight", "w_down", lambda c: ((c.d_ff,), (c.d_model,)), (0, 1)),
            _plain("mlp.c_proj.bias", "b_down", _d, (0,)),
        ]
    a, m = "self_attn.", "mlp."
    ff_d = lambda c: ((c.d_ff,), (c.d_model,))  # noqa: E731
    units = [
        _plain("input_layernorm.weight", "ln1_scale", _d, (0,)),
        _plain(a + "q_proj.weight", "wq", lambda c: (_q(c), (c.d_model,)), (3, 0, 1, 2)),
        _plain(a + "k_proj.weight", "wk", lambda c: (_kv(c), (c.d_model,)), (2, 0, 1)),
        _plain(a + "v_proj.weight", "wv", lambda c: (_kv(c), (c.d_model,)), (2, 0, 1)),
        _plain(a + "o_proj.weight", "wo", lambda c: ((c.d_model,), _q(c)), (1, 2, 3, 0)),
        _plain("post_attention_layernorm.weight", "ln2_scale", _d, (0,)),
        _plain(m + "gate_proj.weight", "w_gate", ff_d, (1, 0)),
        _plain(m + "up_proj.weight", "w_up", ff_d, (1, 0)),
        _plain(m + "down_proj.weight", "w_down", lambda c: ((c.d_model,), (c.d_ff,)), (1, 0)),
    ]
    if c.bias:
        units += [
            _plain(a + "q_proj.bias", "bq", lambda c: (_q(c),), (0, 1, 2)),
            _plain(a + "k_proj.bias", "bk", lambda c: (_kv(c),), (0, 1)),
            _plain(a + "v_proj.bias", "bv", lambda c: (_kv(c),), (0, 1)),
        ]
    if c.bias and kind != "qwen2":
        units += [
            _plain(a + "o_proj.bias", "bo", _d, (0,)),
            *(_plain(f"{m}{n}_proj.bias", f"b_{n}", lambda c: ((c.d_ff,),), (0,))
              for n in ("gate", "up")),
            _plain(m + "down_proj.bias", "b_down", _d, (0,)),
        ]  # fmt: skip
    return units


def top_units(kind: str, c: DecoderConfig) -> list[Unit]:
    """The top-level HF tensors (keys under the model prefix; ``lm_head.weight`` without it),
    as units on arrays with a leading axis of size 1. The readout is a unit only when untied."""
    vd = lambda c: ((c.vocab,), (c.d_model,))  # noqa: E731
    if kind == "gpt2":
        units = [
            _plain("wte.weight", "embed", vd, (0, 1)),
            _plain("wpe.weight", "pos", lambda c: ((c.max_len,), (c.d_model,)), (0, 1)),
            _plain("ln_f.weight", "final_scale", _d, (0,)),
            _plain("ln_f.bias", "final_bias", _d, (0,)),
        ]
    else:
        units = [
            _plain("embed_tokens.weight", "embed", vd, (0, 1)),
            _plain("norm.weight", "final_scale", _d, (0,)),
        ]
    if not c.tied:
        units.append(_plain(HEAD, "head", vd, (1, 0)))
    return units


def _changed(out: dict, config: Mapping[str, Any], key: str, value: Any, default: Any) -> None:
    """Set ``out[key] = value`` when ``config`` states the key or ``value`` differs from what HF
    assumes without it (``default``), so that ``config.json`` changes only where growth does."""
    if key in config or value != default:
        out[key] = value


def hf_config(c: DecoderConfig, config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (a GPT-2 / Llama ``config.json`` dict; other keys kept) with the sizes and eps
    of the decoder ``c``. Refuses what HF cannot express: an attention scale other than
    ``head_dim^-1/2``, non-standard rotary frequencies (a grown ``hd``), GPT-2 with
    ``d != heads * hd`` or grouped queries, Llama with ``hidden_size % heads != 0``, forward
    multipliers other than 1 (a mean-field decoder). The readout multiplier is not checked here
    (see ``growth.formats.hf.decoder.export_params``)."""
    kind = config["model_type"]
    out = dict(config)
    H, hd, d = c.n_heads, c.head_dim, c.d_model
    if any(m != 1.0 for m in c.mults):
        raise GrowthError(
            f"mults={c.mults} (param={c.param!r}): HF models have no forward multipliers; "
            "export a decoder with mults all 1 (sp)"
        )
    types = config.get("layer_types")
    if types is not None and len(types) != c.n_layers:
        if len(set(types)) != 1:
            raise GrowthError(
                f"config.json layer_types mixes {sorted(set(types))}: the new layers' types are "
                "not defined; grow only the width of such a model"
            )
        out["layer_types"] = [types[0]] * c.n_layers
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
        }
        n_inner = None if c.d_ff == 4 * d and config.get("n_inner") is None else c.d_ff
        _changed(out, config, "n_inner", n_inner, None)
        _changed(out, config, "layer_norm_epsilon", c.eps, 1e-5)
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
            "intermediate_size": c.d_ff,
            "num_hidden_layers": c.n_layers,
        }
        _changed(out, config, "num_key_value_heads", c.n_kv_heads, H)
        _changed(out, config, "rms_norm_eps", c.eps, 1e-6)
        _changed(out, config, "head_dim", hd, d // H)
    return out
