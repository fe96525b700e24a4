"""SP / muP / MF parametrizations as data from a spec (Tensor Programs V, Table 3; theory
notes 1.3 and (a)), and the per-leaf Adam eps rule of the tracking check."""

from __future__ import annotations

import math

import pytest
from conftest import abstract_params

from growth.models import get_family
from growth.models.decoder import DecoderConfig
from growth.models.mlp import MLPConfig
from growth.models.resmlp import ResMLPConfig
from theory.parametrization import (
    adam_eps_multipliers,
    adam_lr_multipliers,
    classify_leaf,
    leaf_rules,
    lr_multipliers,
    sgd_lr_multipliers,
)

MLP = MLPConfig(40, (16, 16), 10)


def _resolved(family: str, config) -> object:
    return get_family(family).spec(config).resolve(abstract_params(family, config))


def _by_path(resolved, values) -> dict:
    return dict(zip(resolved.paths, values, strict=True))


def test_classification_of_reference_families() -> None:
    r = _resolved("mlp", MLP)
    kinds = _by_path(r, [classify_leaf(s) for s in r.leaves])
    assert kinds == {
        "layers/0/bias": "vector", "layers/0/kernel": "input",
        "layers/1/bias": "vector", "layers/1/kernel": "hidden",
        "layers/2/bias": "vector", "layers/2/kernel": "readout",
    }  # fmt: skip
    r = _resolved("resmlp", ResMLPConfig(40, 8, 16, 2, 10))
    kinds = _by_path(r, [classify_leaf(s) for s in r.leaves])
    assert kinds["w1"] == kinds["w2"] == "hidden"  # the depth axis does not count
    assert kinds["b1"] == kinds["ln_scale"] == "vector"
    assert kinds["embed/kernel"] == "input" and kinds["head/kernel"] == "readout"
    cfg = DecoderConfig(vocab=16, d_model=8, n_layers=2, n_heads=2, head_dim=4, d_ff=12, max_len=8)
    r = _resolved("decoder", cfg)
    kinds = _by_path(r, [classify_leaf(s) for s in r.leaves])
    assert set(kinds.values()) <= {"input", "hidden", "readout", "vector"}
    assert "hidden" in kinds.values()


@pytest.mark.parametrize("k1,k2", [(2, 2), (4, 2), (1, 3)])
def test_mup_table3_and_mf(k1: int, k2: int) -> None:
    r = _resolved("mlp", MLPConfig(40, (16 * k1, 16 * k2), 10))
    base = {"h1": 16, "h2": 16}
    mup = _by_path(r, leaf_rules(r, base, "mup"))
    # input weights and biases: SGD ~ fan_out, Adam 1, init 1
    assert mup["layers/0/kernel"].lr_sgd == k1 and mup["layers/0/kernel"].lr_adam == 1
    assert mup["layers/1/bias"].lr_sgd == k2 and mup["layers/1/bias"].init_std == 1
    # hidden: SGD 1, Adam 1/fan_in, init fan_in^-1/2
    h = mup["layers/1/kernel"]
    assert (h.lr_sgd, h.lr_adam, h.init_std) == (1, 1 / k1, pytest.approx(k1**-0.5))
    # readout: SGD and Adam 1/fan_in, init 1/fan_in (SP: fan_in^-1/2)
    o = mup["layers/2/kernel"]
    assert (o.lr_sgd, o.lr_adam, o.init_std) == (1 / k2, 1 / k2, 1 / k2)
    sp = _by_path(r, leaf_rules(r, base, "sp"))
    assert sp["layers/2/kernel"].init_std == pytest.approx(k2**-0.5)
    assert set(lr_multipliers(r, base, "sp", "sgd")) == {1.0}
    # MF in type units -> SP storage: SGD r_out / r_in, Adam 1 / r_in (= muP Adam)
    mf = leaf_rules(r, base, "mf")
    for rule, sgd in zip(mf, sgd_lr_multipliers(r, base), strict=True):
        assert sgd == pytest.approx(rule.r_out / rule.r_in)
        assert rule.lr_sgd * rule.multiplier**2 == pytest.approx(sgd)
    assert lr_multipliers(r, base, "mf", "adam") == pytest.approx(adam_lr_multipliers(r, base))
    assert lr_multipliers(r, base, "mup", "adam") == adam_lr_multipliers(r, base)
    if k1 == k2:  # all spaces grown together: muP-SGD is the MF rule
        assert lr_multipliers(r, base, "mup", "sgd") == pytest.approx(sgd_lr_multipliers(r, base))


def test_adam_lr_multipliers_unchanged_and_eps_rule() -> None:
    r = _resolved("mlp", MLPConfig(40, (32, 64), 10))
    base = {"h1": 16, "h2": 16}
    assert _by_path(r, adam_lr_multipliers(r, base)) == {
        "layers/0/bias": 1.0, "layers/0/kernel": 1.0,
        "layers/1/bias": 1.0, "layers/1/kernel": 0.5,
        "layers/2/bias": 1.0, "layers/2/kernel": 0.25,
    }  # fmt: skip
    # eps / copy count on every tensor with an out axis; readout (and its bias) untouched
    assert _by_path(r, adam_eps_multipliers(r, base)) == {
        "layers/0/bias": 0.5, "layers/0/kernel": 0.5,
        "layers/1/bias": 0.25, "layers/1/kernel": 0.25,
        "layers/2/bias": 1.0, "layers/2/kernel": 1.0,
    }  # fmt: skip
    # at the base widths every factor is 1, for every parametrization and optimizer
    for p in ("sp", "mup", "mf"):
        for o in ("sgd", "adam"):
            assert all(math.isclose(m, 1.0) for m in lr_multipliers(r, r.sizes, p, o))


def test_bad_names() -> None:
    r = _resolved("mlp", MLP)
    with pytest.raises(ValueError, match="parametrization"):
        leaf_rules(r, {}, "ntk")
    with pytest.raises(ValueError, match="optimizer"):
        lr_multipliers(r, {}, "mup", "lion")
