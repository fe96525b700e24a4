"""``grow analyze``: RC-ansatz diagnostics of a trained MLP / residual-MLP checkpoint.

On the checkpoint's dataset (test split) it measures (DESIGN 2.7, theory notes T3, T6, T7):

- the test loss of the checkpoint and of an untrained model of the same config (the "destroyed"
  reference);
- per hidden space, the cross-layer RC tie (:func:`theory.ansatz.rc_tie`);
- negative controls on one hidden matrix (the first hidden space's outgoing kernel): entrywise
  i.i.d. resampling from the pooled histogram and column-only permutation (both should destroy
  the loss) vs whole-unit permutation (keeps it exactly) and whole-unit bootstrap (keeps the RC
  structure; for SP/muP-trained sources it carries the O(1) init-component error of iid growth
  at k = 1, see the DESIGN 2.7 caveat);
- the law-of-large-numbers fit: iid growth (``sampler='iid', scaling='unbiased'``) of every
  non-normalised width space to ``k n`` for several k, ``draws`` draws each; fitted log-log slopes
  of ``E|loss_grown - loss|`` and of the draw-to-draw sd of the logits against N, with 95% CIs
  (expected: sd ~ N^-1/2; the gap ~ N^-1 for mean-field sources, while SP/muP sources keep an
  O(1/k) bias, so here the gap falls with k), next to the balanced (copy) growth gap (~0).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from growth.apps.analyze.verdicts import (
    ALPHA,
    BALANCED,
    IID_WIDTH,
    exit_code,
    identity,
    tie_false_positive_rate,
    tie_verdict,
    unit_control,
)
from growth.apps.commands import load_model
from growth.engine import grow
from growth.errors import GrowthError
from growth.models import get_family, init_model, model_from_params, params_of
from growth.tasks.data import load_dataset
from theory.ansatz import (
    loglog_slope,
    permute_columns,
    rc_tie,
    resample_entries_iid,
    resample_units,
)

__all__ = ["IID_WIDTH", "analyze_checkpoint", "format_report"]

SUPPORTED = ("mlp", "resmlp")

# a hidden unit's three parts as (leaf path, block index or None)
Part = tuple[tuple[Any, ...], int | None]


def _hidden_spaces(family: str, config: Any) -> dict[str, tuple[Part, Part, Part]]:
    """name -> (incoming kernel [fan_in, n], bias [n], outgoing kernel [n, fan_out])."""
    if family == "mlp":
        return {
            f"h{l}": ((("layers", l - 1, "kernel"), None), (("layers", l - 1, "bias"), None),
                      (("layers", l, "kernel"), None))
            for l in range(1, len(config.hidden) + 1)
        }  # fmt: skip
    return {f"h@block{b}": ((("w1",), b), (("b1",), b), (("w2",), b)) for b in range(config.depth)}


def _get(params: dict, part: Part) -> jax.Array:
    path, block = part
    x = params
    for k in path:
        x = x[k]
    return jnp.asarray(x if block is None else x[block])


def _set(params: dict, part: Part, value: jax.Array) -> dict:
    """Copy of ``params`` (copying only dicts on the path) with one part replaced."""
    path, block = part
    out = dict(params)
    node = out
    for k in path[:-1]:
        node[k] = dict(node[k])
        node = node[k]
    old = jnp.asarray(node[path[-1]])
    node[path[-1]] = value if block is None else old.at[block].set(value)
    return out


@functools.cache
def _forward(family: str, config: Any) -> Callable[[Any, jax.Array], jax.Array]:
    return jax.jit(lambda p, x: model_from_params(family, config, p)(x))


def _loss(logits: jax.Array, y: jax.Array) -> float:
    return float(optax.softmax_cross_entropy_with_integer_labels(logits, y).mean())


def _write_plot(path: Path, lln: dict, gap_label: str, sd_key: str, sd_label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    N = np.asarray(lln["widths"], float)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, label, fit in (
        ("mean_abs_gap", f"iid: {gap_label}", lln["gap_fit"]),
        (sd_key, f"iid: {sd_label}", lln["sd_fit"]),
    ):
        ax.loglog(N, lln[key], "o-", label=f"{label} (slope {fit['slope']:.2f})")
    bal = np.maximum(np.abs(np.asarray(lln["balanced_gap"], float)), 1e-9)
    ax.loglog(N, bal, "s--", label=f"balanced copy: {gap_label} (floored 1e-9)")
    ax.set_xlabel("grown width N (first space)")
    ax.set_ylabel("gap / spread")
    ax.set_title("LLN of iid growth")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(
    out_dir: str | os.PathLike,
    result: dict,
    *,
    gap_label: str = "E|loss gap|",
    sd_key: str = "logit_sd",
    sd_label: str = "sd of logits",
    plot: Callable[[Path, dict], None] | None = None,
) -> Path:
    """Write analysis.json + analysis.png (``plot(png_path, result)`` when given, else the LLN
    plot of ``result["lln"]``: its ``mean_abs_gap``, ``sd_key`` and ``balanced_gap`` against
    ``widths``) into a temp dir, then move them into ``out_dir``."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "analysis.json").write_text(json.dumps(result, indent=2) + "\n")
        if plot is not None:
            plot(tmp / "analysis.png", result)
        else:
            _write_plot(tmp / "analysis.png", result["lln"], gap_label, sd_key, sd_label)
        if not out.exists():
            os.rename(tmp, out)
        else:
            for name in ("analysis.json", "analysis.png"):
                os.replace(tmp / name, out / name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def analyze_checkpoint(
    path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    draws: int = 8,
    factors: Sequence[int] = (2, 4, 8, 16),
    num_shuffles: int = 200,
    fpr_trials: int = 40,
    seed: int = 0,
) -> dict:
    """RC-ansatz diagnostics of the MLP / resmlp checkpoint at ``path`` (see the module doc),
    with verdicts (:mod:`.verdicts`; ``fpr_trials`` null layers per space measure the RC-tie
    test's false-positive rate).

    draws: iid growth draws per width (>= 2). factors: growth factors k (>= 3 distinct, > 0),
    N = k n for every grown space. Returns a JSON-able dict; writes ``analysis.json`` and
    ``analysis.png`` to ``out_dir`` when given (atomically).
    """
    if draws < 2:
        raise GrowthError(f"draws={draws}: need >= 2 draws per width for a spread")
    factors = sorted({int(k) for k in factors})
    if len(factors) < 3 or factors[0] < 1:
        raise GrowthError(f"factors={factors}: need >= 3 distinct positive growth factors")
    model, meta, config = load_model(path)
    family = meta["family"]
    if family not in SUPPORTED:
        raise GrowthError(f"analyze: family {family!r} not supported; expected one of {SUPPORTED}")
    dataset = meta.get("dataset", "mnist1d")
    data = load_dataset(dataset)
    x, y = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    fam = get_family(family)
    params = params_of(model)
    fwd = _forward(family, config)
    logits = fwd(params, x)
    loss = _loss(logits, y)
    init_loss = _loss(fwd(params_of(init_model(family, config, seed=seed)), x), y)
    key = jax.random.key(seed)
    k_tie, k_ctl, k_grow = jax.random.split(key, 3)

    # RC tie per hidden space
    spaces = _hidden_spaces(family, config)
    ties = {}
    for i, (name, (w_in, _, w_out)) in enumerate(spaces.items()):
        tie = rc_tie(_get(params, w_in), _get(params, w_out), jax.random.fold_in(k_tie, i),
                     num_shuffles)  # fmt: skip
        ties[name] = tie.to_dict()

    # negative controls on the first hidden space's outgoing kernel
    ctl_space = next(iter(spaces))
    p_in, p_b, p_out = spaces[ctl_space]
    ks = jax.random.split(k_ctl, 4)
    w_in, b_in, w_out = _get(params, p_in), _get(params, p_b), _get(params, p_out)

    def with_unit(new: tuple) -> dict:
        p = _set(params, p_in, new[0])
        return _set(_set(p, p_b, new[1]), p_out, new[2])

    controls = {
        "space": ctl_space,
        "init_loss": init_loss,
        "entry_iid": _loss(fwd(_set(params, p_out, resample_entries_iid(w_out, ks[0])), x), y),
        "column_permutation": _loss(fwd(_set(params, p_out, permute_columns(w_out, ks[1])), x), y),
        "unit_permutation": _loss(fwd(with_unit(resample_units(w_in, b_in, w_out, ks[2])), x), y),
        "unit_bootstrap": _loss(
            fwd(with_unit(resample_units(w_in, b_in, w_out, ks[3], replace=True)), x), y
        ),
    }

    spec = fam.spec(config)
    resolved = spec.resolve(params)
    shapes = [(int(_get(params, a).shape[0]), int(_get(params, a).shape[1]),
               int(_get(params, c).shape[1])) for a, _, c in spaces.values()]  # fmt: skip
    verdicts = {
        "rc_tie": {s: tie_verdict(t) for s, t in ties.items()},
        "rc_tie_false_positive_rate": tie_false_positive_rate(
            shapes, jax.random.fold_in(key, 7), trials=fpr_trials, num_shuffles=num_shuffles
        ),
        "positive_control": _positive_control(family, config, params, x, y, draws, seed),
        "identities": {
            "unit_permutation": identity("whole-unit permutation keeps the loss",
                                         controls["unit_permutation"], loss),  # fmt: skip
        },
    }

    # LLN fit of iid growth (width only, non-normalised spaces)
    normed = set(resolved.normalized_spaces())
    grown_spaces = [s for s in resolved.width_spaces() if s not in normed]
    if not grown_spaces:
        raise GrowthError(f"analyze: {family} checkpoint has no non-normalised width space")
    first = grown_spaces[0]
    widths, mean_gap, gap_sd, logit_sd, balanced = [], [], [], [], []
    for k in factors:
        target = {s: k * resolved.sizes[s] for s in grown_spaces}
        new_cfg = fam.resize(config, target)
        g_fwd = _forward(family, new_cfg)
        outs, gaps = [], []
        for d in range(draws):
            g, _ = grow(params, spec, width=target, method=IID_WIDTH,
                        key=jax.random.fold_in(k_grow, 1000 * k + d))  # fmt: skip
            out = g_fwd(g, x)
            outs.append(np.asarray(out))
            gaps.append(_loss(out, y) - loss)
        b, _ = grow(params, spec, width=target, method=BALANCED, key=seed)
        widths.append(target[first])
        mean_gap.append(float(np.mean(np.abs(gaps))))
        gap_sd.append(float(np.std(gaps, ddof=1)))
        logit_sd.append(float(np.std(np.stack(outs), axis=0, ddof=1).mean()))
        balanced.append(_loss(g_fwd(b, x), y) - loss)
    lln = {
        "spaces": grown_spaces,
        "factors": factors,
        "widths": widths,
        "draws": draws,
        "mean_abs_gap": mean_gap,
        "gap_sd": gap_sd,
        "logit_sd": logit_sd,
        "balanced_gap": balanced,
        "gap_fit": loglog_slope(widths, np.maximum(mean_gap, 1e-12)).to_dict(),
        "sd_fit": loglog_slope(widths, np.maximum(logit_sd, 1e-12)).to_dict(),
    }
    verdicts["identities"]["balanced_gap"] = identity(
        "balanced (copy) growth keeps the loss", loss + max(balanced, key=abs), loss
    )
    verdicts["lln_sd_slope"] = {
        "kind": "consistency",
        "null": "the logits' draw-to-draw sd falls as N^-1/2 (LLN of any measure)",
        "threshold": "95% CI of the log-log slope contains -0.5",
        "verdict": "consistent" if lln["sd_fit"]["ci"][0] <= -0.5 <= lln["sd_fit"]["ci"][1]
        else "inconsistent",
        "note": "holds for untrained networks too: evidence about the sampler, not training",
    }  # fmt: skip
    result = {
        "checkpoint": str(path),
        "family": family,
        "dataset": dataset,
        "sizes": dict(resolved.sizes),
        "seed": seed,
        "test_loss": loss,
        "test_acc": float((logits.argmax(-1) == y).mean()),
        "rc_tie": ties,
        "controls": controls,
        "lln": lln,
        "verdicts": verdicts,
        "exit_code": exit_code(verdicts),
    }
    if out_dir is not None:
        result["out"] = str(write_outputs(out_dir, result))
    return result


_CONTROL_SPACE = {"mlp": ("h1", ("layers", 1, "kernel")), "resmlp": ("h", ("w2",))}


def _positive_control(
    family: str, config: Any, params: dict, x: jax.Array, y: jax.Array, draws: int, seed: int,
    k: int = 8, destroyed_copies: int = 4,
) -> dict:  # fmt: skip
    """Units vs entries (:func:`.verdicts.unit_control`) on the network and on
    ``destroyed_copies`` copies with the control space's outgoing kernel resampled entrywise;
    the fraction of destroyed copies that pass is the control's measured false-positive rate."""
    fam = get_family(family)
    space, out_path = _CONTROL_SPACE[family]
    part = (out_path, None)
    n = fam.spec(config).resolve(params).sizes[space]
    g_fwd = _forward(family, fam.resize(config, {space: k * n}))
    fwd = _forward(family, config)
    key = jax.random.key(seed + 101)

    def run(p: dict, salt: int) -> dict:
        w = _get(p, part)

        def units(d: int) -> float:
            g, _ = grow(p, fam.spec(config), width={space: k * n}, method=IID_WIDTH,
                        key=jax.random.fold_in(key, 10_000 * salt + d))  # fmt: skip
            return _loss(g_fwd(g, x), y)

        def entries(d: int) -> float:
            w2 = resample_entries_iid(w, jax.random.fold_in(key, 10_000 * salt + 5000 + d))
            return _loss(fwd(_set(p, part, w2), x), y)

        return unit_control(units, entries, draws, seed + salt)

    destroyed = [
        run(_set(params, part, resample_entries_iid(_get(params, part),
                                                    jax.random.fold_in(key, 99 + c))), c + 1)
        for c in range(destroyed_copies)
    ]  # fmt: skip
    return {
        "kind": "test",
        "space": space,
        "null": f"whole-unit resampling of {space!r} (iid growth to {k} n) keeps the loss no "
        "better than entrywise resampling",
        "threshold": f"bootstrap lower {1 - ALPHA:.0%} bound of mean(loss_entries - loss_units)"
        " > 0",
        "trained": run(params, 0),
        "destroyed": destroyed[0],
        "false_positive_rate": float(np.mean([d["passed"] for d in destroyed])),
    }


def format_report(r: dict) -> str:
    """Readable text report of :func:`analyze_checkpoint`'s result."""
    c, lln = r["controls"], r["lln"]
    lines = [
        f"checkpoint {r['checkpoint']} ({r['family']}, sizes {r['sizes']}) on {r['dataset']} test",
        f"test loss {r['test_loss']:.4f}  acc {r['test_acc']:.3f}  "
        f"(untrained init loss {c['init_loss']:.4f})",
        "",
        *tie_lines(r["rc_tie"]),
    ]
    lines += [
        "",
        f"negative controls on {c['space']!r} (test loss; trained {r['test_loss']:.4f}, "
        f"init {c['init_loss']:.4f})",
        f"  entrywise iid resample     {c['entry_iid']:.4f}   (should be destroyed)",
        f"  column-only permutation    {c['column_permutation']:.4f}   (should be destroyed)",
        f"  whole-unit permutation     {c['unit_permutation']:.4f}   (keeps the function)",
        f"  whole-unit bootstrap (k=1) {c['unit_bootstrap']:.4f}   "
        "(keeps the RC structure; SP/muP sources: O(1) init-component error at k=1)",
        "",
        f"LLN of iid growth of {lln['spaces']} ({lln['draws']} draws per width)",
        f"  {'k':>3} {'N':>6} {'E|gap|':>10} {'sd gap':>10} {'sd logits':>10} {'balanced':>10}",
    ]
    for i, k in enumerate(lln["factors"]):
        lines.append(
            f"  {k:>3} {lln['widths'][i]:>6} {lln['mean_abs_gap'][i]:>10.4g} "
            f"{lln['gap_sd'][i]:>10.4g} {lln['logit_sd'][i]:>10.4g} {lln['balanced_gap'][i]:>10.2g}"
        )
    fits = (
        ("E|gap|", "gap_fit", "-1 for MF sources; SP/muP sources keep an O(1/k) bias"),
        ("sd of logits", "sd_fit", "-0.5"),
    )
    return "\n".join(lines + fit_lines(r, fits) + verdict_lines(r["verdicts"]))


def verdict_lines(v: dict) -> list[str]:
    """The verdicts block of a report (see :mod:`.verdicts`)."""
    pc = v["positive_control"]
    lines = ["", f"verdicts (alpha = {ALPHA})"]
    for s, t in v["rc_tie"].items():
        lines.append(f"  RC tie {s:<12} p = {t['p']:.3f}: {t['verdict']}  (H0: {t['null']})")
    if "rc_tie_false_positive_rate" in v:
        lines.append(f"  RC tie false-positive rate on iid Gaussian layers: "
                     f"{v['rc_tie_false_positive_rate']:.3f}")  # fmt: skip
    tr, de = pc["trained"], pc["destroyed"]
    lines += [
        f"  positive control ({pc['null']}; pass: {pc['threshold']})",
        f"    this network: mean {tr['mean_difference']:.4f}, lower {tr['lower_bound']:.4f}: "
        f"{'pass' if tr['passed'] else 'FAIL'}",
        f"    destroyed copy: mean {de['mean_difference']:.4f}, lower {de['lower_bound']:.4f}: "
        f"{'pass (control uninformative)' if de['passed'] else 'fail, as it must'}"
        + (f"; false-positive rate {pc['false_positive_rate']:.2f}"
           if "false_positive_rate" in pc else ""),
    ]  # fmt: skip
    for i in v["identities"].values():
        lines.append(f"  identity: {i['what']}: gap {i['relative_gap']:.2g} {i['verdict']} "
                     "(by construction, not evidence)")  # fmt: skip
    if "lln_sd_slope" in v:
        s = v["lln_sd_slope"]
        lines.append(f"  LLN spread slope: {s['verdict']} ({s['note']})")
    return lines


def tie_lines(ties: dict) -> list[str]:
    """The RC-tie table of a report (space -> ``RCTie.to_dict()``)."""
    w = max([12, *(len(s) for s in ties)])
    lines = [
        "RC tie: Spearman(||incoming_i||, ||outgoing_i||) over units, paired vs shuffled",
        f"  {'space':<{w}} {'n':>5} {'paired':>8} {'shuf mean':>10} {'shuf sd':>8} {'z':>7}",
    ]
    for s, t in ties.items():
        lines.append(
            f"  {s:<{w}} {t['n']:>5} {t['paired']:>8.3f} {t['shuffled_mean']:>10.3f} "
            f"{t['shuffled_sd']:>8.3f} {t['z']:>7.2f}"
        )
    return lines


def fit_lines(r: dict, fits: tuple[tuple[str, str, str], ...]) -> list[str]:
    """The LLN slope lines ``(label, key in r["lln"], expectation)`` and where outputs went."""
    lines = []
    for name, key, expect in fits:
        f = r["lln"][key]
        lines.append(
            f"  slope of {name} vs N: {f['slope']:.3f}  95% CI [{f['ci'][0]:.3f}, "
            f"{f['ci'][1]:.3f}]  (expected {expect})"
        )
    if "out" in r:
        lines.append(f"\nwrote {r['out']}/analysis.json, analysis.png")
    return lines
