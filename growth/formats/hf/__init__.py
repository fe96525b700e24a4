"""Hugging Face-style safetensors checkpoints in and out of mfgrow.

- :mod:`.io`: the shared directory I/O (config, tensors, atomic write, growth targets);
- :mod:`.bert`: BERT-family encoders, and the entry points that dispatch on ``model_type``;
- :mod:`.decoder` and :mod:`.layout`: GPT-2 / Llama / Mistral / Qwen2 causal LMs mapped onto our
  decoder family; :mod:`.stream`: their growth one tensor at a time (what ``grow_hf`` runs);
- :mod:`.bert_forward`: a numpy BERT forward and tokenizer (what ``grow analyze`` measures with).
"""

from growth.formats.hf.bert import (
    bert_spec,
    grow_hf,
    grow_params,
    grown_config,
    load_hf,
    minilm_dir,
    save_hf,
)
from growth.formats.hf.io import CONFIG, DEFAULT_SHARD_SIZE, INDEX, SUPPORTED, WEIGHTS
from growth.formats.hf.stream import grow_decoder_stream

__all__ = [
    "CONFIG", "DEFAULT_SHARD_SIZE", "INDEX", "SUPPORTED", "WEIGHTS", "bert_spec",
    "grow_decoder_stream", "grow_hf", "grow_params", "grown_config", "load_hf", "minilm_dir",
    "save_hf",
]
