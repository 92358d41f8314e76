"""Importance scores and per-layer diagnostics: STA Taylor importance, LATA layer cosines, MetaGPT norms."""

from mergeline.importance.diagnostics import importance_stats, layer_similarities, vector_norms
from mergeline.importance.sta import StaImportanceConfig, load_importance, save_importance, sta_importance

__all__ = [
    "StaImportanceConfig",
    "importance_stats",
    "layer_similarities",
    "load_importance",
    "save_importance",
    "sta_importance",
    "vector_norms",
]
