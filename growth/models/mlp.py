"""A plain MLP ``x -> phi(W_1 x + b_1) -> ... -> m_L W_out h_L + b_out`` in Flax NNX.

Hidden layer l is the neuron space ``h{l}``; kernels are stored ``[fan_in, fan_out]`` (Flax).
Every contraction over a hidden space ``h{l}`` carries a constant forward multiplier
``m_l = mults[l - 1]`` (config data, so growth can keep it):

    z_1 = W_1 x + b_1,    z_{l+1} = m_l W_{l+1} phi(z_l) + b_{l+1},    logits = z_{L+1}.

``param`` picks the parametrization (``theory.parametrization``): ``sp`` and ``mup`` have
``m_l = 1`` (they differ in the readout init and the learning rates, applied at training time
relative to base widths); ``mf`` (mean field) has ``m_l = 1 / n_l`` at its reference widths
``n_l`` and O(1) *types*: the hidden and readout kernels are drawn so that ``n_l m_l W`` (the
type) is N(0, 1) entrywise, so the layer is a sample mean ``(1/n) sum_j w_ij phi(z_j)`` whose
law does not depend on the width.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import jax
import numpy as np
from flax import nnx

from growth.errors import GrowthError
from growth.spec import LeafSpec, NeuronSpec
from theory.parametrization import PARAMETRIZATIONS

if TYPE_CHECKING:
    from growth.engine import GrowthPlan

ACTIVATIONS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu, "tanh": jax.numpy.tanh}


def check_mults(owner: object, mults: tuple[float, ...], count: int) -> None:
    """Raise GrowthError unless ``mults`` holds ``count`` positive finite numbers."""
    if len(mults) != count or not all(float(m) > 0 and np.isfinite(m) for m in mults):
        raise GrowthError(
            f"{type(owner).__name__}.mults={mults!r}: expected {count} positive finite "
            "multipliers (one per hidden space)"
        )


def check_param(owner: object, param: str) -> None:
    if param not in PARAMETRIZATIONS:
        raise GrowthError(
            f"{type(owner).__name__}.param={param!r}: expected one of {PARAMETRIZATIONS}"
        )


@dataclass(frozen=True)
class MLPConfig:
    """param: ``sp`` / ``mup`` / ``mf``. mults: forward multiplier of each hidden space's
    contraction (``None``: ``1 / n_l`` under ``mf``, else 1); growth keeps it."""

    input_dim: int
    hidden: tuple[int, ...]
    num_classes: int
    activation: str = "relu"
    param: str = "sp"
    mults: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise GrowthError(
                f"activation {self.activation!r}: expected one of {sorted(ACTIVATIONS)}"
            )
        if not self.hidden or min(self.hidden) < 1 or self.input_dim < 1 or self.num_classes < 1:
            raise GrowthError(f"MLPConfig {self}: sizes must be positive, with >= 1 hidden layer")
        check_param(self, self.param)
        if self.mults is None:
            mf = self.param == "mf"
            object.__setattr__(self, "mults", tuple(1.0 / n if mf else 1.0 for n in self.hidden))
        object.__setattr__(self, "mults", tuple(float(m) for m in self.mults))
        check_mults(self, self.mults, len(self.hidden))


def type_std(config: MLPConfig, layer: int) -> float | None:
    """Init std of the stored kernel of ``layer`` (>= 1) under ``mf``: ``1 / (n m)``, so that its
    type ``n m W`` is N(0, 1); None (the Flax default) for the input layer or other params."""
    if config.param != "mf" or layer == 0:
        return None
    return 1.0 / (config.hidden[layer - 1] * config.mults[layer - 1])


class MLP(nnx.Module):
    def __init__(self, config: MLPConfig, *, rngs: nnx.Rngs):
        self.config = config
        dims = (config.input_dim, *config.hidden, config.num_classes)
        layers = []
        for l, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            std = type_std(config, l)
            kw = {} if std is None else {"kernel_init": nnx.initializers.normal(std)}
            layers.append(nnx.Linear(a, b, rngs=rngs, **kw))
        self.layers = nnx.List(layers)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [batch, input_dim] -> logits [batch, num_classes]."""
        act = ACTIVATIONS[self.config.activation]
        x = self.layers[0](x)
        for m, layer in zip(self.config.mults, self.layers[1:], strict=True):
            x = m * (act(x) @ layer.kernel[...]) + layer.bias[...]
        return x


def spec(config: MLPConfig) -> NeuronSpec:
    """Axis roles; with ReLU, each hidden space's fan-in (kernel column and bias entry) is
    declared positively homogeneous: ``relu(c z) = c relu(z)`` for ``c > 0`` (not GELU/tanh)."""
    L = len(config.hidden)
    relu = config.activation == "relu"
    leaves: dict = {}
    for l in range(L):
        h = f"h{l + 1}"
        kernel = ("-" if l == 0 else f"in:h{l}", f"out:{h}")
        leaves[f"layers/{l}/kernel"] = LeafSpec.of(kernel, homogeneous=h if relu else None)
        leaves[f"layers/{l}/bias"] = LeafSpec.of((f"out:{h}",), homogeneous=h if relu else None)
    leaves[f"layers/{L}/kernel"] = (f"in:h{L}", "-")
    leaves[f"layers/{L}/bias"] = ("-",)
    return NeuronSpec(leaves)


def sizes(config: MLPConfig) -> dict[str, int]:
    return {f"h{l + 1}": n for l, n in enumerate(config.hidden)}


def reference_width(mult: float) -> float:
    """``1 / mult``, snapped to the nearest integer when within float rounding of it."""
    n = 1.0 / mult
    return float(round(n)) if abs(n - round(n)) <= 1e-9 * n else n


def reference_sizes(config: MLPConfig) -> dict[str, float]:
    """Space -> ``1 / m``: the widths at which the forward multipliers are ``1 / n`` (the mean
    field's base widths; a fresh ``mf`` model's own sizes, a grown one's source sizes)."""
    return {f"h{l + 1}": reference_width(m) for l, m in enumerate(config.mults)}


def resize(config: MLPConfig, new: Mapping[str, int]) -> MLPConfig:
    """New sizes, same hyper-parameters and multipliers (an ``mf`` model stays mean field
    relative to the same reference widths: its init draws types N(0, 1) at any size)."""
    hidden = tuple(new.get(f"h{l + 1}", n) for l, n in enumerate(config.hidden))
    return replace(config, hidden=hidden)


def grown(config: MLPConfig, plan: GrowthPlan) -> MLPConfig:
    """Config of the model ``plan`` grows from ``config``: the sizes change, the multipliers are
    kept -- the engine's fan-in scale ``s_i`` (``1 / c`` for exact maps) already makes
    ``m sum_i s_i W_{g(i)} phi_{g(i)} = m sum_j W_j phi_j``; resetting ``m`` to ``1 / N`` would
    scale every hidden pre-activation by ``n / N``."""
    return resize(config, plan.report.sizes_after)
