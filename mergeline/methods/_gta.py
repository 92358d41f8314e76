"""Base class of mergekit's generalized task-arithmetic family (task_arithmetic, ties, dare_*, breadcrumbs*).

Per tensor: sparsify each task vector δ_i (subclass hook), weight, optionally elect signs, combine and
scale (:func:`mergeline.methods._sparsify.combine`). Subclasses set ``consensus`` (None, or read from the
``consensus_method`` parameter) and override :meth:`sparsify`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch

from mergeline.methods._sparsify import combine
from mergeline.methods.base import MergeMethod, MethodParameters, TensorInputs


class TaskArithmeticFamily(MergeMethod):
    kind = "delta"
    requires_base = True
    uses_consensus: ClassVar[bool] = False

    def sparsify(self, delta: torch.Tensor, position: int, inputs: TensorInputs) -> torch.Tensor:
        """Sparsify model ``position``'s task vector for this tensor (default: unchanged)."""
        return delta

    def consensus(self, params: MethodParameters) -> Literal["sum", "count"] | None:
        """The sign-election rule, or None for methods without consensus."""
        if not self.uses_consensus:
            return None
        return getattr(params, "consensus_method", "sum")

    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        return self.combine([self.sparsify(delta, i, inputs) for i, delta in enumerate(inputs.tensors)], inputs)

    def combine(self, deltas: list[torch.Tensor], inputs: TensorInputs) -> torch.Tensor:
        """Weight, elect (if the method does) and combine the sparsified task vectors of one tensor."""
        weights = [float(mp.weight) for mp in inputs.model_params]
        p = inputs.params
        return combine(deltas, weights, self.consensus(p), bool(p.normalize), float(p.lambda_),
                       scratch=inputs.scratch)

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.name,
            "lambda": self.params.lambda_,
            "normalize": self.params.normalize,
            "consensus": self.consensus(self.params),
            "models": [mp.model_dump() for mp in self.model_params],
        }
        if hasattr(self.params, "rescale"):
            out["rescale"] = self.params.rescale
        return out
