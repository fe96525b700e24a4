"""The plasticity pieces (``growth.plasticity``, recipe ``plastic``): fresh new units with zero
fan-out, fresh new blocks with a zero output projection, and the stream scale of normalised
spaces. Each keeps the function exactly (to float32 rounding); each has a tampered twin that
must not."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import model_fn, random_params, rel_err
from hypothesis import given, note, settings
from hypothesis import strategies as st

from growth.engine import apply_plan, plan_growth
from growth.errors import GrowthError
from growth.methods import get_method
from growth.models import get_family, grown_config, init_model, params_of

RES = get_family("resmlp")
DEC = get_family("decoder")
TOL = 1e-5


def _inflate(params, factor: float = 3.0):
    """Trained-like weights: every leaf times ``factor`` (a trained model's weights sit 2-4.5x
    above their init scale)."""
    return jax.tree.map(lambda a: a * factor, params)


def _grow(family, cfg, params, width, depth, method, *, seed=0, fresh=True):
    fam = get_family(family)
    plan = plan_growth(params, fam.spec(cfg), width=width, depth=depth, method=method, key=seed)
    big = grown_config(family, cfg, plan)
    init = params_of(init_model(family, big, seed=seed + 1)) if fresh else None
    return plan, big, apply_plan(plan, params, init)


def _resmlp_case(data, scales=(0.05, 0.1, 0.5, 2.0)):
    d = data.draw(st.integers(4, 8), label="d")
    h = data.draw(st.integers(2, 10), label="h")
    L = data.draw(st.integers(1, 2), label="L")
    kd = data.draw(st.integers(1, 3), label="kd")
    H = data.draw(st.integers(h + 1, 3 * h), label="H")
    L_new = data.draw(st.integers(L, L + 2), label="L'")
    a = data.draw(st.sampled_from(scales), label="stream_scale")
    fresh = data.draw(st.booleans(), label="fresh init given")
    seed = data.draw(st.integers(0, 2**20), label="seed")
    cfg = RES.config(input_dim=3, width=d, hidden=h, depth=L, num_classes=2)
    params = _inflate(random_params("resmlp", cfg, seed))
    method = get_method("plastic", stream_scale=a)
    plan, big, new = _grow(
        "resmlp", cfg, params, {"d": kd * d, "h": H}, {"blocks": L_new}, method, seed=seed,
        fresh=fresh,
    )  # fmt: skip
    return cfg, big, params, new, plan


@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_plastic_growth_keeps_the_resmlp_function(data) -> None:
    cfg, big, params, new, plan = _resmlp_case(data)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 3)), jnp.float32)
    err = rel_err(model_fn("resmlp", big)(new, x), model_fn("resmlp", cfg)(params, x))
    note(f"rel err {err:.3g}; {plan.report}")
    assert err <= TOL
    assert plan.report.bound["kind"] == "rounding"
    assert not plan.report.function_preserving  # zero-sum noise: not claimed until measured
    assert plan.report.record_error(err).function_preserving
    assert big.eps == pytest.approx(cfg.eps * plan.method.stream_scale**2)


@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_stream_scale_without_its_eps_is_not_exact(data) -> None:
    """Tampered: the writers scaled by a but the norms' eps left at the source's -> the norms
    see ``a^2 var + eps`` instead of ``a^2 (var + eps)`` and the function moves."""
    cfg, big, params, new, plan = _resmlp_case(data, scales=(0.01, 0.02))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 3)), jnp.float32)
    wrong = dataclasses.replace(big, eps=cfg.eps)
    err = rel_err(model_fn("resmlp", wrong)(new, x), model_fn("resmlp", cfg)(params, x))
    note(f"a={plan.method.stream_scale}: rel err {err:.3g}")
    assert err > 100 * TOL


def test_new_units_are_fresh_with_zero_fan_out_and_old_units_kept() -> None:
    cfg = RES.config(input_dim=3, width=4, hidden=6, depth=2, num_classes=2)
    params = _inflate(random_params("resmlp", cfg, 0))
    plan, big, new = _grow("resmlp", cfg, params, {"h": 15}, {}, "plastic:stream_scale=1.0")
    init = params_of(init_model("resmlp", big, seed=1))
    w1, w2 = np.asarray(new["w1"]), np.asarray(new["w2"])
    np.testing.assert_array_equal(w1[:, :, :6], np.asarray(params["w1"]))  # kept, scale 1
    np.testing.assert_array_equal(w2[:, :6], np.asarray(params["w2"]))
    np.testing.assert_array_equal(w1[:, :, 6:], np.asarray(init["w1"])[:, :, 6:])  # fresh
    np.testing.assert_array_equal(new["b1"][:, 6:], init["b1"][:, 6:])
    assert not w2[:, 6:].any()  # nobody reads a new unit yet
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 3)), jnp.float32)
    err = rel_err(model_fn("resmlp", big)(new, x), model_fn("resmlp", cfg)(params, x))
    assert plan.report.record_error(err).function_preserving, err


def test_tampered_new_units_with_fan_out_change_the_function() -> None:
    cfg = RES.config(input_dim=3, width=4, hidden=6, depth=2, num_classes=2)
    params = _inflate(random_params("resmlp", cfg, 0))
    _, big, new = _grow("resmlp", cfg, params, {"h": 12}, {}, "plastic")
    x = jnp.asarray(np.random.default_rng(1).normal(size=(16, 3)), jnp.float32)
    ref = model_fn("resmlp", cfg)(params, x)
    assert rel_err(model_fn("resmlp", big)(new, x), ref) <= TOL
    noise = np.random.default_rng(2).normal(size=new["w2"][:, 6:].shape)  # not constant along d:
    tampered = dict(new, w2=new["w2"].at[:, 6:].set(noise))  # LayerNorm removes a uniform shift
    assert rel_err(model_fn("resmlp", big)(tampered, x), ref) > 1e3 * TOL


def test_new_blocks_are_fresh_so_their_hidden_units_differ() -> None:
    """The bug this fixes: a copied new block with w2 = 0 keeps its hidden units identical
    copies (zero-sum noise never reaches it). Fresh blocks: w1 from the fresh init, w2 = 0."""
    cfg = RES.config(input_dim=3, width=4, hidden=6, depth=2, num_classes=2)
    params = _inflate(random_params("resmlp", cfg, 0))
    _, big, new = _grow("resmlp", cfg, params, {"d": 8, "h": 12}, {"blocks": 4}, "plastic")
    init = params_of(init_model("resmlp", big, seed=1))
    new_blocks = [1, 3]  # identity rule: each source block is followed by its new block
    np.testing.assert_array_equal(new["w1"][new_blocks[0]], init["w1"][new_blocks[0]])
    assert not np.asarray(new["w2"])[new_blocks].any()
    assert not np.asarray(new["b2"])[new_blocks].any()
    _, _, copied = _grow("resmlp", cfg, params, {"d": 8, "h": 12}, {"blocks": 4}, "exact")
    assert np.allclose(copied["w1"][1], copied["w1"][0])  # the copy map: a copy of block 0
    assert not np.allclose(new["w1"][1], new["w1"][0])


def test_stand_in_fresh_init_is_keyed_and_exact() -> None:
    cfg = RES.config(input_dim=3, width=4, hidden=6, depth=2, num_classes=2)
    params = _inflate(random_params("resmlp", cfg, 0))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(16, 3)), jnp.float32)
    a = _grow("resmlp", cfg, params, {"h": 12}, {"blocks": 3}, "plastic", fresh=False, seed=3)
    b = _grow("resmlp", cfg, params, {"h": 12}, {"blocks": 3}, "plastic", fresh=False, seed=3)
    c = _grow("resmlp", cfg, params, {"h": 12}, {"blocks": 3}, "plastic", fresh=False, seed=4)
    np.testing.assert_array_equal(a[2]["w1"], b[2]["w1"])
    assert not np.array_equal(a[2]["w1"], c[2]["w1"])
    err = rel_err(model_fn("resmlp", a[1])(a[2], x), model_fn("resmlp", cfg)(params, x))
    assert err <= TOL


@pytest.mark.parametrize("tied", [True, False])
def test_plastic_growth_keeps_the_decoder_function(tied) -> None:
    """RMSNorm, GQA, rotary, SwiGLU; tied: the readout multiplier absorbs the stream scale."""
    cfg = DEC.config(d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=32, max_len=8,
                     norm="rms", mlp="swiglu", tied=tied)  # fmt: skip
    params = random_params("decoder", cfg, 0)
    width, depth = {"d": 32, "ff": 64, "kv": 4}, {"blocks": 4}
    plan, big, new = _grow("decoder", cfg, params, width, depth, "plastic")
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 8)))
    ref = model_fn("decoder", cfg)(params, tokens)
    assert rel_err(model_fn("decoder", big)(new, tokens), ref) <= TOL
    assert plan.report.stream_scale == {"d": 0.1}
    if tied:  # tampered: the readout multiplier left at the copy scale alone
        wrong = dataclasses.replace(big, readout_mult=big.readout_mult * 0.1)
        assert rel_err(model_fn("decoder", wrong)(new, tokens), ref) > 0.5


def test_plasticity_fields_are_validated() -> None:
    with pytest.raises(GrowthError, match="new_units"):
        get_method("exact", new_units="random")
    with pytest.raises(GrowthError, match="new_blocks='fresh' needs depth='identity'"):
        get_method("plastic", depth="stack")
    with pytest.raises(GrowthError, match="stream_scale"):
        get_method("plastic", stream_scale=0.0)
    assert get_method("plastic:stream_scale=0.25").stream_scale == 0.25


def test_fresh_init_of_the_wrong_shape_is_refused() -> None:
    cfg = RES.config(input_dim=3, width=4, hidden=6, depth=2, num_classes=2)
    params = random_params("resmlp", cfg, 0)
    plan = plan_growth(params, RES.spec(cfg), width={"h": 12}, method="plastic")
    wrong = params_of(init_model("resmlp", RES.resize(cfg, {"h": 10}), seed=1))
    with pytest.raises(GrowthError, match="fresh leaf 'b1'"):
        apply_plan(plan, params, wrong)
