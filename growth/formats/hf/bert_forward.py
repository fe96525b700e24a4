"""A numpy reference forward pass and tokenizer for BERT-family checkpoints (``growth.formats.hf``).

:func:`encode` is a minimal BERT forward (post-LN, GELU) with sentence-transformers' mean pooling
and L2 normalisation; :func:`tokenize` uses the ``tokenizers`` package when installed, else a
minimal WordPiece tokenizer built from ``tokenizer.json`` (enough for plain text); :func:`fold`
reads a grown model's hidden vectors back in the source's space.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from growth.errors import CheckpointError, GrowthError

#: Real sentences for checks of sentence embeddings (the first 8 are experiments/minilm_growth's).
SENTENCES = (
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A cheetah is running behind its prey.",
    "Stock markets fell sharply on Monday after the central bank raised interest rates.",
    "The new library opens at nine and closes late on Fridays.",
    "Heavy rain is expected across the north of the country tomorrow.",
    "She solved the puzzle in under a minute.",
    "Scientists discovered a new species of frog in the rainforest.",
)


def fold(x: np.ndarray, index: Any, n: int) -> np.ndarray:
    """Average the copies of each source unit on the last axis (``index``: the space's map
    ``g: [N] -> [n]``), i.e. read a grown model's hidden vector back in the source's space."""
    index = np.asarray(index)
    out = np.zeros(x.shape[:-1] + (n,), x.dtype)
    np.add.at(np.moveaxis(out, -1, 0), index, np.moveaxis(x, -1, 0))
    return out / np.bincount(index, minlength=n)


def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def hidden_states(
    params: Mapping[str, Any],
    config: Mapping[str, Any],
    ids: np.ndarray,
    mask: np.ndarray,
    *,
    dtype: Any = np.float32,
) -> np.ndarray:
    """Last hidden states ``[B, T, d]`` of a BERT (post-LN, GELU) for token ids ``[B, T]``."""
    if config.get("hidden_act", "gelu") != "gelu":
        raise GrowthError(f"hidden_act={config.get('hidden_act')!r}: only 'gelu' is supported")
    eps = float(config.get("layer_norm_eps", 1e-12))
    p = {g: {k: np.asarray(v, dtype) for k, v in d.items()} for g, d in params.items()}
    e, ly = p["embeddings"], p["layers"]
    T = ids.shape[1]
    x = e["word"][ids] + e["position"][:T][None] + e["token_type"][0][None, None]
    x = _layer_norm(x, e["ln_g"], e["ln_b"], eps)
    bias = np.where(mask[:, None, None, :] > 0, 0.0, np.finfo(dtype).min).astype(dtype)
    L, H, hd, _ = ly["q_w"].shape
    for i in range(L):
        q = np.einsum("btd,hkd->bhtk", x, ly["q_w"][i]) + ly["q_b"][i][None, :, None]
        k = np.einsum("btd,hkd->bhtk", x, ly["k_w"][i]) + ly["k_b"][i][None, :, None]
        v = np.einsum("btd,hkd->bhtk", x, ly["v_w"][i]) + ly["v_b"][i][None, :, None]
        s = np.einsum("bhtk,bhsk->bhts", q, k) / np.sqrt(hd).astype(dtype) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        a = s / s.sum(-1, keepdims=True)
        ctx = np.einsum("bhts,bhsk->bhtk", a, v)
        attn = np.einsum("bhtk,dhk->btd", ctx, ly["o_w"][i]) + ly["o_b"][i]
        x = _layer_norm(x + attn, ly["ln1_g"][i], ly["ln1_b"][i], eps)
        h = _gelu(x @ ly["ff1_w"][i].T + ly["ff1_b"][i])
        x = _layer_norm(
            x + h @ ly["ff2_w"][i].T + ly["ff2_b"][i], ly["ln2_g"][i], ly["ln2_b"][i], eps
        )
    return x


def mean_pool(x: np.ndarray, mask: np.ndarray, normalize: bool = True) -> np.ndarray:
    """sentence-transformers pooling: mean over the attention mask, then L2-normalise."""
    m = mask[..., None].astype(x.dtype)
    pooled = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    if normalize:
        pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return pooled


class WordPiece:
    """Minimal BERT tokenizer from ``tokenizer.json`` (uncased): clean, lowercase, strip accents,
    split on whitespace and punctuation, greedy longest-match-first WordPiece."""

    def __init__(self, tokenizer_json: str | os.PathLike):
        spec = json.loads(Path(tokenizer_json).read_text())
        model = spec.get("model", {})
        if model.get("type") != "WordPiece":
            raise GrowthError(f"{tokenizer_json}: not a WordPiece tokenizer")
        self.vocab: dict[str, int] = model["vocab"]
        self.unk = model.get("unk_token", "[UNK]")
        self.prefix = model.get("continuing_subword_prefix", "##")
        self.max_chars = int(model.get("max_input_chars_per_word", 100))
        norm = spec.get("normalizer") or {}
        self.lowercase = bool(norm.get("lowercase", True))

    def _words(self, text: str) -> list[str]:
        text = "".join(
            " " if c.isspace() else c
            for c in text
            if not (ord(c) in (0, 0xFFFD) or unicodedata.category(c) in ("Cc", "Cf")) or c.isspace()
        )
        if self.lowercase:
            text = unicodedata.normalize("NFD", text.lower())
            text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        words = []
        for w in text.split():
            words += [t for t in re.split(r"([^\w\s]|_)", w) if t]
        return words

    def _pieces(self, word: str) -> list[str]:
        if len(word) > self.max_chars:
            return [self.unk]
        out, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            if end == start:
                return [self.unk]
            out.append(piece)
            start = end
        return out

    def encode(self, text: str, max_len: int = 128) -> list[int]:
        pieces = [p for w in self._words(text) for p in self._pieces(w)][: max_len - 2]
        return [self.vocab["[CLS]"], *(self.vocab[p] for p in pieces), self.vocab["[SEP]"]]


def tokenize(
    model_dir: str | os.PathLike, texts: Sequence[str], *, max_len: int = 128, fast: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask ``[B, T]`` (right-padded with 0) for ``texts``.

    Uses the ``tokenizers`` package when installed and ``fast``, else :class:`WordPiece`."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{str(model_dir)!r}: missing 'tokenizer.json'")
    seqs = None
    if fast:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            Tokenizer = None
        if Tokenizer is not None:
            tok = Tokenizer.from_file(str(path))
            tok.no_padding()
            tok.enable_truncation(max_len)
            seqs = [e.ids for e in tok.encode_batch(list(texts))]
    if seqs is None:
        wp = WordPiece(path)
        seqs = [wp.encode(t, max_len) for t in texts]
    T = max(len(s) for s in seqs)
    ids = np.zeros((len(seqs), T), np.int64)
    mask = np.zeros((len(seqs), T), np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask


def encode(
    params: Mapping[str, Any],
    config: Mapping[str, Any],
    ids: np.ndarray,
    mask: np.ndarray,
    *,
    dtype: Any = np.float32,
) -> np.ndarray:
    """Sentence embeddings (mean pooling + L2 normalisation, as all-MiniLM-L6-v2)."""
    return mean_pool(hidden_states(params, config, ids, mask, dtype=dtype), mask)
