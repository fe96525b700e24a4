"""Reference Flax NNX models. Each family exports its config, module, neuron-space spec and how
its config changes when its spaces are resized; the engine itself only sees pure params + spec.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import numpy as np
from flax import nnx

from growth.errors import GrowthError
from growth.models import decoder, mlp, resmlp
from growth.spec import NeuronSpec

if TYPE_CHECKING:
    from growth.engine import GrowthPlan


class Family(NamedTuple):
    """A model family: config class, module class, spec and two ways to change sizes.

    ``resize(config, sizes)``: a *fresh* model of new sizes with the same hyper-parameters (a
    from-scratch baseline, a sweep). ``grown(config, plan)``: the config of the model a growth
    plan produces -- the plan's sizes plus whatever else exactness needs (norm eps after padded
    maps, a tied readout's multiplier, rotary frequencies). Use :func:`grown_config`.
    ``reference(config)``: space -> the width at which the config's forward multipliers are
    ``1 / n`` (mean-field families; None for a family without per-space multipliers).
    """

    name: str
    config: type
    module: type
    spec: Callable[[Any], NeuronSpec]
    sizes: Callable[[Any], dict[str, int]]
    resize: Callable[[Any, Mapping[str, int]], Any]
    grown: Callable[[Any, GrowthPlan], Any]
    reference: Callable[[Any], dict[str, float]] | None = None


FAMILIES: dict[str, Family] = {
    "mlp": Family(
        "mlp",
        mlp.MLPConfig,
        mlp.MLP,
        mlp.spec,
        mlp.sizes,
        mlp.resize,
        mlp.grown,
        mlp.reference_sizes,
    ),
    "resmlp": Family(
        "resmlp",
        resmlp.ResMLPConfig,
        resmlp.ResMLP,
        resmlp.spec,
        resmlp.sizes,
        resmlp.resize,
        resmlp.grown,
        resmlp.reference_sizes,
    ),
    "decoder": Family(
        "decoder",
        decoder.DecoderConfig,
        decoder.Decoder,
        decoder.spec,
        decoder.sizes,
        decoder.resize,
        decoder.grown,
        decoder.reference_sizes,
    ),
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise GrowthError(f"model family {name!r}: expected one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def grown_config(family: str | Family, config: Any, plan: GrowthPlan) -> Any:
    """Config of the model that ``plan`` (``growth.plan_growth``) grows from a ``config`` model."""
    fam = get_family(family) if isinstance(family, str) else family
    return fam.grown(config, plan)


def parametrization(config: Any) -> str:
    """The config's parametrization (``sp``, ``mup``, ``mf``); ``sp`` for configs without one."""
    return getattr(config, "param", "sp")


def training_base(
    family: str, config: Any, sizes: Mapping[str, int], base_sizes: Mapping[str, int] | None
) -> dict[str, float]:
    """Base widths of the width-aware learning rates (``theory.parametrization``) of a model.

    ``mf``: the reference widths of the config's multipliers (a fresh model's own sizes, a
    grown model's source sizes); ``base_sizes`` must agree with them or be None. ``sp``/``mup``:
    ``base_sizes`` or, by default, the model's own ``sizes`` (every ratio 1).
    """
    fam = get_family(family)
    if parametrization(config) != "mf":
        return dict(base_sizes or sizes)
    if fam.reference is None:
        raise GrowthError(f"param='mf': the {family} family has no mean-field multipliers")
    ref = fam.reference(config)
    bad = {
        s: (base_sizes[s], ref[s])
        for s in ref
        if base_sizes and s in base_sizes and not np.isclose(base_sizes[s], ref[s])
    }
    if bad:
        raise GrowthError(
            f"base_sizes {dict(base_sizes)} disagree with the mf multipliers' reference widths "
            f"(given, implied) {bad}; drop base_sizes or set the config's mults to 1 / base"
        )
    return {**sizes, **ref}


def config_from_dict(family: str, config: Mapping[str, Any]) -> Any:
    """Rebuild a family's config from its JSON form, with a clear error on unknown fields."""
    fam = get_family(family)
    try:
        return fam.config(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    except TypeError as e:
        raise GrowthError(f"{family} config {dict(config)}: {e}") from e


def config_to_dict(config: Any) -> dict[str, Any]:
    return asdict(config)


def init_model(family: str, config: Any, seed: int = 0) -> nnx.Module:
    return get_family(family).module(config, rngs=nnx.Rngs(seed))


def params_of(model: nnx.Module) -> dict:
    """The model's parameters as a pure nested dict (what the engine and checkpoints see)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def model_from_params(family: str, config: Any, params: Any) -> nnx.Module:
    """Build a module of ``family``/``config`` holding ``params`` (shapes checked by the spec)."""
    fam = get_family(family)
    fam.spec(config).resolve(params)
    sizes = fam.sizes(config)
    found = fam.spec(config).resolve(params).sizes
    wrong = {s: (sizes[s], found[s]) for s in sizes if found.get(s) != sizes[s]}
    if wrong:
        raise GrowthError(
            f"params do not fit the {family} config: space sizes (config, params) {wrong}"
        )
    abstract = nnx.eval_shape(lambda: fam.module(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map(jax.numpy.asarray, params))
    return nnx.merge(graphdef, state)
