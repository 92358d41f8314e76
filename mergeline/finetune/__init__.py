"""Fine-tuning (dense and TaLoS-sparse) and task-vector extraction: torch/transformers in, files out."""

from mergeline.finetune.batching import answer_nll, choice_logprobs, encode, read_records
from mergeline.finetune.checkpoint import TalosConfig, extract_task_vector, finetune_checkpoint, load_causal_lm
from mergeline.finetune.full import FinetuneConfig, finetune
from mergeline.finetune.talos import MaskedAdamW, mask_density, mask_overlap, talos_mask

__all__ = [
    "FinetuneConfig",
    "MaskedAdamW",
    "TalosConfig",
    "answer_nll",
    "choice_logprobs",
    "encode",
    "extract_task_vector",
    "finetune",
    "finetune_checkpoint",
    "load_causal_lm",
    "mask_density",
    "mask_overlap",
    "read_records",
    "talos_mask",
]
