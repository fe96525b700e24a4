"""The law-of-large-numbers fit of ``grow analyze``, shared by the MLP and BERT paths: iid
growth (``sampler='iid', scaling='unbiased'``) of some width spaces to ``k n`` for several k,
``draws`` draws each, measured by a caller's ``measure(params) -> (gap, output)``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np

from growth.apps.analyze.verdicts import BALANCED, IID_WIDTH
from growth.engine import grow
from growth.errors import GrowthError
from theory.ansatz import loglog_slope


def check_sampling(draws: int, factors: Sequence[int]) -> list[int]:
    """``factors`` sorted and deduplicated; GrowthError unless draws >= 2 and there are >= 3
    distinct factors >= 1."""
    if draws < 2:
        raise GrowthError(f"draws={draws}: need >= 2 draws per width for a spread")
    factors = sorted({int(k) for k in factors})
    if len(factors) < 3 or factors[0] < 1:
        raise GrowthError(f"factors={factors}: need >= 3 distinct positive growth factors")
    return factors


def iid_lln(params: dict, spec, measure: Callable[[dict], tuple[float, np.ndarray]],
            sizes: Mapping[str, int], factors: Sequence[int], draws: int, key: jax.Array,
            seed: int, sd_key: str) -> dict:  # fmt: skip
    """Per factor k: every space of ``sizes`` (space -> source size n) grown to ``k n``, iid
    (``draws`` draws, keys ``fold_in(key, 1000 k + d)``) and balanced (copy, key ``seed``).

    ``measure(p) -> (gap, output)``: the gap of ``p`` to the source (0 = same) and its output
    array. Per k (``N = k n`` of the first space): ``mean_abs_gap`` = mean |gap|, ``gap_sd``,
    ``sd_key`` = the outputs' draw-to-draw sd (mean over entries), ``balanced_gap``; and the
    log-log fits of ``mean_abs_gap`` (``gap_fit``) and of ``sd_key`` (``sd_fit``) against N."""
    first = next(iter(sizes))
    widths, mean_gap, gap_sd, out_sd, balanced = [], [], [], [], []
    for k in factors:
        target = {s: k * n for s, n in sizes.items()}
        gaps, outs = [], []
        for d in range(draws):
            g, _ = grow(params, spec, width=target, method=IID_WIDTH,
                        key=jax.random.fold_in(key, 1000 * k + d))  # fmt: skip
            gap, out = measure(jax.tree_util.tree_map(np.asarray, g))
            gaps.append(gap)
            outs.append(np.asarray(out))
        b, _ = grow(params, spec, width=target, method=BALANCED, key=seed)
        widths.append(target[first])
        mean_gap.append(float(np.mean(np.abs(gaps))))
        gap_sd.append(float(np.std(gaps, ddof=1)))
        out_sd.append(float(np.std(np.stack(outs), axis=0, ddof=1).mean()))
        balanced.append(measure(jax.tree_util.tree_map(np.asarray, b))[0])
    return {
        "spaces": list(sizes),
        "factors": list(factors),
        "widths": widths,
        "draws": draws,
        "mean_abs_gap": mean_gap,
        "gap_sd": gap_sd,
        sd_key: out_sd,
        "balanced_gap": balanced,
        "gap_fit": loglog_slope(widths, np.maximum(mean_gap, 1e-12)).to_dict(),
        "sd_fit": loglog_slope(widths, np.maximum(out_sd, 1e-12)).to_dict(),
    }
