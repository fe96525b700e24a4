"""The ``grow`` commands as Python functions: train, grow, verify (the demo lives in ``demo``).

Each function validates its whole input before writing anything, and writes checkpoints
atomically (``growth.formats.checkpoint``), so a failed command leaves no partial output behind.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from growth.engine import GrowthPlan, GrowthReport, apply_plan, grown_nbytes, plan_growth
from growth.errors import GrowthError
from growth.formats.checkpoint import load_checkpoint, save_checkpoint
from growth.formats.outdir import check_out, out_path, remove, seal
from growth.formats.size_bound import check_size
from growth.guarantee import SAMPLING_ALPHA, output_error
from growth.methods import DEFAULT_METHOD, Method
from growth.models import (
    config_from_dict,
    config_to_dict,
    get_family,
    grown_config,
    init_model,
    model_from_params,
    parametrization,
    params_of,
    training_base,
)
from growth.spec import parse_targets
from growth.tasks.data import load_dataset
from growth.tasks.lm_data import LM_DATASET, load_corpus
from growth.tasks.lm_data import eval_windows as lm_eval_windows
from growth.tasks.resume import TrainingState
from growth.tasks.train import History, TrainConfig, evaluate, train
from theory.parametrization import leaf_rules, lr_multipliers

PROBE = 512  # held-out inputs on which logits are compared


def load_model(path: str | os.PathLike) -> tuple[Any, dict, Any]:
    """Load a checkpoint as ``(model, meta, config)``."""
    params, meta = load_checkpoint(path)
    for key in ("family", "config"):
        if key not in meta:
            raise GrowthError(f"checkpoint {str(path)!r}: meta.json lacks {key!r}")
    config = config_from_dict(meta["family"], meta["config"])
    return model_from_params(meta["family"], config, params), meta, config


def init_rescale(resolved: Any, base: Mapping[str, float], param: str) -> tuple[float, ...]:
    """Per-leaf factors turning the families' SP-absolute init (Lecun normal: std ``r_in^-1/2``
    relative to ``base``) into ``param``'s: muP's readout ``r_in^-1`` (factor ``r_in^-1/2``);
    1 for ``sp`` and for ``mf`` (whose models draw their types themselves)."""
    if param != "mup":
        return (1.0,) * len(resolved.leaves)
    mup, sp = leaf_rules(resolved, base, "mup"), leaf_rules(resolved, base, "sp")
    return tuple(m.init_std / s.init_std for m, s in zip(mup, sp, strict=True))


def training_state_dir(out: str | os.PathLike) -> Path:
    """Where ``grow train --out OUT`` keeps its periodic training state: ``OUT.training``."""
    target = out_path(out)
    return target.with_name(target.name + ".training")


def train_model(
    out: str | os.PathLike,
    family: str,
    config: Any,
    train_cfg: TrainConfig,
    *,
    dataset: str = "mnist1d",
    base_sizes: Mapping[str, int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> tuple[os.PathLike, History]:
    """Train a fresh ``family`` model under its config's parametrization and save it with its
    history at ``out``.

    The parametrization (``config.param``: ``sp``, ``mup``, ``mf``) sets the Adam learning-rate
    factors per leaf, ``theory.parametrization.lr_multipliers`` relative to the base widths
    (:func:`growth.models.training_base`): ``sp`` one global rate; ``mup`` muP-Adam and muP's
    readout init; ``mf`` the mean-field rule for the config's multipliers (all 1 for a fresh
    model at its reference widths). base_sizes: the base widths of ``sp``/``mup`` (default the
    model's own sizes: every factor 1); under ``mf`` it must match the multipliers. The meta
    records ``param`` and the base, so grow/verify/analyze rebuild the same model.
    ``out`` is checked before the first step. checkpoint_every: save the training state
    (:func:`training_state_dir`) every this many steps, so that ``resume=True`` continues an
    interrupted run bit-identically; the state is removed once ``out`` is written. A fresh run
    refuses an existing state unless ``overwrite``.
    """
    check_out(out, overwrite=overwrite)
    state_dir = training_state_dir(out)
    fam = get_family(family)
    data = load_dataset(dataset)
    param = parametrization(config)
    model = init_model(family, config, seed=train_cfg.seed)
    params = params_of(model)
    resolved = fam.spec(config).resolve(params)
    base = training_base(family, config, resolved.sizes, base_sizes)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    scaled = [a * f for a, f in zip(leaves, init_rescale(resolved, base, param), strict=True)]
    model = model_from_params(family, config, jax.tree_util.tree_unflatten(treedef, scaled))
    settings = {"family": family, "config": config_to_dict(config), "param": param,
                "dataset": dataset, "base_sizes": base, "train": train_cfg.to_dict()}  # fmt: skip
    state = _training_state(state_dir, settings, checkpoint_every, resume, overwrite)
    try:
        hist = train(model, data, train_cfg,
                     lr_multipliers=lr_multipliers(resolved, base, param, "adam"),
                     desc=f"train {family}", progress=progress, state=state,
                     resume=resume)  # fmt: skip
    finally:
        if state is not None:
            state.close()
    meta = settings | {"history": hist.to_dict(), "test_loss": hist.test_loss[-1]}
    path = save_checkpoint(out, params_of(model), meta, overwrite=overwrite)
    if state is not None:
        remove(state_dir)
    return path, hist


def _training_state(
    state_dir: Path, settings: dict, every: int | None, resume: bool, overwrite: bool
) -> TrainingState | None:
    """The training state of ``grow train`` (None without ``every`` or ``resume``): the saved
    one with ``resume``, else a fresh directory (an existing one is replaced only with
    ``overwrite``, and only if this tool made it)."""
    if resume:
        if not state_dir.is_dir():
            raise GrowthError(f"--resume: no saved training state at {str(state_dir)!r}")
        return TrainingState(state_dir, every or settings["train"]["steps"], settings)
    if not every:
        return None
    if os.path.lexists(state_dir):
        if not overwrite:
            raise GrowthError(
                f"a partial run is saved at {str(state_dir)!r}: pass --resume to continue it, "
                "or --overwrite to start over"
            )
        check_out(state_dir, overwrite=True)  # only a state directory this tool made
        remove(state_dir)
    state_dir.mkdir(parents=True)
    seal(state_dir, "training-state", {})
    return TrainingState(state_dir, every, settings)


def grow_checkpoint(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    width: str | Mapping[str, int] | None = "x4",
    depth: str | Mapping[str, int] | None = "x2",
    method: str | Method = DEFAULT_METHOD,
    seed: int = 0,
    overwrite: bool = False,
    max_bytes: int | None = None,
) -> tuple[os.PathLike, GrowthReport]:
    """Load ``source``, grow it, and save the grown checkpoint (with the report) at ``out``
    (checked first: never the source or one of its ancestors). The grown size is bounded
    before anything is allocated: by ``max_bytes`` if given, else by the available memory and
    the free disk at ``out`` (``growth.formats.size_bound.check_size``)."""
    check_out(out, overwrite=overwrite, protect=[source])
    model, meta, config = load_model(source)
    fam = get_family(meta["family"])
    params = params_of(model)
    resolved = fam.spec(config).resolve(params)
    spaces = {s: resolved.sizes[s] for s in resolved.width_spaces()}
    stacks = {s: resolved.sizes[s] for s in resolved.depth_stacks()}
    w = width if isinstance(width, Mapping) else parse_targets(width, spaces, "width")
    d = depth if isinstance(depth, Mapping) else parse_targets(depth, stacks, "depth")
    if d and not stacks:
        raise GrowthError(f"depth {depth!r}: the {meta['family']} model has no depth stack")
    check_size(grown_nbytes(resolved, params, w, d), out, max_bytes=max_bytes)
    plan = plan_growth(params, fam.spec(config), width=w, depth=d, method=method, key=seed)
    grown, report = apply_plan(plan, params), plan.report
    new_config = grown_config(fam, config, plan)
    g_model = model_from_params(meta["family"], new_config, grown)  # builds before any write
    x_probe = held_out(meta)[0]
    report.measured(_probe(model, x_probe), _probe(g_model, x_probe))
    new_meta = {
        "family": meta["family"],
        "config": config_to_dict(new_config),
        "param": parametrization(new_config),
        "dataset": meta.get("dataset", "mnist1d"),
        **({"data": meta["data"]} if "data" in meta else {}),
        "base_sizes": meta.get("base_sizes", dict(resolved.sizes)),
        "source": os.path.abspath(source),
        "source_test_loss": meta.get("test_loss"),
        "growth": report.to_dict(),
        "seed": seed,
    }
    return save_checkpoint(out, grown, new_meta, overwrite=overwrite), report


def held_out(meta: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, integer targets)`` of the held-out split a checkpoint was trained on, from its
    ``meta.json``: an MNIST-1D variant (``dataset``), or the stdlib byte corpus
    (``dataset: "stdlib-bytes"`` with ``data: {corpus_bytes, seq_len, eval_windows}``; inputs
    ``[n, T]``, targets the next bytes ``[n, T]``)."""
    dataset = meta.get("dataset", "mnist1d")
    if dataset != LM_DATASET:
        data = load_dataset(dataset)
        return data.x_test, data.y_test
    spec = meta.get("data")
    need = ("corpus_bytes", "seq_len", "eval_windows")
    if not isinstance(spec, Mapping) or any(k not in spec for k in need):
        raise GrowthError(
            f"{LM_DATASET} checkpoint: meta.json 'data' must give {need}, got {spec!r}"
        )
    corpus = load_corpus(int(spec["corpus_bytes"]))
    w = lm_eval_windows(corpus.test, int(spec["seq_len"]), int(spec["eval_windows"]))
    return w[:, :-1], w[:, 1:]


def replan(
    params: Any, family: str, config: Any, growth: Mapping[str, Any], key: int
) -> GrowthPlan:
    """Plan again the growth recorded in a grown checkpoint's meta (``growth``: its report's
    dict, whose method and sizes it uses) on the source ``params``, with PRNG ``key``: the same
    key gives the recorded growth bit for bit, another key a fresh draw of the same method."""
    try:
        method = Method(**growth["method"])
        before, after = growth["sizes_before"], growth["sizes_after"]
    except (KeyError, TypeError) as e:
        raise GrowthError(f"meta 'growth' lacks method/sizes ({e}): not a grow report") from e
    resolved = get_family(family).spec(config).resolve(params)
    if dict(resolved.sizes) != dict(before):
        raise GrowthError(f"source sizes {dict(resolved.sizes)} differ from the recorded {before}")
    stacks = set(resolved.depth_stacks())
    width = {s: n for s, n in after.items() if s not in stacks and n != before[s]}
    depth = {s: n for s, n in after.items() if s in stacks and n != before[s]}
    spec = get_family(family).spec(config)
    return plan_growth(params, spec, width=width, depth=depth, method=method, key=key)


def _probe(model: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(jnp.asarray(x[:PROBE])), np.float64)


def verify_checkpoint(
    grown: str | os.PathLike, source: str | os.PathLike | None = None, *, draws: int = 8
) -> dict:
    """Check a grown checkpoint against its source and the bound its growth declares.

    Measures on the held-out set (:func:`held_out`) the loss gap ``loss' - loss`` and the
    relative logit error ``e = max|f' - f| / max|f|`` (first :data:`PROBE` inputs), and
    judges them against the growth's bound (``growth.guarantee``): ``rounding`` / ``noise``:
    ``e <= bound`` and ``|gap| <= 2 bound max|f|`` (cross-entropy is 2-Lipschitz in the
    max-norm of the logits); ``sampling``: both within ``mean + t sd`` of ``draws`` fresh draws of
    the same method at the same sizes (Chebyshev, ``t = 1/sqrt(alpha)``); ``none``: fails (the
    growth promises nothing that could be verified). ``passed`` is always True or False.
    ``source`` defaults to the one recorded in the grown checkpoint (a relative path there is
    relative to the grown checkpoint's directory).
    """
    g_model, g_meta, _ = load_model(grown)
    if source is None:
        if g_meta.get("source") is None:
            raise GrowthError(f"checkpoint {str(grown)!r} records no source; pass source=...")
        source = os.path.join(os.path.abspath(grown), g_meta["source"])
    if "growth" not in g_meta:
        raise GrowthError(f"checkpoint {str(grown)!r}: meta.json records no 'growth' report")
    s_model, s_meta, s_config = load_model(source)
    x_test, y_test = held_out(g_meta)
    s_loss, s_acc = evaluate(s_model, x_test, y_test)
    g_loss, g_acc = evaluate(g_model, x_test, y_test)
    ref = _probe(s_model, x_test)
    err, gap, scale = output_error(ref, _probe(g_model, x_test)), g_loss - s_loss, np.abs(ref).max()
    family, s_params = s_meta["family"], params_of(s_model)
    plan = replan(s_params, family, s_config, g_meta["growth"], int(g_meta.get("seed", 0)))
    bound = dict(plan.report.bound)
    if bound["kind"] in ("rounding", "noise"):
        bound["loss_gap"] = 2 * bound["rel_error"] * float(scale)
    elif bound["kind"] == "sampling":
        bound |= _sampling_bound(s_params, family, s_config, plan, x_test, y_test, ref, draws)
    if bound["kind"] == "none":
        passed, reason = False, f"no guarantee to verify ({bound['statement']})"
    else:
        ok_e, ok_gap = err <= bound["rel_error"], abs(gap) <= bound["loss_gap"]
        passed = bool(ok_e and ok_gap)
        reason = (
            f"logit error {err:.3g} {'<=' if ok_e else '>'} {bound['rel_error']:.3g}, "
            f"|gap| {abs(gap):.3g} {'<=' if ok_gap else '>'} {bound['loss_gap']:.3g}"
        )
    return {
        "source": str(source),
        "grown": str(grown),
        "method": g_meta["growth"]["method"]["name"],
        "source_test_loss": s_loss,
        "grown_test_loss": g_loss,
        "zero_shot_gap": gap,
        "source_test_acc": s_acc,
        "grown_test_acc": g_acc,
        "max_rel_logit_error": err,
        "bound": bound,
        "verdict": "pass" if passed else "fail",
        "reason": reason,
        "passed": passed,
    }


def _sampling_bound(
    params: Any, family: str, config: Any, plan: GrowthPlan, x: np.ndarray, y: np.ndarray,
    ref: np.ndarray, draws: int,
) -> dict:  # fmt: skip
    """``rel_error`` and ``loss_gap`` bounds of a sampling growth: ``mean + t sd`` over ``draws``
    fresh draws (keys 10^6 + d, never a recorded seed) of the plan's method at its sizes."""
    if draws < 2:
        raise GrowthError(f"draws={draws}: a sampling bound needs >= 2 fresh draws")
    fam, t = get_family(family), SAMPLING_ALPHA**-0.5
    s_loss = evaluate(model_from_params(family, config, params), x, y)[0]
    errs, gaps = [], []
    growth = plan.report.to_dict()
    for d in range(draws):
        p = replan(params, family, config, growth, 10**6 + d)
        m = model_from_params(family, grown_config(fam, config, p), apply_plan(p, params))
        errs.append(output_error(ref, _probe(m, x)))
        gaps.append(abs(evaluate(m, x, y)[0] - s_loss))
    return {
        "draws": draws,
        "draw_errors": errs,
        "draw_gaps": gaps,
        "rel_error": float(np.mean(errs) + t * np.std(errs, ddof=1)),
        "loss_gap": float(np.mean(gaps) + t * np.std(gaps, ddof=1)),
    }
