"""What a growth promises about the function, as a bound that a measurement can fail.

Every growth declares one :class:`Bound` on the *relative output error*
``e = max |f'(x) - f(x)| / max |f(x)|`` (logits, or hidden states for an encoder) over probe
inputs ``x``, and through it on the loss gap: cross-entropy is 2-Lipschitz in the max-norm of
the logits (its gradient ``softmax - onehot`` has l1-norm <= 2), so
``|loss' - loss| <= 2 e max|f(x)|``. Kinds, worst first (a growth gets the worst that applies):

- ``none``: the growth makes no promise: an approximate depth rule (``duplicate``, ``stack``,
  ``interpolate``, ``linear-fit``), bert2BERT's fan-out from the next block, unequal copy counts
  under a bare norm flag. Stated, and a check of it fails (nothing can be verified).
- ``sampling``: the maps are draws (``iid`` sampler / ``unbiased`` scaling). The grown model is
  an unbiased estimate of the source whose spread shrinks as ``N^-1/2`` (law of large numbers
  over the source's empirical unit measure). The bound is computed from fresh draws of the same
  method at the same sizes: ``mean + t sd`` of their errors, ``t = 1/sqrt(alpha)`` (Chebyshev:
  a genuine draw exceeds it with probability <= alpha).
- ``noise``: exact maps plus first-order noise: i.i.d. fan-in noise of relative size sigma
  (Net2Net) and/or antithetic feature smoothing of bandwidth h (second order).
  ``e <= D (C_SIGMA sigma + C_H h^2) + rounding``.
- ``rounding``: exact in exact arithmetic (balanced copies, 1/count fan-in, zero-sum noise,
  identity blocks, padded norms). ``e <= C_ROUND D u``, with ``u`` the unit roundoff of the
  weights' dtype (at least float32's: the forward computes in float32).

``D`` (:func:`matmul_depth`) counts the grown model's weight matrices (leaves with an ``in``
axis, a leaf on a depth stack once per block): rounding and noise errors add up at most once per
matrix product. The constants are measured, not derived (docs/methods.md, "Guarantees"): on
MNIST-1D MLPs and residual MLPs trained 300 steps (3 seeds, x2 and x4) the largest ratios of the
measured error to ``D u``, ``D sigma`` and ``D h^2`` were 1.9, 0.6 and 1.8; the constants leave
a margin of 8, 6.7 and 4.4.

``function_preserving`` in a report means *measured* (:func:`output_error`) or proved: ``e``
within the float32 rounding bound ``C_ROUND D 2^-24``. Proved, without a forward pass, for an
exact growth without symmetry-breaking noise whose grown weights are float32 or wider, or whose
fan-in scales are powers of two (then every grown weight is an exact copy or an exact scaling).
Zero-sum noise is exact only in exact arithmetic: rounding differences between copies are
amplified layer after layer (bf16 Llama ``exact``: 1% of the logits), so it is measured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from growth.spec import LeafSpec

KINDS = ("rounding", "noise", "sampling", "none")  # best to worst
C_ROUND = 16.0
C_SIGMA = 4.0
C_H = 8.0
#: false-failure rate of the sampling bound (Chebyshev: t = 1/sqrt(alpha) = 10)
SAMPLING_ALPHA = 0.01


@dataclass(frozen=True)
class Bound:
    """A growth's declared guarantee. rel_error: the bound on ``e`` (None for ``sampling``,
    computed from fresh draws by the checker, and for ``none``); statement: in words."""

    kind: str
    statement: str
    rel_error: float | None
    depth: int
    unit_roundoff: float

    def to_dict(self) -> dict:
        return asdict(self)


def unit_roundoff(dtypes: Sequence[Any]) -> float:
    """Largest unit roundoff ``eps / 2`` among the floating dtypes, at least float32's 2^-24."""
    floats = [dt for dt in dtypes if jnp.issubdtype(dt, jnp.floating)]
    return max([2.0**-24, *(float(jnp.finfo(dt).eps) / 2 for dt in floats)])


def matmul_depth(leaves: Sequence[LeafSpec], stack_sizes: dict[str, int]) -> int:
    """Number of weight matrices: leaves with an ``in`` axis, a stacked leaf once per block
    (``stack_sizes``: depth stack -> blocks after growth). At least 1."""
    d = 0
    for spec in leaves:
        if any(a is not None and a.role == "in" for a in spec.axes):
            stacks = [a.space for a in spec.axes if a is not None and a.role == "depth"]
            d += int(np.prod([stack_sizes[s] for s in stacks])) if stacks else 1
    return max(d, 1)


def rounding_bound(depth: int, u: float = 2.0**-24) -> float:
    """``C_ROUND D u``: the relative error rounding may cause in an exact growth."""
    return C_ROUND * depth * u


def declare(
    kind: str, reasons: Sequence[str], *, depth: int, u: float, sigma: float, h: float
) -> Bound:
    """The bound of a growth of ``kind`` (see the module doc). reasons: why the kind applies."""
    why = "; ".join(reasons)
    if kind == "rounding":
        b = rounding_bound(depth, u)
        return Bound(kind, f"exact in exact arithmetic: e <= {C_ROUND:g} D u = {b:.3g} "
                     f"(D={depth}, u={u:.3g})", b, depth, u)  # fmt: skip
    if kind == "noise":
        b = depth * (C_SIGMA * sigma + C_H * h * h) + rounding_bound(depth, u)
        return Bound(kind, f"first-order noise ({why}): e <= D ({C_SIGMA:g} sigma + {C_H:g} "
                     f"h^2) + rounding = {b:.3g} (D={depth}, sigma={sigma:g}, h={h:g})",
                     b, depth, u)  # fmt: skip
    if kind == "sampling":
        return Bound(kind, f"sampling ({why}): unbiased, spread ~ N^-1/2; e and the loss gap "
                     f"<= mean + {SAMPLING_ALPHA ** -0.5:g} sd over fresh draws at the same N "
                     f"(Chebyshev, alpha={SAMPLING_ALPHA:g})", None, depth, u)  # fmt: skip
    if kind == "none":
        return Bound(kind, f"none: {why}", None, depth, u)
    raise ValueError(f"bound kind {kind!r}: expected one of {KINDS}")


def worst(kinds: Sequence[str]) -> str:
    """The weakest guarantee among ``kinds`` (``rounding`` when empty)."""
    return max(kinds, key=KINDS.index, default="rounding")


def output_error(ref: Any, out: Any) -> float:
    """``max |out - ref| / max |ref|`` in float64 (shapes must match)."""
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"output shapes differ: {ref.shape} vs {out.shape}")
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


def assess(
    params: Any,
    resolved: Any,
    sizes_after: Mapping[str, int],
    maps: Mapping[str, Any],
    method: Any,
    kinds: Sequence[tuple[str, str]],
) -> tuple[dict, bool, str, str | None]:
    """A planned growth's ``(bound dict, function_preserving, function_check, note)``.

    kinds: ``(kind, reason)`` pairs the plan found (:data:`KINDS` beyond ``rounding``); maps:
    space -> ``theory.measure.SpaceMap``; method: a ``growth.methods.Method``. Proved without a
    forward pass: an exact growth without symmetry-breaking noise whose weights are float32 or
    wider, or whose fan-in scales are powers of two (exact in any binary format); any other
    exact growth is ``unmeasured`` (False) until :meth:`growth.engine.GrowthReport.measured`.
    """
    kind = worst([k for k, _ in kinds])
    dtypes = [np.dtype(x.dtype) for x in jax.tree_util.tree_leaves(params) if hasattr(x, "dtype")]
    u = unit_roundoff(dtypes)
    stacks = {s: sizes_after[s] for s in resolved.depth_stacks()}
    bound = declare(
        kind, [r for k, r in kinds if k == kind], depth=matmul_depth(resolved.leaves, stacks),
        u=u, sigma=method.sigma if method.symmetry == "noise" else 0.0, h=method.bandwidth,
    ).to_dict()  # fmt: skip
    if kind != "rounding":
        return bound, False, "no", None
    noisy = bool(maps) and method.symmetry != "none" and method.sigma > 0
    scales = [np.asarray(m.scale, np.float64) for m in maps.values()]
    scales = np.concatenate([s[s > 0] for s in scales] or [np.ones(1)])
    pow2 = bool(np.all(np.log2(scales) == np.round(np.log2(scales))))
    if not noisy and (u <= 2.0**-24 or pow2):
        return bound, True, "proved", None
    why = f"zero-sum noise sigma={method.sigma:g}" if noisy else f"weights rounded (u={u:.3g})"
    note = (
        f"exact in exact arithmetic, but not proved in floating point ({why}): "
        "function_preserving stays False until measured (GrowthReport.measured)"
    )
    return bound, False, "unmeasured", note
