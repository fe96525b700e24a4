"""GPT-style decoder: exact width/depth growth across the configs users grow, with negative
controls for each exactness ingredient (padding, eps/gain rescaling, fixed logit scale, rotary
pair frequencies, tied-readout multiplier) and clear errors for bad configs."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import model_fn, random_params, rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

from growth import apply_plan, get_method, grow, plan_growth
from growth.errors import GrowthError, SpecError
from growth.models import (
    config_from_dict,
    config_to_dict,
    get_family,
    grown_config,
    init_model,
    model_from_params,
    params_of,
)
from growth.models.decoder import ConfigError, DecoderConfig
from growth.spec import NeuronSpec

FAM = get_family("decoder")
TOL = 1e-4  # float32 relative logit error of exact methods


def _tokens(cfg: DecoderConfig, T: int = 10, seed: int = 0) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (2, T), 0, cfg.vocab)


def _grow(cfg, params, width=None, depth=None, method="exact", key=0, spec=None, config=None):
    """Grow, build the grown config, return (relative logit error, plan, grown cfg, params)."""
    plan = plan_growth(
        params, spec or FAM.spec(cfg), width=width, depth=depth, method=method, key=key
    )
    new = apply_plan(plan, params)
    cfg2 = config or grown_config("decoder", cfg, plan)
    tok = _tokens(cfg)
    err = rel_err(model_fn("decoder", cfg2)(new, tok), model_fn("decoder", cfg)(params, tok))
    return err, plan, cfg2, new


ATTN = {"mha": (4, 4), "gqa": (4, 2), "mqa": (4, 1)}


@st.composite
def configs_and_targets(draw):
    heads, kv = ATTN[draw(st.sampled_from(sorted(ATTN)))]
    positions = draw(st.sampled_from(["rotary", "learned"]))
    hd = draw(st.sampled_from([2, 4] if positions == "rotary" else [2, 3, 4]))
    d = draw(st.integers(3, 10))
    cfg = DecoderConfig(
        vocab=11,
        d_model=d,
        n_layers=draw(st.integers(1, 2)),
        n_heads=heads,
        n_kv_heads=kv,
        head_dim=hd,
        d_ff=draw(st.integers(2, 9)),
        max_len=16,
        norm=draw(st.sampled_from(["layer", "rms"])),
        mlp=draw(st.sampled_from(["gelu", "swiglu"])),
        positions=positions,
        tied=draw(st.booleans()),
        bias=draw(st.booleans()),
    )
    step = 2 if positions == "rotary" else 1
    width = {
        "d": draw(st.integers(d, 3 * d)),  # non-multiples included: padded LayerNorm/RMSNorm
        "kv": draw(st.integers(kv, 2 * kv)),
        "group": draw(st.integers(cfg.group, cfg.group + 2)),
        "hd": hd + step * draw(st.integers(0, 2)),
        "ff": draw(st.integers(cfg.d_ff, 3 * cfg.d_ff)),
    }
    depth = {"blocks": draw(st.integers(cfg.n_layers, 2 * cfg.n_layers + 1))}
    return cfg, width, depth, draw(st.sampled_from(["exact", "copy"]))


def _check_exact(case, seed: int) -> None:
    cfg, width, depth, method = case
    params = random_params("decoder", cfg, seed)
    err, plan, cfg2, new = _grow(cfg, params, width, depth, method, key=seed)
    assert err <= TOL, (err, cfg, width, depth, method)
    assert plan.report.record_error(err).function_preserving, plan.report.notes
    assert FAM.sizes(cfg2) == plan.report.sizes_after
    model_from_params("decoder", cfg2, new)  # the grown params fit the grown config


@settings(max_examples=6, deadline=None)
@given(case=configs_and_targets(), seed=st.integers(0, 2**16))
def test_exact_growth_keeps_logits(case, seed) -> None:
    _check_exact(case, seed)


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(case=configs_and_targets(), seed=st.integers(0, 2**16))
def test_exact_growth_keeps_logits_many(case, seed) -> None:
    _check_exact(case, seed)


@pytest.mark.parametrize("norm, method", [("layer", "exact"), ("rms", "copy")])
def test_float64_exact_to_1e10(norm: str, method: str) -> None:
    cfg = DecoderConfig(
        vocab=13, d_model=6, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=4, d_ff=7,
        max_len=16, norm=norm, mlp="swiglu", bias=True, tied=True,
    )  # fmt: skip
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: a.astype(jnp.float64), random_params("decoder", cfg))
        width = {"d": 17, "kv": 3, "group": 3, "hd": 6, "ff": 11}
        err, plan, _, new = _grow(cfg, params, width, {"blocks": 5}, method)
        assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(new))
        assert plan.report.eps_scale == {"d": pytest.approx(12 / 17)}
        assert err <= 1e-10, err


def _cfg(**kw) -> DecoderConfig:
    base = dict(vocab=13, d_model=6, n_layers=1, n_heads=2, head_dim=4, d_ff=8, max_len=16)
    return DecoderConfig(**(base | kw))


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_non_multiple_width_needs_padding_gain_and_eps(norm: str) -> None:
    """Controls: each ingredient of the LEMON rule is needed (eps large so that it shows)."""
    cfg = _cfg(norm=norm, eps=0.3)
    params = random_params("decoder", cfg, 1)
    err, plan, cfg2, _ = _grow(cfg, params, {"d": 15}, method="copy")
    assert err <= TOL and plan.report.eps_scale["d"] == pytest.approx(12 / 15)
    assert any("pad slots" in n for n in plan.report.notes)
    # eps not rescaled
    err_eps, *_ = _grow(
        cfg, params, {"d": 15}, method="copy", config=dataclasses.replace(cfg2, eps=cfg.eps)
    )
    assert err_eps > 1e-3
    # bare norm flags: the engine cannot pad and says so; the function changes
    patterns = FAM.spec(cfg).patterns
    bare = NeuronSpec(
        {p: dataclasses.replace(s, norm=True) if s.norm else s for p, s in patterns.items()}
    )
    err_bare, plan_bare, *_ = _grow(cfg, params, {"d": 15}, method="copy", spec=bare)
    assert not plan_bare.report.function_preserving and err_bare > 1e-3


def test_padded_pads_hold_mean_or_zero() -> None:
    for norm, fill in (("layer", "mean"), ("rms", "zero")):
        cfg = _cfg(norm=norm)
        params = random_params("decoder", cfg, 2)
        new, _ = grow(params, FAM.spec(cfg), width={"d": 8}, method="copy")
        emb, emb2 = np.asarray(params["embed"]), np.asarray(new["embed"])
        np.testing.assert_array_equal(emb2[:, :6], emb)
        want = emb.mean(1) if fill == "mean" else 0 * emb[:, 0]
        np.testing.assert_allclose(emb2[:, 6], want, atol=1e-6)
        np.testing.assert_allclose(
            np.asarray(new["final_scale"])[:6], np.asarray(params["final_scale"]) * np.sqrt(6 / 8),
            rtol=1e-6,
        )  # fmt: skip


def test_head_dim_growth_needs_fixed_logit_scale() -> None:
    cfg = _cfg(positions="learned", head_dim=3)
    params = random_params("decoder", cfg, 3)
    err, _, cfg2, _ = _grow(cfg, params, {"hd": 7}, method="copy")
    assert err <= TOL and cfg2.attn_scale == cfg.attn_scale
    control = dataclasses.replace(cfg2, attn_scale=7**-0.5)  # scale re-derived from head_dim
    assert _grow(cfg, params, {"hd": 7}, method="copy", config=control)[0] > 1e-3


def test_rotary_growth_keeps_pair_frequencies() -> None:
    cfg = _cfg(head_dim=4)
    params = random_params("decoder", cfg, 4)
    err, plan, cfg2, _ = _grow(cfg, params, {"hd": 10}, method="exact", key=5)
    pairs = np.asarray(plan.maps["hd"].index)[:5]
    assert err <= TOL and cfg2.rope_freqs == tuple(cfg.freqs()[pairs])
    assert _grow(cfg, params, {"hd": 10}, config=FAM.resize(cfg, {"hd": 10}))[0] > 1e-3
    # the grown config survives a JSON round trip (checkpoints)
    assert config_from_dict("decoder", config_to_dict(cfg2)) == cfg2


def test_tied_readout_needs_the_multiplier() -> None:
    cfg = _cfg(tied=True)
    params = random_params("decoder", cfg, 5)
    err, _, cfg2, _ = _grow(cfg, params, {"d": 18}, method="exact")
    assert err <= TOL and cfg2.readout_mult == pytest.approx(1 / 3)
    control = dataclasses.replace(cfg2, readout_mult=cfg.readout_mult)
    assert _grow(cfg, params, {"d": 18}, config=control)[0] > 0.5


@pytest.mark.parametrize("rule", ["identity", "duplicate", "interpolate", "stack"])
def test_depth_rules_on_stacked_blocks(rule: str) -> None:
    cfg = _cfg(n_layers=2, norm="rms", mlp="swiglu")
    params = random_params("decoder", cfg, 6)
    method = get_method("exact", depth=rule)
    err, plan, cfg2, new = _grow(cfg, params, depth={"blocks": 5}, method=method)
    assert new["blocks"]["wq"].shape[0] == 5 and cfg2.n_layers == 5
    if rule == "identity":
        assert err <= TOL and plan.report.record_error(err).function_preserving
    else:
        assert 0 < err < 10 and not plan.report.function_preserving


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(d_model=10, n_heads=4), "n_heads"),  # heads do not divide d_model
        (dict(n_heads=4, n_kv_heads=3), "n_kv_heads"),  # kv groups inconsistent
        (dict(head_dim=5, positions="rotary"), "head_dim"),  # odd rotary head_dim
        (dict(rope_freqs=(1.0,)), "rope_freqs"),
        (dict(norm="batch"), "norm"),
        (dict(mlp="relu"), "mlp"),
        (dict(eps=0.0), "eps"),
    ],
)
def test_bad_configs_name_the_field(kw, field) -> None:
    base = dict(vocab=13, d_model=8, n_layers=1, n_heads=2, max_len=16)
    with pytest.raises(ConfigError, match=f"DecoderConfig.{field}="):
        DecoderConfig(**(base | kw))
    assert issubclass(ConfigError, GrowthError)


def test_odd_rotary_growth_is_rejected() -> None:
    cfg = _cfg(head_dim=4)
    params = random_params("decoder", cfg)
    with pytest.raises(GrowthError, match="'hd'=7.*pairs.*even"):
        plan_growth(params, FAM.spec(cfg), width={"hd": 7})
    bad = dict(params, blocks=dict(params["blocks"], wq=params["blocks"]["wq"][..., :3]))
    with pytest.raises(SpecError, match="'hd'"):
        FAM.spec(cfg).resolve(bad)


def test_family_registration_and_spec_table() -> None:
    cfg = _cfg(n_heads=4, n_kv_heads=2, head_dim=2, bias=True)
    model = init_model("decoder", cfg, seed=0)
    params = params_of(model)
    resolved = FAM.spec(cfg).resolve(params)
    assert resolved.sizes == FAM.sizes(cfg) | {"blocks": 1}
    assert resolved.paired == {"hd"} and resolved.pad_kind("d") == "layer"
    table = resolved.table()
    for space in ("d", "kv", "group", "hd", "ff", "blocks"):
        assert space in table
    logits = model(_tokens(cfg))
    assert logits.shape == (2, 10, cfg.vocab) and bool(jnp.all(jnp.isfinite(logits)))
    with pytest.raises(GrowthError, match="max_len"):
        model(jnp.zeros((1, 17), jnp.int32))
