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

Config mapping and layouts: :mod:`growth.formats.hf.layout`; shared I/O:
:mod:`growth.formats.hf.io`; an
independent numpy forward of both architectures for checking: :mod:`tests.oracles.hf_reference`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from growth.errors import CheckpointError, GrowthError
from growth.formats.hf.io import PRIVATE as _PRIVATE
from growth.formats.hf.io import WEIGHTS, read_config, read_tensors, refuse_unused
from growth.formats.hf.io import numpy_tree as _numpy_tree
from growth.formats.hf.io import parse_growth_targets as _targets
from growth.formats.hf.layout import HEAD, LAYOUT, PREFIX, TOP, decoder_config, hf_config
from growth.models import decoder
from growth.models.decoder import DecoderConfig
from growth.spec import NeuronSpec

# per-layer non-parameter tensors, checked on import and regenerated on export (_buffer)
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

    block, to_ours, _ = LAYOUT[kind]

    def stacked(suffix: str, shape: tuple[int, ...]) -> np.ndarray:
        return np.stack([take(f"{block}.{i}.{suffix}", shape) for i in range(c.n_layers)])

    V, d = c.vocab, c.d_model
    shapes = {"embed": (V, d), "pos": (c.max_len, d), "final_scale": (d,), "final_bias": (d,)}
    params: dict[str, Any] = {"blocks": to_ours(stacked, c)}
    params |= {ours: take(key, shapes[ours]) for ours, key in TOP[kind].items()}
    head_in_file = HEAD in tensors
    if not c.tied:
        if not head_in_file:
            raise CheckpointError(
                f"{path / WEIGHTS}: missing {HEAD!r} (tie_word_embeddings is "
                "false; a base model without a readout is not supported)"
            )
        params["head"] = take(HEAD, (V, d)).T
    elif head_in_file and not np.array_equal(take(HEAD, (V, d)), params["embed"]):
        raise GrowthError(
            f"{path / WEIGHTS}: {HEAD!r} differs from the input embedding but "
            "config.json has tie_word_embeddings=true; set it to false"
        )
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
    refuse_unused(path, tensors, used, f"only {kind} causal-LM weights")
    dtypes = {k: str(v.dtype) for k, v in _flat(params).items()}
    params = _numpy_tree(params)  # own contiguous copies
    config = dict(config)
    config[_PRIVATE] = {
        "prefix": prefix,
        "buffers": buffers,
        "dtypes": dtypes,
        "metadata": metadata,
        "head_in_file": head_in_file,
    }
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
    block, _, to_hf = LAYOUT[kind]
    stacked = to_hf({k[len("blocks/") :]: v for k, v in flat.items() if k.startswith("blocks/")})
    out = {f"{prefix}{block}.{i}.{s}": x[i] for s, x in stacked.items() for i in range(c.n_layers)}
    for suffix, rec in priv.get("buffers", {}).items():
        x = _buffer(kind, suffix, c, rec)
        out |= {f"{prefix}{block}.{i}.{suffix}": x for i in range(c.n_layers)}
    out |= {prefix + key: flat[ours] for ours, key in TOP[kind].items()}
    if not c.tied:
        out[HEAD] = flat["head"].T
    elif priv.get("head_in_file"):
        out[HEAD] = flat["embed"]
    return {k: v if v.flags.c_contiguous else v.copy(order="C") for k, v in out.items()}


def export_params(
    params: Mapping[str, Any], c: DecoderConfig, config: Mapping[str, Any]
) -> tuple[dict, dict]:
    """``(params, config)`` expressing a decoder ``c`` / ``params`` as the HF model of
    ``config`` (its ``model_type``; other keys and the private import record kept): sizes and
    eps from ``c`` (:func:`~growth.formats.hf.layout.hf_config`, which refuses what HF cannot
    express),
    the readout multiplier folded into the final norm, ``m (xhat g + b) = xhat (m g) + m b``
    (exact; the readout stays tied). Then :func:`growth.formats.hf.save_hf` writes it."""
    out = hf_config(c, {k: v for k, v in config.items() if k != _PRIVATE})
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
        raise GrowthError(
            f"GPT-2 derives head_dim = n_embd / n_head = {c.head_dim}: width d="
            f"{w['d']} needs heads={w['d'] / c.head_dim:g}, got {w['heads']}; grow "
            "'d' and 'heads' by the same factor"
        )
    targets = {"d": w["d"], "kv": w["heads"] // c.group, "ff": w["ff"]}
    plan = plan_growth(
        params, decoder.spec(c), width=targets, depth={"blocks": L}, method=method, key=seed
    )
    grown = apply_plan(plan, params)
    c2 = decoder.grown(c, plan)
    if c2.readout_mult != 1.0:
        plan.report.notes.append(
            f"tied readout multiplier {c2.readout_mult:.6g} folded into the final norm "
            "(HF has no readout multiplier; exact)"
        )
    grown, cfg = export_params(grown, c2, config)
    return grown, cfg, plan
