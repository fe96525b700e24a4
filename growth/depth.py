"""Depth growth of residual stacks stored on a leading (or any) ``depth`` axis.

A stack of L residual blocks ``x_{l+1} = x_l + a f(x_l; theta_l)`` is read as samples of a depth
profile ``theta(t)``, ``t in [0, 1]``. A depth map is a linear map on blocks plus a scale on each
new block's residual output:

    theta'_m = sum_l mix[m, l] theta_l,        out'_m = out_scale[m] * (sum_l mix[m, l] out_l)

where ``out`` are the leaves marked ``residual_out`` (the branch's output projection). Rules:

- ``identity``: each block is followed by ``c_l - 1`` copies of itself whose output projection
  is zero -- those blocks compute the identity, so the network is unchanged (exact).
- ``duplicate``: each block repeated ``c_l`` times with its output scaled by ``1/c_l`` (Euler
  step halving): error O(1/L) for a depth profile smooth in l/L, O(1/sqrt(L)) for i.i.d.-like
  blocks (Chang et al., ICLR 2018).
- ``interpolate``: new block m sits at depth ``t'_m = (m + 1/2)/L'``; its parameters linearly
  interpolate the two source blocks around it (source block l sits at ``(l + 1/2)/L``, clamped at
  the ends); every output is scaled by ``L/L'``. Also shrinks (L' < L).
- ``stack``: the whole stack repeated (G_stack, Du et al., NeurIPS 2024), no rescaling.
- ``llama-pro``: LLaMA-Pro block expansion (Wu et al., ACL 2024, arXiv 2401.02415): the L blocks
  form ``P = L' - L`` contiguous groups and each group is followed by a copy of its last block
  whose output projection is zero (exact, like ``identity``, but the new blocks are spread
  evenly through the stack instead of following the first blocks).
- ``linear-fit``: TLEG (Xia et al., AAAI 2024): least-squares fit of a linear depth profile
  ``theta(t) = A + t B`` to the source blocks (at ``t_l = (l + 1/2)/L``), evaluated at the new
  depths ``t'_m = (m + 1/2)/L'``; a linear map, so it is a mixing matrix
  ``mix = [1, t'] pinv([1, t])``; outputs scaled by ``L/L'``. Exact on the profile when the
  source blocks are linear in depth. L' = L: identity (no growth); L = 1: the constant profile.

:func:`slice_map` builds the map of explicit layer slices (SOLAR-style depth up-scaling,
mergekit's ``passthrough``): half-open ranges ``[a, b)`` concatenated, blocks copied unscaled.

Counts ``c_l`` are balanced: ``floor(L'/L)`` or ``ceil(L'/L)``, extras to the earliest blocks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from growth.errors import GrowthError
from growth.spec import LeafSpec
from growth.width import along, constrain

DEPTH_RULES = ("identity", "duplicate", "interpolate", "stack", "linear-fit", "llama-pro")
#: rules whose new blocks compute the identity (zero output projection): function-preserving
EXACT_DEPTH_RULES = ("identity", "llama-pro")
#: one line per rule, for ``grow --help``
DEPTH_RULE_SUMMARY = {
    "identity": "each block followed by copies whose output projection is zero (exact)",
    "duplicate": "each block repeated c times, outputs scaled 1/c (Euler step halving; approx.)",
    "interpolate": "new blocks interpolate their neighbours, outputs scaled L/L' (approx.)",
    "stack": "the whole stack repeated, no rescaling (G_stack; approx.)",
    "linear-fit": "least-squares linear depth profile evaluated at new depths (TLEG; approx.)",
    "llama-pro": "LLaMA-Pro: a zero-output copy after each of L'-L even groups of blocks (exact)",
}


class DepthMap(NamedTuple):
    """mix: float32 [L', L]; out_scale: float32 [L'] (see module docstring)."""

    mix: jax.Array
    out_scale: jax.Array


def _block_counts(L: int, L_new: int) -> np.ndarray:
    q, r = divmod(L_new, L)
    return np.array([q + (l < r) for l in range(L)])


def depth_map(rule: str, L: int, L_new: int) -> DepthMap:
    """Build the depth map of ``rule`` taking L blocks to L_new blocks."""
    if rule not in DEPTH_RULES:
        raise GrowthError(f"depth rule {rule!r}: expected one of {DEPTH_RULES}")
    if L < 1 or L_new < 1:
        raise GrowthError(f"depth: need at least one block before and after, got {L} -> {L_new}")
    if L_new < L and rule not in ("interpolate", "linear-fit"):
        raise GrowthError(
            f"depth rule {rule!r} cannot shrink {L} -> {L_new} blocks; use 'interpolate'"
        )
    mix = np.zeros((L_new, L), np.float32)
    scale = np.ones(L_new, np.float32)
    if rule in ("identity", "duplicate"):
        counts = _block_counts(L, L_new)
        src = np.repeat(np.arange(L), counts)
        mix[np.arange(L_new), src] = 1.0
        if rule == "identity":
            first = np.concatenate([[0], np.cumsum(counts)[:-1]])
            scale[:] = 0.0
            scale[first] = 1.0
        else:
            scale = (1.0 / counts[src]).astype(np.float32)
    elif rule == "llama-pro":
        src = _expansion_sources(L, L_new)
        mix[np.arange(L_new), src] = 1.0
        scale[np.flatnonzero(np.diff(np.concatenate([[-1], src])) == 0)] = 0.0
    elif rule == "stack":
        mix[np.arange(L_new), np.arange(L_new) % L] = 1.0
    elif rule == "linear-fit":
        if L == L_new:
            mix = np.eye(L, dtype=np.float32)
        else:
            t = (np.arange(L) + 0.5) / L
            t_new = (np.arange(L_new) + 0.5) / L_new
            deg = 1 if L > 1 else 0
            X = np.vander(t, deg + 1, increasing=True)  # [L, 2]: columns 1, t
            X_new = np.vander(t_new, deg + 1, increasing=True)
            mix = (X_new @ np.linalg.pinv(X)).astype(np.float32)
            scale[:] = L / L_new
    else:  # interpolate
        pos = np.clip((np.arange(L_new) + 0.5) * L / L_new - 0.5, 0, L - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, L - 1)
        frac = (pos - lo).astype(np.float32)
        mix[np.arange(L_new), lo] += 1.0 - frac
        mix[np.arange(L_new), hi] += frac
        scale[:] = L / L_new
    return DepthMap(jnp.asarray(mix), jnp.asarray(scale))


def _expansion_sources(L: int, L_new: int) -> np.ndarray:
    """Source block of each of the L_new blocks of a LLaMA-Pro expansion: new block k
    (k < P = L_new - L) follows block ``a_k = ceil((k + 1) L / P) - 1``, the last block of the
    k-th of P even groups (several new blocks follow one block when P > L)."""
    P = L_new - L
    anchors = -(-(np.arange(1, P + 1) * L) // P) - 1
    extra = np.bincount(anchors, minlength=L)
    return np.repeat(np.arange(L), 1 + extra)


def parse_slices(text: str) -> tuple[tuple[int, int], ...]:
    """``"0:24,8:32"`` -> ``((0, 24), (8, 32))``; GrowthError naming the bad item."""
    out = []
    for item in str(text).split(","):
        a, sep, b = item.strip().partition(":")
        try:
            out.append((int(a), int(b)))
        except ValueError:
            raise GrowthError(
                f"depth slices {text!r}: item {item!r} should be START:END (half-open layer "
                "range, e.g. '0:24,8:32')"
            ) from None
        if not sep:
            raise GrowthError(f"depth slices {text!r}: item {item!r} should be START:END")
    return tuple(out)


def slice_map(L: int, slices: Sequence[tuple[int, int]] | str) -> DepthMap:
    """Depth map stacking the half-open block ranges ``[a, b)`` of ``slices`` one after another
    (mergekit ``passthrough`` / SOLAR depth up-scaling: ``((0, 24), (8, 32))`` of a 32-block
    model gives 48 blocks, 0..23 then 8..31), copied unscaled. Function-preserving only when
    the slices concatenate to ``0..L-1`` (:func:`slices_exact`)."""
    if isinstance(slices, str):
        slices = parse_slices(slices)
    if not slices:
        raise GrowthError("depth slices: need at least one START:END range")
    src: list[int] = []
    for a, b in slices:
        if not 0 <= a < b <= L:
            raise GrowthError(
                f"depth slice {a}:{b}: expected 0 <= START < END <= {L} (the source has {L} "
                "blocks; ranges are half-open)"
            )
        src += range(a, b)
    mix = np.zeros((len(src), L), np.float32)
    mix[np.arange(len(src)), src] = 1.0
    return DepthMap(jnp.asarray(mix), jnp.ones(len(src), jnp.float32))


def slices_exact(L: int, slices: Sequence[tuple[int, int]]) -> bool:
    """Whether stacking ``slices`` reproduces the source stack ``0..L-1`` (then, and only then,
    slice stacking keeps the function: a repeated block adds its branch output twice)."""
    return [i for a, b in slices for i in range(a, b)] == list(range(L))


def contract(x: jax.Array, axis: int, op: jax.Array) -> jax.Array:
    """``new[..., i, ...] = sum_k op[i, k] x[..., k, ...]`` along ``axis``, at HIGHEST matmul
    precision (one-hot rows copy exactly); ``op`` [M, x.shape[axis]] is cast to ``x.dtype``."""
    hi = jax.lax.Precision.HIGHEST
    y = jnp.tensordot(op.astype(x.dtype), x, axes=([1], [axis]), precision=hi)
    return jnp.moveaxis(y, 0, axis)


def mix_axis(x: jax.Array, axis: int, dm: DepthMap, residual_out: bool) -> jax.Array:
    """A depth map along ``axis``: ``mix`` contracted in, times ``out_scale`` for a
    ``residual_out`` leaf."""
    y = contract(x, axis, dm.mix)
    return y * along(dm.out_scale.astype(y.dtype), y.ndim, axis) if residual_out else y


@partial(jax.jit, static_argnames=("leaf_specs", "out_shardings"))
def apply_depth(
    leaves: Sequence[jax.Array],
    maps: Mapping[str, DepthMap],
    *,
    leaf_specs: tuple[LeafSpec, ...],
    out_shardings: tuple | None = None,
) -> list[jax.Array]:
    """Apply depth maps to every leaf with a ``depth`` axis whose stack is in ``maps``.

    The contraction uses HIGHEST matmul precision so that one-hot rows copy blocks exactly
    (no TF32/bf16 passes on accelerators). Returns new leaves in their source dtypes, pinned
    to ``out_shardings`` when given (see ``growth.width.apply_width``).
    """
    out = []
    for leaf, spec in zip(leaves, leaf_specs, strict=True):
        x = leaf
        for ax, a in enumerate(spec.axes):
            if a and a.role == "depth" and a.space in maps:
                x = mix_axis(
                    x.astype(jnp.promote_types(x.dtype, jnp.float32)),
                    ax,
                    maps[a.space],
                    spec.residual_out,
                )
        out.append(x.astype(leaf.dtype))
    return constrain(out, out_shardings)
