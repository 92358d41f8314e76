"""Importance scores and per-layer diagnostics: STA Taylor importance, RegMean's Gram matrices, LATA
layer cosines, MetaGPT norms, and the papers' premises (task-vector cosines, loss along θ0 + ατ,
random-mask overlap)."""

from mergeline.importance.diagnostics import importance_stats, layer_similarities, vector_norms
from mergeline.importance.gram import GramConfig, Grams, gram_matrices, load_grams, save_grams
from mergeline.importance.premises import loss_along, pairwise_cosines, quadratic_gap, random_mask_overlap
from mergeline.importance.sta import StaImportanceConfig, load_importance, save_importance, sta_importance

__all__ = [
    "GramConfig",
    "Grams",
    "gram_matrices",
    "load_grams",
    "save_grams",
    "StaImportanceConfig",
    "importance_stats",
    "layer_similarities",
    "load_importance",
    "loss_along",
    "pairwise_cosines",
    "quadratic_gap",
    "random_mask_overlap",
    "save_importance",
    "sta_importance",
    "vector_norms",
]
