"""Which transformer block a tensor belongs to, from its state-dict name.

A *layer* is one transformer block: every tensor whose name carries the block index
(``model.layers.3.``, GPT-2 ``h.3.``, BERT ``encoder.layer.3.``, T5 ``block.3.``, CLIP
``resblocks.3.``). Embeddings, the final norm and the LM head belong to no layer (None).
"""

from __future__ import annotations

import re

# Ordered: the first pattern that matches wins. Anchored on dots so "layers.1" never matches "layers.10".
LAYER_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        r"(?:^|\.)layers\.(\d+)\.",
        r"(?:^|\.)h\.(\d+)\.",
        r"(?:^|\.)layer\.(\d+)\.",
        r"(?:^|\.)blocks?\.(\d+)\.",
        r"(?:^|\.)resblocks\.(\d+)\.",
    )
)


def layer_index(name: str) -> int | None:
    """Block index of tensor ``name``, or None for tensors outside the blocks."""
    for pattern in LAYER_PATTERNS:
        match = pattern.search(name)
        if match:
            return int(match.group(1))
    return None


def with_layer(name: str, index: int) -> str:
    """``name`` with its block index replaced by ``index`` (a slice's output layer); unchanged outside blocks."""
    for pattern in LAYER_PATTERNS:
        match = pattern.search(name)
        if match:
            return f"{name[:match.start(1)]}{index}{name[match.end(1):]}"
    return name
