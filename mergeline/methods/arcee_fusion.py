"""Arcee Fusion: keep the other model's change only where it matters most (Arcee AI, https://arcee.ai;
mergekit ``arcee_fusion``).

Per tensor, with a = θ_base and b = θ_other (softmax and the sum over the last dim; a 1-D tensor is
one row):

    P = softmax(b) + 1e-8,  Q = softmax(a) + 1e-8,   KL = Σ P log(P / Q)        (one value per row)
    I = |b − a| · KL                                                            (importance)
    τ = median(I) + 1.5 · (q₃(I) − q₁(I))        (quantiles: sorted[int(q · (n − 1))])
    θ = a + (b − a) · [I ≥ τ]

The quantiles of a tensor of more than 1,000,000 entries are taken on 1,000,000 entries
sampled with replacement, as mergekit does; the sample is drawn from a CPU generator seeded with
sha256(seed, tensor name), so a merge reproduces on any device (mergekit uses torch's global RNG, so
for such tensors the threshold agrees in distribution only). Smaller tensors are exact and bit-equal
to mergekit's. The importance and its threshold are computed on the CPU also in a CUDA merge (the
KL is ill-conditioned in float32 and GPU rounding would change the kept entries), so CUDA and CPU
merges are equal. Exactly one model besides the base; no parameters but ``seed``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from mergeline.methods import register
from mergeline.methods._sparsify import tensor_seed
from mergeline.methods.base import MergeMethod, MethodParameters, TensorInputs

SAMPLE_SIZE = 1_000_000
_EPS = 1e-8


class ArceeFusionParameters(MethodParameters):
    seed: int = Field(0, ge=0, description="Seed of the quantile sample of tensors above 1,000,000 entries.")


def importance(base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """|b − a| times the row's KL(softmax(b) ‖ softmax(a)), shaped like the inputs."""
    p = F.softmax(other, dim=-1) + _EPS
    q = F.softmax(base, dim=-1) + _EPS
    kl = torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
    del p, q
    return (other - base).abs() * kl


def fusion_threshold(scores: torch.Tensor, seed: int) -> torch.Tensor:
    """median + 1.5 · IQR of ``scores`` (on a seeded sample of SAMPLE_SIZE entries for large tensors)."""
    flat = scores.reshape(-1)
    if flat.numel() > SAMPLE_SIZE:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        flat = flat[torch.randint(flat.numel(), (SAMPLE_SIZE,), generator=generator).to(flat.device)]
    ordered = torch.sort(flat).values
    at = (torch.tensor([0.25, 0.5, 0.75]) * (ordered.numel() - 1)).long().to(ordered.device)
    q1, median, q3 = ordered[at]
    return median + 1.5 * (q3 - q1)


@register
class ArceeFusion(MergeMethod):
    """θ = a + (b − a) · [I ≥ median(I) + 1.5 IQR(I)], I = |b − a| · KL(softmax b ‖ softmax a)."""

    name = "arcee_fusion"
    paper = "https://arcee.ai (mergekit arcee_fusion)"
    kind = "weights"
    requires_base = True
    Parameters = ArceeFusionParameters
    result_dtype = torch.float32  # as mergekit writes it
    min_models = 1
    max_models = 1

    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        a, (b,) = inputs.base, inputs.tensors
        assert a is not None
        # The KL of two nearly equal softmaxes is ill-conditioned in float32: GPU kernels round it
        # differently and flip about a tenth of the kept entries, so the selection runs on the CPU.
        host_a, host_b = a.cpu(), b.cpu()
        scores = importance(host_a, host_b)
        keep = scores >= fusion_threshold(scores, tensor_seed(inputs.params.seed, inputs.name, 0))
        del scores
        return a + (b - a) * keep.to(device=a.device, dtype=a.dtype)

    def report(self) -> dict[str, Any]:
        return {"method": self.name, "seed": self.params.seed, "quantile_sample": SAMPLE_SIZE}
