"""A residual MLP with pre-LayerNorm blocks stacked on a leading depth axis (Flax NNX).

    x_0 = E u + e,   x_{l+1} = x_l + a (m_h W2_l gelu(m_d W1_l LN_l(x_l) + b1_l) + b2_l),
    logits = m_d H LN_f(x_L) + c

Neuron spaces: ``d`` (the residual stream), ``h`` (the blocks' hidden units, one map shared by
all blocks) and the depth stack ``blocks`` (L). ``(m_d, m_h) = mults`` are the forward
multipliers of the contractions over ``d`` and ``h``: 1 under ``sp``/``mup``, ``1 / n`` at the
reference widths under ``mf`` (mean field), where ``W1``, ``W2`` and ``H`` are drawn so that
their types ``n m W`` are N(0, 1) (``W2`` also carries the ``1 / sqrt(L)`` depth factor), as in
``growth.models.mlp``. The residual multiplier ``a`` is a config
constant, not derived from L, so depth growth never has to rewrite it. Block parameters are
arrays ``[L, ...]`` run with ``jax.lax.scan``, so depth growth is a map on the leading axis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from growth.errors import GrowthError
from growth.models.mlp import check_mults, check_param, reference_width
from growth.spec import LeafSpec, NeuronSpec

if TYPE_CHECKING:
    from growth.engine import GrowthPlan


@dataclass(frozen=True)
class ResMLPConfig:
    input_dim: int
    width: int
    hidden: int
    depth: int
    num_classes: int
    residual_scale: float = 1.0
    eps: float = 1e-5
    param: str = "sp"
    mults: tuple[float, ...] | None = None  # (m_d, m_h); None: (1/width, 1/hidden) under mf

    def __post_init__(self) -> None:
        sizes = (self.input_dim, self.width, self.hidden, self.depth, self.num_classes)
        if min(sizes) < 1:
            raise GrowthError(f"ResMLPConfig {self}: all sizes must be positive")
        check_param(self, self.param)
        if self.mults is None:
            mf = self.param == "mf"
            mults = (1.0 / self.width, 1.0 / self.hidden) if mf else (1.0, 1.0)
            object.__setattr__(self, "mults", mults)
        object.__setattr__(self, "mults", tuple(float(m) for m in self.mults))
        check_mults(self, self.mults, 2)

    def type_scales(self) -> tuple[float, float] | None:
        """Under ``mf``: ``(1 / (d m_d), 1 / (h m_h))``, the stored std of an N(0, 1) type on
        a contraction over ``d`` / ``h``; None otherwise (Lecun-normal init)."""
        if self.param != "mf":
            return None
        return 1.0 / (self.width * self.mults[0]), 1.0 / (self.hidden * self.mults[1])


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """LayerNorm over the last axis: ``(x - mean) / sqrt(var + eps) * scale + bias``."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


class ResMLP(nnx.Module):
    def __init__(self, config: ResMLPConfig, *, rngs: nnx.Rngs):
        self.config = config
        d, h, L = config.width, config.hidden, config.depth
        types = config.type_scales()
        if types is None:
            in_d = in_h = nnx.initializers.lecun_normal()
            head = {}
        else:
            in_d, in_h = (nnx.initializers.normal(s) for s in types)
            head = {"kernel_init": in_d}
        self.embed = nnx.Linear(config.input_dim, d, rngs=rngs)
        self.ln_scale = nnx.Param(jnp.ones((L, d)))
        self.ln_bias = nnx.Param(jnp.zeros((L, d)))
        self.w1 = nnx.Param(in_d(rngs.params(), (L, d, h)) * 1.0)
        self.b1 = nnx.Param(jnp.zeros((L, h)))
        self.w2 = nnx.Param(in_h(rngs.params(), (L, h, d)) / jnp.sqrt(L))
        self.b2 = nnx.Param(jnp.zeros((L, d)))
        self.final_scale = nnx.Param(jnp.ones((d,)))
        self.final_bias = nnx.Param(jnp.zeros((d,)))
        self.head = nnx.Linear(d, config.num_classes, rngs=rngs, **head)

    def __call__(self, u: jax.Array) -> jax.Array:
        """u: [batch, input_dim] -> logits [batch, num_classes]."""
        cfg = self.config
        m_d, m_h = cfg.mults

        def block(x, p):
            g, b, w1, b1, w2, b2 = p
            y = jax.nn.gelu(m_d * (layer_norm(x, g, b, cfg.eps) @ w1) + b1)
            return x + cfg.residual_scale * (m_h * (y @ w2) + b2), None

        stack = (self.ln_scale, self.ln_bias, self.w1, self.b1, self.w2, self.b2)
        x, _ = jax.lax.scan(block, self.embed(u), tuple(p[...] for p in stack))
        z = layer_norm(x, self.final_scale[...], self.final_bias[...], cfg.eps)
        return m_d * (z @ self.head.kernel[...]) + self.head.bias[...]


def spec(config: ResMLPConfig) -> NeuronSpec:
    gain, bias = {"norm": "layer-gain"}, {"norm": "layer-bias"}  # LayerNorm: pads exact
    out = {"residual_out": True}
    return NeuronSpec(
        {
            "embed/kernel": ("-", "out:d"),
            "embed/bias": ("out:d",),
            "ln_scale": LeafSpec.of(("depth:blocks", "out:d"), **gain),
            "ln_bias": LeafSpec.of(("depth:blocks", "out:d"), **bias),
            "w1": ("depth:blocks", "in:d", "out:h"),
            "b1": ("depth:blocks", "out:h"),
            "w2": LeafSpec.of(("depth:blocks", "in:h", "out:d"), **out),
            "b2": LeafSpec.of(("depth:blocks", "out:d"), **out),
            "final_scale": LeafSpec.of(("out:d",), **gain),
            "final_bias": LeafSpec.of(("out:d",), **bias),
            "head/kernel": ("in:d", "-"),
            "head/bias": ("-",),
        }
    )


def sizes(config: ResMLPConfig) -> dict[str, int]:
    return {"d": config.width, "h": config.hidden, "blocks": config.depth}


def reference_sizes(config: ResMLPConfig) -> dict[str, float]:
    """``{"d": 1 / m_d, "h": 1 / m_h}``: the widths at which the multipliers are ``1 / n``."""
    return {"d": reference_width(config.mults[0]), "h": reference_width(config.mults[1])}


def resize(config: ResMLPConfig, new: Mapping[str, int]) -> ResMLPConfig:
    """New sizes, same hyper-parameters and multipliers (see ``growth.models.mlp.resize``)."""
    return replace(
        config,
        width=new.get("d", config.width),
        hidden=new.get("h", config.hidden),
        depth=new.get("blocks", config.depth),
    )


def grown(config: ResMLPConfig, plan: GrowthPlan) -> ResMLPConfig:
    """Config of the model ``plan`` grows from ``config``: the new sizes, and the LayerNorm eps
    times the report's factor for ``d`` (``k n / N`` for a padded map, see
    ``theory.measure.padded_map``; without it a non-multiple width is not exact) and times
    ``a^2`` for a stream scaled by ``a`` (``GrowthReport.stream_scale``). The multipliers
    are kept: the engine's fan-in scales already divide the copies (``growth.models.mlp.grown``)."""
    c = resize(config, plan.report.sizes_after)
    eps = plan.report.eps_scale.get("d", 1.0) * plan.report.stream_scale.get("d", 1.0) ** 2
    return replace(c, eps=config.eps * eps) if eps != 1.0 else c
