"""The contract every merge method implements.

A merge method works on one tensor at a time, so the engine (``mergeline.merge.engine``) can stream models
tensor by tensor with memory bounded by a few tensors. Methods that need a global statistic (MetaGPT
norms, global top-k, LATA per-layer cosine) ask for a first, statistics-only pass over every tensor.

Units: the engine hands a method the *task vectors* ``delta_i = theta_i - theta_base`` when
``kind == "delta"`` and adds the base back afterwards; it hands the raw weights when
``kind == "weights"`` (linear, SLERP). All tensors arrive in the compute dtype (float32 by default)
on the compute device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict


class MethodParameters(BaseModel):
    """Global parameters of a method (mergekit's top-level ``parameters:``). Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ModelParameters(BaseModel):
    """Per-model parameters (mergekit's ``models[i].parameters``). Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


@dataclass
class TensorInputs:
    """Everything a method sees for one tensor name.

    ``tensors[i]`` is model i's task vector (kind "delta") or weights (kind "weights"); models that
    lack this tensor are left out, and ``model_index[i]`` says which configured model each one is.
    ``base`` is the base model's tensor (None only for methods with ``requires_base = False``).
    ``model_inputs[name][i]`` holds extra per-model tensors a method declared (e.g. STA importance);
    ``global_inputs[name]`` extra whole-model tensors (e.g. LATA's pretrained weights).
    ``params`` / ``model_params`` are resolved for *this* tensor (mergekit gradients and filters
    already applied), so methods must read per-tensor values from here, not from ``self.params``.
    ``layer`` is the transformer block index from ``mergeline.merge.layers.layer_index`` (None: outside blocks).
    ``block`` is the index of this row block within the tensor (flat order) when the engine hands a
    row-separable method one block at a time, and ``rows`` its rows [start, stop) along dim 0; None
    means the whole tensor. ``workspace(key, like,
    dtype=None)`` returns a reusable scratch tensor shaped like ``like`` (valid during this call only);
    None means allocate.
    """

    name: str
    base: torch.Tensor | None
    tensors: list[torch.Tensor]
    model_index: list[int]
    params: MethodParameters
    model_params: list[ModelParameters]
    layer: int | None = None
    model_inputs: dict[str, list[torch.Tensor | None]] = field(default_factory=dict)
    global_inputs: dict[str, torch.Tensor | None] = field(default_factory=dict)
    block: int | None = None
    workspace: Callable[..., torch.Tensor] | None = None
    rows: tuple[int, int] | None = None

    def scratch(self, key: object, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A scratch tensor shaped like ``like`` (from ``workspace`` when the engine gives one)."""
        if self.workspace is not None:
            return self.workspace(key, like, dtype)
        return torch.empty_like(like, dtype=dtype)


@dataclass(frozen=True)
class PipelineEntry:
    """How the experiment pipeline sweeps a method: one key under ``merge.methods`` in the params.

    ``name``: that key (None: the method's own ``name``). ``short``: the prefix of its variants' names
    (``ta_l0.5_d0.2``). ``vectors``: which fine-tune's task vectors it merges: ``full``, ``talos`` or
    ``lora`` (the last two need ``talos.enabled`` / ``lora.enabled``). ``importance``: it needs each
    task's importance scores (the compute-importance stage), given as the per-model ``importance``.
    ``gram``: it needs each task's Gram matrices of linear-layer inputs (the compute-importance stage),
    given as the per-model ``gram``.
    ``sweeps``: the parameters its grid may vary: ``lambda`` (global), ``density`` (per model) and any
    other parameter of the method, listed under ``grid:`` in the params. Without ``lambda`` the method
    gets no ``lambda`` (closed-form coefficients) and its variants are named with λ = 1.
    """

    short: str
    name: str | None = None
    vectors: Literal["full", "talos", "lora"] = "full"
    importance: bool = False
    gram: bool = False
    sweeps: tuple[str, ...] = ("lambda",)


class MergeMethod(ABC):
    """One merge method. Subclasses are registered with :func:`mergeline.methods.register`.

    Class attributes:
      name: the ``merge_method`` string in a config.
      paper: reference (arXiv id or URL) of the formula in the docstring.
      kind: "delta" (task-vector method) or "weights".
      requires_base: whether ``base_model`` must be given.
      base_optional: (with ``requires_base = False``) a given ``base_model`` is the origin the method
        measures from, never one of its inputs, even when listed among ``models`` (mergekit's
        "optional" base: nuslerp, multislerp); without one the method works on the weights alone.
      base_is_input: (with ``requires_base = False``) a given ``base_model`` is one more input,
        appended after ``models`` when not listed there (mergekit's "ignored" base: karcher,
        passthrough).
      Parameters / PerModel: pydantic models validating the config's parameters.
      model_inputs: names of per-model parameters that are checkpoint paths (loaded as tensor sets).
      global_inputs: names of global parameters that are checkpoint paths.
      min_models / max_models: how many ``models`` the method accepts.
      row_separable: each output element depends only on the same element of the inputs (given the
        per-tensor statistics below, if any), so the engine may merge a tensor in row blocks, in
        parallel, in any order. May be a property of the instance.
      vectors_whole: (row-separable methods) a 1-D tensor is one unit of the method (DELLA ranks it
        as one row), so the engine hands it whole instead of in pieces.
      nonfinite_propagates: a NaN/Inf in any input makes the output non-finite at some element, so
        the engine checks the output alone and inspects the inputs only when the output is not finite.
      result_dtype: the dtype its results are written in when the config sets no ``out_dtype`` (None:
        mergekit's rule, ``dtype`` else the base's). mergekit's arcee_fusion and ramplus_tl return
        float32 whatever the inputs, and mergekit writes that.
      pipeline: how the experiment pipeline sweeps the method (:class:`PipelineEntry`, one per
        ``merge.methods`` key it answers to); empty: ``mergeline merge`` only.
    """

    name: ClassVar[str]
    paper: ClassVar[str] = ""
    kind: ClassVar[Literal["delta", "weights"]] = "delta"
    requires_base: ClassVar[bool] = True
    base_optional: ClassVar[bool] = False
    base_is_input: ClassVar[bool] = False
    Parameters: ClassVar[type[MethodParameters]] = MethodParameters
    PerModel: ClassVar[type[ModelParameters]] = ModelParameters
    model_inputs: ClassVar[tuple[str, ...]] = ()
    global_inputs: ClassVar[tuple[str, ...]] = ()
    min_models: ClassVar[int] = 1
    max_models: ClassVar[int | None] = None
    row_separable: ClassVar[bool] = False
    vectors_whole: ClassVar[bool] = False
    nonfinite_propagates: ClassVar[bool] = False
    result_dtype: ClassVar[torch.dtype | None] = None
    pipeline: ClassVar[tuple[PipelineEntry, ...]] = ()

    def __init__(self, params: MethodParameters, model_params: list[ModelParameters]) -> None:
        self.params = params
        self.model_params = model_params

    # ---- optional statistics passes ------------------------------------------------------
    def statistics_passes(self) -> int:
        """How many statistics-only passes over every tensor must run before merging (0: none).

        More than one lets a method refine a global quantity exactly with bounded memory
        (e.g. an exact global top-k threshold: a coarse histogram, then the bucket that holds it).
        """
        return 0

    def accumulate(self, inputs: TensorInputs, pass_index: int) -> None:  # pragma: no cover
        """Statistics pass ``pass_index`` (0-based): update global statistics from one tensor."""

    def finalize_statistics(self, pass_index: int) -> None:  # pragma: no cover
        """Called once after statistics pass ``pass_index`` has seen every tensor."""

    # ---- optional per-tensor statistics (row-separable methods) ---------------------------
    # For a row-separable method whose blocks need a tensor-wide quantity (TIES: each model's
    # magnitude cut-off). Per tensor the engine calls: tensor_sample; begin_tensor (with the sampled
    # inputs); if that returns True, observe_block on every row block (any thread, any order: it must
    # only return what it saw, or write into its own block's place of a buffer begin_tensor's state
    # owns) and end_observation with the observations in block order (in the engine's thread, torch on
    # one thread), repeated while that returns False;
    # then merge_tensor per block; then finish_tensor.
    def tensor_sample(self, name: str, numel: int) -> torch.Tensor | None:
        """Flat indices of entries the method wants to see before the blocks (None: none)."""
        return None

    def begin_tensor(self, name: str, numel: int, model_index: list[int], model_params: list[ModelParameters],
                     sample: list[torch.Tensor] | None) -> bool:
        """Start tensor ``name`` (``sample``: each input's entries at ``tensor_sample``'s indices, as the
        method will see them: task vectors for kind "delta"); True when its blocks must be observed."""
        return False

    def observe_block(self, inputs: TensorInputs) -> Any:  # pragma: no cover
        """Statistics of one row block (``inputs.block``); called concurrently, must not mutate shared
        state (beyond its own block's place in a per-tensor buffer)."""

    def end_observation(self, name: str, observations: list[Any]) -> bool:  # pragma: no cover
        """Combine the blocks' observations (block order); False asks for another observation pass."""
        return True

    def finish_tensor(self, name: str) -> None:
        """Tensor ``name`` is merged: drop its per-tensor state."""

    # ---- the merge -----------------------------------------------------------------------
    @abstractmethod
    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        """Return the merged delta (kind "delta") or merged weights (kind "weights") for one tensor."""

    def report(self) -> dict[str, Any]:
        """Coefficients actually used (per model, per layer or per tensor), for lineage and MLflow."""
        return {}
