"""``experiments.compare_methods`` on the demos' protocol: best LR of one sweep per arm, and the
budget speed-up ``T / B*`` (``growth.apps.demo.protocol.budget_speedup``) per method.

The wiring is checked with a scripted ``fit`` whose final loss is a known function of the budget
and the LR (so ``B*`` is known exactly), and end to end on a tiny real run.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from experiments._compare_report import aggregate, markdown, metrics
from experiments.compare_methods import grow_and_train, main, msg_ramp
from growth.models import get_family, init_model, params_of
from growth.tasks.train import History

RES = get_family("resmlp")
T = 100
BEST_LR = 0.03
TARGET = 0.5  # scratch's final loss at every budget and its best LR
#: final loss at its best LR after a ``budget``-step run, per arm
FINAL = {
    "scratch": lambda b: TARGET,
    "exact": lambda b: 1.0 - 0.007 * b,  # <= 0.5 from b = 71.4: B* = 80 on the default grid
    "msg": lambda b: 1.0 - 0.01 * b,  # <= 0.5 from b = 50: B* = 50
    "iid": lambda b: 0.9,  # never
}


def _scripted_fit(calls: list):
    """fit(model, desc, transform, lr, budget) -> History with final loss FINAL[desc](budget)
    (+ 0.2 off the best LR); records each call with the model's raw params."""

    def fit(model, desc, transform, lr, budget):
        calls.append((desc, lr, budget, transform, params_of(model)))
        final = FINAL[desc](budget) + (0.0 if lr == BEST_LR else 0.2)
        steps = [0, budget] if budget < T else [0, T // 2, T]
        losses = [1.0] * (len(steps) - 1) + [final]
        return History(steps, losses, [0.0] * len(steps), [final])

    return fit


def _grow_scripted(fractions, calls):
    cfg = RES.config(input_dim=6, width=4, hidden=8, depth=2, num_classes=3)
    small = init_model("resmlp", cfg, seed=0)
    small_hist = {"steps": [0, 10], "test_loss": [2.0, 1.0]}
    return grow_and_train(
        "resmlp", cfg, small_hist, params_of(small), _scripted_fit(calls),
        methods=("exact", "msg", "iid"), width={"d": 8, "h": 16}, depth={"blocks": 4}, seed=0,
        steps=T, lrs=(0.01, BEST_LR), fractions=fractions,
    )  # fmt: skip


def _same(a, b) -> bool:
    return all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_budget_speedup_per_method_finds_the_smallest_budget() -> None:
    from growth.apps.demo.protocol import BUDGET_FRACTIONS

    calls: list = []
    run = _grow_scripted(BUDGET_FRACTIONS, calls)
    assert run["exact"]["budget_steps"] == 80 and run["msg"]["budget_steps"] == 50
    assert run["iid"]["budget_steps"] is None and run["iid"]["budget_probes"] == {}
    assert run["exact"]["lr"] == run["scratch"]["lr"] == BEST_LR
    for name in ("exact", "msg"):
        probes = run[name]["budget_probes"]
        assert probes  # bisection probed budgets below T
        for b, sweep in probes.items():
            assert sweep["lr"] == BEST_LR  # each budget takes its own best LR of the sweep
            reached = sweep["final_test_loss"][str(BEST_LR)] <= TARGET
            assert reached == (int(b) >= run[name]["budget_steps"])
    # msg's mask ramps over min(recipe's 100, budget // 2) updates at every budget, T included
    msg_calls = [c for c in calls if c[0] == "msg"]
    assert {c[2] for c in msg_calls} >= {T, 50}
    for _, _, budget, transform, raw in msg_calls:
        half = msg_ramp(100, budget)
        assert half == budget // 2
        assert not _same(transform(raw, half - 1), transform(raw, half))  # still ramping
        assert _same(transform(raw, half), transform(raw, budget))  # fully open by half
    assert all(c[3] is None for c in calls if c[0] != "msg")

    m = metrics(run, ("exact", "msg", "iid"), batch=4, small_steps=10)
    fl_step, fl_small = 6 * run["n_large"] * 4, 6 * run["n_small"] * 4 * 10
    assert m["exact"]["budget_speedup"] == pytest.approx(T / 80)
    assert m["exact"]["budget_speedup_flops"] == pytest.approx(
        T * fl_step / (80 * fl_step + fl_small)
    )
    assert m["exact"]["budget_speedup_flops"] < m["exact"]["budget_speedup"]
    assert m["msg"]["budget_speedup"] == pytest.approx(2.0)
    assert m["iid"]["budget_speedup"] is None and m["iid"]["budget_speedup_flops"] is None
    table = markdown(aggregate([m]), 1)
    assert "budget speed-up" in table and "| 1.25 ± 0.00 |" in table


def test_no_budget_skips_the_probes_and_the_columns() -> None:
    calls: list = []
    run = _grow_scripted(None, calls)
    assert all(c[2] == T for c in calls)  # only whole-budget runs
    assert all("budget_steps" not in run[name] for name in ("exact", "msg", "iid"))
    m = metrics(run, ("exact", "msg", "iid"), batch=4, small_steps=10)
    assert "budget_speedup" not in m["exact"]
    assert "budget" not in markdown(aggregate([m]), 1)


def test_msg_ramp_fits_inside_short_budgets() -> None:
    assert msg_ramp(100, 1000) == 100 and msg_ramp(100, 60) == 30 and msg_ramp(100, 1) == 1


@pytest.mark.slow  # ~40 s: a real quick run (two methods, one seed)
def test_compare_methods_tiny_real_run_budget_keys(tmp_path) -> None:
    summary = main(["--quick", "--methods", "exact,iid", "--out", str(tmp_path)])
    (run,), (m,) = summary["runs"], summary["per_seed"]
    target = run["scratch"]["test_loss"][-1]
    steps = summary["config"]["steps"]
    for name in ("exact", "iid"):
        h, b = run[name], run[name]["budget_steps"]
        assert "budget_speedup" in m[name] and "budget_speedup_flops" in m[name]
        if b is None:  # not reached even by the whole run
            assert h["test_loss"][-1] > target and m[name]["budget_speedup"] is None
            continue
        final = h["test_loss"][-1] if b == steps else min(
            h["budget_probes"][str(b)]["final_test_loss"].values()
        )  # fmt: skip
        assert final <= target and m[name]["budget_speedup"] == pytest.approx(steps / b)
        below = [int(k) for k in h["budget_probes"] if int(k) < b]
        assert all(
            min(h["budget_probes"][str(k)]["final_test_loss"].values()) > target for k in below
        )
    assert "budget speed-up" in (tmp_path / "table.md").read_text()
