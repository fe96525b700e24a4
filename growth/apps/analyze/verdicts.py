"""Verdicts of ``grow analyze``: every diagnostic states its null hypothesis, a calibrated
threshold (permutation or bootstrap) and a verdict; checks that hold by construction are
labelled identities, not evidence.

- RC tie (per space), a *test*: H0 "a unit's incoming and outgoing norms are independent (the
  pairing is exchangeable)"; two-sided permutation p-value (``theory.ansatz.rc_tie``), reject at
  ``p <= ALPHA``. Its false-positive rate is measured on i.i.d. Gaussian matrices of the same
  shapes, where H0 holds exactly.
- positive control "units carry the function, entries do not", a *test*: H0 "resampling whole
  units (iid growth of the space to ``k n``, unbiased) is no better than resampling entries".
  Statistic: paired differences ``err(entrywise) - err(units)`` over draws; reject H0 (pass)
  when the bootstrap lower ``1 - ALPHA`` bound of their mean is > 0. It must pass on the
  network and fail on destroyed copies (the space's outgoing kernel resampled entrywise, a
  fresh copy in every draw, so the bound covers the spread across copies); the fraction of
  independent destroyed arms that pass is its measured false-positive rate
  (:func:`positive_control`, shared by the MLP, BERT and decoder paths).
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
from growth.errors import GrowthError
from growth.methods import Method
from theory.ansatz import rc_tie, resample_entries_iid

ALPHA = 0.05
FPR_MAX = 0.25  # destroyed arms may pass at most this often (1 of the default 4)
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
    """0 when the positive control passes on the network, destroyed copies pass it at a rate
    ``<= FPR_MAX`` and every identity holds; else 1."""
    pc = verdicts["positive_control"]
    ok = pc["trained"]["passed"] and pc["false_positive_rate"] <= FPR_MAX
    ok = ok and all(v["verdict"] == "holds" for v in verdicts["identities"].values())
    return 0 if ok else 1


def _at(params: dict, path: tuple) -> np.ndarray:
    for k in path:
        params = params[k]
    return params


def _with(params: dict, path: tuple, value) -> dict:
    """Copy of ``params`` (copying only the dicts on ``path``) with the leaf at ``path``
    replaced."""
    if not path:
        return value
    return {**params, path[0]: _with(params[path[0]], path[1:], value)}


def _destroyed(params: dict, leaf: tuple, key: jax.Array) -> dict:
    """``params`` with the leaf at ``leaf`` resampled entrywise from its pooled histogram."""
    return _with(params, leaf, np.asarray(resample_entries_iid(_at(params, leaf), key)))


def positive_control(params: dict, spec, error: Callable[[dict], float], *, space: str,
                     n: int, leaf: tuple, draws: int, seed: int, k: int = 8,
                     repeats: int = 4) -> dict:  # fmt: skip
    """The positive control "units carry the function, entries do not" of one width ``space``
    (size ``n``; ``leaf`` the path of its outgoing kernel in ``params``, every layer stacked)
    under ``error(params) -> float`` (lower is better; grown params are passed as they are).

    One draw ``d`` of a network ``p``: ``D_d = error(E_d(p)) - error(U_d(p))`` with ``U_d`` iid
    growth of ``space`` to ``k n`` (unbiased, whole units) and ``E_d`` entrywise resampling of
    ``leaf``. The test passes when the bootstrap lower ``1 - ALPHA`` bound of
    ``mean_d D_d`` over ``draws`` draws is > 0 (:func:`bootstrap_lower`).

    - ``trained``: ``p = params`` in every draw (the variability is the resampling's);
    - ``destroyed``: a fresh destroyed copy ``p_d`` (``leaf`` resampled entrywise) in every
      draw, so the bound covers the variability across destroyed copies as well; a copy's
      units are i.i.d. entries already, so H0 holds there (measured mean ``D`` ~ 0 or below);
    - ``false_positive_rate``: the fraction of ``repeats`` independent destroyed arms (the
      first is ``destroyed``) that pass -- the test's measured rate of passing under H0.
    """
    if draws < 2 or repeats < 1:
        raise GrowthError(f"positive control: draws={draws}, repeats={repeats}; need draws >= 2 "
                          "and repeats >= 1")  # fmt: skip
    key = jax.random.key(seed + 101)

    def diff(p: dict, salt: int) -> float:
        g, _ = grow(p, spec, width={space: k * n}, method=IID_WIDTH,
                    key=jax.random.fold_in(key, 3 * salt))  # fmt: skip
        units = error(jax.tree_util.tree_map(np.asarray, g))
        return error(_destroyed(p, leaf, jax.random.fold_in(key, 3 * salt + 1))) - units

    def arm(diffs: list[float], salt: int) -> dict:
        d = np.asarray(diffs)
        lower = bootstrap_lower(d, seed + salt)
        return {"mean_difference": float(d.mean()), "lower_bound": lower,
                "passed": bool(lower > 0)}  # fmt: skip

    trained = arm([diff(params, d) for d in range(draws)], 0)
    destroyed = []
    for r in range(repeats):
        salts = [draws * (r + 1) + d for d in range(draws)]
        copies = [_destroyed(params, leaf, jax.random.fold_in(key, 3 * s + 2)) for s in salts]
        destroyed.append(arm([diff(c, s) for c, s in zip(copies, salts, strict=True)], r + 1))
    return {
        "kind": "test",
        "space": space,
        "null": f"whole-unit resampling of {space} (iid growth to {k} n) keeps the function "
        f"no better than entrywise resampling of {leaf[-1]}",
        "threshold": f"bootstrap lower {1 - ALPHA:.0%} bound of mean(err_entries - "
        f"err_units) over {draws} draws > 0",
        "trained": trained,
        "destroyed": destroyed[0],
        "destroyed_repeats": repeats,
        "false_positive_rate": float(np.mean([a["passed"] for a in destroyed])),
        "max_false_positive_rate": FPR_MAX,
    }


def balanced_identity(params: dict, spec, error: Callable[[dict], float], *, space: str,
                      n: int, seed: int) -> dict:  # fmt: skip
    """Identity: balanced (copy) growth of ``space`` to ``2 n`` keeps ``error`` at 0."""
    balanced, _ = grow(params, spec, width={space: 2 * n}, method=BALANCED, key=seed)
    return identity(f"balanced (copy) growth of {space} keeps the function",
                    error(jax.tree_util.tree_map(np.asarray, balanced)), 0.0)  # fmt: skip
