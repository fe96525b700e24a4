"""The mean-field (``param="mf"``) model family: exact growth under the ``1/n`` multipliers,
width-free training (per-unit statistics at two widths agree; SP's do not), and the mean-field
Adam learning-rate rule (a wrong rule visibly diverges)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import model_fn, random_params, rel_err
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st
from test_decoder import _tokens, configs_and_targets

from growth.engine import apply_plan, plan_growth
from growth.errors import GrowthError
from growth.methods import Method
from growth.models import (
    get_family,
    grown_config,
    init_model,
    params_of,
    training_base,
)
from growth.models.mlp import MLPConfig
from growth.models.resmlp import ResMLPConfig
from growth.tasks.data import load_dataset
from growth.tasks.train import TrainConfig, train
from theory.parametrization import classify_leaf, lr_multipliers

TOL = 1e-5  # float32 exactness: max |f' - f| / max |f|
METHODS = {
    "exact": "exact",
    "copy": "copy",
    "balanced-unbiased": Method(sampler="balanced", scaling="unbiased", symmetry="none"),
}


def _mf_params(family: str, cfg, seed: int) -> dict:
    """Random params with O(1) mean-field types: every kernel contracted over a neuron space is
    rescaled from N(0, 1/fan_in) (``random_params``) to N(0, 1)."""
    params = random_params(family, cfg, seed)
    resolved = get_family(family).spec(cfg).resolve(params)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    out = [
        a * np.sqrt(a.shape[-2]) if classify_leaf(s) in ("hidden", "readout") else a
        for a, s in zip(leaves, resolved.leaves, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


def _grow_errors(family, cfg, params, x, width, depth, method, seed) -> tuple[float, float, object]:
    """(error with ``grown_config``, error with the multipliers reset to 1/N, report)."""
    fam = get_family(family)
    plan = plan_growth(params, fam.spec(cfg), width=width, depth=depth, method=method, key=seed)
    new = apply_plan(plan, params)
    new_cfg = grown_config(fam, cfg, plan)
    ref = model_fn(family, cfg)(params, x)
    err = rel_err(model_fn(family, new_cfg)(new, x), ref)
    reset = dataclasses.replace(new_cfg, mults=None)  # mf: 1 / N of the grown sizes
    return err, rel_err(model_fn(family, reset)(new, x), ref), plan.report


def _batch(dim: int, n: int = 16) -> jax.Array:
    return jnp.asarray(np.random.default_rng(0).normal(size=(n, dim)), jnp.float32)


def _last_hidden(cfg: MLPConfig, params: dict, x: jax.Array) -> np.ndarray:
    """The last hidden layer's activations ``[batch, n_L]`` of an MLP with multipliers."""
    act = {"relu": jax.nn.relu, "gelu": jax.nn.gelu, "tanh": jnp.tanh}[cfg.activation]
    layers = params["layers"]
    h = act(x @ layers[0]["kernel"] + layers[0]["bias"])
    for l, m in enumerate(cfg.mults[:-1], start=1):
        h = act(m * (h @ layers[l]["kernel"]) + layers[l]["bias"])
    return np.asarray(h)


def _mlp_case(data) -> None:
    L = data.draw(st.integers(1, 2), label="layers")
    hidden = tuple(data.draw(st.integers(2, 16), label=f"h{i + 1}") for i in range(L))
    name = data.draw(st.sampled_from(sorted(METHODS)), label="method")
    targets = {}
    for i, n in enumerate(hidden):
        if name == "balanced-unbiased":
            targets[f"h{i + 1}"] = n * data.draw(st.integers(2, 3), label=f"k{i + 1}")
        else:  # any N > n, integer or not a multiple
            targets[f"h{i + 1}"] = data.draw(st.integers(n + 1, 3 * n), label=f"N{i + 1}")
    act = data.draw(st.sampled_from(["relu", "gelu", "tanh"]), label="activation")
    seed = data.draw(st.integers(0, 2**20), label="seed")
    cfg = MLPConfig(5, hidden, 3, act, param="mf")
    params = _mf_params("mlp", cfg, seed)
    # a net whose last hidden layer is dead on every input ignores its hidden layers: vacuous
    assume(np.abs(_last_hidden(cfg, params, _batch(5))).max() > 0)
    err, err_reset, report = _grow_errors(
        "mlp", cfg, params, _batch(5), targets, None, METHODS[name], seed
    )
    note(f"rel err {err:.3g}, with 1/N multipliers {err_reset:.3g}; {report}")
    assert err <= TOL and report.record_error(err).function_preserving
    assert err_reset > 1e-2  # the 1/N multiplier of a fresh model is the wrong one here


def _resmlp_case(data) -> None:
    d = data.draw(st.integers(4, 8), label="d")
    h = data.draw(st.integers(2, 10), label="h")
    L = data.draw(st.integers(1, 2), label="L")
    kd = data.draw(st.integers(2, 3), label="kd")  # LayerNorm space: multiples
    H = data.draw(st.integers(h + 1, 3 * h), label="H")
    L_new = data.draw(st.integers(L, L + 2), label="L'")
    seed = data.draw(st.integers(0, 2**20), label="seed")
    cfg = ResMLPConfig(3, d, h, L, 2, param="mf")
    params = _mf_params("resmlp", cfg, seed)
    err, err_reset, report = _grow_errors(
        "resmlp", cfg, params, _batch(3), {"d": kd * d, "h": H}, {"blocks": L_new}, "exact", seed
    )
    note(f"rel err {err:.3g}, with 1/N multipliers {err_reset:.3g}; {report}")
    assert err <= TOL and report.record_error(err).function_preserving
    assert err_reset > 1e-2


# every example compiles new shapes (a few s each on a shared 2-core CPU): few by default
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_mf_mlp_growth_is_exact_and_needs_the_kept_multipliers(data) -> None:
    _mlp_case(data)


@pytest.mark.slow
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_mf_mlp_growth_is_exact_many(data) -> None:
    _mlp_case(data)


@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_mf_resmlp_width_and_depth_growth_is_exact(data) -> None:
    _resmlp_case(data)


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_mf_resmlp_width_and_depth_growth_is_exact_many(data) -> None:
    _resmlp_case(data)


def _decoder_case(case, seed: int) -> None:
    cfg, width, depth, method = case
    cfg = dataclasses.replace(cfg, param="mf", attn_scale=None, mults=None)
    params = _mf_params("decoder", cfg, seed)
    fam = get_family("decoder")
    plan = plan_growth(params, fam.spec(cfg), width=width, depth=depth, method=method, key=seed)
    new, new_cfg = apply_plan(plan, params), grown_config(fam, cfg, plan)
    tok = _tokens(cfg)
    ref = model_fn("decoder", cfg)(params, tok)
    err = rel_err(model_fn("decoder", new_cfg)(new, tok), ref)
    note(f"rel err {err:.3g}; {plan.report}")
    assert err <= 1e-4 and plan.report.record_error(err).function_preserving  # test_decoder TOL
    assert new_cfg.mults == cfg.mults and cfg.attn_scale == 1 / cfg.head_dim
    grown_d = width["d"] > cfg.d_model or width["ff"] > cfg.d_ff
    if grown_d:  # resetting the multipliers to 1/N of the grown sizes breaks it
        reset = dataclasses.replace(new_cfg, mults=None, attn_scale=new_cfg.attn_scale)
        assert rel_err(model_fn("decoder", reset)(new, tok), ref) > 1e-3


@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_mf_decoder_growth_is_exact(data) -> None:
    _decoder_case(data.draw(configs_and_targets()), data.draw(st.integers(0, 2**16)))


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_mf_decoder_growth_is_exact_many(data) -> None:
    _decoder_case(data.draw(configs_and_targets()), data.draw(st.integers(0, 2**16)))


def test_mf_decoder_is_refused_by_the_hf_exporter() -> None:
    from growth.formats.hf.layout import hf_config
    from growth.models.decoder import DecoderConfig

    cfg = DecoderConfig(vocab=16, d_model=8, n_layers=1, n_heads=2, param="mf")
    assert cfg.mults == (1 / 8, 1 / 32, 1 / 2, 1.0, 1 / 4) and cfg.attn_scale == 1 / 4
    with pytest.raises(GrowthError, match="mults"):
        hf_config(cfg, {"model_type": "llama"})


def test_mf_config_defaults_and_errors() -> None:
    cfg = MLPConfig(5, (4, 8), 3, param="mf")
    assert cfg.mults == (0.25, 0.125)
    assert MLPConfig(5, (4, 8), 3).mults == (1.0, 1.0)
    assert ResMLPConfig(3, 8, 16, 2, 2, param="mf").mults == (1 / 8, 1 / 16)
    assert get_family("mlp").reference(get_family("mlp").resize(cfg, {"h1": 12})) == {
        "h1": 4.0, "h2": 8.0,
    }  # fmt: skip
    with pytest.raises(GrowthError, match="param='nf'"):
        MLPConfig(5, (4,), 3, param="nf")
    with pytest.raises(GrowthError, match="mults"):
        MLPConfig(5, (4, 8), 3, param="mf", mults=(0.25,))
    with pytest.raises(GrowthError, match="mults"):
        ResMLPConfig(3, 8, 16, 2, 2, param="mf", mults=(0.1, -1.0))
    with pytest.raises(GrowthError, match="base_sizes"):
        training_base("mlp", cfg, {"h1": 4, "h2": 8}, {"h1": 16, "h2": 8})
    assert training_base("mlp", cfg, {"h1": 4, "h2": 8}, None) == {"h1": 4.0, "h2": 8.0}


def test_mf_init_draws_width_free_types() -> None:
    """Hidden/readout types ``n m W`` are N(0, 1) at any width and reference width."""
    for cfg in (MLPConfig(40, (64, 256), 10, param="mf"),
                get_family("mlp").resize(MLPConfig(40, (16, 16), 10, param="mf"),
                                         {"h1": 64, "h2": 256})):  # fmt: skip
        p = params_of(init_model("mlp", cfg, seed=0))
        for l in (1, 2):
            t = np.asarray(p["layers"][l]["kernel"]) * cfg.hidden[l - 1] * cfg.mults[l - 1]
            assert abs(t.std() - 1.0) < 0.05, (cfg, l, t.std())


# ---------------------------------------------------------------------------------------------
# training: width-free statistics and the learning-rate rule
# ---------------------------------------------------------------------------------------------

STEPS = 400


@pytest.fixture(scope="module")
def mnist1d():
    return load_dataset("mnist1d")


def _train(data, cfg: MLPConfig, lr: float, rule: str, seed: int = 0):
    """Train ``cfg`` with Adam; rule ``"param"``: the config's parametrization relative to
    :func:`training_base`; ``"global"``: one learning rate for every leaf."""
    model = init_model("mlp", cfg, seed=seed)
    fam = get_family("mlp")
    resolved = fam.spec(cfg).resolve(params_of(model))
    base = training_base("mlp", cfg, resolved.sizes, None)
    mults = lr_multipliers(resolved, base, cfg.param, "adam") if rule == "param" else None
    tc = TrainConfig(steps=STEPS, lr=lr, eval_every=STEPS, seed=seed)
    hist = train(model, data, tc, lr_multipliers=mults, progress=False)
    return model, hist.test_loss[-1]


def _unit_stats(model, x: jax.Array) -> np.ndarray:
    """Width-free per-unit statistics of a 2-hidden-layer MLP, in type units ``n m W``: RMS of
    the readout types, RMS of the hidden types, RMS of the second hidden layer's activations on
    ``x``, mean norm of the first layer's rows."""
    c, p = model.config, params_of(model)
    k = [np.asarray(p["layers"][i]["kernel"]) for i in range(3)]
    b = [np.asarray(p["layers"][i]["bias"]) for i in range(3)]
    h1 = np.maximum(np.asarray(x) @ k[0] + b[0], 0)
    h2 = np.maximum(c.mults[0] * (h1 @ k[1]) + b[1], 0)
    a = c.hidden[1] * c.mults[1] * k[2]
    w = c.hidden[0] * c.mults[0] * k[1]
    rms = lambda v: float(np.sqrt(np.mean(v**2)))  # noqa: E731
    return np.array([rms(a), rms(w), rms(h2), float(np.linalg.norm(k[0], axis=0).mean())])


def test_mf_trained_units_are_width_free_sp_units_are_not(mnist1d) -> None:
    """Trained at widths 16 and 128 with one width-free Adam rate, MF nets have per-unit
    statistics within a factor 4/3 of each other and losses within 0.1; SP nets trained the same
    way (one global rate) differ by > 2x in their readout types and by > 0.2 in loss. Measured
    (seed 0, 400 steps): MF ratios 128/16 = 1.05, 0.93, 1.03, 1.20, losses 1.36 / 1.33; SP
    ratios 3.52, 2.98, 0.72, 0.97, losses 1.54 / 1.03."""
    x = jnp.asarray(mnist1d.x_test[:256])
    runs = {}
    for param, lr in (("mf", 0.03), ("sp", 3e-3)):
        for n in (16, 128):
            model, loss = _train(mnist1d, MLPConfig(40, (n, n), 10, param=param), lr, "param")
            runs[param, n] = (_unit_stats(model, x), loss)
    ratio_mf = runs["mf", 128][0] / runs["mf", 16][0]
    ratio_sp = runs["sp", 128][0] / runs["sp", 16][0]
    msg = f"mf ratios {ratio_mf}, sp ratios {ratio_sp}, losses {[r[1] for r in runs.values()]}"
    assert np.all((ratio_mf > 0.75) & (ratio_mf < 4 / 3)), msg
    assert abs(runs["mf", 128][1] - runs["mf", 16][1]) < 0.1, msg
    assert ratio_sp[0] > 2.0, msg
    assert abs(runs["sp", 128][1] - runs["sp", 16][1]) > 0.2, msg


def test_mf_lr_rule_makes_a_relative_base_model_train_like_a_fresh_one(mnist1d) -> None:
    """A width-128 MF net kept relative to base width 16 (multipliers 1/16, so stored weights
    are its types / 8) is the same model as a fresh width-128 MF net -- same init draws, same
    function -- and under the mean-field Adam rule (LR factor ``1/r_in = 1/8`` on contractions
    over the hidden spaces) it trains the same way (up to Adam's eps). One global rate (the
    wrong rule: types move 8x faster) diverges from it."""
    base = MLPConfig(40, (16, 16), 10, param="mf")
    relative = get_family("mlp").resize(base, {"h1": 128, "h2": 128})
    fresh = MLPConfig(40, (128, 128), 10, param="mf")
    x = jnp.asarray(mnist1d.x_test[:256])
    m_fresh, l_fresh = _train(mnist1d, fresh, 0.03, "param")
    m_right, l_right = _train(mnist1d, relative, 0.03, "param")
    m_wrong, l_wrong = _train(mnist1d, relative, 0.03, "global")
    ref = np.asarray(m_fresh(x))
    right, wrong = rel_err(m_right(x), ref), rel_err(m_wrong(x), ref)
    msg = f"logit error right {right:.3g} wrong {wrong:.3g}; losses {l_fresh, l_right, l_wrong}"
    assert right < 0.05 and abs(l_right - l_fresh) < 0.01, msg  # measured 0.021, 0.003
    assert wrong > 0.2 and abs(l_wrong - l_fresh) > 0.05, msg  # measured 0.57, 0.14


@pytest.mark.parametrize("optimizer,lr", [("sgd", 5.0), ("adam", 0.03)])
def test_mf_copy_grown_model_tracks_its_source(mnist1d, optimizer, lr) -> None:
    """An MF net (multipliers 1/16, 1/24) copy-grown h1 x2, h2 x3 keeps its multipliers and,
    under the MF rules relative to the source widths (SGD ``r_out / r_in``, Adam ``1 / r_in``
    with eps ``/ r_out``), trains on the same batches like its source to float32 rounding; one
    global rate diverges (measured gaps: SGD 2.0e-7 vs 3.3e-4, Adam 2.3e-7 vs 0.16; the
    diverging control shows the updates are not vacuous). Adam runs at eps 1e-8: at eps 1e-5,
    MF's small stored gradients put Adam in its eps-sensitive regime and on a trained source
    the right rule's gap grew to ~9e-6 over 100 steps (~2e-7 over 30)."""
    from growth.apps.track import track

    cfg = MLPConfig(40, (16, 24), 10, param="mf")
    params = params_of(init_model("mlp", cfg, seed=0))
    res = track(params, "mlp", cfg, mnist1d, steps=40, optimizer=optimizer, lr=lr, eps=1e-8,
                width="h1=x2,h2=x3", rules=("right", "global-lr"))  # fmt: skip
    assert res["gaps"]["right"] <= 1e-6, res["gaps"]
    assert res["gaps"]["global-lr"] > 1e-4, res["gaps"]


# ---------------------------------------------------------------------------------------------
# the command line: the parametrization travels with the checkpoint
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["mlp", "resmlp"])
def test_cli_train_mf_grow_verify_roundtrip(model, tmp_path) -> None:
    from growth.apps.cli import main
    from growth.apps.commands import load_model, verify_checkpoint
    from growth.formats.checkpoint import load_checkpoint

    small, big = str(tmp_path / "small"), str(tmp_path / "big")
    args = ["train", "--model", model, "--width", "6", "--depth", "2", "--steps", "20"]
    assert main([*args, "--eval-every", "20", "--param", "mf", "--out", small]) == 0
    _, meta = load_checkpoint(small)
    assert meta["param"] == "mf" and meta["config"]["param"] == "mf"
    assert meta["config"]["mults"][0] == pytest.approx(1 / 6)
    width = "h1=x2,h2=13" if model == "mlp" else "d=x2,h=17"
    depth = [] if model == "mlp" else ["--depth", "blocks=3"]
    assert main(["grow", small, "--width", width, *depth, "--out", big]) == 0
    _, grown_meta, grown_cfg = load_model(big)
    assert grown_meta["param"] == "mf" and grown_cfg.mults[0] == pytest.approx(1 / 6)
    res = verify_checkpoint(big)
    assert res["passed"] and res["max_rel_logit_error"] < 1e-5, res


def test_cli_mup_base_width_scales_the_readout_and_mf_base_width_the_multipliers(tmp_path):
    from growth.apps.cli import main
    from growth.formats.checkpoint import load_checkpoint

    common = ["train", "--model", "mlp", "--width", "32", "--depth", "1", "--steps", "1"]
    common += ["--eval-every", "1", "--lr", "1e-9"]
    readout_sd = {}
    for param in ("sp", "mup"):
        out = str(tmp_path / param)
        assert main([*common, "--param", param, "--base-width", "8", "--out", out]) == 0
        params, meta = load_checkpoint(out)
        readout_sd[param] = float(np.asarray(params["layers"][1]["kernel"]).std())
        assert meta["param"] == param and meta["base_sizes"] == {"h1": 8.0}
    assert readout_sd["mup"] / readout_sd["sp"] == pytest.approx(0.5, rel=1e-3)  # r_in^-1/2
    out = str(tmp_path / "mf")
    assert main([*common, "--param", "mf", "--base-width", "8", "--out", out]) == 0
    _, meta = load_checkpoint(out)
    assert meta["config"]["mults"] == [1 / 8] and meta["base_sizes"] == {"h1": 8.0}
    assert main([*common, "--param", "mf", "--base-width", "0", "--out", out + "0"]) == 2


# ---------------------------------------------------------------------------------------------
# experiments/measure_across_widths.py: its features and effect size
# ---------------------------------------------------------------------------------------------


def test_measure_features_are_width_free_and_the_shift_has_the_stated_size() -> None:
    from experiments.measure_across_widths import FEATURES, features, shifted

    probe = _batch(40, n=32)
    dims = {}
    for n in (8, 24):
        cfg = MLPConfig(40, (n, n), 10, param="mf")
        f = features(cfg, params_of(init_model("mlp", cfg, seed=0)), probe)
        assert set(f) == set(FEATURES) and all(v.shape[0] == n for v in f.values())
        dims[n] = {k: v.shape[1] for k, v in f.items()}
    assert dims[8] == dims[24] == {"act/h1": 32, "act/h2": 32, "type/h1": 41, "type/h2": 11}
    y = np.random.default_rng(0).normal(size=(50, 6)) * np.arange(1, 7)
    for delta in (0.0, 0.5, 2.0):
        moved = shifted(y, delta, jax.random.key(1))
        step = moved - y
        assert np.allclose(step, step[0])  # one common shift
        assert np.linalg.norm(step[0]) == pytest.approx(delta * np.sqrt(y.var(0).sum()), rel=1e-6)


@pytest.mark.slow
def test_measure_across_widths_runs_and_detects_the_init_law(tmp_path) -> None:
    import json

    from experiments.measure_across_widths import main

    args = ["--widths", "8,16", "--seeds", "2", "--steps", "200", "--perms", "50"]
    assert main([*args, "--params", "mf", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "distance_vs_width.png").exists()
    rows = res["comparisons"]["mf/act/h1"]["16"]
    assert rows["init"]["reject_rate"] == 1.0 and rows["same_width"]["mean"] < rows["init"]["mean"]
    assert res["power"]["mf/act/h1/16"]["1.0"]["reject_rate"] >= 0.5
