"""``grow analyze``: RC-ansatz diagnostics of a trained network, for every family we read:

- :mod:`.native`: an mfgrow checkpoint (MLP / residual MLP) on its own dataset's test split;
- :mod:`.hf`: a Hugging Face BERT directory (e.g. all-MiniLM-L6-v2), measured on its sentence
  embeddings;
- :mod:`.decoder`: a Hugging Face GPT-2 / Llama / Mistral / Qwen2 directory, measured by the
  relative logit error on fixed probe tokens;

shared by all three: :mod:`.verdicts` (null hypotheses, thresholds, the positive control),
:mod:`.lln` (the LLN fit of iid growth) and :mod:`.report` (text reports, output files).

:func:`analyze` picks the reader from what the path holds.
"""

from __future__ import annotations

import os
from pathlib import Path

from growth.apps.analyze.decoder import analyze_decoder, format_decoder_report
from growth.apps.analyze.hf import analyze_hf, format_hf_report
from growth.apps.analyze.native import analyze_checkpoint, format_report
from growth.formats.hf.io import CONFIG, DECODERS, read_config


def analyze(
    path: str | os.PathLike, out: str | os.PathLike | None = None, *, draws: int = 8, seed: int = 0
) -> tuple[dict, str]:
    """Analyse the checkpoint at ``path`` (a HF directory when it holds ``config.json``: a
    decoder by its ``model_type``, else BERT; otherwise an mfgrow checkpoint); returns
    ``(report, text)``; writes ``analysis.json`` and the plot to ``out`` when given."""
    if (Path(path) / CONFIG).is_file():
        if read_config(Path(path)).get("model_type") in DECODERS:
            report = analyze_decoder(path, out, draws=draws, seed=seed)
            return report, format_decoder_report(report)
        report = analyze_hf(path, out, draws=draws, seed=seed)
        return report, format_hf_report(report)
    report = analyze_checkpoint(path, out, draws=draws, seed=seed)
    return report, format_report(report)


__all__ = ["analyze", "analyze_checkpoint", "analyze_decoder", "analyze_hf"]
