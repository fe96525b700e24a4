"""RC-ansatz diagnostics (``theory.ansatz``) and ``grow analyze`` (``growth.apps.analyze.native``).

Theory notes T3 (LLN slopes), T6 (negative controls), T7 (RC tie).
"""

from __future__ import annotations

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from growth.apps.analyze.native import analyze_checkpoint, format_report
from growth.apps.cli import main
from growth.apps.commands import load_model, train_model
from growth.errors import CheckpointError, GrowthError
from growth.models import get_family, init_model, model_from_params, params_of
from growth.tasks.data import load_dataset
from growth.tasks.train import TrainConfig
from theory.ansatz import (
    loglog_slope,
    permute_columns,
    rc_tie,
    resample_entries_iid,
    resample_units,
    spearman,
    unit_features,
)


class Small(NamedTuple):
    config: object
    init: dict
    params: dict
    x: jax.Array
    y: jax.Array
    fwd: object


def _xent(logits: jax.Array, y: jax.Array) -> float:
    return float(optax.softmax_cross_entropy_with_integer_labels(logits, y).mean())


@pytest.fixture(scope="module")
def small() -> Small:
    """MLP(40 -> 64 -> 64 -> 10) trained 400 Adam steps on MNIST-1D (minimal optax loop)."""
    ds = load_dataset("mnist1d")
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    cfg = get_family("mlp").config(input_dim=ds.input_dim, hidden=(64, 64), num_classes=10)
    p0 = params_of(init_model("mlp", cfg, seed=0))

    def fwd(p, xb):
        return model_from_params("mlp", cfg, p)(xb)

    opt = optax.adam(3e-3)

    @jax.jit
    def run(p):
        def step(carry, k):
            p, s = carry
            idx = jax.random.randint(k, (128,), 0, x.shape[0])
            g = jax.grad(
                lambda q: optax.softmax_cross_entropy_with_integer_labels(
                    fwd(q, x[idx]), y[idx]
                ).mean()
            )(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (p, opt.init(p)), jax.random.split(jax.random.key(0), 400))
        return p

    return Small(cfg, p0, run(p0), jnp.asarray(ds.x_test), jnp.asarray(ds.y_test), jax.jit(fwd))


def _with_layer(params: dict, layer: int, **leaves) -> dict:
    layers = {k: dict(v) for k, v in params["layers"].items()}
    layers[layer].update(leaves)
    return {"layers": layers}


# --------------------------------------------------------------------------- pure functions


def test_unit_features_shape_and_standardisation() -> None:
    acts = np.random.default_rng(0).normal(2.0, 3.0, size=(50, 7))
    f = unit_features(acts)
    assert f.shape == (7, 50) and np.allclose(f, acts.T)
    z = np.asarray(unit_features(acts, standardize=True))
    assert np.allclose(z.mean(1), 0, atol=1e-5) and np.allclose(z.std(1), 1, atol=1e-4)
    with pytest.raises(ValueError):
        unit_features(np.zeros(3))


def test_spearman_is_rank_correlation() -> None:
    x = np.arange(10.0)
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -np.exp(x)) == pytest.approx(-1.0)


def test_loglog_slope_recovers_known_slope() -> None:
    rng = np.random.default_rng(1)
    x = np.geomspace(8, 4096, 10)
    for true in (-1.0, -0.5, 0.7):
        y = 2.5 * x**true * np.exp(rng.normal(0, 0.05, x.size))
        fit = loglog_slope(x, y)
        assert fit.ci[0] < true < fit.ci[1], fit
        assert abs(fit.slope - true) < 0.05 and fit.n == 10
    exact = loglog_slope([1, 2, 4], [1, 0.5, 0.25])
    assert exact.slope == pytest.approx(-1.0) and exact.ci[1] - exact.ci[0] < 1e-9
    assert np.isnan(loglog_slope([1, 2], [1, 2]).ci[0])  # no dof for a CI
    with pytest.raises(ValueError):
        loglog_slope([1, 2, 3], [1, 0, 2])


def test_rc_tie_detects_a_planted_tie_and_not_an_absent_one() -> None:
    rng = np.random.default_rng(0)
    s = np.abs(rng.normal(size=200)) + 0.1
    tied = rc_tie(rng.normal(size=(30, 200)) * s, s[:, None] * rng.normal(size=(200, 5)),
                  jax.random.key(0))  # fmt: skip
    assert tied.paired > 0.5 and tied.z > 5
    free = rc_tie(rng.normal(size=(30, 200)), rng.normal(size=(200, 5)), jax.random.key(1))
    assert abs(free.paired) < 3 / np.sqrt(200) + 0.05 and abs(free.z) < 4
    assert tied.p <= 0.05 < free.p  # the permutation test rejects the planted tie only
    with pytest.raises(ValueError):
        rc_tie(np.zeros((3, 4)), np.zeros((5, 2)), jax.random.key(0))


def test_rc_tie_of_a_constant_side_is_defined_and_not_a_tie() -> None:
    """A zeroed outgoing kernel (every norm equal): the null has no spread, so z = 0 and p = 1
    (JSON-safe, no NaN); the same incoming kernel with a tied outgoing one is rejected."""
    rng = np.random.default_rng(2)
    w_in = rng.normal(size=(8, 40))
    for w_out in (np.zeros((40, 3)), np.ones((40, 3))):
        tie = rc_tie(w_in, w_out, jax.random.key(0), 50)
        assert tie.z == 0.0 and tie.p == 1.0 and tie.shuffled_sd == 0.0, tie
        json.dumps(tie.to_dict(), allow_nan=False)
    s = np.linalg.norm(w_in, axis=0)
    tied = rc_tie(w_in, s[:, None] * np.ones((40, 3)), jax.random.key(0), 50)
    assert np.isfinite(tied.z) and tied.z > 3 and tied.p <= 0.05, tied


def test_controls_are_shape_preserving_transforms() -> None:
    w = jnp.arange(12.0).reshape(3, 4)
    r = resample_entries_iid(w, jax.random.key(0))
    assert r.shape == w.shape and set(np.asarray(r).ravel()) <= set(np.asarray(w).ravel())
    p = permute_columns(w, jax.random.key(0))
    assert sorted(map(tuple, np.asarray(p))) == sorted(map(tuple, np.asarray(w)))
    a, b, c = resample_units(w, jnp.arange(4.0), w.T, jax.random.key(2), num=8, replace=True)
    assert a.shape == (3, 8) and b.shape == (8,) and c.shape == (8, 3)
    assert np.allclose(c, a.T * 0.5)  # whole units, outgoing scaled by n / N
    with pytest.raises(ValueError):
        resample_units(w, jnp.arange(4.0), w.T, jax.random.key(2), num=8)


# --------------------------------------------------------------------------- trained network


def test_rc_tie_on_a_trained_mlp(small: Small) -> None:
    L = small.params["layers"]
    for l in (1, 2):
        tie = rc_tie(L[l - 1]["kernel"], L[l]["kernel"], jax.random.key(l), 300)
        assert tie.paired > tie.shuffled_mean + 2 * tie.shuffled_sd, tie
        assert abs(tie.shuffled_mean) < 3 / np.sqrt(tie.n) / 2, tie
        assert tie.shuffled_sd == pytest.approx(1 / np.sqrt(tie.n - 1), rel=0.3)


def test_negative_controls_destroy_the_loss_unit_moves_keep_it(small: Small) -> None:
    p, L = small.params, small.params["layers"]
    loss = _xent(small.fwd(p, small.x), small.y)
    init = _xent(small.fwd(small.init, small.x), small.y)
    assert loss < 0.6 * init
    w2 = L[1]["kernel"]
    for bad in (
        resample_entries_iid(w2, jax.random.key(0)),
        permute_columns(w2, jax.random.key(1)),
    ):
        assert _xent(small.fwd(_with_layer(p, 1, kernel=bad), small.x), small.y) >= 0.5 * init
    a, b, c = resample_units(L[0]["kernel"], L[0]["bias"], w2, jax.random.key(3))
    moved = _with_layer(_with_layer(p, 0, kernel=a, bias=b), 1, kernel=c)
    assert abs(_xent(small.fwd(moved, small.x), small.y) - loss) <= 1e-5 * max(1.0, loss)


# --------------------------------------------------------------------------- grow analyze


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory):
    ds = load_dataset("mnist1d")
    cfg = get_family("mlp").config(input_dim=ds.input_dim, hidden=(16, 16), num_classes=10)
    out = tmp_path_factory.mktemp("ckpt") / "mlp"
    path, _ = train_model(out, "mlp", cfg, TrainConfig(steps=150, eval_every=150), progress=False)
    return path


def test_analyze_checkpoint_end_to_end(tiny_ckpt, tmp_path) -> None:
    out = tmp_path / "analysis"
    r = analyze_checkpoint(tiny_ckpt, out, draws=3, factors=(2, 4, 8), num_shuffles=50,
                           fpr_trials=5)
    assert {"test_loss", "rc_tie", "controls", "lln", "family", "sizes"} <= set(r)
    assert set(r["rc_tie"]) == {"h1", "h2"}
    c = r["controls"]
    assert abs(c["unit_permutation"] - r["test_loss"]) <= 1e-5 * max(1.0, r["test_loss"])
    assert min(c["entry_iid"], c["column_permutation"]) > r["test_loss"]
    lln = r["lln"]
    assert lln["widths"] == [32, 64, 128] and len(lln["logit_sd"]) == 3
    assert max(abs(g) for g in lln["balanced_gap"]) < 1e-4
    assert lln["sd_fit"]["slope"] < 0
    assert sorted(p.name for p in out.iterdir()) == ["analysis.json", "analysis.png"]
    saved = json.loads((out / "analysis.json").read_text())
    assert saved["test_loss"] == pytest.approx(r["test_loss"])
    text = format_report(r)
    assert "RC tie" in text and "slope of sd of logits" in text
    # rewriting into an existing directory replaces the files, leaves no temp dirs behind
    analyze_checkpoint(tiny_ckpt, out, draws=2, factors=(2, 4, 8), num_shuffles=10,
                       fpr_trials=2)
    assert [p.name for p in tmp_path.iterdir()] == ["analysis"]


def test_rc_tie_permutation_test_is_calibrated() -> None:
    """Under H0 (independent Gaussian layers) the tie test rejects at about its level."""
    from growth.apps.analyze.verdicts import tie_false_positive_rate

    fpr = tie_false_positive_rate([(10, 24, 6)], jax.random.key(3), trials=100, num_shuffles=99)
    assert fpr <= 0.12, fpr  # level 0.05; 100 trials: sd 0.022


def test_analyze_verdicts_positive_control_and_exit_code(tiny_ckpt, tmp_path) -> None:
    """The positive control passes on the trained MLP and fails on its destroyed copy (exit 0);
    on an untrained network of the same config it fails (exit 1)."""
    r = analyze_checkpoint(tiny_ckpt, draws=4, factors=(2, 4, 8), num_shuffles=50, fpr_trials=5)
    v = r["verdicts"]
    assert v["positive_control"]["trained"]["passed"], v["positive_control"]
    assert not v["positive_control"]["destroyed"]["passed"]
    assert all(i["kind"] == "identity" and i["verdict"] == "holds"
               for i in v["identities"].values())  # fmt: skip
    assert set(v["rc_tie"]) == {"h1", "h2"} and 0 <= v["rc_tie_false_positive_rate"] <= 1
    assert r["exit_code"] == 0 and "positive control" in format_report(r)
    model, meta, cfg = load_model(tiny_ckpt)
    from growth.formats.checkpoint import save_checkpoint

    init = params_of(init_model("mlp", cfg, seed=5))
    save_checkpoint(tmp_path / "untrained", init, meta)
    u = analyze_checkpoint(tmp_path / "untrained", draws=4, factors=(2, 4, 8), num_shuffles=50,
                           fpr_trials=2)
    assert not u["verdicts"]["positive_control"]["trained"]["passed"]
    assert u["exit_code"] == 1


def test_analyze_bad_input(tmp_path, tiny_ckpt, capsys) -> None:
    with pytest.raises(CheckpointError):
        analyze_checkpoint(tmp_path / "missing")
    with pytest.raises(GrowthError):
        analyze_checkpoint(tiny_ckpt, draws=1)
    with pytest.raises(GrowthError):
        analyze_checkpoint(tiny_ckpt, factors=(2, 4))
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
