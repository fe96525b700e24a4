"""Published growth methods as recipes (``growth.methods``): each recipe's stated guarantee.

Exact recipes keep the MLP/ResMLP function within float32 rounding; approximate ones change it
(by the amount their rule implies); the new engine pieces (``net2net`` sampler, ``linear-fit``
depth rule) do what their sources say.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import model_fn, random_params, rel_err

from growth.depth import apply_depth, depth_map
from growth.engine import grow, plan_growth
from growth.methods import METHODS, RECIPE_INFO, get_method
from growth.models import get_family
from growth.spec import LeafSpec
from theory.measure import net2net_index, sample_space

MLP = get_family("mlp")
RES = get_family("resmlp")
TOL = 1e-5
PUBLISHED = ("net2net", "bert2bert-fpi", "bert2bert-aki", "hypercloning", "lemon", "stack", "tleg")


def _x(dim: int, n: int = 32, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, dim)), jnp.float32)


def _mlp_err(method, width, key=0, hidden=(6, 5)):
    cfg = MLP.config(input_dim=4, hidden=hidden, num_classes=3)
    params = random_params("mlp", cfg, 1)
    new, report = grow(params, MLP.spec(cfg), width=width, method=method, key=key)
    x = _x(4)
    err = rel_err(model_fn("mlp", MLP.resize(cfg, width))(new, x), model_fn("mlp", cfg)(params, x))
    return err, report, new


def test_every_recipe_has_info_and_published_ones_cite_a_source() -> None:
    assert set(RECIPE_INFO) == set(METHODS)
    for name in PUBLISHED:
        assert RECIPE_INFO[name]["source"] != "mfgrow"
        assert METHODS[name].name == name


def test_net2net_index_identity_then_iid() -> None:
    g = np.asarray(net2net_index(jax.random.key(3), 5, 17))
    np.testing.assert_array_equal(g[:5], np.arange(5))
    assert g.min() >= 0 and g.max() < 5
    counts = np.bincount(g, minlength=5)
    assert counts.min() >= 1 and counts.max() > counts.min()  # uneven, every unit kept
    m = sample_space(jax.random.key(3), 5, 17, "net2net", "exact")
    mass = np.bincount(np.asarray(m.index), np.asarray(m.scale), minlength=5)
    np.testing.assert_allclose(mass, 1.0, rtol=1e-6)  # 1/count fan-in: exact
    np.testing.assert_array_equal(np.asarray(net2net_index(jax.random.key(0), 5, 3)), [0, 1, 2])


@pytest.mark.parametrize("name", ["copy", "exact", "hypercloning", "lemon", "stack", "tleg"])
def test_exact_width_recipes_keep_mlp_function(name: str) -> None:
    for width in ({"h1": 12, "h2": 10}, {"h1": 9, "h2": 13}):  # multiple, non-multiple
        err, report, _ = _mlp_err(name, width)
        assert err <= TOL, (name, width, err)
        assert report.record_error(err).function_preserving


def test_net2net_exact_without_noise_and_order_sigma_with_noise() -> None:
    width = {"h1": 15, "h2": 11}
    err0, rep0, _ = _mlp_err(get_method("net2net", sigma=0.0), width)
    assert err0 <= TOL and rep0.record_error(err0).function_preserving
    errs = [_mlp_err(get_method("net2net", sigma=s), width, key=2)[0] for s in (0.01, 0.04)]
    assert errs[0] > 10 * TOL
    assert 2.5 < errs[1] / errs[0] < 6, errs  # O(sigma): linear in the noise size


def test_bert2bert_fpi_width_exact_on_mlp_but_not_under_layernorm() -> None:
    err, report, _ = _mlp_err("bert2bert-fpi", {"h1": 15, "h2": 11}, key=4)
    assert err <= TOL and report.record_error(err).function_preserving  # no norms: FPI exact
    cfg = RES.config(input_dim=3, width=6, hidden=8, depth=2, num_classes=2)
    params = random_params("resmlp", cfg, 0)
    new, report = grow(params, RES.spec(cfg), width={"d": 10}, method="bert2bert-fpi", key=1)
    assert not report.function_preserving
    assert any("normalised" in n for n in report.notes)
    x = _x(3)
    err = rel_err(
        model_fn("resmlp", RES.resize(cfg, {"d": 10}))(new, x), model_fn("resmlp", cfg)(params, x)
    )
    assert err > 1e-3  # "almost the same behaviour" (bert2BERT): LayerNorm statistics move


def test_hypercloning_noise_breaks_symmetry_and_keeps_function() -> None:
    cfg = RES.config(input_dim=3, width=6, hidden=8, depth=2, num_classes=2)
    params = random_params("resmlp", cfg, 0)
    width = {"d": 12, "h": 16}
    new, report = grow(params, RES.spec(cfg), width=width, method="hypercloning", key=1)
    x = _x(3)
    err = rel_err(
        model_fn("resmlp", RES.resize(cfg, width))(new, x), model_fn("resmlp", cfg)(params, x)
    )
    assert err <= TOL and report.record_error(err).function_preserving
    w2 = np.asarray(new["w2"])  # [L, h, d]: the two copies of hidden unit 0 read differently
    assert np.abs(w2[:, 0] - w2[:, 8]).max() > 1e-2
    src = np.asarray(params["w2"])[:, 0]
    np.testing.assert_allclose(w2[:, 0, :6] + w2[:, 8, :6], src, atol=1e-5)  # zero-sum pair


def test_lemon_exact_for_any_width_and_depth_on_resmlp() -> None:
    cfg = RES.config(input_dim=3, width=6, hidden=8, depth=2, num_classes=2)
    params = random_params("resmlp", cfg, 0)
    spec = RES.spec(cfg)  # names its LayerNorm gain/bias kinds: padded maps are exact
    width, depth = {"d": 10, "h": 11}, {"blocks": 5}
    plan = plan_growth(params, spec, width=width, depth=depth, method="lemon", key=2)
    new, report = grow(params, spec, width=width, depth=depth, method="lemon", key=2)
    assert report.eps_scale == plan.report.eps_scale and report.function_check == "unmeasured"
    new_cfg = RES.grown(cfg, plan)  # sizes + eps x k n / N
    assert new_cfg.eps == cfg.eps * report.eps_scale["d"] != cfg.eps
    x = _x(3)
    err = rel_err(model_fn("resmlp", new_cfg)(new, x), model_fn("resmlp", cfg)(params, x))
    assert err <= TOL and report.record_error(err).function_preserving, err


@pytest.mark.parametrize("name", ["bert2bert-fpi", "stack", "tleg"])
def test_approximate_depth_recipes_change_resmlp_function(name: str) -> None:
    cfg = RES.config(input_dim=3, width=6, hidden=8, depth=3, num_classes=2)
    params = random_params("resmlp", cfg, 0)
    new, report = grow(params, RES.spec(cfg), depth={"blocks": 6}, method=name, key=0)
    assert not report.function_preserving
    x = _x(3)
    err = rel_err(
        model_fn("resmlp", RES.resize(cfg, {"blocks": 6}))(new, x),
        model_fn("resmlp", cfg)(params, x),
    )
    assert err > 1e-3, (name, err)


def test_linear_fit_reproduces_a_linear_depth_profile() -> None:
    L, L_new = 4, 10
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    t = (np.arange(L) + 0.5) / L
    t_new = (np.arange(L_new) + 0.5) / L_new
    theta = jnp.asarray(A[None] + t[:, None, None] * B[None], jnp.float32)
    spec = LeafSpec.of(("depth:blocks", "-", "-"))
    (out,) = apply_depth([theta], {"blocks": depth_map("linear-fit", L, L_new)}, leaf_specs=(spec,))
    want = A[None] + t_new[:, None, None] * B[None]
    np.testing.assert_allclose(np.asarray(out), want, atol=1e-5)
    # a noisy profile is projected onto its least-squares line (residual orthogonal to 1, t)
    noisy = theta + jnp.asarray(rng.normal(size=theta.shape), jnp.float32)
    (fit,) = apply_depth([noisy], {"blocks": depth_map("linear-fit", L, L)}, leaf_specs=(spec,))
    np.testing.assert_array_equal(np.asarray(fit), np.asarray(noisy))  # L' = L: no change
    mix, scale = (np.asarray(a) for a in depth_map("linear-fit", 1, 3))
    np.testing.assert_allclose(mix, 1.0) and np.testing.assert_allclose(scale, 1 / 3)


def test_linear_fit_shrinks() -> None:
    mix, scale = (np.asarray(a) for a in depth_map("linear-fit", 6, 3))
    assert mix.shape == (3, 6)
    np.testing.assert_allclose(mix.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(scale, 2.0)


# ---------------------------------------------------------------------------------------------
# experiments: throughput bench and method comparison (their bookkeeping)
# ---------------------------------------------------------------------------------------------


def test_bench_worker_row_is_consistent() -> None:
    from experiments.bench_growth import markdown, worker

    row = worker(8, "exact", repeats=1)
    assert row["out_mb"] == pytest.approx(4 * row["in_mb"])  # d -> 2d, h -> 2h: 4x the bytes
    assert row["steady_s"] > 0 and row["ratio_np"] > 0 and row["ratio_jax"] > 0
    assert row["grow_gbps"] == pytest.approx(row["out_mb"] * 2**20 / row["steady_s"] / 1e9)
    assert "| 0.0 |" in markdown([row]) or "exact" in markdown([row])


@pytest.mark.slow
def test_bench_growth_quick_runs(tmp_path) -> None:
    """The CI-sized benchmark end to end (one subprocess per size and method)."""
    import json

    from experiments.bench_growth import D_QUICK, METHODS, main

    main(["--quick", "--repeats", "1", "--out", str(tmp_path / "bench.json")])
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert len(rows) == len(D_QUICK) * len(METHODS)
    assert all(r["ratio_jax"] > 0 and r["steady_s"] > 0 for r in rows)


def _hist(losses, fp=True):
    return {"steps": [0, 10, 20, 30], "test_loss": losses, "function_preserving": fp}


def test_compare_metrics_aggregate_and_table() -> None:
    from experiments.compare_methods import aggregate, markdown, metrics

    runs = [
        {
            "small": {"test_loss": [2.0, 1.0]},
            "n_small": 10,
            "n_large": 100,
            "scratch": _hist([2.3, 1.5, 1.2, 1.0]),
            "a": _hist([1.0 + 0.01 * s, 0.95, 0.9, 0.8]),
            "b": _hist([1.5, 1.4, 1.3, 1.2], fp=False),
        }
        for s in (0, 1)
    ]
    per_seed = [metrics(r, ("a", "b"), batch=2, small_steps=5) for r in runs]
    m = per_seed[0]
    assert m["a"]["steps_to_target"] == 0 and m["a"]["speedup"] == 30 / 10  # step 0 counts as 10
    assert m["b"]["steps_to_target"] is None and m["b"]["speedup"] is None
    assert m["a"]["flops_to_target"] == 6 * 10 * 2 * 5  # only the small model's cost
    agg = aggregate(per_seed)
    assert agg["a"]["zero_shot_gap"]["mean"] == pytest.approx(0.005)
    assert agg["b"]["speedup"]["reached"] == 0 and not agg["b"]["function_preserving"]
    table = markdown(agg, 2)
    assert "| a | yes |" in table and "never" in table and "| scratch |" in table


@pytest.mark.slow
def test_compare_methods_quick_runs(tmp_path) -> None:
    from experiments.compare_methods import main

    summary = main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "table.md").exists() and (tmp_path / "loss_curves.png").exists()
    assert abs(summary["aggregate"]["exact"]["zero_shot_gap"]["mean"]) < 1e-4


def test_bert2bert_aki_new_units_read_the_next_block() -> None:
    cfg = RES.config(input_dim=3, width=6, hidden=8, depth=3, num_classes=2)
    params = random_params("resmlp", cfg, 0)
    aki = get_method("bert2bert-aki", sampler="balanced")  # tiled map: g(8 + j) = j
    width = {"d": 12, "h": 16}
    new, report = grow(params, RES.spec(cfg), width=width, method=aki, key=0)
    assert not report.function_preserving
    w1, old = np.asarray(new["w1"]), np.asarray(params["w1"])  # [L, in:d, out:h]
    np.testing.assert_allclose(w1[:, :6, :8], 0.5 * old, rtol=1e-6)  # old units: own block
    np.testing.assert_allclose(w1[:2, :6, 8:], 0.5 * old[1:], rtol=1e-6)  # new: next block
    np.testing.assert_allclose(w1[2, :6, 8:], 0.5 * old[2], rtol=1e-6)  # last block: own
    b1 = np.asarray(new["b1"])
    np.testing.assert_allclose(b1[:2, 8:], np.asarray(params["b1"])[1:], rtol=1e-6)
    x = _x(3)
    err = rel_err(
        model_fn("resmlp", RES.resize(cfg, width))(new, x), model_fn("resmlp", cfg)(params, x)
    )
    assert err > 1e-3
