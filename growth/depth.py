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
- ``linear-fit``: TLEG (Xia et al., AAAI 2024): least-squares fit of a linear depth profile
  ``theta(t) = A + t B`` to the source blocks (at ``t_l = (l + 1/2)/L``), evaluated at the new
  depths ``t'_m = (m + 1/2)/L'``; a linear map, so it is a mixing matrix
  ``mix = [1, t'] pinv([1, t])``; outputs scaled by ``L/L'``. Exact on the profile when the
  source blocks are linear in depth. L' = L: identity (no growth); L = 1: the constant profile.

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

DEPTH_RULES = ("identity", "duplicate", "interpolate", "stack", "linear-fit")
#: one line per rule, for ``grow --help``
DEPTH_RULE_SUMMARY = {
    "identity": "each block followed by copies whose output projection is zero (exact)",
    "duplicate": "each block repeated c times, outputs scaled 1/c (Euler step halving; approx.)",
    "interpolate": "new blocks interpolate their neighbours, outputs scaled L/L' (approx.)",
    "stack": "the whole stack repeated, no rescaling (G_stack; approx.)",
    "linear-fit": "least-squares linear depth profile evaluated at new depths (TLEG; approx.)",
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
