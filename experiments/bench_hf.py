"""Wall time and peak memory of growing Hugging Face checkpoints (``grow grow --from-hf``),
per output byte, against a plain file copy of the same number of bytes.

Sources are synthetic Llama-shaped checkpoints in bfloat16, sharded like ``save_pretrained``
(``model-0000i-of-0000n.safetensors`` + index, 5 GB shards), written with numpy (no torch): each
tensor is a tiled block of random bf16 values (content is irrelevant to the cost of a copy-type
growth). The job is SOLAR-style depth up-scaling (``--depth-slices 0:3L/4,L/4:L``, the mergekit
``passthrough`` job: 1.5 L layers, no width growth, method ``copy``); ``--llama-pro`` adds a
LLaMA-Pro expansion (+L/4 zero-output blocks, computed rather than copied) per size.

Each measurement runs in a fresh process under ``/usr/bin/time -f "%e %M"`` (wall seconds,
peak RSS); ``startup`` is the wall time of ``grow grow --help`` (interpreter, jax, parser),
also reported subtracted. The baseline copies the source shards with ``cp``
(``copy_file_range``); figures are per byte written, so the ratio compares growth with copying
its own output size.
``--mergekit PATH`` (a mergekit install's ``bin`` folder, optional, never a test dependency)
runs ``mergekit-yaml`` (default options) with the same passthrough slices on the same source,
timed the same way (its startup: ``mergekit-yaml --help``), and compares its output with ours
tensor by tensor (names, dtypes, shapes, raw bytes).

    python experiments/bench_hf.py --sizes s,m --work /work/tmp-bench   # -> docs/bench_hf.json
    python experiments/bench_hf.py --sizes 8b --work /work/tmp-bench     # ~40 GB of disk

Sizes (source -> DUS output, bf16): s 0.6 -> 0.8 GB, m 2.0 -> 2.9 GB, l 7.3 -> 9.9 GB,
8b (Llama-3-8B shape) 16.1 -> 23.0 GB. Results: ``docs/bench_hf.json`` (merged with
earlier runs by size).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: name -> (hidden, intermediate, layers, heads, kv heads, vocab)
SIZES = {
    "xs": (64, 160, 4, 4, 2, 256),  # for the tests
    "s": (1024, 3584, 16, 16, 8, 32000),
    "m": (2048, 7168, 16, 16, 8, 32000),
    "l": (4096, 14336, 12, 32, 8, 128256),
    "8b": (4096, 14336, 32, 32, 8, 128256),
}
SHARD = 5 * 10**9


def llama_config(size: str) -> dict:
    d, ff, L, H, kv, V = SIZES[size]
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": V,
            "hidden_size": d, "intermediate_size": ff, "num_hidden_layers": L,
            "num_attention_heads": H, "num_key_value_heads": kv, "hidden_act": "silu",
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "tie_word_embeddings": False, "torch_dtype": "bfloat16"}  # fmt: skip


def llama_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    d, ff, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = d // cfg["num_attention_heads"]
    kvd = cfg["num_key_value_heads"] * hd
    out = {"model.embed_tokens.weight": (V, d)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out |= {p + "input_layernorm.weight": (d,), p + "self_attn.q_proj.weight": (d, d),
                p + "self_attn.k_proj.weight": (kvd, d), p + "self_attn.v_proj.weight": (kvd, d),
                p + "self_attn.o_proj.weight": (d, d), p + "post_attention_layernorm.weight": (d,),
                p + "mlp.gate_proj.weight": (ff, d), p + "mlp.up_proj.weight": (ff, d),
                p + "mlp.down_proj.weight": (d, ff)}  # fmt: skip
    return out | {"model.norm.weight": (d,), "lm_head.weight": (V, d)}


def _write_safetensors(file: Path, shapes: dict[str, tuple[int, ...]], block: np.ndarray):
    """A bf16 safetensors file (header by hand: 8-byte length + JSON), each tensor the random
    ``block`` (uint16 bit patterns of bf16) tiled to its size, written in 64 MB pieces."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        n = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(file, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for shape in shapes.values():
            left = int(np.prod(shape))
            while left:
                k = min(left, block.size)
                f.write(block[:k].tobytes())
                left -= k


def write_source(path: Path, size: str) -> int:
    """Write the synthetic sharded checkpoint; returns its weight bytes."""
    cfg = llama_config(size)
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    (path / "generation_config.json").write_text('{"bos_token_id": 1, "eos_token_id": 2}')
    (path / "tokenizer_config.json").write_text('{"model_max_length": 8192}')
    rng = np.random.default_rng(0)
    # bf16 bit patterns of N(0, 0.02) values: the high 16 bits of float32
    block = (rng.normal(0, 0.02, 1 << 25).astype(np.float32).view(np.uint32) >> 16)
    block = block.astype(np.uint16)
    shapes = llama_shapes(cfg)
    shards, used = [[]], 0
    for name, shape in shapes.items():
        n = 2 * int(np.prod(shape))
        if shards[-1] and used + n > SHARD:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += n
    weight_map = {}
    for i, names in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        _write_safetensors(path / file, {n: shapes[n] for n in names}, block)
        weight_map |= {n: file for n in names}
    total = sum(2 * int(np.prod(s)) for s in shapes.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


def timed(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd`` under ``/usr/bin/time``: ``{"wall_s", "peak_rss_mb"}`` (raises on failure)."""
    fmt = "__TIME__ %e %M"
    r = subprocess.run(["/usr/bin/time", "-f", fmt, *cmd], capture_output=True, text=True,
                       env=env)  # fmt: skip
    line = [x for x in r.stderr.splitlines() if x.startswith("__TIME__")]
    if r.returncode or not line:
        tail = r.stdout[-2000:] + r.stderr[-3000:]
        raise RuntimeError(f"{cmd[0]} failed ({r.returncode}):\n{tail}")
    _, wall, rss = line[-1].split()
    return {"wall_s": float(wall), "peak_rss_mb": int(rss) / 1024}


def weight_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def _grow_cmd(src: Path, out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "growth", "grow", "--from-hf", str(src), "--to-hf", str(out),
            "--width", "", *extra]  # fmt: skip


def _mergekit_yaml(src: Path, slices: list[tuple[int, int]]) -> str:
    """mergekit's ``passthrough`` config for the same DUS job: one slice per ``a:b`` range."""
    lines = ["slices:"] + [
        f"  - sources:\n      - model: {src}\n        layer_range: [{a}, {b}]" for a, b in slices
    ] + ["merge_method: passthrough", "dtype: bfloat16"]  # fmt: skip
    return "\n".join(lines) + "\n"


def _mergekit(bin_dir: Path, src: Path, out: Path, slices: list[tuple[int, int]]) -> dict:
    """Time ``mergekit-yaml`` (default options, CPU) on the DUS job, like ``grow`` above."""
    yml = out.with_suffix(".yml")
    yml.write_text(_mergekit_yaml(src, slices))
    try:
        res = timed([str(bin_dir / "mergekit-yaml"), str(yml), str(out)])
    finally:
        yml.unlink()
    res["out_bytes"] = weight_bytes(out)
    res["shards"] = len(list(out.glob("*.safetensors")))
    return res


def _tensor_index(folder: Path) -> dict[str, tuple[Path, str, list[int], int, int]]:
    """name -> (file, dtype, shape, start, end): absolute byte ranges of every tensor in a
    folder of safetensors files (8-byte header length + JSON header, then the data)."""
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        with open(file, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        for name, h in header.items():
            if name != "__metadata__":
                a, b = h["data_offsets"]
                out[name] = (file, h["dtype"], h["shape"], 8 + n + a, 8 + n + b)
    return out


def _read_range(file: Path, start: int, end: int) -> bytes:
    with open(file, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def same_tensors(a: Path, b: Path) -> dict:
    """Compare two safetensors folders tensor by tensor: names, dtypes, shapes and raw bytes.
    ``{"equal": bool, "tensors": n, "differ": [names, at most 10]}``."""
    ia, ib = _tensor_index(a), _tensor_index(b)
    differ = sorted(set(ia) ^ set(ib))
    for name in sorted(set(ia) & set(ib)):
        (fa, da, sa, s0, e0), (fb, db, sb, s1, e1) = ia[name], ib[name]
        if (da, sa) != (db, sb) or _read_range(fa, s0, e0) != _read_range(fb, s1, e1):
            differ.append(name)
    return {"equal": not differ, "tensors": len(ia), "differ": differ[:10]}


def bench_size(size: str, work: Path, llama_pro: bool, mergekit: Path | None) -> dict:
    src, copy, out = work / f"src-{size}", work / f"copy-{size}", work / f"out-{size}"
    mk_out = work / f"mergekit-{size}"
    for p in (src, copy, out, mk_out):
        shutil.rmtree(p, ignore_errors=True)
    t0 = time.time()
    src_bytes = write_source(src, size)
    L = SIZES[size][2]
    slices = [(0, 3 * L // 4), (L // 4, L)]
    row: dict = {"size": size, "shape": dict(zip(("hidden", "ff", "layers", "heads", "kv",
                 "vocab"), SIZES[size], strict=True)), "src_bytes": src_bytes,
                 "generate_s": round(time.time() - t0, 1)}  # fmt: skip
    try:
        copy.mkdir()
        files = sorted(str(f) for f in src.glob("*.safetensors"))
        row["copy"] = timed(["cp", *files, str(copy)]) | {"bytes": weight_bytes(copy)}
        shutil.rmtree(copy)
        env = os.environ | {"PYTHONPATH": str(ROOT)}
        # the fixed cost of a `grow` process (interpreter, jax, argument parsing)
        row["startup"] = timed([sys.executable, "-m", "growth", "grow", "--help"], env=env)
        jobs = {"dus": ["--depth-slices", ",".join(f"{a}:{b}" for a, b in slices),
                        "--method", "copy"]}  # fmt: skip
        if llama_pro:
            jobs["llama_pro"] = ["--depth", f"layers={L + L // 4}", "--method",
                                 "copy:depth=llama-pro"]  # fmt: skip
        for job, extra in jobs.items():
            res = timed(_grow_cmd(src, out, extra), env=env)
            res["out_bytes"] = weight_bytes(out)
            res["shards"] = len(list(out.glob("*.safetensors")))
            row[job] = res
            if job == "dus" and mergekit is not None:
                row["mergekit_startup"] = timed([str(mergekit / "mergekit-yaml"), "--help"])
                row["mergekit_dus"] = _mergekit(mergekit, src, mk_out, slices)
                row["mergekit_dus"]["same_tensors_as_dus"] = same_tensors(out, mk_out)
                shutil.rmtree(mk_out)
            shutil.rmtree(out)
    finally:
        for p in (src, copy, out, mk_out):
            shutil.rmtree(p, ignore_errors=True)
    # /usr/bin/time resolves 0.01 s: a copy of the test size can read 0.00
    copy_s_per_gb = max(row["copy"]["wall_s"], 0.01) / (row["copy"]["bytes"] / 1e9)
    for job in ("dus", "llama_pro", "mergekit_dus"):
        if job in row:
            r = row[job]
            r["s_per_gb"] = r["wall_s"] / (r["out_bytes"] / 1e9)
            r["x_copy"] = r["s_per_gb"] / copy_s_per_gb
            # the same per-byte ratio without the tool's own process start (`--help`)
            start = row["mergekit_startup" if job == "mergekit_dus" else "startup"]["wall_s"]
            net = r["wall_s"] - start
            r["x_copy_after_startup"] = net / (r["out_bytes"] / 1e9) / copy_s_per_gb
            r["rss_per_gb_mb"] = r["peak_rss_mb"] / (r["out_bytes"] / 1e9)
    row["copy"]["s_per_gb"] = copy_s_per_gb
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="s,m", help=f"comma list of {sorted(SIZES)}")
    ap.add_argument("--work", default="/work/tmp-bench", help="scratch folder (deleted after)")
    ap.add_argument("--llama-pro", action="store_true", help="also time LLaMA-Pro expansion")
    ap.add_argument("--mergekit", default=None, help="a mergekit install's bin/ (optional)")
    ap.add_argument("--out", default=str(ROOT / "docs"), help="folder of bench_hf.json")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench_hf.json"
    rows = {r["size"]: r for r in json.loads(path.read_text())} if path.exists() else {}
    for size in a.sizes.split(","):
        free = shutil.disk_usage(work).free
        row = bench_size(size, work, a.llama_pro, Path(a.mergekit) if a.mergekit else None)
        row["disk_free_gb_before"] = round(free / 1e9, 1)
        rows[size] = row
        path.write_text(json.dumps(list(rows.values()), indent=2) + "\n")
        d = row["dus"]
        print(f"{size}: {row['src_bytes'] / 1e9:.2f} -> {d['out_bytes'] / 1e9:.2f} GB, "
              f"grow {d['wall_s']:.1f} s ({d['x_copy']:.2f}x copy), peak {d['peak_rss_mb']:.0f} MB",
              flush=True)  # fmt: skip
    if not any(work.iterdir()):
        work.rmdir()
    return list(rows.values())


if __name__ == "__main__":
    main()
