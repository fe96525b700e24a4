"""``grow analyze`` on a Hugging Face BERT checkpoint (e.g. the pretrained all-MiniLM-L6-v2):
what the RC diagnostics say about a real trained model.

A sentence encoder has no labels here, so the "loss" of a modified model is the *embedding
error* ``1 - mean_s cos(e_s, e'_s)`` on real sentences (``e`` the source's mean-pooled,
L2-normalised embeddings, ``e'`` the modified model's; 0 = same embeddings). Diagnostics, per
the theory notes (T3, T6, T7) and on the non-normalised spaces only (``d`` is read by every
LayerNorm of the post-LN stack, so iid resampling of it is not a width-sampling question):

- RC tie per layer for ``ff`` (incoming ``ff1_w`` rows vs outgoing ``ff2_w`` columns) and for
  ``heads`` (per-head q/k/v rows vs o columns; 12 units, so a weak test);
- negative controls on one layer's ``ff``: entrywise i.i.d. resampling of the outgoing kernel,
  column-only permutation (both should destroy the embeddings), whole-unit permutation (keeps
  them exactly), whole-unit bootstrap (keeps the RC structure, with an O(1) error at k = 1 for
  SP-trained sources -- the DESIGN 2.7 caveat);
- law of large numbers: iid growth of ``ff`` in every layer to ``k ff`` (unbiased scaling),
  ``draws`` draws per k; log-log slopes of the mean error and of the draw-to-draw sd of the
  embeddings against N, next to the balanced (copy) growth error (exact: ~1e-7). The error
  ``1 - cos ~ |e - e'|^2 / 2`` is quadratic in the embedding's deviation, so an unbiased
  O(N^-1/2) fluctuation gives slope -1 for the error and -1/2 for the sd; an O(1) bias would
  flatten the error's slope towards 0.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import jax
import numpy as np

from growth.apps.analyze.lln import check_sampling, iid_lln
from growth.apps.analyze.report import (
    lln_lines,
    outputs_line,
    tie_lines,
    verdict_lines,
    write_outputs,
)
from growth.apps.analyze.verdicts import (
    balanced_identity,
    exit_code,
    identity,
    positive_control,
    tie_verdict,
)
from growth.errors import GrowthError
from growth.formats import hf
from growth.formats.hf import bert_forward as bert
from growth.formats.hf.bert_forward import SENTENCES
from theory.ansatz import (
    permute_columns,
    rc_tie,
    resample_entries_iid,
    resample_units,
)

__all__ = ["SENTENCES", "analyze_hf", "embedding_error", "format_hf_report"]


def _ff_unit(layers: dict, l: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layer l's FFN units as (w_in [d, ff], b_in [ff], w_out [ff, d])."""
    return layers["ff1_w"][l].T, layers["ff1_b"][l], layers["ff2_w"][l].T


def _with_ff(params: dict, l: int, w_in, b_in, w_out) -> dict:
    """params with layer l's FFN replaced (arrays in the ``_ff_unit`` layout)."""
    layers = dict(params["layers"])
    new_parts = {"ff1_w": np.asarray(w_in).T, "ff1_b": b_in, "ff2_w": np.asarray(w_out).T}
    for name, new in new_parts.items():
        stacked = np.array(layers[name])
        stacked[l] = np.asarray(new)
        layers[name] = stacked
    return {**params, "layers": layers}


def _head_units(layers: dict, l: int) -> tuple[np.ndarray, np.ndarray]:
    """Layer l's heads as (incoming [3 hd d, H]: q/k/v rows, outgoing [H, d hd]: o columns)."""
    qkv = np.concatenate([layers[k][l] for k in ("q_w", "k_w", "v_w")], axis=1)  # [H, 3hd, d]
    H = qkv.shape[0]
    o = np.moveaxis(np.asarray(layers["o_w"][l]), 1, 0)  # [d, H, hd] -> [H, d, hd]
    return qkv.reshape(H, -1).T, o.reshape(H, -1)


def embedding_error(
    path: str | os.PathLike, params: dict, config: dict, sentences: Sequence[str]
) -> Callable[[dict], tuple[float, np.ndarray]]:
    """``p -> (1 - mean_s cos(e_s, e'_s), e')``: the embedding error of BERT params ``p`` (any
    ``ff``) against ``params`` on ``sentences`` (tokenised with ``path``'s tokenizer), and the
    embeddings ``e' [S, d]``."""
    ids, mask = bert.tokenize(path, list(sentences))
    e0 = bert.encode(params, config, ids, mask)

    def error(p: dict) -> tuple[float, np.ndarray]:
        e = bert.encode(p, config, ids, mask)
        return float(1.0 - np.mean(np.sum(e * e0, -1))), e

    return error


def analyze_hf(
    path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    draws: int = 8,
    factors: Sequence[int] = (2, 4, 8, 16),
    num_shuffles: int = 200,
    control_layer: int = 0,
    sentences: Sequence[str] = SENTENCES,
    seed: int = 0,
    control_repeats: int = 4,
) -> dict:
    """RC diagnostics of the HF BERT checkpoint directory ``path`` (see the module doc).

    draws >= 2 iid growths per factor and paired draws of the positive control
    (``control_repeats`` >= 1 arms of destroyed copies measure its false-positive rate);
    factors: >= 3 distinct growth factors k >= 1 of ``ff``. Returns a JSON-able dict; writes
    ``analysis.json`` and ``analysis.png`` to ``out_dir``.
    """
    factors = check_sampling(draws, factors)
    params, config, spec = hf.load_hf(path)
    if config.get("model_type") != "bert":
        raise GrowthError(
            f"analyze {path}: model_type {config.get('model_type')!r}; the HF analysis runs on "
            "BERT encoders (sentence embeddings are its yardstick)"
        )
    params = jax.tree_util.tree_map(np.asarray, params)
    layers = params["layers"]
    L = layers["ff1_w"].shape[0]
    if not 0 <= control_layer < L:
        raise GrowthError(f"control_layer={control_layer}: expected 0..{L - 1}")
    error = embedding_error(path, params, config, sentences)
    key = jax.random.key(seed)
    k_tie, k_ctl, k_grow = jax.random.split(key, 3)
    ties = {}
    for l in range(L):
        w_in, _, w_out = _ff_unit(layers, l)
        ties[f"ff@layer{l}"] = rc_tie(w_in, w_out, jax.random.fold_in(k_tie, 2 * l),
                                      num_shuffles).to_dict()  # fmt: skip
        h_in, h_out = _head_units(layers, l)
        ties[f"heads@layer{l}"] = rc_tie(h_in, h_out, jax.random.fold_in(k_tie, 2 * l + 1),
                                         num_shuffles).to_dict()  # fmt: skip

    w_in, b_in, w_out = _ff_unit(layers, control_layer)
    ks = jax.random.split(k_ctl, 4)
    unit_perm = resample_units(w_in, b_in, w_out, ks[2])
    unit_boot = resample_units(w_in, b_in, w_out, ks[3], replace=True)
    zeros = np.zeros_like(w_out)
    controls = {
        "space": f"ff@layer{control_layer}",
        "ffn_removed": error(_with_ff(params, control_layer, w_in, b_in, zeros))[0],
        "entry_iid": error(
            _with_ff(params, control_layer, w_in, b_in, resample_entries_iid(w_out, ks[0]))
        )[0],  # fmt: skip
        "column_permutation": error(
            _with_ff(params, control_layer, w_in, b_in, permute_columns(w_out, ks[1]))
        )[0],  # fmt: skip
        "unit_permutation": error(_with_ff(params, control_layer, *unit_perm))[0],
        "unit_bootstrap": error(_with_ff(params, control_layer, *unit_boot))[0],
    }

    n_ff = int(layers["ff1_w"].shape[1])
    verdicts = _verdicts(params, spec, error, n_ff, draws, seed, controls, ties, control_repeats)
    lln = iid_lln(params, spec, error, {"ff": n_ff}, factors, draws, k_grow, seed,
                  "embedding_sd")  # fmt: skip
    result = {
        "checkpoint": str(path),
        "family": "hf-bert",
        "sizes": {
            "d": int(config["hidden_size"]),
            "heads": int(config["num_attention_heads"]),
            "ff": n_ff,
            "layers": L,
        },  # fmt: skip
        "sentences": len(sentences),
        "seed": seed,
        "rc_tie": ties,
        "controls": controls,
        "lln": lln,
        "verdicts": verdicts,
        "exit_code": exit_code(verdicts),
    }
    if out_dir is not None:
        result["out"] = str(
            write_outputs(
                out_dir,
                result,
                gap_label="embedding error",
                sd_key="embedding_sd",
                sd_label="sd of embeddings",
            )
        )
    return result


def _verdicts(params: dict, spec, error, n_ff: int, draws: int, seed: int, controls: dict,
              ties: dict, repeats: int, k: int = 8) -> dict:  # fmt: skip
    """Verdicts (:mod:`.verdicts`) on the embedding error: the RC-tie tests, the positive
    control on ``ff`` (iid growth of every layer's ``ff`` to ``k ff`` vs entrywise resampling
    of every ``ff2_w``) on the model and on ``repeats`` arms of fresh destroyed copies
    (``ff2_w`` resampled entrywise), and the identities (whole-unit permutation, balanced
    growth)."""

    def err(p: dict) -> float:
        return error(p)[0]

    return {
        "rc_tie": {s: tie_verdict(t) for s, t in ties.items()},
        "positive_control": positive_control(params, spec, err, space="ff", n=n_ff,
                                             leaf=("layers", "ff2_w"), draws=draws, seed=seed,
                                             k=k, repeats=repeats),  # fmt: skip
        "identities": {
            "unit_permutation": identity("whole-unit permutation keeps the embeddings",
                                         controls["unit_permutation"], 0.0),  # fmt: skip
            "balanced_gap": balanced_identity(params, spec, err, space="ff", n=n_ff, seed=seed),
        },
    }


def format_hf_report(r: dict) -> str:
    """Readable text report of :func:`analyze_hf`'s result."""
    c = r["controls"]
    lines = [
        f"HF checkpoint {r['checkpoint']} (sizes {r['sizes']}), {r['sentences']} sentences",
        "embedding error = 1 - mean cosine to the source's sentence embeddings",
        "",
        *tie_lines(r["rc_tie"]),
        "",
        f"negative controls on {c['space']!r} (embedding error)",
        f"  FFN output zeroed          {c['ffn_removed']:.4g}   (reference: the layer removed)",
        f"  entrywise iid resample     {c['entry_iid']:.4g}",
        f"  column-only permutation    {c['column_permutation']:.4g}",
        f"  whole-unit permutation     {c['unit_permutation']:.4g}   (keeps the function)",
        f"  whole-unit bootstrap (k=1) {c['unit_bootstrap']:.4g}",
    ]
    columns = (("mean err", "mean_abs_gap", ".4g"), ("sd emb", "embedding_sd", ".4g"),
               ("balanced", "balanced_gap", ".2g"))  # fmt: skip
    fits = (
        ("mean error", "gap_fit", "-1: 1 - cos is quadratic in an O(N^-1/2) error; 0: bias"),
        ("sd of embeddings", "sd_fit", "-0.5"),
    )
    lines += lln_lines(r, "ff", columns, fits)
    return "\n".join(lines + outputs_line(r) + verdict_lines(r["verdicts"]))
