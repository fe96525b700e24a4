"""GPT-2 and Llama Hugging Face checkpoints onto our decoder family (:mod:`growth.models.decoder`).

``config.json`` + ``model.safetensors`` (``model_type`` ``"gpt2"``: GPT2LMHeadModel / GPT2Model;
``"llama"``: LlamaForCausalLM) become a :class:`~growth.models.decoder.DecoderConfig` and the
decoder's own params dict, so growth uses the decoder spec (spaces ``d``, ``kv``, ``group``,
``hd``, ``ff``, depth ``blocks``) and its exact-growth config rule (:func:`decoder.grown`).
Layouts (L layers stacked on axis 0, H = kv * group query heads of size hd, D = H hd):

    GPT-2 (Conv1D, [in, out])              ours
    h.{i}.attn.c_attn.weight [d, 3D]   ->  wq [L,d,H,1,hd] | wk [L,d,H,hd] | wv [L,d,H,hd]
    h.{i}.attn.c_attn.bias   [3D]      ->  bq [L,H,1,hd]   | bk [L,H,hd]   | bv [L,H,hd]
    h.{i}.attn.c_proj.weight [D, d]    ->  wo [L,H,1,hd,d]
    h.{i}.mlp.c_fc / c_proj  [d,ff]/[ff,d] -> w_up / w_down (as stored)
    wte [V,d] -> embed, wpe [P,d] -> pos, ln_1/ln_2/ln_f -> ln1_*/ln2_*/final_*

    Llama (torch Linear, [out, in])
    layers.{i}.self_attn.q_proj [H hd, d]  -> wq [L,d,kv,group,hd]  (query head h = kv_i group + j
                                              uses kv head kv_i, HF's repeat_kv)
    k_proj / v_proj [kv hd, d]             -> wk / wv [L,d,kv,hd]
    o_proj [d, H hd]                       -> wo [L,kv,group,hd,d]
    mlp.gate/up [ff,d], down [d,ff]        -> w_gate / w_up [L,d,ff], w_down [L,ff,d] (transposed)
    embed_tokens -> embed, lm_head [V,d] -> head [d,V], input/post_attention_layernorm, norm

Numerics matched: GPT-2's ``gelu_new`` is the tanh GELU (``activation_function: "gelu"``: erf,
``DecoderConfig.gelu_approximate=False``), attention scale 1/sqrt(hd) (``scale_attn_weights``);
Llama's RMSNorm, SwiGLU ``silu(gate) * up`` and rotate-half rotary with ``rope_theta`` are the
decoder's own. HF has no readout multiplier: a tied model grown in ``d`` (``readout_mult = n/N``)
is exported with the multiplier folded into the final norm, ``m N_f(x) = xhat (m g) + m b``,
which is exact and keeps the readout tied (:func:`export_params`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from growth.errors import CheckpointError, GrowthError
from growth.hf import _PRIVATE, WEIGHTS, _numpy_tree, _targets, read_config, read_tensors
from growth.models import decoder
from growth.models.decoder import DecoderConfig
from growth.spec import NeuronSpec

MODEL_TYPES = ("gpt2", "llama")
PREFIX = {"gpt2": "transformer.", "llama": "model."}
GPT2_ACTS = {"gelu_new": True, "gelu_pytorch_tanh": True, "gelu_fast": True, "gelu": False}
HEAD = "lm_head.weight"
# config keys whose non-null/true value our decoder does not reproduce
_REFUSED = ("sliding_window", "use_sliding_window", "add_cross_attention", "partial_rotary_factor",
            "scale_attn_by_inverse_layer_idx", "attn_logit_softcapping")  # fmt: skip


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
    d, L = (_need(config, "n_embd"), _need(config, "n_layer")) if kind == "gpt2" else (
        _need(config, "hidden_size"), _need(config, "num_hidden_layers"))  # fmt: skip
    H = _need(config, "n_head" if kind == "gpt2" else "num_attention_heads")
    if kind == "gpt2":
        act = config.get("activation_function", "gelu_new")
        if act not in GPT2_ACTS:
            raise _err("activation_function", act, f"expected one of {sorted(GPT2_ACTS)}")
        if d % H:
            raise _err("n_head", H, f"must divide n_embd={d} (GPT-2: head_dim = n_embd / n_head)")
        return DecoderConfig(
            vocab=_need(config, "vocab_size"), d_model=d, n_layers=L, n_heads=H,
            d_ff=config.get("n_inner") or 4 * d, max_len=_need(config, "n_positions"),
            norm="layer", mlp="gelu", positions="learned",
            tied=bool(config.get("tie_word_embeddings", True)), bias=True,
            eps=float(config.get("layer_norm_epsilon", 1e-5)),
            attn_scale=None if config.get("scale_attn_weights", True) else 1.0,
            gelu_approximate=GPT2_ACTS[act],
        )  # fmt: skip
    act = config.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise _err("hidden_act", act, "expected 'silu' (SwiGLU silu(gate) * up)")
    bias = bool(config.get("attention_bias", False))
    if bool(config.get("mlp_bias", False)) != bias:
        raise _err("mlp_bias", config.get("mlp_bias"), f"must equal attention_bias={bias} (our "
                   "decoder has biases on all projections or none)")  # fmt: skip
    kv = config.get("num_key_value_heads") or H
    if H % kv:
        raise _err("num_key_value_heads", kv, f"must divide num_attention_heads={H}")
    hd = config.get("head_dim") or d // H
    if not config.get("head_dim") and d % H:
        raise _err("num_attention_heads", H, f"must divide hidden_size={d} (or give head_dim)")
    return DecoderConfig(
        vocab=_need(config, "vocab_size"), d_model=d, n_layers=L, n_heads=H, n_kv_heads=kv,
        head_dim=hd, d_ff=_need(config, "intermediate_size"),
        max_len=int(config.get("max_position_embeddings", 2048)), norm="rms", mlp="swiglu",
        positions="rotary", tied=bool(config.get("tie_word_embeddings", False)), bias=bias,
        eps=float(config.get("rms_norm_eps", 1e-6)), rope_base=_rope_theta(config),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# layouts: stacked HF tensors [L, ...] <-> our stacked leaves


def _gpt2_in(get: Callable[[str, tuple], np.ndarray], c: DecoderConfig) -> dict:
    L, d, H, hd, ff = c.n_layers, c.d_model, c.n_heads, c.head_dim, c.d_ff
    D = H * hd
    w, b = get("attn.c_attn.weight", (d, 3 * D)), get("attn.c_attn.bias", (3 * D,))
    return {
        "ln1_scale": get("ln_1.weight", (d,)), "ln1_bias": get("ln_1.bias", (d,)),
        "wq": w[..., :D].reshape(L, d, H, 1, hd), "wk": w[..., D:2 * D].reshape(L, d, H, hd),
        "wv": w[..., 2 * D:].reshape(L, d, H, hd), "bq": b[:, :D].reshape(L, H, 1, hd),
        "bk": b[:, D:2 * D].reshape(L, H, hd), "bv": b[:, 2 * D:].reshape(L, H, hd),
        "wo": get("attn.c_proj.weight", (D, d)).reshape(L, H, 1, hd, d),
        "bo": get("attn.c_proj.bias", (d,)),
        "ln2_scale": get("ln_2.weight", (d,)), "ln2_bias": get("ln_2.bias", (d,)),
        "w_up": get("mlp.c_fc.weight", (d, ff)), "b_up": get("mlp.c_fc.bias", (ff,)),
        "w_down": get("mlp.c_proj.weight", (ff, d)), "b_down": get("mlp.c_proj.bias", (d,)),
    }  # fmt: skip


def _gpt2_out(p: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    L, d = p["wq"].shape[:2]
    flat = [p[n].reshape(L, d, -1) for n in ("wq", "wk", "wv")]
    return {
        "ln_1.weight": p["ln1_scale"], "ln_1.bias": p["ln1_bias"],
        "attn.c_attn.weight": np.concatenate(flat, -1),
        "attn.c_attn.bias": np.concatenate([p[n].reshape(L, -1) for n in ("bq", "bk", "bv")], -1),
        "attn.c_proj.weight": p["wo"].reshape(L, -1, d), "attn.c_proj.bias": p["bo"],
        "ln_2.weight": p["ln2_scale"], "ln_2.bias": p["ln2_bias"],
        "mlp.c_fc.weight": p["w_up"], "mlp.c_fc.bias": p["b_up"],
        "mlp.c_proj.weight": p["w_down"], "mlp.c_proj.bias": p["b_down"],
    }  # fmt: skip


def _llama_in(get: Callable[[str, tuple], np.ndarray], c: DecoderConfig) -> dict:
    L, d, kv, g, hd, ff = c.n_layers, c.d_model, c.n_kv_heads, c.group, c.head_dim, c.d_ff
    a, m = "self_attn.", "mlp."
    p = {
        "ln1_scale": get("input_layernorm.weight", (d,)),
        "wq": get(a + "q_proj.weight", (kv * g * hd, d)).reshape(L, kv, g, hd, d)
        .transpose(0, 4, 1, 2, 3),
        "wk": get(a + "k_proj.weight", (kv * hd, d)).reshape(L, kv, hd, d).transpose(0, 3, 1, 2),
        "wv": get(a + "v_proj.weight", (kv * hd, d)).reshape(L, kv, hd, d).transpose(0, 3, 1, 2),
        "wo": get(a + "o_proj.weight", (d, kv * g * hd)).reshape(L, d, kv, g, hd)
        .transpose(0, 2, 3, 4, 1),
        "ln2_scale": get("post_attention_layernorm.weight", (d,)),
        "w_gate": get(m + "gate_proj.weight", (ff, d)).transpose(0, 2, 1),
        "w_up": get(m + "up_proj.weight", (ff, d)).transpose(0, 2, 1),
        "w_down": get(m + "down_proj.weight", (d, ff)).transpose(0, 2, 1),
    }  # fmt: skip
    if c.bias:
        p |= {
            "bq": get(a + "q_proj.bias", (kv * g * hd,)).reshape(L, kv, g, hd),
            "bk": get(a + "k_proj.bias", (kv * hd,)).reshape(L, kv, hd),
            "bv": get(a + "v_proj.bias", (kv * hd,)).reshape(L, kv, hd),
            "bo": get(a + "o_proj.bias", (d,)), "b_gate": get(m + "gate_proj.bias", (ff,)),
            "b_up": get(m + "up_proj.bias", (ff,)), "b_down": get(m + "down_proj.bias", (d,)),
        }  # fmt: skip
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


_LAYOUT = {"gpt2": ("h", _gpt2_in, _gpt2_out), "llama": ("layers", _llama_in, _llama_out)}
# per-layer non-parameter tensors: (suffix, regenerate(config, recorded) -> array)
_BUFFERS = {"gpt2": ("attn.bias", "attn.masked_bias"), "llama": ("self_attn.rotary_emb.inv_freq",)}


def _buffer(kind: str, suffix: str, c: DecoderConfig, rec: Mapping[str, Any]) -> np.ndarray:
    """The value HF stores for a buffer: GPT-2's causal mask ``tril(1)`` [1, 1, P, P] and
    ``masked_bias`` (a constant), Llama's ``inv_freq = theta^(-2i/hd)`` (recorded values)."""
    if suffix == "attn.bias":
        return np.tril(np.ones((c.max_len, c.max_len))).astype(rec["dtype"]).reshape(rec["shape"])
    return np.asarray(rec["values"], rec["dtype"]).reshape(rec["shape"])


# --------------------------------------------------------------------------------------------
# import / export


def load_decoder(path: str | Path) -> tuple[dict, dict, NeuronSpec]:
    """Load a GPT-2 / Llama checkpoint -> ``(params, config, spec)``: our decoder params dict
    (numpy), ``config.json`` plus a private ``"_mfgrow"`` entry (key prefix, buffers, dtypes,
    metadata; not exported) and ``decoder.spec``. ``decoder_config(config)`` gives the
    DecoderConfig, so ``model_from_params("decoder", decoder_config(config), params)`` runs it.
    """
    path = Path(path)
    config = read_config(path)
    kind = config["model_type"]
    c = decoder_config(config)
    tensors, metadata = read_tensors(path)
    prefix = PREFIX[kind] if any(k.startswith(PREFIX[kind]) for k in tensors) else ""
    used: set[str] = set()

    def take(key: str, shape: tuple[int, ...]) -> np.ndarray:
        full = prefix + key if key != HEAD else key
        if full not in tensors:
            raise CheckpointError(f"{path / WEIGHTS}: missing tensor {full!r}")
        if tuple(tensors[full].shape) != tuple(shape):
            raise CheckpointError(
                f"{path / WEIGHTS}: tensor {full!r} has shape {tuple(tensors[full].shape)}, "
                f"config.json implies {tuple(shape)}"
            )
        used.add(full)
        return tensors[full]

    block, to_ours, _ = _LAYOUT[kind]

    def stacked(suffix: str, shape: tuple[int, ...]) -> np.ndarray:
        return np.stack([take(f"{block}.{i}.{suffix}", shape) for i in range(c.n_layers)])

    V, d = c.vocab, c.d_model
    params: dict[str, Any] = {"blocks": to_ours(stacked, c)}
    if kind == "gpt2":
        params |= {"embed": take("wte.weight", (V, d)), "pos": take("wpe.weight", (c.max_len, d))}
        params |= {"final_scale": take("ln_f.weight", (d,)), "final_bias": take("ln_f.bias", (d,))}
    else:
        params |= {
            "embed": take("embed_tokens.weight", (V, d)),
            "final_scale": take("norm.weight", (d,)),
        }
    head_in_file = HEAD in tensors
    if not c.tied:
        if not head_in_file:
            raise CheckpointError(
                f"{path / WEIGHTS}: missing {HEAD!r} (tie_word_embeddings is "
                "false; a base model without a readout is not supported)"
            )
        params["head"] = take(HEAD, (V, d)).T
    elif head_in_file and not np.array_equal(take(HEAD, (V, d)), params["embed"]):
        raise GrowthError(f"{path / WEIGHTS}: {HEAD!r} differs from the input embedding but "
                          "config.json has tie_word_embeddings=true; set it to false")  # fmt: skip
    buffers = {}
    for suffix in _BUFFERS[kind]:
        key = f"{block}.0.{suffix}"
        if prefix + key not in tensors:
            continue
        x = tensors[prefix + key]
        rec = {"dtype": str(x.dtype), "shape": list(x.shape), "values": x.ravel().tolist()}
        if suffix == "attn.bias":
            rec.pop("values")
        want = _buffer(kind, suffix, c, rec)
        if suffix.endswith("inv_freq") and not np.allclose(x, c.freqs(), rtol=1e-5):
            raise GrowthError(f"{path / WEIGHTS}: {prefix + key} is not theta^(-2i/head_dim)")
        for i in range(c.n_layers):
            xi = take(f"{block}.{i}.{suffix}", x.shape)
            if not np.array_equal(xi, want):
                raise GrowthError(
                    f"{path / WEIGHTS}: buffer {prefix}{block}.{i}.{suffix} is not "
                    "the standard value (custom masks/frequencies unsupported)"
                )
        buffers[suffix] = rec
    extra = sorted(set(tensors) - used)
    if extra:
        raise GrowthError(
            f"HF checkpoint {str(path)!r}: unsupported tensors {extra[:5]}"
            f"{' ...' if len(extra) > 5 else ''} (only {kind} causal-LM weights)"
        )
    dtypes = {k: str(v.dtype) for k, v in _flat(params).items()}
    params = _numpy_tree(params)  # own contiguous copies
    config = dict(config)
    config[_PRIVATE] = {"prefix": prefix, "buffers": buffers, "dtypes": dtypes,
                        "metadata": metadata, "head_in_file": head_in_file}  # fmt: skip
    return params, config, decoder.spec(c)


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        out |= _flat(v, f"{prefix}{k}/") if isinstance(v, Mapping) else {prefix + k: v}
    return out


def _check_sizes(params: Mapping[str, Any], c: DecoderConfig) -> None:
    found = decoder.spec(c).resolve(params).sizes
    want = decoder.sizes(c)
    wrong = {s: (want[s], found[s]) for s in want if found.get(s) != want[s]}
    for leaf, size in (("embed", (c.vocab, c.d_model)), ("pos", (c.max_len, c.d_model))):
        if leaf in params and tuple(np.shape(params[leaf])) != size:
            wrong[leaf] = (size, tuple(np.shape(params[leaf])))
    if wrong:
        raise GrowthError(f"params do not fit config.json: (config, params) sizes {wrong}")


def to_tensors(params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flat HF tensor dict of our decoder ``params`` described by the HF ``config`` (which must
    already be expressible: see :func:`export_params` for a DecoderConfig's readout etc.)."""
    kind = config["model_type"]
    c = decoder_config(config)
    _check_sizes(params, c)
    priv = config.get(_PRIVATE, {})
    prefix, dtypes = priv.get("prefix", PREFIX[kind]), priv.get("dtypes", {})
    flat = {k: np.asarray(v) for k, v in _flat(params).items()}
    flat = {k: v.astype(dtypes.get(k, v.dtype), copy=False) for k, v in flat.items()}
    block, _, to_hf = _LAYOUT[kind]
    stacked = to_hf({k[len("blocks/") :]: v for k, v in flat.items() if k.startswith("blocks/")})
    out = {f"{prefix}{block}.{i}.{s}": x[i] for s, x in stacked.items() for i in range(c.n_layers)}
    for suffix, rec in priv.get("buffers", {}).items():
        x = _buffer(kind, suffix, c, rec)
        out |= {f"{prefix}{block}.{i}.{suffix}": x for i in range(c.n_layers)}
    names = {"embed": "wte.weight", "pos": "wpe.weight", "final_scale": "ln_f.weight",
             "final_bias": "ln_f.bias"} if kind == "gpt2" else {
             "embed": "embed_tokens.weight", "final_scale": "norm.weight"}  # fmt: skip
    out |= {prefix + hf: flat[ours] for ours, hf in names.items()}
    if not c.tied:
        out[HEAD] = flat["head"].T
    elif priv.get("head_in_file"):
        out[HEAD] = flat["embed"]
    return {k: v if v.flags.c_contiguous else v.copy(order="C") for k, v in out.items()}


def export_params(
    params: Mapping[str, Any], c: DecoderConfig, config: Mapping[str, Any]
) -> tuple[dict, dict]:
    """``(params, config.json dict)`` expressing a decoder ``c`` / ``params`` as the HF model of
    ``config`` (its ``model_type``; other keys kept): sizes and eps from ``c``, the readout
    multiplier folded into the final norm (``m (xhat g + b) = xhat (m g) + m b``). Refuses what
    HF cannot express: an attention scale other than ``head_dim^-1/2``, non-standard rotary
    frequencies (a grown ``hd``), GPT-2 with ``d != heads * hd`` or grouped queries."""
    kind = config["model_type"]
    out = {k: v for k, v in config.items() if k != _PRIVATE}
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
            raise GrowthError(f"GPT-2 needs n_embd = n_head * head_dim and no grouped queries; got "
                              f"d={d}, heads={H} (kv={c.n_kv_heads}), head_dim={hd}: grow 'd' and "
                              "'heads' by the same factor")  # fmt: skip
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
            raise GrowthError(f"hidden_size={d} is not a multiple of num_attention_heads={H} "
                              "(transformers refuses such Llama configs)")  # fmt: skip
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
    params = _numpy_tree(params)
    if c.readout_mult != 1.0:
        for k in ("final_scale", "final_bias"):
            if k in params:
                params[k] = (params[k] * c.readout_mult).astype(params[k].dtype)
    if _PRIVATE in config:
        out[_PRIVATE] = config[_PRIVATE]
    return params, out


# --------------------------------------------------------------------------------------------
# growth


def grow_decoder(
    params: Mapping[str, Any],
    config: Mapping[str, Any],
    *,
    width: Any = "x2",
    depth: Any = None,
    method: str = "exact",
    seed: int = 0,
):
    """Grow imported GPT-2 / Llama params: ``(grown params, grown config, GrowthPlan)``.

    width: ``{"d": 128, "heads": 8, "ff": 512}``, a factor (``2``, ``"x2"``: all three) or
    ``"d=128,heads=x2"``; ``heads`` grows the kv heads (Llama's query groups keep their size;
    GPT-2 has one query per kv head), ``head_dim`` stays (HF derives the attention scale and the
    rotary frequencies from it). depth: ``{"layers": 8}``, a factor or a string; new blocks are
    the method's depth rule (``identity`` for ``copy``/``exact``: exact in pre-norm blocks).
    """
    from growth.engine import apply_plan, plan_growth

    c = decoder_config(config)
    now = {"d": c.d_model, "heads": c.n_heads, "ff": c.d_ff}
    w = now | _targets(now, width, "width")
    L = _targets({"layers": c.n_layers}, depth, "depth").get("layers", c.n_layers)
    if w["heads"] % c.group:
        raise GrowthError(
            f"width target heads={w['heads']}: must be a multiple of the query "
            f"group size {c.group} (num_attention_heads / num_key_value_heads)"
        )
    if config["model_type"] == "gpt2" and w["d"] != w["heads"] * c.head_dim:
        raise GrowthError(f"GPT-2 derives head_dim = n_embd / n_head = {c.head_dim}: width d="
                          f"{w['d']} needs heads={w['d'] / c.head_dim:g}, got {w['heads']}; grow "
                          "'d' and 'heads' by the same factor")  # fmt: skip
    targets = {"d": w["d"], "kv": w["heads"] // c.group, "ff": w["ff"]}
    plan = plan_growth(params, decoder.spec(c), width=targets, depth={"blocks": L},
                       method=method, key=seed)  # fmt: skip
    grown = apply_plan(plan, params)
    c2 = decoder.grown(c, plan)
    if c2.readout_mult != 1.0:
        plan.report.notes.append(
            f"tied readout multiplier {c2.readout_mult:.6g} folded into the final norm "
            "(HF has no readout multiplier; exact)"
        )
    grown, cfg = export_params(grown, c2, config)
    return grown, cfg, plan
