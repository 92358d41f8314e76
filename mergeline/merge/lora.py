"""LoRA adapters in PEFT's folder format, folded into weight deltas: ΔW = s · B A per target module.

An adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` (PEFT's
``save_pretrained``); both are read here directly, PEFT is not imported. For a target module m with
``lora_A`` (r × in) and ``lora_B`` (out × r) (Hu et al., arXiv 2106.09685)::

    s = α / r                  (``use_rslora``: s = α / √r, Kalajdzievski, arXiv 2312.03732)
    ΔW_m = s · B A             (``fan_in_fan_out``, e.g. GPT-2's Conv1D: ΔW_m = s · (B A)ᵀ)
    embedding: ΔE = s · (B A)ᵀ ( ``lora_embedding_A``: r × vocab, ``lora_embedding_B``: dim × r)
    ``lora_bias``: Δb_m = s · b_B

r and α per module follow ``rank_pattern`` / ``alpha_pattern`` with PEFT's rule (the first pattern
key that matches the end of the module name at a dot boundary; :mod:`mergeline.merge.lora_patterns`),
else ``r`` / ``lora_alpha`` (8 and 8 when absent, PEFT's defaults). The
product is computed in float32 and returned in the adapter's dtype, as PEFT's ``merge_and_unload``
does, so base + ΔW is what PEFT would have merged. A full copy of a targeted embedding that PEFT
saves beside the matrices (``…base_layer.weight``) is folded in as its difference to the base.

Errors (MergelineError, one line naming the folder, file, key or module): a missing folder or file,
a pickle-only adapter, an ``adapter_config.json`` field of the wrong type or range or a
``rank_pattern``/``alpha_pattern`` key that is not a module-name pattern (:mod:`mergeline.merge.lora_config`),
an adapter that is not LoRA or is DoRA, or that uses a feature that changes the weights beyond B A
(``modules_to_save``, ``layer_replication``, ``target_parameters``, trainable tokens, aLoRA), a key
this fold does not know, a conv LoRA, a rank that disagrees with its pattern, a NaN/Inf in the
adapter's matrices or a ΔW (or W + ΔW) that overflows (naming the adapter, not the base), and,
against a base (:meth:`LoraAdapter.check_against`), a target module the base lacks or whose shape
differs.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from mergeline.errors import MergelineError
from mergeline.finetune.weights import TASK_VECTOR_FILE, TensorReader, is_float_code, write_streaming
from mergeline.io.atomic import atomic_dir
from mergeline.io.hashing import sha256_file, sha256_path
from mergeline.io.safetensors_format import DTYPES
from mergeline.io.safetensors_io import copy_model_files
from mergeline.merge.lora_config import ADAPTER_CONFIG, read_adapter_config

ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_SUFFIXES = {  # key suffix -> (part, kind)
    ".lora_A.weight": ("A", "linear"), ".lora_B.weight": ("B", "linear"), ".lora_B.bias": ("bias", "linear"),
    ".lora_embedding_A": ("A", "embedding"), ".lora_embedding_B": ("B", "embedding"),
    ".base_layer.weight": ("copy", None),
}


@dataclass
class LoraModule:
    """One target module: its tensors' keys in the adapter file and its scale s."""

    module: str
    kind: str = "linear"
    a_key: str = ""
    b_key: str = ""
    bias_key: str | None = None
    copy_key: str | None = None
    scale: float = 1.0
    rank: int = 0


def is_finite(x: torch.Tensor) -> bool:
    """No NaN/Inf in ``x``: the sum is finite when every entry is (else, or on overflow, the exact test)."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def fold(a: torch.Tensor, b: torch.Tensor, scale: float, transpose: bool = False,
         dtype: torch.dtype | None = None) -> torch.Tensor:
    """s · B A (``transpose``: s · (B A)ᵀ), computed in float32, returned in ``dtype`` (default ``b``'s).

    a: (r, in), b: (out, r) -> (out, in), or (in, out) transposed.
    """
    delta = b.float() @ a.float()
    if transpose:
        delta = delta.T
    return (delta * scale).to(dtype or b.dtype)


class LoraAdapter:
    """A PEFT LoRA adapter folder: ``modules`` by base tensor name (``<module>.weight``), and
    :meth:`delta` for each. The adapter's tensors are small and read once into memory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.config = read_adapter_config(self.path)
        weights = self.path / ADAPTER_WEIGHTS
        if not weights.is_file():
            pickled = (self.path / "adapter_model.bin").is_file()
            why = "only a pickle adapter_model.bin, which is refused (unpickling runs code)" if pickled else "missing"
            raise MergelineError(f"adapter {self.path}: {ADAPTER_WEIGHTS} is {why}")
        self.weights_file = weights
        try:
            with safe_open(str(weights), framework="pt") as handle:
                self.tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as exc:  # safetensors raises its own types for corrupt files
            raise MergelineError(f"{weights}: cannot read safetensors ({exc})") from None
        self.fan_in_fan_out = self.config.fan_in_fan_out
        self.modules = self._modules()
        if not self.modules:
            raise MergelineError(f"{weights}: holds no LoRA matrices")

    @property
    def base_model_name_or_path(self) -> str | None:
        return self.config.base_model_name_or_path

    def _modules(self) -> dict[str, LoraModule]:
        found: dict[str, LoraModule] = {}
        for key in sorted(self.tensors):
            name = key.removeprefix(_PREFIX)
            suffix = next((s for s in _SUFFIXES if name.endswith(s)), None)
            if suffix is None:
                raise MergelineError(f"{self.weights_file}: tensor {key!r} is not a LoRA matrix this fold knows")
            module = name[: -len(suffix)]
            part, kind = _SUFFIXES[suffix]
            entry = found.setdefault(f"{module}.weight", LoraModule(module))
            if kind is not None:
                entry.kind = kind
            setattr(entry, {"A": "a_key", "B": "b_key", "bias": "bias_key", "copy": "copy_key"}[part], key)
        for entry in found.values():
            self._complete(entry)
        return found

    def _complete(self, entry: LoraModule) -> None:
        where = f"{self.weights_file}: module {entry.module!r}"
        if not entry.a_key or not entry.b_key:
            raise MergelineError(f"{where}: needs both lora_A and lora_B")
        a, b = self.tensors[entry.a_key], self.tensors[entry.b_key]
        if a.dim() != 2 or b.dim() != 2:
            raise MergelineError(f"{where}: {a.dim()}-D LoRA matrices (conv LoRA) are not supported")
        rank = a.shape[0]
        if rank < 1:
            raise MergelineError(f"{where}: lora_A has rank 0 (no rows)")
        if b.shape[1] != rank:
            raise MergelineError(f"{where}: lora_A has rank {rank} but lora_B has {b.shape[1]} columns")
        config = self.config
        configured = config.rank_pattern.lookup(entry.module, config.r)
        if configured != rank:
            source = "" if config.r_given or configured != config.r else " (PEFT's default: the file has no r)"
            raise MergelineError(f"{where}: rank {rank} in the weights but r={configured}{source} in {ADAPTER_CONFIG}")
        alpha = config.alpha_pattern.lookup(entry.module, config.lora_alpha)
        entry.rank = rank
        entry.scale = alpha / math.sqrt(rank) if config.use_rslora else alpha / rank

    def expected_shape(self, target: str) -> tuple[int, ...]:
        """The base tensor shape the module's ΔW has."""
        entry = self.modules[target]
        a, b = self.tensors[entry.a_key], self.tensors[entry.b_key]
        out, inp = b.shape[0], a.shape[1]
        return (inp, out) if entry.kind == "embedding" or self.fan_in_fan_out else (out, inp)

    def targets(self) -> list[str]:
        """Base tensor names the adapter changes (weights, and biases with ``lora_bias``)."""
        names = list(self.modules)
        names += [e.module + ".bias" for e in self.modules.values() if e.bias_key]
        return sorted(names)

    def _bias_entry(self, name: str) -> LoraModule | None:
        entry = self.modules.get(name.removesuffix(".bias") + ".weight") if name.endswith(".bias") else None
        return entry if entry is not None and entry.bias_key else None

    def delta_dtype(self, name: str) -> torch.dtype:
        """The dtype :meth:`delta` returns for ``name``: PEFT casts an embedding's product to
        ``lora_embedding_A``'s dtype, a Linear's to ``lora_B``'s."""
        bias = self._bias_entry(name)
        if bias is not None:
            return self.tensors[bias.bias_key].dtype  # type: ignore[index]
        entry = self.modules[name]
        return self.tensors[entry.a_key if entry.kind == "embedding" else entry.b_key].dtype

    def delta(self, name: str, base: torch.Tensor | None = None) -> torch.Tensor:
        """ΔW of base tensor ``name`` in :meth:`delta_dtype`; with ``base`` given, a saved full copy of
        that tensor adds its difference to it. A NaN/Inf that the adapter brings (in its matrices,
        or s·B·A overflowing) is refused naming the adapter; one from ``base`` is left to the
        caller, which names the base's file."""
        bias = self._bias_entry(name)
        if bias is not None:
            b_bias = self.tensors[bias.bias_key]  # type: ignore[index]
            delta = (b_bias.float() * bias.scale).to(b_bias.dtype)
            self._check_finite(name, delta, bias, (bias.bias_key,))  # type: ignore[arg-type]
            return delta
        entry = self.modules[name]
        a, b = self.tensors[entry.a_key], self.tensors[entry.b_key]
        transpose = entry.kind == "embedding" or self.fan_in_fan_out
        delta = fold(a, b, entry.scale, transpose, self.delta_dtype(name))
        self._check_finite(name, delta, entry, (entry.a_key, entry.b_key))
        if entry.copy_key is not None and base is not None:
            saved = self.tensors[entry.copy_key]
            if not is_finite(base):
                return delta  # the base's fault: the caller's check names its file
            delta = (delta.float() + (saved.float() - base.float())).to(delta.dtype)
            self._check_finite(name, delta, entry, (entry.copy_key,))
        return delta

    def _check_finite(self, name: str, delta: torch.Tensor, entry: LoraModule, keys: tuple[str, ...]) -> None:
        if is_finite(delta):
            return
        for key in keys:
            if not is_finite(self.tensors[key]):
                raise MergelineError(f"{self.weights_file}: tensor {key!r} contains NaN or Inf")
        raise MergelineError(
            f"adapter {self.path}: ΔW of {name!r} overflows to Inf/NaN in {delta.dtype} (scale lora_alpha/r = "
            f"{entry.scale:g}); check lora_alpha, alpha_pattern and the matrices in {ADAPTER_WEIGHTS}")

    def folded(self, name: str, weight: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """W + ΔW in W's dtype: ``in_place`` adds ΔW into ``weight`` (rounded once), else ΔW is cast to
        W's dtype first, as PEFT's merge adds it. A finite W that the sum takes to Inf names the adapter."""
        delta = self.delta(name, weight)
        base_finite = is_finite(weight)
        out = weight.add_(delta) if in_place else weight + delta.to(weight.dtype)
        if base_finite and not is_finite(out):
            raise MergelineError(f"adapter {self.path}: W + ΔW of {name!r} overflows to Inf in {out.dtype} "
                                 "(the base's weight is finite); check lora_alpha and the adapter's matrices")
        return out

    def check_against(self, shapes: Mapping[str, tuple[int, ...]], base_name: str) -> None:
        """Every target module exists in the base with the shape its ΔW has (else: another architecture)."""
        for target in sorted(self.modules):
            if target not in shapes:
                raise MergelineError(
                    f"adapter {self.path}: targets {target!r}, which base model {base_name} does not have "
                    "(an adapter of another architecture?)")
            want = tuple(self.expected_shape(target))
            if tuple(shapes[target]) != want:
                raise MergelineError(
                    f"adapter {self.path}: module {self.modules[target].module!r} gives ΔW of shape {list(want)}, "
                    f"the base model {base_name} has {list(shapes[target])} (trained on another base?)")
            if self.modules[target].bias_key and self.modules[target].module + ".bias" not in shapes:
                raise MergelineError(f"adapter {self.path}: lora_bias on {self.modules[target].module!r}, whose "
                                     f"layer has no bias in base model {base_name}")
            copy_key = self.modules[target].copy_key
            if copy_key is not None and tuple(self.tensors[copy_key].shape) != want:
                raise MergelineError(f"adapter {self.path}: {copy_key!r} has shape {list(self.tensors[copy_key].shape)}, "
                                     f"the base model {base_name} has {list(want)} (resized vocabulary?)")


def extract_lora_vector(base_dir: str | os.PathLike[str], adapter_dir: str | os.PathLike[str],
                        out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the task vector of an adapter: ΔW for target tensors, zeros elsewhere (every float
    tensor of the base, so it stands wherever a task vector does). Returns ``task_vector.json``'s content."""

    adapter = LoraAdapter(adapter_dir)
    with TensorReader(base_dir) as base:
        names = [n for n in base.keys() if is_float_code(base.dtype_code(n))]
        adapter.check_against({n: tuple(base.shape(n)) for n in names}, str(base_dir))
        changed = set(adapter.targets())
        specs = []
        for name in names:
            specs.append((name, base.shape(name), adapter.delta_dtype(name) if name in changed else torch.float32))

        def produce(name: str) -> torch.Tensor:
            if name in changed:
                return adapter.delta(name, base.get(name))
            return torch.zeros(base.shape(name), dtype=torch.float32)

        with atomic_dir(out_dir, kind="task-vector") as tmp:
            write_streaming(tmp / TASK_VECTOR_FILE, specs, produce)
            info = {
                "kind": "task_vector", "source": "lora",
                "base_sha256": sha256_path(base_dir), "adapter_sha256": sha256_path(adapter_dir),
                "sha256": sha256_file(tmp / TASK_VECTOR_FILE), "tensors": len(specs),
                "lora_tensors": len(changed), "numel": sum(torch.Size(s).numel() for _, s, _ in specs),
            }
            (tmp / "task_vector.json").write_text(json.dumps(info, indent=1))
    return info


def fold_into_model(base_dir: str | os.PathLike[str], adapter_dir: str | os.PathLike[str],
                    out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Write base + ΔW as a Hugging Face folder (the base's config and tokenizer; each tensor in the
    base's dtype, W + ΔW as PEFT's merge adds it): the adapter's model, for evaluation."""

    adapter = LoraAdapter(adapter_dir)
    with TensorReader(base_dir) as base:
        names = base.keys()
        adapter.check_against({n: tuple(base.shape(n)) for n in names if is_float_code(base.dtype_code(n))},
                              str(base_dir))
        changed = set(adapter.targets())
        specs = [(n, base.shape(n), DTYPES[base.dtype_code(n)]) for n in names]

        def produce(name: str) -> torch.Tensor:
            weight = base.get(name)
            return adapter.folded(name, weight) if name in changed else weight

        with atomic_dir(out_dir, kind="checkpoint") as tmp:
            write_streaming(tmp / "model.safetensors", specs, produce, metadata={"format": "pt"})
            copy_model_files(Path(base_dir), tmp)
    return {"adapter_sha256": sha256_path(adapter_dir), "lora_tensors": len(changed)}
