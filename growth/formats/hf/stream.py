"""Streaming growth of Hugging Face decoder checkpoints (GPT-2, Llama, Mistral, Qwen2): one
tensor in memory at a time, whatever the model size.

1. The source (``model.safetensors`` or the shards of ``model.safetensors.index.json``) is
   opened lazily (:class:`~growth.formats.hf.io.Tensors`) and checked against ``config.json``
   without reading weights (:func:`~growth.formats.hf.decoder.check_tensors`).
2. The engine plans on shapes alone: our decoder's leaves stacked ``[L, ...]`` as
   ``jax.ShapeDtypeStruct`` under ``decoder.spec`` (:func:`growth.engine.plan_growth`), so the
   width maps, the depth map, the report and the grown config (:func:`decoder.grown`) are those
   of in-memory growth. Depth comes from the method's rule or from explicit layer slices
   (SOLAR / mergekit ``passthrough``, :func:`growth.depth.slice_map`).
3. Output block ``m`` of a unit (one HF tensor, :mod:`growth.formats.hf.layout`) is
   ``out_scale[m]^[residual output] * sum_l mix[m, l] W(x_l)``: each source block ``x_l`` it
   mixes is read, brought to our layout with a layer axis of 1, widened by
   :func:`growth.engine.apply_leaves` (float32 compute, source dtype kept), mixed and brought
   back. Tensors the plan leaves as they are (no grown axis, a one-hot depth row, unscaled) are
   copied byte for byte by the kernel; zeroed output projections are written without a read.
4. :func:`~growth.formats.hf.io.write_checkpoint` writes the shards as the tensors come,
   atomically, with the index and the source's non-weight files.

Peak memory: the runtime plus a few times the largest tensor that is actually transformed.
Noise (zero-sum / smoothing) is keyed by the source block (``fold_in(key, l)``) and scaled by
that block's own spread, so its draws differ from in-memory growth of the stacked params
(same distribution and guarantees); noise-free methods give the same bits.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from growth.depth import parse_slices, slice_map, slices_exact
from growth.engine import GrowthPlan, GrowthReport, apply_leaves, plan_growth
from growth.errors import GrowthError
from growth.formats.hf.decoder import Checked, buffer_value, check_tensors, width_targets
from growth.formats.hf.io import (
    DEFAULT_SHARD_SIZE,
    Pending,
    Tensors,
    read_config,
    resized_side_files,
    write_checkpoint,
)
from growth.formats.hf.io import parse_growth_targets as _targets
from growth.formats.hf.layout import HEAD, Unit, block_units, hf_config, rope_scaled, top_units
from growth.formats.size_bound import check_size
from growth.methods import DEFAULT_EXTERNAL_METHOD, get_method
from growth.models import decoder
from growth.models.decoder import DecoderConfig
from growth.spec import NeuronSpec


def _shape_tree(chk: Checked, tensors: Mapping[str, Any]) -> dict:
    """Our decoder's leaves as ``jax.ShapeDtypeStruct`` (blocks stacked ``[L, ...]``), from the
    layout's units applied to zero-stride stand-ins (no data read)."""
    c, L = chk.c, chk.c.n_layers
    blocks: dict[str, Any] = {}
    for u in block_units(chk.kind, c):
        dt = tensors[chk.key(u.hf, 0)].dtype
        for n, y in zip(u.ours, u.inward(np.broadcast_to(np.zeros((), dt), (L, *u.shape(c))), c),
                        strict=True):  # fmt: skip
            blocks[n] = jax.ShapeDtypeStruct(y.shape, dt)
    tree: dict[str, Any] = {"blocks": blocks}
    for u in top_units(chk.kind, c):
        dt = tensors[chk.key(u.hf)].dtype
        for n, y in zip(u.ours, u.inward(np.broadcast_to(np.zeros((), dt), (1, *u.shape(c))), c),
                        strict=True):  # fmt: skip
            tree[n] = jax.ShapeDtypeStruct(y.shape[1:], dt)
    return tree


def _paths(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        out += _paths(v, f"{prefix}{k}/") if isinstance(v, Mapping) else [prefix + k]
    return out


def plan_stream(
    chk: Checked,
    tensors: Mapping[str, Any],
    *,
    width: Any,
    depth: Any,
    depth_slices: Any,
    method: Any,
    seed: int,
) -> GrowthPlan:
    """The engine's plan for a checked checkpoint, drawn from shapes alone (see module doc)."""
    c = chk.c
    method = get_method(method)
    if method.fanout_source != "self":
        raise GrowthError(
            f"method {method.name!r}: fanout_source={method.fanout_source!r} mixes neighbouring "
            "blocks' units, which streaming growth does not do; grow in memory with "
            "growth.formats.hf.grow_params"
        )
    if method.unit_balance:
        raise GrowthError(
            f"method {method.name!r}: unit_balance balances each unit over all its leaves at "
            "once, which streaming growth does not do; pass unit_balance=0 or grow in memory "
            "with growth.formats.hf.grow_params"
        )
    tree = _shape_tree(chk, tensors)
    full = decoder.spec(c)
    paths = set(_paths(tree))
    spec = NeuronSpec({p: s for p, s in full.patterns.items() if p in paths}, paired=full.paired)
    slices = None
    if depth_slices not in (None, ""):
        if depth not in (None, "", {}):
            raise GrowthError("depth and depth_slices (--depth-slices) exclude each other")
        slices = parse_slices(depth_slices) if isinstance(depth_slices, str) else depth_slices
        L_new = c.n_layers
    else:
        L_new = _targets({"layers": c.n_layers}, depth, "depth").get("layers", c.n_layers)
    plan = plan_growth(
        tree,
        spec,
        width=width_targets(c, chk.kind, width),
        depth={"blocks": L_new},
        method=method,
        key=seed,
        spreads=(1.0,) * len(paths),  # replaced per tensor by that tensor's own spread
    )
    if slices is None:
        return plan
    dm = slice_map(c.n_layers, slices)
    report = plan.report
    report.sizes_after["blocks"] = int(dm.mix.shape[0])
    exact = slices_exact(c.n_layers, slices)
    report.function_preserving = report.function_preserving and exact
    report.notes.append(
        f"depth slices {list(map(list, slices))} (mergekit passthrough; the method's depth rule "
        "is not used): "
        + ("the source's blocks in order, exact" if exact else "repeated or dropped blocks "
           "change the function; not function-preserving")
    )  # fmt: skip
    return dataclasses.replace(plan, depth_maps={"blocks": dm})


def _spread(x: np.ndarray) -> float:
    """Standard deviation of the entries in float64, accumulated over 2^22-entry chunks."""
    flat = x.reshape(-1)
    step = 1 << 22
    mean = sum(float(flat[i : i + step].sum(dtype=np.float64)) for i in range(0, flat.size, step))
    mean /= max(flat.size, 1)
    sq = sum(float(np.square(flat[i : i + step] - mean, dtype=np.float64).sum())
             for i in range(0, flat.size, step))  # fmt: skip
    return (sq / max(flat.size, 1)) ** 0.5


class _Grower:
    """Produces each output tensor of a plan (see the module docstring, step 3)."""

    def __init__(self, chk: Checked, tensors: Mapping[str, Any], plan: GrowthPlan, c2):
        self.chk, self.tensors, self.plan, self.c2 = chk, tensors, plan, c2
        self.index = {p: j for j, p in enumerate(plan.resolved.paths)}
        m = plan.method
        self.noisy = (m.symmetry != "none" and m.sigma > 0) or m.bandwidth > 0
        dm = plan.depth_maps.get("blocks")
        self.mix = None if dm is None else np.asarray(dm.mix, np.float64)
        self.out_scale = None if dm is None else np.asarray(dm.out_scale, np.float64)
        self.counts = {"copied": 0, "computed": 0, "zeros": 0}

    def _widened(self, leaf: str) -> bool:
        spec = self.plan.resolved.leaves[self.index[leaf]]
        return any(a and a.role != "depth" and a.space in self.plan.maps for a in spec.axes)

    def _grow_source(self, u: Unit, leaves: list[str], layer: int | None) -> tuple:
        """One source tensor (block ``layer`` or top level), widened, as our leaves."""
        key = self.chk.key(u.hf, layer)
        x = np.asarray(self.tensors[key])
        if np.issubdtype(x.dtype, np.inexact) and not np.isfinite(x).all():
            raise GrowthError(f"tensor {key!r} contains NaN or inf; refusing to grow it")
        plan = self.plan
        if layer is not None:
            plan = dataclasses.replace(plan, key=jax.random.fold_in(plan.key, layer))
        ours = u.inward(x[None], self.chk.c)
        if layer is None:  # top-level leaves have no layer axis
            ours = tuple(y[0] for y in ours)
        out = []
        for leaf, y in zip(leaves, ours, strict=True):
            j = self.index[leaf]
            if self.noisy:
                spreads = list(plan.spreads)
                spreads[j] = _spread(np.asarray(y, np.float32))
                plan = dataclasses.replace(plan, spreads=tuple(spreads))
            (g,) = apply_leaves(dataclasses.replace(plan, depth_maps={}), [y], j,
                                keep_sharding=False)  # fmt: skip
            out.append(np.asarray(g))
        return tuple(out)

    def tensor(self, u: Unit, layer: int | None, fold: float = 1.0) -> Any:
        """Output tensor of unit ``u`` at output block ``layer`` (None: top level): the source
        :class:`LazyTensor` (byte copy) or a :class:`Pending` computing it."""
        block = layer is not None
        leaves = [f"blocks/{n}" if block else n for n in u.ours]
        residual = self.plan.resolved.leaves[self.index[leaves[0]]].residual_out
        if block and self.mix is not None:
            row = self.mix[layer]
            sources = [(int(i), float(row[i])) for i in np.flatnonzero(row)]
            scale = float(self.out_scale[layer]) if residual else 1.0
        else:
            sources, scale = [(layer, 1.0)], 1.0
        src = self.tensors[self.chk.key(u.hf, sources[0][0])]
        shape, dtype = u.shape(self.c2), np.dtype(src.dtype)
        widened = any(self._widened(n) for n in leaves)
        if not widened and sources == [(sources[0][0], 1.0)] and scale == 1.0 and fold == 1.0:
            self.counts["copied"] += 1
            return src
        if scale == 0.0:
            self.counts["zeros"] += 1
            return Pending(shape, dtype, lambda: np.zeros(shape, dtype))
        self.counts["computed"] += 1

        def compute() -> np.ndarray:
            acc = None
            for l, w in sources:
                ys = self._grow_source(u, leaves, l if block else None)
                if (w, scale, fold) != (1.0, 1.0, 1.0):
                    ys = tuple(np.float32(w * scale * fold) * y.astype(np.float32) for y in ys)
                acc = ys if acc is None else tuple(a + y for a, y in zip(acc, ys, strict=True))
            out = u.outward(tuple(a[None] if not block else a for a in acc), self.c2)
            return np.asarray(out[0], dtype)

        return Pending(shape, dtype, compute)

    def entries(self) -> dict[str, Any]:
        """Every output tensor in write order: top-level inputs, blocks (with their buffers),
        then the final norm and readout."""
        chk, c2 = self.chk, self.c2
        top = {u.ours[0]: u for u in top_units(chk.kind, chk.c)}
        fold = c2.readout_mult  # tied readout multiplier folded into the final norm (exact)
        out: dict[str, Any] = {}
        for name in ("embed", "pos"):
            if name in top:
                out[chk.key(top[name].hf)] = self.tensor(top[name], None)
        for m in range(c2.n_layers):
            for u in block_units(chk.kind, chk.c):
                out[chk.key(u.hf, m)] = self.tensor(u, m)
            for suffix, rec in chk.buffers.items():
                x = buffer_value(chk.kind, suffix, c2, rec)
                out[chk.key(suffix, m)] = Pending(x.shape, x.dtype, lambda x=x: x)
        for name in ("final_scale", "final_bias", "head"):
            if name in top:
                f = fold if name.startswith("final") else 1.0
                out[chk.key(top[name].hf)] = self.tensor(top[name], None, fold=f)
        if c2.tied and chk.head_in_file:
            out[HEAD] = self.tensor(top["embed"], None)
        return out


def grow_decoder_stream(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    width: Any = "x2",
    depth: Any = None,
    depth_slices: Any = None,
    method: Any = DEFAULT_EXTERNAL_METHOD,
    seed: int = 0,
    overwrite: bool = False,
    shard_size: int | str = DEFAULT_SHARD_SIZE,
    on_plan: Callable[[GrowthPlan, DecoderConfig], None] | None = None,
    max_bytes: int | None = None,
) -> GrowthReport:
    """Grow a GPT-2 / Llama / Mistral / Qwen2 checkpoint directory into ``out``, streaming.

    width / depth / method / seed: as :func:`growth.formats.hf.grow_hf`. depth_slices:
    ``"0:24,8:32"`` or ``[(0, 24), (8, 32)]``: the output's blocks are these half-open ranges of
    source blocks, concatenated (mergekit passthrough); excludes ``depth``. shard_size: largest
    output shard (``"5GB"``, bytes); one shard is written as ``model.safetensors``.
    on_plan: called with the plan and the grown config before anything is written.
    max_bytes: bound on the output's size (default: the free disk at ``out``), checked before
    anything is computed or written.
    Returns the report; ``function_preserving`` is the plan's (the tests measure it with the
    independent forwards of ``tests/oracles/hf_reference.py``).
    """
    src = Path(src)
    config = read_config(src)
    with Tensors(src) as tensors:
        chk = check_tensors(src, config, tensors, growth_only=True)
        plan = plan_stream(chk, tensors, width=width, depth=depth, depth_slices=depth_slices,
                           method=method, seed=seed)  # fmt: skip
        c2 = decoder.grown(chk.c, plan)
        cfg = hf_config(c2, config)
        if on_plan is not None:
            on_plan(plan, c2)
        grower = _Grower(chk, tensors, plan, c2)
        entries = grower.entries()
        nbytes = sum(int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
                     for x in entries.values())  # fmt: skip
        check_size(nbytes, out, max_bytes=max_bytes, in_memory=False)
        report = plan.report
        if c2.readout_mult != 1.0:
            report.notes.append(
                f"tied readout multiplier {c2.readout_mult:.6g} folded into the final norm "
                "(HF has no readout multiplier; exact)"
            )
        for key in rope_scaled(config):
            report.notes.append(
                f"{key}={config[key]!r} carried unchanged: head_dim is not grown, so every head "
                "keeps its source's rotary map"
            )
        n = grower.counts
        report.notes.append(
            f"streamed {len(entries)} tensors: {n['copied']} copied byte for byte, "
            f"{n['computed']} computed, {n['zeros']} zero output projections"
        )
        side = resized_side_files(src, c2.d_model)
        write_checkpoint(out, entries, cfg, tensors.metadata or {"format": "pt"},
                         overwrite=overwrite, shard_size=shard_size, source=src,
                         side_files=side)  # fmt: skip
    return report
