"""Consensus Task Arithmetic: TALL-mask consensus over Task Arithmetic (Wang, Dimitriadis,
Ortiz-Jimenez, Fleuret, Frossard, "Localizing Task Information for Improved Model Merging and
Compression", ICML 2024, arXiv 2405.07813).

With task vectors τ_t (t = 1..T), per entry of every tensor:

    τ_MTL = Σ_t τ_t
    m_t = |τ_t| > λ_t · |τ_MTL − τ_t|          (TALL mask of task t)
    θ = θ0 + λ · τ_MTL ⊙ [Σ_t m_t ≥ k]

Follows the authors' code (nik-dim/tall_masks: ``consensus`` with ``use_ties: false``): the multi-task
vector is the plain sum, every tensor is masked (embeddings and 1-D tensors too), λ scales the masked
vector. The authors choose λ_t per task on validation from {0.2, …, 0.6}; here ``tall_mask_lambda`` is a
global value (every model's) or per model, and the pipeline sweeps it like λ. Defaults: ``lambda`` 1,
``consensus_k`` 2, ``tall_mask_lambda`` 0.6. Entry by entry, so merged in row blocks.
"""

from __future__ import annotations

import torch

from mergeline.methods import register
from mergeline.methods._tall import ConsensusMethod, ConsensusParameters, TallModel
from mergeline.methods.base import PipelineEntry, TensorInputs


@register
class ConsensusTaskArithmetic(ConsensusMethod):
    """θ = θ0 + λ · (Σ_t τ_t) ⊙ [#{t: |τ_t| > λ_t |Σ_s τ_s − τ_t|} ≥ k]."""

    name = "consensus_ta"
    paper = "arXiv:2405.07813"
    Parameters = ConsensusParameters
    PerModel = TallModel
    pipeline = (PipelineEntry(short="cta", sweeps=("lambda", "tall_mask_lambda")),)

    def multi_task_vector(self, inputs: TensorInputs) -> torch.Tensor:
        total = inputs.tensors[0].clone()
        for tau in inputs.tensors[1:]:
            total.add_(tau)
        return total
