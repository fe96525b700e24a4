"""Shared I/O of Hugging Face-style checkpoint directories (``config.json`` +
``model.safetensors``, via ``safetensors.numpy``; no torch): reading and checking the config,
reading the tensors, the atomic directory write, and growth-target parsing. Used by
:mod:`growth.formats.hf` (BERT) and :mod:`growth.formats.hf.decoder` (GPT-2, Llama)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from growth.errors import CheckpointError, GrowthError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
SUPPORTED = ("bert", "gpt2", "llama")
DECODERS = ("gpt2", "llama")  # handled by growth.formats.hf.decoder
PRIVATE = "_mfgrow"  # config key holding import facts (prefix, buffers, dtypes); not exported


def _safetensors():
    """``(load_file, save_file, safe_open)`` of ``safetensors`` (numpy flavour)."""
    try:
        from safetensors import safe_open
        from safetensors.numpy import load_file, save_file
    except ImportError as e:  # pragma: no cover - it is a dependency
        raise CheckpointError("reading HF checkpoints needs the 'safetensors' package") from e
    return load_file, save_file, safe_open


def read_config(path: Path) -> dict:
    """``config.json`` of a HF checkpoint directory (which must also hold ``model.safetensors``),
    checked to be a JSON object with a supported ``model_type``."""
    if not path.is_dir():
        raise CheckpointError(f"HF checkpoint {str(path)!r}: no such directory")
    for name in (CONFIG, WEIGHTS):
        if not (path / name).is_file():
            raise CheckpointError(
                f"HF checkpoint {str(path)!r}: missing {name!r} (expected {CONFIG} + {WEIGHTS}; "
                "sharded or .bin checkpoints are not supported)"
            )
    try:
        config = json.loads((path / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path / CONFIG}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path / CONFIG}: expected a JSON object")
    kind = config.get("model_type")
    if kind not in SUPPORTED:
        arch = config.get("architectures")
        raise GrowthError(
            f"HF checkpoint {str(path)!r}: unsupported architecture model_type={kind!r} "
            f"(architectures={arch}); supported: {list(SUPPORTED)} (BERT-family encoders, "
            "GPT-2 and Llama decoders)"
        )
    return config


def read_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(tensors, safetensors metadata)`` of ``path/model.safetensors``."""
    load_file, _, safe_open = _safetensors()
    try:
        tensors = load_file(str(path / WEIGHTS))
        with safe_open(str(path / WEIGHTS), framework="numpy") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path / WEIGHTS}: cannot read ({type(e).__name__}: {e})") from e
    return tensors, metadata


def write_checkpoint(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
    metadata: Mapping[str, str],
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` atomically (temporary sibling directory,
    then rename; an existing ``path`` is replaced only with ``overwrite``)."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise CheckpointError(f"{str(target)!r} exists; pass overwrite=True (--overwrite)")
    _, save_file, _ = _safetensors()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{secrets.token_hex(6)}")
    tmp.mkdir()
    try:
        save_file(dict(tensors), str(tmp / WEIGHTS), metadata=dict(metadata))
        (tmp / CONFIG).write_text(json.dumps(dict(config), indent=2) + "\n")
        if target.exists():
            old = target.with_name(f"{target.name}.old-{secrets.token_hex(6)}")
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def parse_growth_targets(spec_sizes: Mapping[str, int], value: Any, what: str) -> dict[str, int]:
    """``{space: new size}`` from a dict (as is), a factor (``2`` -> ``"x2"``: every space) or a
    ``"x2"`` / ``"d=768,heads=x2"`` string (``growth.spec.parse_targets``)."""
    if value is None or isinstance(value, Mapping):
        return dict(value or {})
    from growth.spec import parse_targets

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = f"x{value}"
    return parse_targets(str(value), spec_sizes, what)


def refuse_unused(path: Path, tensors: Mapping[str, Any], used: set[str], supported: str) -> None:
    """GrowthError naming (up to five of) the tensors an importer did not consume."""
    extra = sorted(set(tensors) - used)
    if extra:
        raise GrowthError(
            f"HF checkpoint {str(path)!r}: unsupported tensors {extra[:5]}"
            f"{' ...' if len(extra) > 5 else ''} ({supported})"
        )


def numpy_tree(tree: Any) -> Any:
    """Nested dict of arrays -> the same nesting of (copied, C-contiguous) numpy arrays."""
    if isinstance(tree, Mapping):
        return {k: numpy_tree(v) for k, v in tree.items()}
    return np.array(tree)
