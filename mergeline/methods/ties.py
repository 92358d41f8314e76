"""TIES-Merging (Yadav et al., "TIES-Merging: Resolving Interference When Merging Models",
arXiv 2306.01708, NeurIPS 2023).

    trim:   τ̂_t = top-k(τ_t) by magnitude (k = density share of entries)
    elect:  γ = sgn(Σ_t w_t τ̂_t)                           ("sum"; "count" votes with Σ_t sgn(w_t τ̂_t))
    merge:  τ_m = Σ_t [sgn(w_t τ̂_t) = γ] w_t τ̂_t / Σ_t [sgn(w_t τ̂_t) = γ] w_t     (disjoint mean)
    θ = θ0 + λ τ_m

Defaults follow mergekit ``ties``: trim **per tensor** keeping exactly k = max(1, int(density·n))
entries (entries tied at the cut-off: the ones mergekit's argsort keeps on the same device; see ``_sparsify``), election
``sum`` on the weighted deltas, zeros never vote, weight-weighted disjoint mean (``normalize: true``;
``false`` gives the disjoint sum), ``lambda`` 1.  Paper option ``trim_scope: global``: each task vector
keeps its top density share over the **whole model** (official TIES code), found exactly with two
streaming statistics passes (``_global_topk``); there, every entry equal to the k-th largest magnitude is
kept.  ``rescale: true`` rescales each trimmed vector to its original L1 norm (mergekit option).

Per-tensor trim without rescale is row-separable (``_row_trim``): per tensor and model a statistics pass
over the row blocks finds the cut-off magnitude and how many entries equal to it each block keeps, then
the engine merges the tensor in row blocks (memory: a few blocks, not one float32 copy per model). When
entries equal to the cut-off straddle it, one more pass gathers that model's magnitudes into one
buffer of the tensor and mergekit's argsort order on that device picks among them (the buffer sorted in place; a
large tensor's models one per pass: memory then the tensor's magnitudes and their int64 order, once).
A NaN/Inf input reaches the output (masks multiply), so the engine checks the output alone.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from mergeline.errors import MergelineError
from mergeline.methods import register
from mergeline.methods._fields import Consensus, SparseModel, TaskArithmeticFamilyParameters
from mergeline.methods._global_topk import GlobalTopK
from mergeline.methods import _row_trim
from mergeline.methods._gta import TaskArithmeticFamily
from mergeline.methods._sparsify import apply_mask, combine, keep_count, magnitude_mask, topk_mask
from mergeline.methods.base import MethodParameters, ModelParameters, PipelineEntry, TensorInputs


class TiesParameters(TaskArithmeticFamilyParameters):
    normalize: bool = Field(True, description="Disjoint mean (true, mergekit default) or disjoint sum (false).")
    consensus_method: Consensus = Field(
        "sum", description="Sign election: 'sum' of weighted deltas (TIES) or 'count' of signs."
    )
    trim_scope: Literal["tensor", "global"] = Field(
        "tensor",
        description="Magnitude trim per tensor (mergekit, default) or over the whole model (TIES paper).",
    )


@register
class Ties(TaskArithmeticFamily):
    """θ = θ0 + λ · disjoint_mean(elect(trim(w_t τ_t)))."""

    name = "ties"
    paper = "arXiv:2306.01708"
    Parameters = TiesParameters
    PerModel = SparseModel
    uses_consensus = True
    nonfinite_propagates = True
    pipeline = (PipelineEntry(short="ties", sweeps=("lambda", "density")),)

    def __init__(self, params: MethodParameters, model_params: list[ModelParameters]) -> None:
        super().__init__(params, model_params)
        self._global = GlobalTopK() if params.trim_scope == "global" else None
        self._density: dict[int, float] = {}
        self._kept: dict[int, int] = {}
        self._total: dict[int, int] = {}
        # per tensor: one trim state per input position (None: density 1, nothing trimmed)
        self._trims: dict[str, list[_row_trim.TrimState | None]] = {}
        self._trim_models: dict[str, tuple[list[int], int]] = {}

    @property
    def row_separable(self) -> bool:  # type: ignore[override]
        return self._global is None and not self.params.rescale

    # ---- per-tensor statistics of the row-separable trim ----------------------------------
    def tensor_sample(self, name: str, numel: int) -> torch.Tensor | None:
        return _row_trim.sample_indices(numel)

    def begin_tensor(self, name: str, numel: int, model_index: list[int], model_params: list[ModelParameters],
                     sample: list[torch.Tensor] | None) -> bool:
        states: list[_row_trim.TrimState | None] = []
        for i, mp in enumerate(model_params):
            k = keep_count(float(mp.density), numel)
            if k >= numel:
                states.append(None)
                continue
            picked = None if sample is None else sample[i].abs()
            lo, hi = _row_trim.band_from_sample(picked, k, numel)
            states.append(_row_trim.TrimState(k, numel, lo, hi))
        self._trims[name] = states
        self._trim_models[name] = (list(model_index), numel)
        return any(st is not None for st in states)

    def observe_block(self, inputs: TensorInputs) -> list[_row_trim.Observation | int | None]:
        out: list[_row_trim.Observation | int | None] = []
        for delta, st in zip(inputs.tensors, self._trims[inputs.name]):
            if st is None or (st.result is not None and st.buffer is None):  # done, or waits for its turn
                out.append(None)
                continue
            magnitudes = torch.abs(delta, out=inputs.scratch("magnitude", delta))
            if st.buffer is not None:  # ties straddle the cut-off: the whole tensor's magnitudes go to the sort
                out.append(_row_trim.gather_into(st.buffer, magnitudes, inputs.rows))
            else:
                st.note_keys(magnitudes)
                out.append(_row_trim.observe(magnitudes, st.lo, st.hi, inputs.scratch("count", delta)))
        return out

    def end_observation(self, name: str, observations: list[list[Any]]) -> bool:
        done = True
        states = self._trims[name]
        for i, st in enumerate(states):
            if st is None:
                continue
            seen = [obs[i] for obs in observations]
            if st.buffer is not None:
                _row_trim.resolve_by_sort(st, seen)
            elif st.result is None and not _row_trim.resolve(st, seen):
                done = False
        if _row_trim.start_gathers(states):  # ties straddle a cut-off: a pass gathers those magnitudes
            return False
        return done

    def finish_tensor(self, name: str) -> None:
        states = self._trims.pop(name, None)
        models, numel = self._trim_models.pop(name, ([], 0))
        for model, st in zip(models, states or []):
            self._kept[model] = self._kept.get(model, 0) + (numel if st is None or st.result is None else st.result.kept)
            self._total[model] = self._total.get(model, 0) + numel

    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        if not self.row_separable:
            return super().merge_tensor(inputs)
        if inputs.name not in self._trims and inputs.tensors[0].is_cuda:
            return self._merge_whole_on_gpu(inputs)
        if inputs.name not in self._trims:  # a whole tensor without the engine's statistics: do them here
            self._statistics_of_whole(inputs)
        block = inputs.block or 0
        masks: list[torch.Tensor | None] = []
        for position, (delta, st) in enumerate(zip(inputs.tensors, self._trims[inputs.name])):
            if st is None:
                masks.append(None)
                continue
            assert st.result is not None
            magnitudes = torch.abs(delta, out=inputs.scratch("magnitude", delta))
            out = inputs.scratch(("mask", position), delta)
            masks.append(_row_trim.block_mask(magnitudes, st.result, block, out=out))
        weights = [float(mp.weight) for mp in inputs.model_params]
        p = inputs.params
        if inputs.block is None:
            self.finish_tensor(inputs.name)
        return combine(inputs.tensors, weights, self.consensus(p), bool(p.normalize), float(p.lambda_),
                       masks=masks, scratch=inputs.scratch)

    def _merge_whole_on_gpu(self, inputs: TensorInputs) -> torch.Tensor:
        """A whole tensor on the GPU: exact top-k masks (same tie rule) without a host round trip; the
        kept count is k by construction, so the report needs no readback either."""
        masks: list[torch.Tensor | None] = []
        numel = inputs.tensors[0].numel()
        for delta, model, mp in zip(inputs.tensors, inputs.model_index, inputs.model_params):
            k = keep_count(float(mp.density), numel)
            masks.append(None if k >= numel else
                         topk_mask(torch.abs(delta, out=inputs.scratch("magnitude", delta)), k, ties="argsort"))
            self._kept[model] = self._kept.get(model, 0) + min(k, numel)
            self._total[model] = self._total.get(model, 0) + numel
        p = inputs.params
        return combine(inputs.tensors, [float(mp.weight) for mp in inputs.model_params], self.consensus(p),
                       bool(p.normalize), float(p.lambda_), masks=masks, scratch=inputs.scratch)

    def _statistics_of_whole(self, inputs: TensorInputs) -> None:
        numel = inputs.tensors[0].numel()
        index = self.tensor_sample(inputs.name, numel)
        sample = None if index is None else [t.reshape(-1)[index] for t in inputs.tensors]
        whole = TensorInputs(inputs.name, None, inputs.tensors, inputs.model_index, inputs.params,
                             inputs.model_params, block=0)
        if self.begin_tensor(inputs.name, numel, inputs.model_index, inputs.model_params, sample):
            while not self.end_observation(inputs.name, [self.observe_block(whole)]):
                pass

    def statistics_passes(self) -> int:
        return GlobalTopK.passes if self._global is not None else 0

    def accumulate(self, inputs: TensorInputs, pass_index: int) -> None:
        assert self._global is not None
        for delta, model, mp in zip(inputs.tensors, inputs.model_index, inputs.model_params):
            density = float(mp.density)
            if self._density.setdefault(model, density) != density:
                raise MergelineError(
                    f"tensor {inputs.name!r}: trim_scope global needs one density per model; "
                    f"model {model} has {density} here and {self._density[model]} elsewhere"
                )
            self._global.add(model, delta.abs(), pass_index, inputs.name)

    def finalize_statistics(self, pass_index: int) -> None:
        assert self._global is not None
        counts = {m: keep_count(d, self._global.count(m)) for m, d in self._density.items()}
        self._global.finalize(pass_index, counts)

    def sparsify(self, delta: torch.Tensor, position: int, inputs: TensorInputs) -> torch.Tensor:
        model = inputs.model_index[position]
        if self._global is not None:
            mask = self._global.mask(model, delta.abs())
        else:
            mask = magnitude_mask(delta, float(inputs.model_params[position].density), ties="argsort")
        self._kept[model] = self._kept.get(model, 0) + int(mask.sum())
        self._total[model] = self._total.get(model, 0) + mask.numel()
        return apply_mask(delta, mask, "l1" if inputs.params.rescale else None)

    def report(self) -> dict[str, Any]:
        out = super().report()
        out["trim_scope"] = self.params.trim_scope
        out["kept_fraction"] = {str(m): self._kept[m] / max(1, self._total[m]) for m in sorted(self._kept)}
        if self._global is not None:
            out["global_threshold"] = {str(m): t for m, t in sorted(self._global.thresholds.items())}
        return out
