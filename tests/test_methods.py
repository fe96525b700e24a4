"""Guarantees of the named recipes that are not plain exactness: the antithetic kernel smoothing
of ``smoothed``/``rc`` moves the function only at second order in the bandwidth."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import growth
from growth.models import get_family, init_model, model_from_params, params_of
from growth.models.mlp import MLPConfig


def _mean_output_change(method: growth.Method, width: int = 96) -> float:
    cfg = MLPConfig(24, (12, 12), 5, "gelu")
    model = init_model("mlp", cfg, seed=3)
    params = params_of(model)
    fam = get_family("mlp")
    x = jax.random.normal(jax.random.key(0), (128, 24))
    grown, report = growth.grow(
        params, fam.spec(cfg), width={"h1": width, "h2": width}, method=method, key=1
    )
    big = model_from_params("mlp", fam.resize(cfg, report.sizes_after), grown)
    return float(jnp.abs(big(x) - model(x)).mean())


@pytest.mark.parametrize("name", ["rc", "smoothed"])
def test_antithetic_smoothing_is_second_order(name):
    gaps = [_mean_output_change(growth.get_method(name, bandwidth=h)) for h in (0.2, 0.1, 0.05)]
    ratios = np.array(gaps[:-1]) / np.array(gaps[1:])
    assert np.all((ratios > 3.0) & (ratios < 5.0)), (gaps, ratios)  # ~4 = 2^2


def test_independent_fan_in_noise_makes_smoothing_first_order():
    """Control: zero-sum fan-in noise on top of the smoothing adds a first-order cross term."""
    m = growth.get_method("rc", symmetry="zero-sum", sigma=4.0)
    gaps = [_mean_output_change(growth.get_method(m, bandwidth=h)) for h in (0.2, 0.1)]
    assert 1.5 < gaps[0] / gaps[1] < 2.5, gaps


def test_smoothed_copies_differ_as_features():
    cfg = MLPConfig(24, (12,), 5)
    params = params_of(init_model("mlp", cfg, seed=0))
    grown, _ = growth.grow(params, get_family("mlp").spec(cfg), width={"h1": 48}, method="rc")
    w = np.asarray(grown["layers"][0]["kernel"]).reshape(24, 4, 12)  # copies of unit k: [:, :, k]
    assert np.abs(w[:, 0] - w[:, 1]).max() > 1e-3
    np.testing.assert_allclose(w.mean(1), np.asarray(params["layers"][0]["kernel"]), atol=1e-6)


def test_method_names_carry_typed_overrides():
    m = growth.get_method("rc:bandwidth=0.2:depth=stack:ramp_steps=0")
    assert (m.name, m.bandwidth, m.depth, m.sampler) == ("rc", 0.2, "stack", "smoothed")
    assert growth.get_method("exact:sigma=4") == growth.get_method("exact", sigma=4.0)
    # keyword overrides apply after the name's
    assert growth.get_method("exact:sigma=4", sigma=2.0).sigma == 2.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("exact:sig=4", "override 'sig=4' should be field=value"),
        ("exact:sigma", "override 'sigma' should be field=value"),
        ("exact:name=x", "override 'name=x' should be field=value"),
        ("exact:sigma=x", "sigma='x': expected float"),
        ("msg:ramp_steps=1.5", "ramp_steps='1.5': expected int"),
        ("nope:sigma=1", "method 'nope': expected one of"),
        ("iid:bandwidth=0.1", "bandwidth > 0 only applies to sampler='smoothed'"),
    ],
)
def test_method_override_errors_name_the_field(text, message):
    with pytest.raises(growth.GrowthError, match=message.replace("(", r"\(")):
        growth.get_method(text)
