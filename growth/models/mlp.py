"""A plain MLP ``x -> phi(W_1 x + b_1) -> ... -> W_out h_L + b_out`` in Flax NNX.

Hidden layer l is the neuron space ``h{l}``; kernels are stored ``[fan_in, fan_out]`` (Flax).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import jax
from flax import nnx

from growth.errors import GrowthError
from growth.spec import NeuronSpec

if TYPE_CHECKING:
    from growth.engine import GrowthPlan

ACTIVATIONS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu, "tanh": jax.numpy.tanh}


@dataclass(frozen=True)
class MLPConfig:
    input_dim: int
    hidden: tuple[int, ...]
    num_classes: int
    activation: str = "relu"

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise GrowthError(
                f"activation {self.activation!r}: expected one of {sorted(ACTIVATIONS)}"
            )
        if not self.hidden or min(self.hidden) < 1 or self.input_dim < 1 or self.num_classes < 1:
            raise GrowthError(f"MLPConfig {self}: sizes must be positive, with >= 1 hidden layer")


class MLP(nnx.Module):
    def __init__(self, config: MLPConfig, *, rngs: nnx.Rngs):
        self.config = config
        dims = (config.input_dim, *config.hidden, config.num_classes)
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:], strict=True)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [batch, input_dim] -> logits [batch, num_classes]."""
        act = ACTIVATIONS[self.config.activation]
        for layer in self.layers[:-1]:
            x = act(layer(x))
        return self.layers[-1](x)


def spec(config: MLPConfig) -> NeuronSpec:
    L = len(config.hidden)
    leaves: dict = {"layers/0/kernel": ("-", "out:h1"), "layers/0/bias": ("out:h1",)}
    for l in range(1, L):
        leaves[f"layers/{l}/kernel"] = (f"in:h{l}", f"out:h{l + 1}")
        leaves[f"layers/{l}/bias"] = (f"out:h{l + 1}",)
    leaves[f"layers/{L}/kernel"] = (f"in:h{L}", "-")
    leaves[f"layers/{L}/bias"] = ("-",)
    return NeuronSpec(leaves)


def sizes(config: MLPConfig) -> dict[str, int]:
    return {f"h{l + 1}": n for l, n in enumerate(config.hidden)}


def resize(config: MLPConfig, new: Mapping[str, int]) -> MLPConfig:
    hidden = tuple(new.get(f"h{l + 1}", n) for l, n in enumerate(config.hidden))
    return replace(config, hidden=hidden)


def grown(config: MLPConfig, plan: GrowthPlan) -> MLPConfig:
    """Config of the model ``plan`` grows from ``config``: only the sizes change (no norms)."""
    return resize(config, plan.report.sizes_after)
