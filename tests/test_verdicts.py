"""Declared guarantees (growth.guarantee) and the verdicts built on them: every growth's bound,
``function_preserving`` proved or measured, post-LN BERT padding refused, bf16 rounding; the
positive control of ``grow analyze`` and its false-positive rate; ``grow track``'s verdict under
a wrong optimizer rule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import mlp_apply, model_fn, random_params, rel_err
from hypothesis import given, settings
from hypothesis import strategies as st
from test_hf_decoder import write_llama

from growth.apps.analyze.verdicts import exit_code, positive_control
from growth.engine import apply_plan, grow, plan_growth
from growth.errors import GrowthError
from growth.formats import hf
from growth.formats.hf.bert_forward import hidden_states
from growth.guarantee import C_ROUND, matmul_depth, rounding_bound, unit_roundoff
from growth.methods import METHODS, RECIPE_INFO
from growth.models import get_family

MLP, RES = get_family("mlp"), get_family("resmlp")


def tiny_bert(d=8, H=2, ff=12, L=2, V=20, P=16, seed=0) -> tuple[dict, dict]:
    """A random post-LN BERT params dict (``hf.load_hf``'s layout) and its config, with
    LayerNorm gains and biases far from 1 and 0 (so pad slots would see wrong statistics)."""
    rng = np.random.default_rng(seed)

    def r(*shape, s=0.5, mean=0.0):
        return (mean + s * rng.standard_normal(shape)).astype(np.float32)

    hd = d // H
    emb = {"word": r(V, d), "position": r(P, d, s=0.2), "token_type": r(2, d, s=0.2),
           "ln_g": r(d, s=0.3, mean=1), "ln_b": r(d, s=0.3)}  # fmt: skip
    layers = {
        **{f"{p}_w": r(L, H, hd, d, s=d**-0.5) for p in "qkv"},
        **{f"{p}_b": r(L, H, hd, s=0.2) for p in "qkv"},
        "o_w": r(L, d, H, hd, s=d**-0.5), "o_b": r(L, d, s=0.2),
        "ln1_g": r(L, d, s=0.3, mean=1), "ln1_b": r(L, d, s=0.3),
        "ff1_w": r(L, ff, d, s=d**-0.5), "ff1_b": r(L, ff, s=0.2),
        "ff2_w": r(L, d, ff, s=ff**-0.5), "ff2_b": r(L, d, s=0.2),
        "ln2_g": r(L, d, s=0.3, mean=1), "ln2_b": r(L, d, s=0.3),
    }  # fmt: skip
    config = {"model_type": "bert", "hidden_size": d, "num_attention_heads": H,
              "intermediate_size": ff, "num_hidden_layers": L, "vocab_size": V,
              "max_position_embeddings": P, "layer_norm_eps": 1e-12,
              "hidden_act": "gelu"}  # fmt: skip
    return {"embeddings": emb, "layers": layers}, config


def _ids(V=20):
    return np.random.default_rng(1).integers(0, V, (3, 6)), np.ones((3, 6), np.int64)


# --- the bound of every recipe -------------------------------------------------------------


@pytest.mark.parametrize("name", [m for m in METHODS if not (METHODS[m].ramp_steps
                                                             or METHODS[m].operator_steps)])
def test_recipe_info_states_the_bound_the_engine_declares(name):
    """RECIPE_INFO's bound (width growth, no norms) is what plan_growth declares; growing depth
    with an approximate rule declares none."""
    cfg = MLP.config(input_dim=3, hidden=(5, 4), num_classes=2)
    plan = plan_growth(random_params("mlp", cfg), MLP.spec(cfg), width={"h1": 10, "h2": 8},
                       method=name, key=0)  # fmt: skip
    assert plan.report.bound["kind"] == RECIPE_INFO[name]["bound"], plan.report.bound
    rcfg = RES.config(input_dim=3, width=4, hidden=6, depth=2, num_classes=2)
    plan = plan_growth(random_params("resmlp", rcfg), RES.spec(rcfg), depth={"blocks": 4},
                       method=name)  # fmt: skip
    expect = "none" if METHODS[name].depth != "identity" else "rounding"
    assert plan.report.bound["kind"] == expect, plan.report.bound


def test_bound_ingredients():
    assert unit_roundoff([np.float32, np.int32]) == 2.0**-24
    assert unit_roundoff([np.float64]) == 2.0**-24  # the forward computes in float32
    assert unit_roundoff([jnp.bfloat16, np.float32]) == 2.0**-8
    cfg = RES.config(input_dim=3, width=4, hidden=6, depth=3, num_classes=2)
    resolved = RES.spec(cfg).resolve(random_params("resmlp", cfg))
    # w1, w2 per block (3 blocks) + the head reading d
    assert matmul_depth(resolved.leaves, {"blocks": 3}) == 7
    assert matmul_depth(resolved.leaves, {"blocks": 5}) == 11
    assert rounding_bound(7) == C_ROUND * 7 * 2.0**-24


@settings(max_examples=6, deadline=None)
@given(
    hidden=st.lists(st.integers(2, 6), min_size=1, max_size=3),
    factor=st.integers(2, 4),
    method=st.sampled_from(["exact", "copy", "hypercloning", "lemon"]),
    seed=st.integers(0, 3),
)
def test_exact_growth_stays_inside_its_declared_bound(hidden, factor, method, seed):
    """The invariant the rounding bound states: e <= C_ROUND D u for every exact recipe."""
    cfg = MLP.config(input_dim=3, hidden=tuple(hidden), num_classes=2, activation="tanh")
    params = random_params("mlp", cfg, seed)
    width = {f"h{i + 1}": factor * n + i for i, n in enumerate(hidden)}  # non-multiples too
    new, report = grow(params, MLP.spec(cfg), width=width, method=method, key=seed)
    x = jnp.asarray(np.random.default_rng(seed).normal(size=(7, 3)), jnp.float32)
    err = rel_err(model_fn("mlp", MLP.resize(cfg, width))(new, x), model_fn("mlp", cfg)(params, x))
    assert report.bound["kind"] == "rounding" and err <= report.bound["rel_error"], (err, report)
    assert report.record_error(err).function_preserving


def test_function_preserving_is_never_assumed():
    """Proved only for noise-free exact growth; zero-sum noise stays False until measured; a
    measurement outside float32 rounding (readout x1.001) or a non-rounding bound is False."""
    cfg = MLP.config(input_dim=3, hidden=(6,), num_classes=2)
    params = random_params("mlp", cfg)
    _, copy = grow(params, MLP.spec(cfg), width={"h1": 12}, method="copy")
    assert copy.function_preserving and copy.function_check == "proved"
    _, exact = grow(params, MLP.spec(cfg), width={"h1": 12}, method="exact")
    assert not exact.function_preserving and exact.function_check == "unmeasured"
    ref = np.ones((2, 2))
    assert exact.measured(ref, ref * (1 + 1e-7)).function_preserving
    assert not exact.measured(ref, ref * 1.001).function_preserving
    _, noisy = grow(params, MLP.spec(cfg), width={"h1": 12}, method="net2net-noise")
    assert noisy.bound["kind"] == "noise" and not noisy.measured(ref, ref).function_preserving


# --- post-LN BERT at a non-multiple width ---------------------------------------------------


def test_bert_multiple_width_is_exact_and_measured():
    params, config = tiny_bert()
    spec = hf.bert_spec(with_pooler=False)
    width = {"d": 16, "heads": 4, "ff": 20}
    grown, cfg, plan = hf.grow_params(params, config, spec, width=width, method="exact")
    ids, mask = _ids()
    idx = np.asarray(plan.maps["d"].index)
    ref = hidden_states(params, config, ids, mask)[..., idx]
    err = rel_err(hidden_states(grown, cfg, ids, mask), ref)
    assert err < 1e-5 and plan.report.function_check == "measured"
    assert plan.report.function_preserving and plan.report.max_rel_output_error < 1e-5


def test_bert_post_ln_padding_is_refused_and_would_move_the_function():
    """d 8 -> 12: refused with a clear error. Why: the engine's LEMON padding (exact for
    pre-LN) applied to this post-LN stack moves the hidden states well beyond rounding."""
    params, config = tiny_bert()
    spec = hf.bert_spec(with_pooler=False)
    with pytest.raises(GrowthError, match=r"d=12: BERT is post-LN.*multiple of 8"):
        hf.grow_params(params, config, spec, width={"d": 12, "heads": 3}, method="copy")
    plan = plan_growth(params, spec, width={"d": 12, "heads": 3}, method="copy")
    grown = jax.tree_util.tree_map(np.asarray, apply_plan(plan, params))
    cfg = hf.grown_config(config, grown, plan.report.eps_scale)
    ids, mask = _ids()
    h = hidden_states(grown, cfg, ids, mask)[..., :8]  # the first copy of every unit
    assert rel_err(h, hidden_states(params, config, ids, mask)) > 1e-3


def test_bert_depth_growth_declares_no_guarantee():
    params, config = tiny_bert()
    _, _, plan = hf.grow_params(params, config, hf.bert_spec(with_pooler=False),
                                depth={"layers": 4}, method="copy")  # fmt: skip
    assert plan.report.bound["kind"] == "none" and "post-LN" in plan.report.bound["statement"]
    assert not plan.report.function_preserving and plan.report.max_rel_output_error > 1e-3


# --- low precision --------------------------------------------------------------------------


def test_bf16_llama_with_noise_does_not_claim_the_function(tmp_path):
    """bf16 weights: copies at x2 are exact (scales 1/2 are powers of two); zero-sum noise
    rounded to bf16 no longer sums to zero and the measurement says so (~1% of the logits)."""
    src = write_llama(tmp_path / "src", H=2, d=8)
    params, config, spec = hf.load_hf(src)
    bf16 = jax.tree_util.tree_map(lambda a: np.asarray(a, jnp.bfloat16), params)
    _, _, copy = hf.grow_params(bf16, config, spec, width="x2", method="copy")
    assert copy.report.function_preserving and copy.report.max_rel_output_error < 1e-5
    _, _, exact = hf.grow_params(bf16, config, spec, width="x2", method="exact")
    assert not exact.report.function_preserving and exact.report.max_rel_output_error > 1e-3


# --- the positive control of grow analyze ---------------------------------------------------


def _control(params: dict, cfg, **kw) -> dict:
    """The positive control on ``h1`` of a tanh MLP, error = relative logit error against
    ``params``'s own logits."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(64, cfg.input_dim)), jnp.float32)
    ref = mlp_apply(params, x, "tanh")

    def error(p: dict) -> float:
        return rel_err(mlp_apply(p, x, "tanh"), ref)

    return positive_control(params, MLP.spec(cfg), error, space="h1", n=cfg.hidden[0],
                            leaf=("layers", 1, "kernel"), **kw)  # fmt: skip


def test_positive_control_passes_on_units_and_is_calibrated_on_destroyed_copies():
    """Must pass: a network whose output is a sum over its h1 units. Destroyed copies (a fresh
    one per draw) pass at about the level: <= 3 of 20 independent arms (ALPHA = 0.05)."""
    cfg = MLP.config(input_dim=6, hidden=(32,), num_classes=3, activation="tanh")
    pc = _control(random_params("mlp", cfg, 1), cfg, draws=8, seed=0, repeats=20)
    assert pc["trained"]["passed"] and pc["trained"]["lower_bound"] > 0.1, pc
    assert pc["destroyed_repeats"] == 20 and pc["false_positive_rate"] <= 0.15, pc
    assert exit_code({"positive_control": pc, "identities": {}}) == 0


def test_positive_control_fails_where_units_carry_nothing():
    """Must fail: the outgoing kernel zeroed (no unit carries any function), and the exit code
    when destroyed copies pass too often (the control is then uninformative)."""
    cfg = MLP.config(input_dim=6, hidden=(32,), num_classes=3, activation="tanh")
    params = random_params("mlp", cfg, 1)
    zeroed = {**params["layers"][1], "kernel": np.zeros((32, 3), np.float32)}
    dead = {"layers": {**params["layers"], 1: zeroed}}
    pc = _control(dead, cfg, draws=4, seed=0, repeats=1)
    assert not pc["trained"]["passed"], pc
    assert exit_code({"positive_control": pc, "identities": {}}) == 1
    leaky = {**_control(params, cfg, draws=4, seed=0, repeats=1), "false_positive_rate": 0.5}
    assert exit_code({"positive_control": leaky, "identities": {}}) == 1
    with pytest.raises(GrowthError, match="repeats=0"):
        _control(params, cfg, draws=4, seed=0, repeats=0)


# --- the wrong optimizer rule ---------------------------------------------------------------


@pytest.fixture(scope="module")
def uneven_copy(tmp_path_factory):
    """An MLP checkpoint copy-grown h1 x2, h2 x3 (its source recorded beside it)."""
    from growth.apps.commands import grow_checkpoint
    from growth.formats.checkpoint import save_checkpoint
    from growth.models import config_to_dict, init_model, params_of

    root = tmp_path_factory.mktemp("rule")
    cfg = MLP.config(input_dim=40, hidden=(16, 24), num_classes=10)
    meta = {"family": "mlp", "config": config_to_dict(cfg), "dataset": "mnist1d"}
    save_checkpoint(root / "src", params_of(init_model("mlp", cfg, 0)), meta)
    path, _ = grow_checkpoint(root / "src", root / "big", width="h1=x2,h2=x3", depth="",
                              method="copy")  # fmt: skip
    return path


@pytest.mark.parametrize("optimizer, parametrization, passes", [
    ("sgd", "mf", True),  # SGD factors r_out / r_in: the copies follow the source
    ("sgd", "mup", False),  # muP's hidden SGD factor 1 is r_out / r_in only when r_in = r_out
    ("adam", "mup", True),  # muP-Adam: factors 1 / r_in
    ("adam", "sp", False),  # SP: one Adam rate for every leaf, the 1 / r_in factors dropped
])  # fmt: skip
def test_track_verdict_fails_under_a_wrong_optimizer_rule(
    uneven_copy, optimizer, parametrization, passes
) -> None:
    """``grow track``'s verdict on a copy-grown checkpoint trained under a given LR rule: the
    mean-field rule passes, a wrong rule in its place fails (the right arm's gap > tol); the
    controls (global LR, unscaled eps, coupled decay) are the same check's other must-fails
    (tests/test_track.py)."""
    from growth.apps.track import track_checkpoint

    res = track_checkpoint(uneven_copy, steps=20, optimizer=optimizer,
                           parametrization=parametrization)  # fmt: skip
    assert res["passed"] is passes, res["gaps"]
    if not passes:
        assert res["gaps"]["right"] > 100 * res["tol"], res["gaps"]
