"""A GPT-style pre-norm decoder in Flax NNX, with a neuron-space spec for exact growth.

    x_0 = E[u] (+ P[t]),
    x_{l+1/2} = x_l + Attn_l(N1_l(x_l)),    x_{l+1} = x_{l+1/2} + MLP_l(N2_l(x_{l+1/2})),
    logits = m * N_f(x_L) H        (H = E^T when tied; m = ``readout_mult``)

Options: LayerNorm or RMSNorm (``norm``); multi-head, grouped-query or multi-query attention
(``n_heads``, ``n_kv_heads``); rotary or learned positions; GELU MLP or SwiGLU; tied or untied
embeddings; optional biases. Blocks are stacked on a leading depth axis and run with
``jax.lax.scan``.

Neuron spaces (``sizes``): ``d`` (residual stream, normalised), ``kv`` (key/value heads),
``group`` (query heads per kv head: ``n_heads = kv * group``), ``hd`` (head dim; with rotary
positions its units are the rotate-half pairs ``(i, i + hd/2)``), ``ff`` (MLP hidden units) and the
depth stack ``blocks``. Kernels carry one axis per space, so every role is a plain axis role:

    wq [L, d, kv, group, hd]   in:d  out:kv out:group out:hd
    wk [L, d, kv, hd]          in:d  out:kv in:hd        (k is the fan-in side of q.k)
    wv [L, d, kv, hd]          in:d  out:kv out:hd
    wo [L, kv, group, hd, d]   in:kv in:group in:hd out:d   (residual output)

Exactness (see ``docs/transformers.md``): the attention logit scale ``attn_scale`` is stored in
the config (not derived from ``head_dim``), so growing ``hd`` with k on the fan-in side keeps
``q.k``; a grown rotary model keeps each pair's frequency (``rope_freqs``, gathered by the pair
map); LayerNorm/RMSNorm over a non-multiple ``d`` is exact by padding (the engine) plus the eps
factor of the report; the tied readout takes the ``d`` copies' fan-in scale through
``readout_mult``. :func:`grown` applies all of this to the config.

Mean field (``param="mf"``): every contraction carries a forward multiplier ``1 / n`` of its
space at the reference widths (``mults`` for ``d, ff, kv, group, hd``: ``m_d`` on q/k/v, the MLP
input and the readout, ``m_ff`` on the MLP output, ``m_kv m_group m_hd`` on the attention
output), kernels are drawn so that their types ``n m W`` are N(0, 1) (residual outputs keep the
GPT-2 factor ``(2L)^-1/2``), the embeddings are O(1) input types, and ``q.k`` is scaled by
``1/hd`` (muP's attention) unless ``attn_scale`` is given. Growth keeps ``mults`` (the engine's
fan-in scales divide the copies), as for ``growth.models.mlp``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from growth.errors import GrowthError
from growth.models.mlp import check_mults, check_param, reference_width
from growth.spec import LeafSpec, NeuronSpec

if TYPE_CHECKING:
    from growth.engine import GrowthPlan

NORMS = ("layer", "rms")
MLPS = ("gelu", "swiglu")
POSITIONS = ("rotary", "learned")


class ConfigError(GrowthError):
    """A decoder config is inconsistent (names the field and what was expected)."""


@dataclass(frozen=True)
class DecoderConfig:
    """Decoder hyper-parameters. ``None`` fields are filled in by ``__post_init__``:

    n_kv_heads: n_heads (MHA); 1 gives MQA, a proper divisor of n_heads GQA.
    head_dim: d_model // n_heads (then n_heads must divide d_model).
    d_ff: 4 d_model (GELU) or 8/3 d_model rounded up to a multiple of 8 (SwiGLU).
    attn_scale: logit scale of ``q.k``; default 1/sqrt(head_dim), then kept under growth.
    rope_freqs: one frequency per rotary pair (length head_dim/2); None = the standard
        ``rope_base^(-2i/head_dim)``; a grown model carries the frequencies of its source pairs.
    readout_mult: multiplier of the logits (muP's output multiplier); tied growth rescales it.
    gelu_approximate: the GELU MLP's tanh approximation (GPT-2's ``gelu_new``; default) or,
        False, the exact ``x Phi(x)`` (erf).
    """

    vocab: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None
    head_dim: int | None = None
    d_ff: int | None = None
    max_len: int = 256
    norm: str = "layer"
    mlp: str = "gelu"
    positions: str = "rotary"
    tied: bool = True
    bias: bool = False
    eps: float = 1e-5
    attn_scale: float | None = None
    readout_mult: float = 1.0
    rope_base: float = 10000.0
    rope_freqs: tuple[float, ...] | None = None
    gelu_approximate: bool = True
    param: str = "sp"
    mults: tuple[float, ...] | None = None  # (m_d, m_ff, m_kv, m_group, m_hd)

    def __post_init__(self) -> None:
        def err(field: str, expected: str) -> ConfigError:
            return ConfigError(f"DecoderConfig.{field}={getattr(self, field)!r}: {expected}")

        for name, allowed in (("norm", NORMS), ("mlp", MLPS), ("positions", POSITIONS)):
            if getattr(self, name) not in allowed:
                raise err(name, f"expected one of {allowed}")
        for name in ("vocab", "d_model", "n_layers", "n_heads", "max_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise err(name, "expected a positive integer")
        set_ = object.__setattr__  # frozen dataclass: fill the derived fields once
        if self.n_kv_heads is None:
            set_(self, "n_kv_heads", self.n_heads)
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise err(
                "n_kv_heads",
                f"must divide n_heads={self.n_heads} (each kv head serves a whole group of "
                "query heads; n_kv_heads=n_heads is MHA, 1 is MQA)",
            )
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise err(
                    "n_heads",
                    f"must divide d_model={self.d_model} when head_dim is not given "
                    "(head_dim = d_model / n_heads)",
                )
            set_(self, "head_dim", self.d_model // self.n_heads)
        if self.head_dim < 1:
            raise err("head_dim", "expected a positive integer")
        if self.positions == "rotary" and self.head_dim % 2:
            raise err("head_dim", "must be even with rotary positions (dimensions rotate in pairs)")
        if self.d_ff is None:
            set_(
                self,
                "d_ff",
                4 * self.d_model if self.mlp == "gelu" else -(-8 * self.d_model // 24) * 8,
            )
        if self.d_ff < 1:
            raise err("d_ff", "expected a positive integer")
        check_param(self, self.param)
        mf = self.param == "mf"
        if self.attn_scale is None:
            set_(self, "attn_scale", float(self.head_dim) ** (-1.0 if mf else -0.5))
        if self.mults is None:
            sizes = (self.d_model, self.d_ff, self.n_kv_heads, self.group, self.head_dim)
            set_(self, "mults", tuple(1.0 / n if mf else 1.0 for n in sizes))
        set_(self, "mults", tuple(float(m) for m in self.mults))
        check_mults(self, self.mults, 5)
        for name in ("eps", "attn_scale", "readout_mult", "rope_base"):
            if not (float(getattr(self, name)) > 0 and np.isfinite(getattr(self, name))):
                raise err(name, "expected a positive finite number")
        if self.rope_freqs is not None:
            set_(self, "rope_freqs", tuple(float(f) for f in self.rope_freqs))
            if self.positions != "rotary" or len(self.rope_freqs) != self.head_dim // 2:
                raise err(
                    "rope_freqs",
                    f"expected None or {self.head_dim // 2} frequencies (head_dim/2, rotary only)",
                )

    @property
    def group(self) -> int:
        """Query heads per kv head."""
        return self.n_heads // self.n_kv_heads

    def freqs(self) -> np.ndarray:
        """Rotary frequency of each pair, float64 [head_dim/2]."""
        if self.rope_freqs is not None:
            return np.asarray(self.rope_freqs, np.float64)
        return self.rope_base ** (-np.arange(0, self.head_dim, 2, dtype=np.float64) / self.head_dim)


def normalize(x: jax.Array, gain: jax.Array, bias: jax.Array | None, eps: float) -> jax.Array:
    """LayerNorm (``bias`` given) or RMSNorm (``bias`` None) over the last axis.

    LayerNorm: ``(x - mean) / sqrt(var + eps) * gain + bias``; RMSNorm:
    ``x / sqrt(mean(x^2) + eps) * gain``.
    """
    if bias is None:
        return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * gain
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * gain + bias


def rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotary embedding, rotate-half layout: pair ``(x_i, x_{i+h/2})`` rotated by ``t f_i``.

    x: [B, T, ..., hd]; cos, sin: [T, hd] (each frequency repeated for both halves).
    """
    half = x.shape[-1] // 2
    rot = jnp.concatenate([-x[..., half:], x[..., :half]], -1)
    shape = (1, cos.shape[0]) + (1,) * (x.ndim - 3) + (cos.shape[1],)
    return x * cos.reshape(shape) + rot * sin.reshape(shape)


def _block_shapes(c: DecoderConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """Stacked block parameters: name -> (shape without the depth axis, init kind)."""
    d, kv, g, hd, ff = c.d_model, c.n_kv_heads, c.group, c.head_dim, c.d_ff
    shapes = {
        "ln1_scale": ((d,), "one"),
        "wq": ((d, kv, g, hd), "in"),
        "wk": ((d, kv, hd), "in"),
        "wv": ((d, kv, hd), "in"),
        "wo": ((kv, g, hd, d), "out"),
        "ln2_scale": ((d,), "one"),
        "w_up": ((d, ff), "in"),
        "w_down": ((ff, d), "out"),
    }
    if c.mlp == "swiglu":
        shapes["w_gate"] = ((d, ff), "in")
    if c.norm == "layer":
        shapes |= {"ln1_bias": ((d,), "zero"), "ln2_bias": ((d,), "zero")}
    if c.bias:
        shapes |= {
            "bq": ((kv, g, hd), "zero"),
            "bk": ((kv, hd), "zero"),
            "bv": ((kv, hd), "zero"),
            "bo": ((d,), "zero"),
            "b_up": ((ff,), "zero"),
            "b_down": ((d,), "zero"),
        }
        if c.mlp == "swiglu":
            shapes["b_gate"] = ((ff,), "zero")
    return shapes


class Decoder(nnx.Module):
    """Causal decoder: tokens int [B, T] -> logits [B, T, vocab] (T <= max_len)."""

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
        self.config = c = config
        L, d = c.n_layers, c.d_model
        mf = c.param == "mf"
        m_d, m_ff, m_kv, m_g, m_hd = c.mults
        emb = 1.0 if mf else d**-0.5
        self.embed = nnx.Param(jax.random.normal(rngs.params(), (c.vocab, d)) * emb)
        if c.positions == "learned":
            self.pos = nnx.Param(jax.random.normal(rngs.params(), (c.max_len, d)) * emb)
        blocks = {}
        for name, (shape, kind) in _block_shapes(c).items():
            if kind == "one":
                blocks[name] = jnp.ones((L, *shape))
            elif kind == "zero":
                blocks[name] = jnp.zeros((L, *shape))
            else:  # fan-in init; residual outputs shrunk by 1/sqrt(2L) (GPT-2)
                fan_in = shape[0] if kind == "in" else int(np.prod(shape[:-1]))
                if mf:  # type n m W ~ N(0, 1): stored std 1 / (n m)
                    m = m_d if kind == "in" else (m_ff if name == "w_down" else m_kv * m_g * m_hd)
                    std = 1.0 / (fan_in * m)
                else:
                    std = fan_in**-0.5
                std *= (2 * L) ** -0.5 if kind == "out" else 1.0
                blocks[name] = jax.random.normal(rngs.params(), (L, *shape)) * std
        self.blocks = nnx.Dict({k: nnx.Param(v) for k, v in blocks.items()})
        self.final_scale = nnx.Param(jnp.ones((d,)))
        if c.norm == "layer":
            self.final_bias = nnx.Param(jnp.zeros((d,)))
        if not c.tied:
            head = 1.0 / (d * m_d) if mf else d**-0.5
            self.head = nnx.Param(jax.random.normal(rngs.params(), (d, c.vocab)) * head)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        c = self.config
        T = tokens.shape[-1]
        if T > c.max_len:
            raise GrowthError(f"sequence length {T} exceeds DecoderConfig.max_len={c.max_len}")
        x = self.embed[...][tokens]
        if c.positions == "learned":
            x = x + self.pos[...][:T]
        dtype = x.dtype
        if c.positions == "rotary":
            f = jnp.asarray(c.freqs(), dtype)
            ang = jnp.arange(T, dtype=dtype)[:, None] * jnp.concatenate([f, f])[None, :]
            cos, sin = jnp.cos(ang), jnp.sin(ang)
        causal = jnp.tril(jnp.ones((T, T), bool))
        soft_dtype = jnp.promote_types(dtype, jnp.float32)
        m_d, m_ff, m_kv, m_g, m_hd = c.mults
        m_o = m_kv * m_g * m_hd

        def block(x: jax.Array, p: dict[str, jax.Array]) -> tuple[jax.Array, None]:
            h = normalize(x, p["ln1_scale"], p.get("ln1_bias"), c.eps)
            q = m_d * jnp.einsum("btd,dkgh->btkgh", h, p["wq"])
            k = m_d * jnp.einsum("btd,dkh->btkh", h, p["wk"])
            v = m_d * jnp.einsum("btd,dkh->btkh", h, p["wv"])
            if c.bias:
                q, k, v = q + p["bq"], k + p["bk"], v + p["bv"]
            if c.positions == "rotary":
                q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            s = jnp.einsum("btkgh,bskh->bkgts", q, k).astype(soft_dtype) * c.attn_scale
            s = jnp.where(causal, s, -jnp.inf)
            a = jax.nn.softmax(s, axis=-1).astype(dtype)
            o = jnp.einsum("bkgts,bskh->btkgh", a, v)
            x = x + m_o * jnp.einsum("btkgh,kghd->btd", o, p["wo"]) + (p["bo"] if c.bias else 0.0)
            h = normalize(x, p["ln2_scale"], p.get("ln2_bias"), c.eps)
            u = m_d * (h @ p["w_up"]) + (p["b_up"] if c.bias else 0.0)
            if c.mlp == "swiglu":
                u = jax.nn.silu(m_d * (h @ p["w_gate"]) + (p["b_gate"] if c.bias else 0.0)) * u
            else:
                u = jax.nn.gelu(u, approximate=c.gelu_approximate)
            return x + m_ff * (u @ p["w_down"]) + (p["b_down"] if c.bias else 0.0), None

        stack = {k: v[...] for k, v in self.blocks.items()}
        x, _ = jax.lax.scan(block, x, stack)
        fb = self.final_bias[...] if c.norm == "layer" else None
        h = normalize(x, self.final_scale[...], fb, c.eps)
        w = self.embed[...].T if c.tied else self.head[...]
        return (c.readout_mult * m_d) * (h @ w)


def spec(config: DecoderConfig) -> NeuronSpec:
    """Axis roles of every leaf (see the module docstring); ``hd`` is paired under rotary;
    with SwiGLU, ``ff`` is homogeneous in ``w_up``/``b_up`` (``growth.spec``)."""
    c = config
    kind = c.norm
    gain = LeafSpec.of(("depth:blocks", "out:d"), norm=f"{kind}-gain")
    bias = LeafSpec.of(("depth:blocks", "out:d"), norm="layer-bias")
    B = "depth:blocks"
    # SwiGLU's unit silu(x w_gate) (x w_up) is linear in (w_up, b_up); a GELU unit is not
    up = "ff" if c.mlp == "swiglu" else None
    roles: dict[str, Any] = {
        "ln1_scale": gain,
        "ln2_scale": gain,
        "wq": (B, "in:d", "out:kv", "out:group", "out:hd"),
        "wk": (B, "in:d", "out:kv", "in:hd"),
        "wv": (B, "in:d", "out:kv", "out:hd"),
        "wo": LeafSpec.of((B, "in:kv", "in:group", "in:hd", "out:d"), residual_out=True),
        "w_up": LeafSpec.of((B, "in:d", "out:ff"), homogeneous=up),
        "w_gate": (B, "in:d", "out:ff"),
        "w_down": LeafSpec.of((B, "in:ff", "out:d"), residual_out=True),
        "ln1_bias": bias,
        "ln2_bias": bias,
        "bq": (B, "out:kv", "out:group", "out:hd"),
        "bk": (B, "out:kv", "in:hd"),
        "bv": (B, "out:kv", "out:hd"),
        "bo": LeafSpec.of((B, "out:d"), residual_out=True),
        "b_up": LeafSpec.of((B, "out:ff"), homogeneous=up),
        "b_gate": (B, "out:ff"),
        "b_down": LeafSpec.of((B, "out:d"), residual_out=True),
    }
    leaves: dict[str, Any] = {f"blocks/{k}": roles[k] for k in _block_shapes(c)}
    leaves["embed"] = ("-", "out:d")
    if c.positions == "learned":
        leaves["pos"] = ("-", "out:d")
    leaves["final_scale"] = LeafSpec.of(("out:d",), norm=f"{kind}-gain")
    if c.norm == "layer":
        leaves["final_bias"] = LeafSpec.of(("out:d",), norm="layer-bias")
    if not c.tied:
        leaves["head"] = ("in:d", "-")
    return NeuronSpec(leaves, paired=("hd",) if c.positions == "rotary" else ())


def sizes(config: DecoderConfig) -> dict[str, int]:
    c = config
    return {
        "d": c.d_model,
        "kv": c.n_kv_heads,
        "group": c.group,
        "hd": c.head_dim,
        "ff": c.d_ff,
        "blocks": c.n_layers,
    }


def reference_sizes(config: DecoderConfig) -> dict[str, float]:
    """Space -> ``1 / m``: the widths at which the multipliers are ``1 / n`` (``mf``)."""
    names = ("d", "ff", "kv", "group", "hd")
    return {s: reference_width(m) for s, m in zip(names, config.mults, strict=True)}


def resize(config: DecoderConfig, new: Mapping[str, int]) -> DecoderConfig:
    """The same hyper-parameters at new sizes (a fresh model of that size: standard rotary
    frequencies for a new head_dim). For the config of a *grown* model use :func:`grown`."""
    c = config
    kv, g = new.get("kv", c.n_kv_heads), new.get("group", c.group)
    hd = new.get("hd", c.head_dim)
    return replace(
        c,
        d_model=new.get("d", c.d_model),
        n_kv_heads=kv,
        n_heads=kv * g,
        head_dim=hd,
        d_ff=new.get("ff", c.d_ff),
        n_layers=new.get("blocks", c.n_layers),
        rope_freqs=c.rope_freqs if hd == c.head_dim else None,
    )


def grown(config: DecoderConfig, plan: GrowthPlan) -> DecoderConfig:
    """The config of the model that ``plan`` grows from a ``config`` model.

    On top of :func:`resize`: eps times the report's factor for ``d`` (padded LayerNorm/RMSNorm
    maps, ``k n / N``); ``readout_mult`` times the fan-in scale of the ``d`` copies when the
    readout is tied (exact when that scale is the same for every copy -- balanced or padded maps
    -- else the mean scale, ``n/N``; ``n/N`` for a ``fitted`` draw of ``d``) and over the
    stream scale ``a`` (the embedding is scaled by ``a``); eps also times ``a^2``
    (``GrowthReport.stream_scale``); rotary frequencies gathered by the ``hd`` pair map (a fitted
    ``hd``: new pair j takes source pair ``j mod n``'s).
    """
    c = resize(config, plan.report.sizes_after)
    changes: dict[str, Any] = {}
    a = plan.report.stream_scale.get("d", 1.0)
    if "d" in plan.report.eps_scale or a != 1.0:
        changes["eps"] = config.eps * plan.report.eps_scale.get("d", 1.0) * a * a
    if config.tied and ("d" in plan.maps or a != 1.0):
        m = plan.maps.get("d")
        mean = 1.0
        if m is not None:
            real = np.ones(m.scale.shape, bool) if m.pad is None else ~np.asarray(m.pad)
            mean = float(np.asarray(m.scale)[real].mean())
        changes["readout_mult"] = config.readout_mult * mean / a
    if config.tied and "d" in plan.fitted and plan.method.scaling == "unbiased":
        changes["readout_mult"] = config.readout_mult * config.d_model / c.d_model
    if config.positions == "rotary" and "hd" in plan.maps:
        pairs = np.asarray(plan.maps["hd"].index)[: c.head_dim // 2]
        changes["rope_freqs"] = tuple(config.freqs()[pairs].tolist())
    elif config.positions == "rotary" and "hd" in plan.fitted:
        # drawn pairs have no source pair: pair j gets source pair (j mod n)'s frequency, so
        # kept source pairs (fitted-preserving) keep theirs
        pairs = np.arange(c.head_dim // 2) % (config.head_dim // 2)
        changes["rope_freqs"] = tuple(config.freqs()[pairs].tolist())
    return replace(c, **changes)
