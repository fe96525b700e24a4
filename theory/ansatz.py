"""Diagnostics of the RC (row-column) ansatz on plain arrays: unit types, the cross-layer tie,
negative controls and log-log fits (theory notes T3, T6, T7, T11).

Pure functions on arrays: no models, no I/O. Conventions follow Flax: a dense kernel is stored
``[fan_in, fan_out]``, so hidden unit ``i`` of a layer owns **column** ``i`` of its incoming
kernel ``w_in [fan_in, n]``, entry ``i`` of its bias ``b_in [n]`` and **row** ``i`` of its
outgoing kernel ``w_out [n, fan_out]``. In the mean-field picture the layer is the empirical
measure ``mu_n = (1/n) sum_i delta_{(w_in[:, i], b_in[i], w_out[i, :])}`` over units; the RC
ansatz says the trained weights are (close to) i.i.d. draws of whole units from a width-free law,
so the incoming and outgoing parts of a unit are *tied* (dependent), while entries are not
exchangeable across units.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from scipy import stats

__all__ = [
    "RCTie",
    "SlopeFit",
    "loglog_slope",
    "permute_columns",
    "rc_tie",
    "resample_entries_iid",
    "resample_units",
    "spearman",
    "unit_features",
]


def unit_features(acts: ArrayLike, standardize: bool = False, eps: float = 1e-8) -> jax.Array:
    """Width-free unit types: each unit's activations on a fixed probe batch.

    ``acts [B, n]`` (B probe inputs, n units of one hidden layer) -> ``[n, B]``: row ``i`` is
    ``phi_i = (h_i(x_1), ..., h_i(x_B))``, a point in ``R^B`` whatever the layer's fan-in, so
    layers of different widths are compared as point clouds in the same space (DESIGN 2.7).
    ``standardize=True`` z-scores each unit over the probes,
    ``(phi_i - mean_b phi_i) / (sd_b phi_i + eps)`` (dead units map to ~0).
    """
    a = jnp.asarray(acts)
    if a.ndim != 2:
        raise ValueError(f"acts must be [batch, units], got shape {a.shape}")
    f = a.T
    if standardize:
        f = (f - f.mean(1, keepdims=True)) / (f.std(1, keepdims=True) + eps)
    return f


def _ranks(x: np.ndarray) -> np.ndarray:
    return stats.rankdata(x, axis=-1).astype(np.float64)


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of ``a [n]`` with each row of ``b [S, n]`` -> ``[S]`` (0 if constant)."""
    a = a - a.mean()
    b = b - b.mean(-1, keepdims=True)
    den = np.sqrt((a * a).sum() * (b * b).sum(-1))
    return np.where(den > 0, (b @ a) / np.where(den > 0, den, 1.0), 0.0)


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman rank correlation of two ``[n]`` vectors (average ranks for ties)."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if x.shape != y.shape or x.size < 2:
        raise ValueError(
            f"spearman needs two vectors of equal length >= 2, got {x.shape} {y.shape}"
        )
    return float(_pearson_rows(_ranks(x), _ranks(y)[None])[0])


class RCTie(NamedTuple):
    """Result of :func:`rc_tie`.

    paired: Spearman rho over units of ``(||w_in[:, i]||, ||w_out[i, :]||)``.
    shuffled_mean, shuffled_sd: mean and sd of rho with the pairing shuffled (null: no tie;
    mean ~ 0, sd ~ 1/sqrt(n - 1)).
    z: ``(paired - shuffled_mean) / shuffled_sd``.
    n: number of units.
    p: two-sided permutation p-value ``(1 + #{s: |rho_s| >= |rho|}) / (S + 1)`` of the null
    "the pairing of incoming and outgoing norms is exchangeable" (exact level: P(p <= a) <= a).
    """

    paired: float
    shuffled_mean: float
    shuffled_sd: float
    z: float
    n: int
    p: float = 1.0

    def to_dict(self) -> dict:
        return self._asdict()


def rc_tie(w_in: ArrayLike, w_out: ArrayLike, key: jax.Array, num_shuffles: int = 200) -> RCTie:
    """Cross-layer RC tie of one hidden layer (theory notes T7).

    ``w_in [fan_in, n]`` (incoming kernel, unit i = column i), ``w_out [n, fan_out]`` (outgoing
    kernel, unit i = row i). With ``a_i = ||w_in[:, i]||_2`` and ``c_i = ||w_out[i, :]||_2``:

        rho = Spearman(a, c),   rho_s = Spearman(a, c[perm_s]),  s = 1..S,
        z = (rho - mean_s rho_s) / sd_s rho_s.

    A trained network whose units are whole RC atoms has ``rho`` clearly away from the shuffled
    null (measured ~0.6, width-stable); the shuffled mean is ~0 (``|.| < 3/sqrt(n)``).

    Degenerate case: when every shuffle gives the same rho (``sd = 0``: one side's norms are
    all equal, e.g. a zeroed ``w_out``, so every rank correlation is 0) the pairing carries no
    information: ``z = 0`` and ``p = 1`` (never NaN, which JSON cannot hold).
    """
    w_in, w_out = np.asarray(w_in, np.float64), np.asarray(w_out, np.float64)
    if w_in.ndim != 2 or w_out.ndim != 2 or w_in.shape[1] != w_out.shape[0]:
        raise ValueError(
            f"rc_tie needs w_in [fan_in, n] and w_out [n, fan_out], got {w_in.shape} {w_out.shape}"
        )
    n = w_in.shape[1]
    if n < 3:
        raise ValueError(f"rc_tie needs at least 3 units, got {n}")
    if num_shuffles < 2:
        raise ValueError(f"num_shuffles must be >= 2, got {num_shuffles}")
    ra = _ranks(np.linalg.norm(w_in, axis=0))
    rc = _ranks(np.linalg.norm(w_out, axis=1))
    paired = float(_pearson_rows(ra, rc[None])[0])
    perms = np.asarray(
        jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, num_shuffles))
    )
    null = _pearson_rows(ra, rc[perms])
    mean, sd = float(null.mean()), float(null.std(ddof=1))
    if sd == 0:  # no spread under H0 (one side constant, e.g. a zeroed kernel): no evidence
        return RCTie(paired, mean, 0.0, 0.0, n, 1.0)
    p = (1 + int(np.sum(np.abs(null) >= abs(paired) - 1e-12))) / (num_shuffles + 1)
    return RCTie(paired, mean, sd, float((paired - mean) / sd), n, float(p))


# ---------------------------------------------------------------------------------------------
# negative controls (theory notes T6): transforms of weight arrays
# ---------------------------------------------------------------------------------------------


def resample_entries_iid(w: ArrayLike, key: jax.Array) -> jax.Array:
    """Entries of ``w`` (any shape) redrawn i.i.d. from their pooled empirical histogram.

    ``w'_{jk} ~ Unif{w_{ab}}`` independently: keeps the marginal law of the entries and destroys
    every unit structure (rows, columns and their tie). Same shape and dtype as ``w``.
    """
    w = jnp.asarray(w)
    return jax.random.choice(key, w.ravel(), w.shape, replace=True)


def permute_columns(w: ArrayLike, key: jax.Array, axis: int = 0) -> jax.Array:
    """Permute the unit index of one side of a matrix only: ``w'[i] = w[perm(i)]`` along
    ``axis``.

    With the default ``axis=0`` on an outgoing Flax kernel ``w_out [n, fan_out]`` this permutes
    the columns of the map ``W^{l+1}`` (the slots reading unit i) without moving the units'
    incoming weights: each unit keeps its marginal, but the row/column tie between layers is
    broken. (``axis=-1`` on an incoming kernel does the same from the other side.)
    """
    w = jnp.asarray(w)
    perm = jax.random.permutation(key, w.shape[axis])
    return jnp.take(w, perm, axis=axis)


def resample_units(
    w_in: ArrayLike,
    b_in: ArrayLike,
    w_out: ArrayLike,
    key: jax.Array,
    *,
    num: int | None = None,
    replace: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Resample whole units ``(w_in[:, i], b_in[i], w_out[i, :])``, keeping the tie.

    ``w_in [fan_in, n]``, ``b_in [n]``, ``w_out [n, fan_out]`` -> ``[fan_in, N]``, ``[N]``,
    ``[N, fan_out]`` with ``N = num`` (default ``n``). Unit ``j`` of the result is source unit
    ``pi(j)``; the outgoing rows are scaled by ``n / N`` so that the next layer's pre-activation
    ``sum_j w'_out[j] h'_j`` is an unbiased estimate of ``sum_i w_out[i] h_i``.

    ``replace=False`` (default; needs ``N <= n``) draws without replacement: at ``N = n`` a
    permutation of the units, which keeps the function exactly. ``replace=True`` draws i.i.d.
    from the empirical measure (bootstrap; S1 of the notes): unbiased with variance ``O(1/N)``
    for mean-field-scaled weights, but for SP/muP-trained sources the i.i.d. init component of
    the outgoing weights gives an O(1) error at ``N = n`` (DESIGN 2.7 caveat).
    """
    w_in, b_in, w_out = jnp.asarray(w_in), jnp.asarray(b_in), jnp.asarray(w_out)
    n = w_in.shape[-1]
    if b_in.shape != (n,) or w_out.shape[0] != n:
        raise ValueError(
            f"resample_units: w_in {w_in.shape}, b_in {b_in.shape}, w_out {w_out.shape} "
            "do not share the unit axis"
        )
    N = n if num is None else int(num)
    if N < 1 or (not replace and N > n):
        raise ValueError(f"resample_units: num={N} must be in 1..{n} without replacement")
    if replace:
        idx = jax.random.randint(key, (N,), 0, n)
    else:
        idx = jax.random.permutation(key, n)[:N]
    return w_in[:, idx], b_in[idx], w_out[idx] * (n / N)


# ---------------------------------------------------------------------------------------------
# log-log fits (theory notes T3, T11)
# ---------------------------------------------------------------------------------------------


class SlopeFit(NamedTuple):
    """Least-squares fit ``log y = intercept + slope * log x``.

    ci: 95% confidence interval of the slope (Student t with ``n - 2`` dof; ``(nan, nan)`` for
    ``n = 2``). stderr: standard error of the slope. n: number of points used.
    """

    slope: float
    intercept: float
    ci: tuple[float, float]
    stderr: float
    n: int

    def to_dict(self) -> dict:
        return {**self._asdict(), "ci": list(self.ci)}


def loglog_slope(x: ArrayLike, y: ArrayLike, level: float = 0.95) -> SlopeFit:
    """Slope of ``log y`` on ``log x`` by ordinary least squares, with a t confidence interval.

    ``x, y [m]`` positive. With ``u = log x``, ``v = log y``:
    ``slope = cov(u, v) / var(u)``, ``se = sqrt(RSS / (m - 2) / sum (u - mean u)^2)``,
    ``ci = slope -+ t_{(1 + level)/2, m-2} se``.
    """
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"loglog_slope needs x, y of equal length >= 2, got {x.shape} {y.shape}")
    if not (np.all(x > 0) and np.all(y > 0) and np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("loglog_slope needs finite positive x and y")
    u, v = np.log(x), np.log(y)
    du = u - u.mean()
    sxx = float(du @ du)
    if sxx == 0:
        raise ValueError("loglog_slope needs at least two distinct x")
    slope = float(du @ (v - v.mean()) / sxx)
    intercept = float(v.mean() - slope * u.mean())
    m = x.size
    if m > 2:
        rss = float(((v - intercept - slope * u) ** 2).sum())
        se = float(np.sqrt(rss / (m - 2) / sxx))
        t = float(stats.t.ppf(0.5 + level / 2, m - 2))
        ci = (slope - t * se, slope + t * se)
    else:
        se, ci = float("nan"), (float("nan"), float("nan"))
    return SlopeFit(slope, intercept, ci, se, m)
