"""The grown-vs-scratch protocol (growth.apps.demo.protocol): the budget speed-up's bisection
finds the smallest budget of the grid that reaches the target, probes only what it needs, and
reports None when the arm never reaches the target."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from growth.apps.demo.protocol import BUDGET_FRACTIONS, best_of_sweep, budget_grid, budget_speedup
from growth.tasks.train import History


def _hist(loss: float) -> History:
    return History(steps=[0, 1], test_loss=[9.0, loss], test_acc=[0.0, 0.0], train_loss=[loss])


def _arm(loss_at: dict[int, float], calls: list):
    """A fake arm: its final loss at budget b and LR lr is loss_at[b] (+ a penalty off LR 0.03)."""

    def run(lr: float, b: int) -> History:
        calls.append((lr, b))
        return _hist(loss_at[b] + (0.0 if lr == 0.03 else 0.1))

    return run


def test_budget_grid_is_increasing_and_ends_at_the_budget():
    assert budget_grid(1000) == [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
    assert budget_grid(5) == [1, 2, 3, 4, 5]  # fractions that round alike are probed once
    assert budget_grid(1, BUDGET_FRACTIONS) == [1]


@given(
    losses=st.lists(st.floats(0.0, 5.0), min_size=10, max_size=10),
    target=st.floats(0.0, 5.0),
)
def test_bisection_finds_the_smallest_reaching_budget(losses, target):
    grid = budget_grid(1000)
    loss_at = dict(zip(grid, sorted(losses, reverse=True), strict=True))  # non-increasing
    calls: list = []
    r = budget_speedup(_arm(loss_at, calls), (0.01, 0.03), steps=1000, target=target,
                       full_loss=loss_at[1000])  # fmt: skip
    reaching = [b for b in grid if loss_at[b] <= target]
    if not reaching:  # must-fail side: an arm that never reaches the target has no speed-up
        assert r["budget_steps"] is None and r["budget_speedup"] is None and not calls
        return
    assert r["budget_steps"] == reaching[0]
    assert r["budget_speedup"] == pytest.approx(1000 / reaching[0])
    assert len({b for _, b in calls}) <= 4  # bisection over 9 inner budgets: <= 4 probes
    for b, sweep in r["budget_probes"].items():  # each probe took its best LR of the sweep
        assert sweep["lr"] == 0.03 and set(sweep["final_test_loss"]) == {"0.01", "0.03"}
        assert (loss_at[int(b)] <= target) == (int(b) >= reaching[0])


def test_charged_speedup_adds_the_small_models_cost():
    grid = budget_grid(1000)
    loss_at = {b: (1.0 if b < 500 else 0.1) for b in grid}
    r = budget_speedup(_arm(loss_at, []), (0.03,), steps=1000, target=0.5, full_loss=0.1,
                       small_cost=250.0)  # fmt: skip
    assert r["budget_steps"] == 500 and r["budget_speedup"] == 2.0
    assert r["budget_speedup_charging_small_model"] == pytest.approx(1000 / 750)


def test_best_of_sweep_takes_the_lowest_final_loss():
    hist, sweep = best_of_sweep(lambda lr: _hist(abs(lr - 0.02)), (0.01, 0.03, 0.1))
    assert sweep["lr"] in (0.01, 0.03) and hist.test_loss[-1] == pytest.approx(0.01)
    assert sweep["final_test_loss"]["0.1"] == pytest.approx(0.08)


def test_scratch_config_is_the_muP_model_without_a_methods_stream_scale():
    """The rival of a grown decoder: muP's readout multiplier for its width (n/N, as a copy-grown
    model has) and the family's eps; plastic's grown config (readout / a, eps a^2) is not it."""
    from flax import nnx

    from growth.apps.demo.protocol import scratch_config
    from growth.engine import plan_growth
    from growth.models import get_family, grown_config, params_of
    from growth.models.decoder import Decoder, DecoderConfig

    c = DecoderConfig(vocab=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=16,
                      max_len=8, tied=True)  # fmt: skip
    p = params_of(Decoder(c, rngs=nnx.Rngs(0)))
    width, depth = {"d": 16, "ff": 32, "kv": 2}, {"blocks": 2}
    rival = scratch_config("decoder", c, p, width=width, depth=depth)
    assert (rival.d_model, rival.d_ff, rival.n_layers) == (16, 32, 2)
    assert rival.readout_mult == pytest.approx(c.readout_mult * 8 / 16) and rival.eps == c.eps
    plan = plan_growth(p, get_family("decoder").spec(c), width=width, depth=depth,
                       method="plastic")  # fmt: skip
    grown = grown_config("decoder", c, plan)
    assert grown.readout_mult == pytest.approx(rival.readout_mult / 0.1)  # the stream scale's
    assert grown.eps == pytest.approx(rival.eps * 0.01)


@given(
    st.lists(st.floats(0.01, 5.0), min_size=2, max_size=8, unique=True),
    st.floats(0.0, 6.0),
)
def test_crossing_step_is_where_the_interpolated_curve_meets_the_level(losses, level):
    """plasticity_diagnostics.crossing_step on a decreasing curve: the interpolated step lies
    between the two grid steps around the level and the linear interpolant there equals it."""
    from experiments.plasticity_diagnostics import crossing_step

    losses = sorted(losses, reverse=True)
    finals = {100 * (i + 1): v for i, v in enumerate(losses)}
    got = crossing_step(finals, level)
    if level >= losses[0]:
        assert got == {"at_most": 100}
    elif level < losses[-1]:
        assert got == {"more_than": 100 * len(losses)}
    else:
        s = got["steps"]
        i = next(i for i, v in enumerate(losses) if v <= level)  # first grid point at/below
        lo, hi = 100 * i, 100 * (i + 1)
        assert lo < s <= hi
        interp = losses[i - 1] + (losses[i] - losses[i - 1]) * (s - lo) / 100
        assert interp == pytest.approx(level, abs=1e-9)
