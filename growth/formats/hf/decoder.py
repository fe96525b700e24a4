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

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from growth.errors import CheckpointError, GrowthError
from growth.formats.hf.io import (
    INDEX,
    WEIGHTS,
    Tensors,
    read_config,
    refuse_unused,
    restore_dtypes,
)
from growth.formats.hf.io import PRIVATE as _PRIVATE
from growth.formats.hf.io import numpy_tree as _numpy_tree
from growth.formats.hf.io import parse_growth_targets as _targets
from growth.formats.hf.layout import (
    BLOCK,
    HEAD,
    PREFIX,
    block_units,
    decoder_config,
    hf_config,
    top_units,
)
from growth.formats.stream import LazyTensor, same_bytes
from growth.methods import DEFAULT_EXTERNAL_METHOD
from growth.models import decoder
from growth.models.decoder import DecoderConfig
from growth.spec import NeuronSpec

# per-layer non-parameter tensors, checked on import and regenerated on export (buffer_value)
_ROTARY = ("self_attn.rotary_emb.inv_freq",)
_BUFFERS = {"gpt2": ("attn.bias", "attn.masked_bias"), "llama": _ROTARY, "mistral": _ROTARY,
            "qwen2": _ROTARY}  # fmt: skip
# Qwen2 leaves of our decoder (bias=True) that the checkpoint does not hold: zeros on import
_ABSENT = {"qwen2": ("bo", "b_gate", "b_up", "b_down")}


def buffer_value(kind: str, suffix: str, c: DecoderConfig, rec: Mapping[str, Any]) -> np.ndarray:
    """The value HF stores for a buffer: GPT-2's causal mask ``tril(1)`` [1, 1, P, P] and
    ``masked_bias`` (a constant), Llama's ``inv_freq = theta^(-2i/hd)`` (recorded values)."""
    if suffix == "attn.bias":
        return np.tril(np.ones((c.max_len, c.max_len))).astype(rec["dtype"]).reshape(rec["shape"])
    return np.asarray(rec["values"], rec["dtype"]).reshape(rec["shape"])


class Checked(NamedTuple):
    """What :func:`check_tensors` found: model type, decoder config, key prefix (``""`` when
    the checkpoint has none), buffer records and whether ``lm_head.weight`` is stored (tied)."""

    kind: str
    c: DecoderConfig
    prefix: str
    buffers: dict[str, dict]
    head_in_file: bool

    def key(self, unit_key: str, layer: int | None = None) -> str:
        """The checkpoint key of a unit's tensor (of block ``layer``, or top-level)."""
        if layer is not None:
            return f"{self.prefix}{BLOCK[self.kind]}.{layer}.{unit_key}"
        return unit_key if unit_key == HEAD else self.prefix + unit_key


def check_tensors(
    path: Path,
    config: Mapping[str, Any],
    tensors: Mapping[str, LazyTensor],
    *,
    growth_only: bool = False,
) -> Checked:
    """Check the (lazy) tensors of a decoder checkpoint against ``config.json`` before any
    weight is read: every tensor of the layout present with the shape the config implies,
    buffers standard, a stored readout of a tied model equal to the embedding, nothing else.
    Reads only the buffers (and, for a tied model storing ``lm_head.weight``, compares its bytes
    with the embedding's, 64 MiB at a time). growth_only: see :func:`decoder_config`."""
    kind = config["model_type"]
    c = decoder_config(config, growth_only=growth_only)
    pre = PREFIX[kind] if any(k.startswith(PREFIX[kind]) for k in tensors) else ""
    chk = Checked(kind, c, pre, {}, HEAD in tensors)
    where = path / (WEIGHTS if (path / WEIGHTS).is_file() else INDEX)
    used: set[str] = set()

    def take(key: str, shape: tuple[int, ...]) -> Any:
        if key not in tensors:
            raise CheckpointError(f"{where}: missing tensor {key!r}")
        if tuple(tensors[key].shape) != tuple(shape):
            raise CheckpointError(
                f"{where}: tensor {key!r} has shape {tuple(tensors[key].shape)}, config.json "
                f"implies {tuple(shape)}"
            )
        used.add(key)
        return tensors[key]

    for u in block_units(kind, c):
        for i in range(c.n_layers):
            take(chk.key(u.hf, i), u.shape(c))
    for u in top_units(kind, c):
        take(chk.key(u.hf), u.shape(c))
    if not c.tied and not chk.head_in_file:
        raise CheckpointError(
            f"{where}: missing {HEAD!r} (tie_word_embeddings is false; a base model without a "
            "readout is not supported)"
        )
    if c.tied and chk.head_in_file:
        emb = tensors[chk.key(top_units(kind, c)[0].hf)]
        if not same_bytes(take(HEAD, emb.shape), emb):
            raise GrowthError(
                f"{where}: {HEAD!r} differs from the input embedding but config.json has "
                "tie_word_embeddings=true; set it to false"
            )
    for suffix in _BUFFERS[kind]:
        if chk.key(suffix, 0) not in tensors:
            continue
        x = np.asarray(tensors[chk.key(suffix, 0)])
        rec = {"dtype": str(x.dtype), "shape": list(x.shape), "values": x.ravel().tolist()}
        if suffix == "attn.bias":
            rec.pop("values")
        want = buffer_value(kind, suffix, c, rec)
        if suffix.endswith("inv_freq") and not np.allclose(x, c.freqs(), rtol=1e-5):
            raise GrowthError(f"{where}: {chk.key(suffix, 0)} is not theta^(-2i/head_dim)")
        for i in range(c.n_layers):
            if not np.array_equal(np.asarray(take(chk.key(suffix, i), x.shape)), want):
                raise GrowthError(
                    f"{where}: buffer {chk.key(suffix, i)} is not the standard value (custom "
                    "masks/frequencies unsupported)"
                )
        chk.buffers[suffix] = rec
    refuse_unused(path, tensors, used, f"only {kind} causal-LM weights")
    return chk


# --------------------------------------------------------------------------------------------
# import / export


def load_decoder(path: str | Path) -> tuple[dict, dict, NeuronSpec]:
    """Load a GPT-2 / Llama / Mistral / Qwen2 checkpoint (single file or sharded) ->
    ``(params, config, spec)``: our decoder params dict (numpy), ``config.json`` plus a private
    ``"_mfgrow"`` entry (key prefix, buffers, dtypes, metadata; not exported) and
    ``decoder.spec``. ``decoder_config(config)`` gives the DecoderConfig, so
    ``model_from_params("decoder", decoder_config(config), params)`` runs it.
    """
    path = Path(path)
    config = read_config(path)
    with Tensors(path) as tensors:
        chk = check_tensors(path, config, tensors)
        c, L = chk.c, chk.c.n_layers
        blocks: dict[str, np.ndarray] = {}
        for u in block_units(chk.kind, c):
            x = np.stack([np.asarray(tensors[chk.key(u.hf, i)]) for i in range(L)])
            blocks |= dict(zip(u.ours, u.inward(x, c), strict=True))
        params: dict[str, Any] = {"blocks": blocks}
        for u in top_units(chk.kind, c):
            x = np.asarray(tensors[chk.key(u.hf)])[None]
            params |= {n: y[0] for n, y in zip(u.ours, u.inward(x, c), strict=True)}
        metadata = dict(tensors.metadata)
        tensor_dtypes = {k: str(v.dtype) for k, v in tensors.items()}
    for name in _ABSENT.get(chk.kind, ()):
        size = c.d_ff if name in ("b_gate", "b_up") else c.d_model
        blocks[name] = np.zeros((L, size), blocks["wq"].dtype)
    dtypes = {k: str(v.dtype) for k, v in _flat(params).items()}
    params = _numpy_tree(params)  # own contiguous copies
    config = dict(config)
    config[_PRIVATE] = {
        "prefix": chk.prefix,
        "buffers": chk.buffers,
        "dtypes": dtypes,
        "tensor_dtypes": tensor_dtypes,
        "source_layers": L,
        "metadata": metadata,
        "head_in_file": chk.head_in_file,
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
    chk = Checked(kind, c, prefix, priv.get("buffers", {}), bool(priv.get("head_in_file")))
    flat = {k: np.asarray(v) for k, v in _flat(params).items()}
    flat = {k: v.astype(dtypes.get(k, v.dtype), copy=False) for k, v in flat.items()}
    for name in _ABSENT.get(kind, ()):
        if np.any(flat.pop(f"blocks/{name}")):
            raise GrowthError(f"{kind} has no {name!r} bias: params blocks/{name} must be zero")
    out = {}
    for u in block_units(kind, c):
        x = u.outward(tuple(flat[f"blocks/{n}"] for n in u.ours), c)
        out |= {chk.key(u.hf, i): x[i] for i in range(c.n_layers)}
    for suffix, rec in chk.buffers.items():
        x = buffer_value(kind, suffix, c, rec)
        out |= {chk.key(suffix, i): x for i in range(c.n_layers)}
    for u in top_units(kind, c):
        out[chk.key(u.hf)] = u.outward(tuple(flat[n][None] for n in u.ours), c)[0]
    if c.tied and chk.head_in_file:
        out[HEAD] = flat["embed"]
    out = {k: v if v.flags.c_contiguous else v.copy(order="C") for k, v in out.items()}
    moved = c.n_layers != priv.get("source_layers", c.n_layers)
    return restore_dtypes(out, priv.get("tensor_dtypes", {}), moved)


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


def width_targets(c: DecoderConfig, kind: str, width: Any) -> dict[str, int]:
    """Our spaces' targets ``{"d", "kv", "ff"}`` for a HF-level width request over ``d``,
    ``heads`` (query heads; the kv heads grow by the same factor, the query groups keep their
    size) and ``ff``; refuses what HF cannot express (GrowthError naming the target)."""
    now = {"d": c.d_model, "heads": c.n_heads, "ff": c.d_ff}
    w = now | _targets(now, width, "width")
    if w["heads"] % c.group:
        raise GrowthError(
            f"width target heads={w['heads']}: must be a multiple of the query "
            f"group size {c.group} (num_attention_heads / num_key_value_heads)"
        )
    if kind == "gpt2" and w["d"] != w["heads"] * c.head_dim:
        raise GrowthError(
            f"GPT-2 derives head_dim = n_embd / n_head = {c.head_dim}: width d="
            f"{w['d']} needs heads={w['d'] / c.head_dim:g}, got {w['heads']}; grow "
            "'d' and 'heads' by the same factor"
        )
    return {"d": w["d"], "kv": w["heads"] // c.group, "ff": w["ff"]}


def grow_decoder(
    params: Mapping[str, Any],
    config: Mapping[str, Any],
    *,
    width: Any = "x2",
    depth: Any = None,
    method: str = DEFAULT_EXTERNAL_METHOD,
    seed: int = 0,
    size_bound: Callable[[int], None] | None = None,
):
    """Grow imported GPT-2 / Llama params: ``(grown params, grown config, GrowthPlan)``.
    ``size_bound(nbytes)``, if given, sees the grown size before anything is allocated.

    width: ``{"d": 128, "heads": 8, "ff": 512}``, a factor (``2``, ``"x2"``: all three) or
    ``"d=128,heads=x2"``; ``heads`` grows the kv heads (Llama's query groups keep their size;
    GPT-2 has one query per kv head), ``head_dim`` stays (HF derives the attention scale and the
    rotary frequencies from it). depth: ``{"layers": 8}``, a factor or a string; new blocks are
    the method's depth rule (``identity`` for ``copy``/``exact``: exact in pre-norm blocks).
    """
    from growth.engine import apply_plan, grown_nbytes, plan_growth

    c = decoder_config(config)
    L = _targets({"layers": c.n_layers}, depth, "depth").get("layers", c.n_layers)
    targets = width_targets(c, config["model_type"], width)
    spec = decoder.spec(c)
    if size_bound is not None:
        size_bound(grown_nbytes(spec.resolve(params), params, targets, {"blocks": L}))
    plan = plan_growth(params, spec, width=targets, depth={"blocks": L}, method=method, key=seed)
    grown = apply_plan(plan, params)
    c2 = decoder.grown(c, plan)
    if c2.readout_mult != 1.0:
        plan.report.notes.append(
            f"tied readout multiplier {c2.readout_mult:.6g} folded into the final norm "
            "(HF has no readout multiplier; exact)"
        )
    grown, cfg = export_params(grown, c2, config)
    return grown, cfg, plan
