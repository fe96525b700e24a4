"""``grow analyze`` on a Hugging Face decoder checkpoint (GPT-2, Llama, Mistral, Qwen2), read
through :mod:`growth.formats.hf.decoder` into our decoder family.

Yardstick: the *relative logit error* of a modified model against the source on a fixed probe
of token ids ``x`` (:func:`probe_ids`: drawn once from the vocabulary with a fixed seed),

    err(p) = ||z_p(x) - z(x)||_F / ||z(x)||_F      (z: logits [B, T, V]; 0 = the source).

Diagnostics (:mod:`.verdicts` gives every null hypothesis, threshold and verdict):

- RC tie per layer of the MLP units ``ff``: incoming rows ``[w_gate; w_up]`` (GPT-2: ``c_fc``)
  vs outgoing ``w_down`` columns (GPT-2: ``c_proj``), and of the attention heads: query head
  ``h`` in kv group ``kv_i`` has incoming q rows plus its kv head's k/v rows and outgoing o
  columns (``H`` units; a weak test at small ``H``, skipped below 3 heads);
- the positive control on ``ff`` (iid growth of every layer's ``ff`` to ``k ff`` vs entrywise
  resampling of every ``w_down``) on the model and on a destroyed copy;
- identities: whole-unit permutation of layer 0's ``ff``, balanced (copy) growth of ``ff``.

Because ``err`` is measured against the *source's* logits, the control asks whether the
function lives in whole units -- true of any network whose MLP output is a sum over units,
trained or not -- and the destroyed copy (whose function is no longer the source's) must fail.
The plot: the per-layer RC tie (paired Spearman vs the shuffled null, ``ff`` and heads) and
the per-head incoming vs outgoing norms.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np

from growth.apps.analyze.native import _forward
from growth.apps.analyze.report import outputs_line, tie_lines, verdict_lines, write_outputs
from growth.apps.analyze.verdicts import (
    ALPHA,
    balanced_identity,
    exit_code,
    identity,
    positive_control,
    tie_verdict,
)
from growth.errors import GrowthError
from growth.formats.hf.decoder import load_decoder
from growth.formats.hf.io import DECODERS
from growth.formats.hf.layout import decoder_config
from growth.models import decoder
from theory.ansatz import rc_tie

__all__ = ["analyze_decoder", "format_decoder_report", "probe_ids"]

PROBE_SHAPE = (4, 16)  # sequences x tokens (capped at the model's max_len)


def probe_ids(vocab: int, max_len: int, shape: tuple[int, int] = PROBE_SHAPE) -> np.ndarray:
    """Fixed probe tokens int ``[B, min(T, max_len)]``, uniform over the vocabulary (seed 0)."""
    B, T = shape
    return np.random.default_rng(0).integers(0, vocab, (B, min(T, max_len)))


def relative_error(logits: np.ndarray, source: np.ndarray) -> float:
    """``||logits - source||_F / ||source||_F`` in float64."""
    a, b = np.asarray(logits, np.float64), np.asarray(source, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def mlp_units(blocks: dict, l: int) -> tuple[np.ndarray, np.ndarray]:
    """Layer l's MLP units: (incoming [d or 2d, ff]: ``w_gate`` and ``w_up`` stacked on the
    fan-in axis, outgoing ``w_down`` [ff, d])."""
    ins = [blocks[k][l] for k in ("w_gate", "w_up") if k in blocks]
    return np.concatenate(ins, axis=0), np.asarray(blocks["w_down"][l])


def head_units(blocks: dict, l: int) -> tuple[np.ndarray, np.ndarray]:
    """Layer l's query heads ``h = kv_i group + j`` as units: (incoming [3 d hd, H]: the head's
    q rows and its kv head's k and v rows, outgoing [H, hd d]: its o columns)."""
    wq = np.asarray(blocks["wq"][l])  # [d, kv, g, hd]
    d, kv, g, hd = wq.shape
    q = wq.transpose(1, 2, 0, 3).reshape(kv * g, d * hd)
    k, v = (np.repeat(np.asarray(blocks[n][l]).transpose(1, 0, 2).reshape(kv, d * hd), g, axis=0)
            for n in ("wk", "wv"))  # fmt: skip
    return np.concatenate([q, k, v], axis=1).T, np.asarray(blocks["wo"][l]).reshape(kv * g, -1)


def unit_norms(w_in: np.ndarray, w_out: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-unit ``||w_in[:, i]||`` and ``||w_out[i, :]||`` (the RC tie's raw data)."""
    return np.linalg.norm(w_in, axis=0).tolist(), np.linalg.norm(w_out, axis=1).tolist()


def permute_ff(params: dict, l: int, key: jax.Array) -> dict:
    """params with layer l's MLP units permuted as wholes (incoming columns, biases and
    outgoing rows by one permutation): the same function."""
    blocks = dict(params["blocks"])
    perm = np.asarray(jax.random.permutation(key, blocks["w_down"].shape[1]))
    axes = {"w_gate": -1, "w_up": -1, "b_gate": -1, "b_up": -1, "w_down": 0}
    for name, axis in axes.items():
        if name in blocks:
            stacked = np.array(blocks[name])
            stacked[l] = np.take(stacked[l], perm, axis=axis)
            blocks[name] = stacked
    return {**params, "blocks": blocks}


def analyze_decoder(
    path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    draws: int = 8,
    num_shuffles: int = 200,
    seed: int = 0,
    control_repeats: int = 4,
) -> dict:
    """RC diagnostics of the HF decoder directory ``path`` (see the module doc); ``draws`` >= 2
    paired draws of the positive control, ``control_repeats`` >= 1 arms of destroyed copies
    measure its false-positive rate. Returns a JSON-able dict; writes ``analysis.json``
    and ``analysis.png`` to ``out_dir`` when given."""
    if draws < 2:
        raise GrowthError(f"draws={draws}: need >= 2 paired draws for the positive control")
    params, config, spec = load_decoder(path)
    if config.get("model_type") not in DECODERS:
        raise GrowthError(f"analyze {path}: model_type {config.get('model_type')!r} is not a "
                          f"decoder; expected one of {DECODERS}")  # fmt: skip
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
    c = decoder_config(config)
    blocks, L, n_ff = params["blocks"], c.n_layers, c.d_ff
    ids = probe_ids(c.vocab, c.max_len)

    def logits(p: dict) -> np.ndarray:
        cfg = decoder.resize(c, {"ff": int(p["blocks"]["w_down"].shape[1])})
        return np.asarray(_forward("decoder", cfg)(p, ids))

    source = logits(params)

    def error(p: dict) -> float:
        return relative_error(logits(p), source)

    key = jax.random.key(seed)
    k_tie, k_perm = jax.random.split(key)
    ties, norms = {}, {}
    for l in range(L):
        units = {"ff": mlp_units(blocks, l)}
        if c.n_heads >= 3:
            units["heads"] = head_units(blocks, l)
        for i, (space, (w_in, w_out)) in enumerate(units.items()):
            name = f"{space}@layer{l}"
            ties[name] = rc_tie(w_in, w_out, jax.random.fold_in(k_tie, 2 * l + i),
                                num_shuffles).to_dict()  # fmt: skip
            if space == "heads":
                norms[name] = unit_norms(w_in, w_out)
    verdicts = {
        "rc_tie": {s: tie_verdict(t) for s, t in ties.items()},
        "positive_control": positive_control(params, spec, error, space="ff", n=n_ff,
                                             leaf=("blocks", "w_down"), draws=draws,
                                             seed=seed, repeats=control_repeats),  # fmt: skip
        "identities": {
            "unit_permutation": identity("whole-unit permutation of ff@layer0 keeps the logits",
                                         error(permute_ff(params, 0, k_perm)), 0.0),  # fmt: skip
            "balanced_gap": balanced_identity(params, spec, error, space="ff", n=n_ff,
                                              seed=seed),  # fmt: skip
        },
    }
    result = {
        "checkpoint": str(path),
        "family": f"hf-{config['model_type']}",
        "sizes": {"d": c.d_model, "heads": c.n_heads, "kv_heads": c.n_kv_heads,
                  "head_dim": c.head_dim, "ff": n_ff, "layers": L},  # fmt: skip
        "probe": {"shape": list(ids.shape), "tokens": "uniform over the vocabulary, seed 0"},
        "error": "relative logit error ||z' - z||_F / ||z||_F vs the source on the probe",
        "seed": seed,
        "rc_tie": ties,
        "head_norms": norms,
        "verdicts": verdicts,
        "exit_code": exit_code(verdicts),
    }
    if out_dir is not None:
        result["out"] = str(write_outputs(out_dir, result, plot=write_tie_plot))
    return result


def write_tie_plot(path: Path, result: dict) -> None:
    """Two panels: per layer, the paired Spearman of each space against its shuffled null
    (mean +- 2 sd; filled markers: p <= ALPHA); per head, incoming vs outgoing norm by layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    ties = result["rc_tie"]
    for space, marker in (("ff", "o"), ("heads", "s")):
        rows = [(int(s.split("@layer")[1]), t) for s, t in ties.items()
                if s.startswith(space + "@")]  # fmt: skip
        if not rows:
            continue
        layer = np.asarray([r[0] for r in rows])
        paired = np.asarray([r[1]["paired"] for r in rows])
        mean = np.asarray([r[1]["shuffled_mean"] for r in rows])
        sd = np.asarray([r[1]["shuffled_sd"] for r in rows])
        hit = np.asarray([r[1]["p"] <= ALPHA for r in rows])
        line = ax.plot(layer, paired, marker + "-", mfc="none", label=f"{space}: paired")[0]
        ax.plot(layer[hit], paired[hit], marker, color=line.get_color())
        ax.fill_between(layer, mean - 2 * sd, mean + 2 * sd, color=line.get_color(), alpha=0.15,
                        label=f"{space}: shuffled null ± 2 sd")  # fmt: skip
    ax.set_xlabel("layer")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("Spearman(||in||, ||out||)")
    ax.set_title(f"RC tie per layer (filled: p <= {ALPHA})")
    ax.legend(fontsize=8)
    for name, (a, b) in result["head_norms"].items():
        bx.scatter(a, b, s=14, label=name.replace("heads@", ""))
    bx.set_xlabel("||incoming q/k/v rows||")
    bx.set_ylabel("||outgoing o columns||")
    bx.set_title("per head")
    if result["head_norms"]:
        bx.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_decoder_report(r: dict) -> str:
    """Readable text report of :func:`analyze_decoder`'s result."""
    lines = [
        f"HF decoder {r['checkpoint']} ({r['family']}, sizes {r['sizes']})",
        f"error = {r['error']} (probe {r['probe']['shape'][0]} x {r['probe']['shape'][1]} tokens)",
        "",
        *tie_lines(r["rc_tie"]),
        *verdict_lines(r["verdicts"]),
        *outputs_line(r),
    ]
    return "\n".join(lines)
