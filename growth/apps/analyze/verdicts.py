"""Verdicts of ``grow analyze``: every diagnostic states its null hypothesis, a calibrated
threshold (permutation or bootstrap) and a verdict; checks that hold by construction are
labelled identities, not evidence.

- RC tie (per space), a *test*: H0 "a unit's incoming and outgoing norms are independent (the
  pairing is exchangeable)"; two-sided permutation p-value (``theory.ansatz.rc_tie``), reject at
  ``p <= ALPHA``. Its false-positive rate is measured on i.i.d. Gaussian matrices of the same
  shapes, where H0 holds exactly.
- positive control "units carry the function, entries do not", a *test*: H0 "resampling whole
  units (iid growth of the space to ``k n``, unbiased) is no better than resampling entries".
  Statistic: paired differences ``loss(entrywise) - loss(units)`` over draws; reject H0 (pass)
  when the bootstrap lower ``1 - ALPHA`` bound of their mean is > 0. It must pass on the trained
  network and fail on a destroyed copy (the space's outgoing kernel resampled entrywise); the
  rate at which destroyed copies pass is its measured false-positive rate.
- identities (hold for any weights, so they are checks of the code, not evidence): whole-unit
  permutation keeps the loss; balanced (copy) growth keeps it.
- the LLN slope of the logits' spread is a property of sampling from *any* measure (an
  untrained network gives the same -1/2), so it is reported as a consistency check of the
  sampler, not as evidence of trained structure.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from growth.engine import grow
from growth.methods import Method
from theory.ansatz import rc_tie, resample_entries_iid

ALPHA = 0.05
IDENTITY_TOL = 1e-5  # relative loss change allowed for an identity (float32 rounding)
IID_WIDTH = Method(
    sampler="iid", scaling="unbiased", symmetry="none", depth="duplicate", name="iid"
)
BALANCED = Method(sampler="balanced", scaling="exact", symmetry="none", name="copy")


def tie_verdict(tie: dict) -> dict:
    """The RC-tie test of one space from ``RCTie.to_dict()``."""
    return {
        "kind": "test",
        "null": "incoming and outgoing unit norms are independent (pairing exchangeable)",
        "threshold": f"permutation p <= {ALPHA}",
        "p": tie["p"],
        "verdict": "tie" if tie["p"] <= ALPHA else "no tie",
    }


def tie_false_positive_rate(shapes: list[tuple[int, int, int]], key: jax.Array,
                            trials: int = 40, num_shuffles: int = 200) -> float:  # fmt: skip
    """Fraction of i.i.d. Gaussian ``(fan_in, n, fan_out)`` layers (H0 true) the tie test
    rejects, over ``trials`` draws per shape."""
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    hits, total = 0, 0
    for i, (fi, n, fo) in enumerate(shapes):
        for t in range(trials):
            w_in, w_out = rng.standard_normal((fi, n)), rng.standard_normal((n, fo))
            k = jax.random.fold_in(key, 1000 * i + t)
            hits += rc_tie(w_in, w_out, k, num_shuffles).p <= ALPHA
            total += 1
    return hits / max(total, 1)


def bootstrap_lower(diffs: np.ndarray, key: int, reps: int = 2000) -> float:
    """Lower ``1 - ALPHA`` percentile-bootstrap bound of the mean of ``diffs``."""
    rng = np.random.default_rng(key)
    idx = rng.integers(0, len(diffs), (reps, len(diffs)))
    return float(np.quantile(diffs[idx].mean(1), ALPHA))


def unit_control(loss_units: Callable[[int], float], loss_entries: Callable[[int], float],
                 draws: int, seed: int) -> dict:  # fmt: skip
    """The positive control on one network: ``draws`` paired draws ``d`` of
    ``loss_entries(d) - loss_units(d)``; passes when their bootstrap lower bound is > 0."""
    diffs = np.asarray([loss_entries(d) - loss_units(d) for d in range(draws)])
    lower = bootstrap_lower(diffs, seed)
    return {
        "mean_difference": float(diffs.mean()),
        "lower_bound": lower,
        "passed": bool(lower > 0),
    }


def identity(name: str, value: float, reference: float) -> dict:
    """An identity: ``value`` must equal ``reference`` to float32 rounding (else a bug)."""
    gap = abs(value - reference) / max(1.0, abs(reference))
    return {
        "kind": "identity",
        "what": name,
        "relative_gap": gap,
        "threshold": f"<= {IDENTITY_TOL:g} (holds by construction; not evidence)",
        "verdict": "holds" if gap <= IDENTITY_TOL else "violated",
    }


def exit_code(verdicts: dict) -> int:
    """0 when the positive control passes on the network and fails on its destroyed copy and
    every identity holds; else 1."""
    pc = verdicts["positive_control"]
    ok = pc["trained"]["passed"] and not pc["destroyed"]["passed"]
    ok = ok and all(v["verdict"] == "holds" for v in verdicts["identities"].values())
    return 0 if ok else 1


def space_control(params: dict, spec, error: Callable[[dict], float], *, space: str, n: int,
                  leaf: tuple[str, str], draws: int, seed: int,
                  k: int = 8) -> tuple[dict, dict]:  # fmt: skip
    """The positive control and the balanced-growth identity of one width ``space`` (size
    ``n``; ``params[leaf[0]][leaf[1]]`` its outgoing kernel, every layer stacked) under
    ``error(params) -> float`` (0 = the source's function).

    Control: whole-unit resampling (iid growth of ``space`` to ``k n``, unbiased) vs entrywise
    resampling of the outgoing kernel, on ``params`` and on a destroyed copy (that kernel
    resampled entrywise). Identity: balanced (copy) growth to ``2 n`` keeps ``error`` at 0.
    Returns ``(positive_control, balanced_identity)``."""
    key = jax.random.key(seed + 101)
    group, name = leaf

    def resampled(p: dict, salt: int) -> dict:
        w = resample_entries_iid(p[group][name], jax.random.fold_in(key, salt))
        return {**p, group: {**p[group], name: np.asarray(w)}}

    def run(p: dict, salt: int) -> dict:
        def units(d: int) -> float:
            g, _ = grow(p, spec, width={space: k * n}, method=IID_WIDTH,
                        key=jax.random.fold_in(key, 10_000 * salt + d))  # fmt: skip
            return error(jax.tree_util.tree_map(np.asarray, g))

        return unit_control(units, lambda d: error(resampled(p, 10_000 * salt + 5000 + d)),
                            draws, seed + salt)  # fmt: skip

    control = {
        "kind": "test",
        "space": space,
        "null": f"whole-unit resampling of {space} (iid growth to {k} n) keeps the function "
        f"no better than entrywise resampling of {name}",
        "threshold": f"bootstrap lower {1 - ALPHA:.0%} bound of mean(err_entries - "
        "err_units) > 0",
        "trained": run(params, 0),
        "destroyed": run(resampled(params, 99), 1),
    }
    balanced, _ = grow(params, spec, width={space: 2 * n}, method=BALANCED, key=seed)
    same = identity(f"balanced (copy) growth of {space} keeps the function",
                    error(jax.tree_util.tree_map(np.asarray, balanced)), 0.0)  # fmt: skip
    return control, same
