"""The files a merged model needs besides its weights: config, generation config, tokenizer.

As mergekit 0.1.5 writes them: the config of the base (else the first model) with its dtype entry set
to the output dtype, its layer count set to the slices' total (``slices:``; a per-layer
``layer_types`` list is stacked the same way, which mergekit does not do) and its vocabulary size to
the output tokenizer's (``tokenizer_source``); the tokenizer copied from the same folder, or, when one
was built (``tokenizer_source``) or a ``chat_template`` is set, saved by transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mergeline.merge.config import MergeConfig
from mergeline.io.safetensors_io import copy_model_files
from mergeline.merge.slices import output_layers
from mergeline.merge.tokenizer import TOKENIZER_FILES, Vocabulary, output_tokenizer

# Where architectures keep their block count in config.json (mergekit's num_layers_config_key).
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def write_model_files(config: MergeConfig, source: Path | None, out: Path, dtype_name: str | None,
                      vocab: Vocabulary | None) -> list[str]:
    """Write config and tokenizer files into ``out``; returns their names."""
    copied = copy_model_files(source, out, dtype_name) if source else []
    updates: dict[str, Any] = {}
    if config.slices:
        updates["layers"] = output_layers(config)
        updates["ranges"] = [piece.sources[0].layer_range for piece in config.slices]
    if vocab is not None:
        updates["vocab_size"] = vocab.size
    if updates and (out / "config.json").is_file():
        _update_config(out / "config.json", updates)
    tokenizer = output_tokenizer(config, source, vocab)
    if tokenizer is not None:
        for name in TOKENIZER_FILES:
            (out / name).unlink(missing_ok=True)
        copied = [name for name in copied if name not in TOKENIZER_FILES]
        tokenizer.save_pretrained(str(out))
        copied += sorted(p.name for p in out.iterdir() if p.name in TOKENIZER_FILES and p.name not in copied)
    return copied


def _update_config(path: Path, updates: dict[str, Any]) -> None:
    data = json.loads(path.read_text())
    if "layers" in updates:
        key = next((k for k in LAYER_COUNT_KEYS if k in data), None)
        if key is not None:
            data[key] = updates["layers"]
        # Per-layer lists (Qwen3's, Gemma 3's ``layer_types``) follow the stacked ranges; mergekit leaves
        # them as they were, and transformers then refuses the config (list length ≠ layer count).
        types = data.get("layer_types")
        if isinstance(types, list) and all(b <= len(types) for _, b in updates["ranges"]):
            data["layer_types"] = [t for a, b in updates["ranges"] for t in types[a:b]]
    if "vocab_size" in updates:
        data["vocab_size"] = updates["vocab_size"]
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
