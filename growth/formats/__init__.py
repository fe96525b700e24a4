"""Formats (layer 2): orbax checkpoints (:mod:`.checkpoint`), streaming growth between checkpoints
larger than memory (:mod:`.stream`) and Hugging Face safetensors directories (:mod:`.hf`)."""
