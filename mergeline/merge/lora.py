"""LoRA adapters in PEFT's folder format, folded into weight deltas: ΔW = s · B A per target module.

An adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` (PEFT's
``save_pretrained``); both are read here directly, PEFT is not imported. For a target module m with
``lora_A`` (r × in) and ``lora_B`` (out × r) (Hu et al., arXiv 2106.09685)::

    s = α / r                  (``use_rslora``: s = α / √r, Kalajdzievski, arXiv 2312.03732)
    ΔW_m = s · B A             (``fan_in_fan_out``, e.g. GPT-2's Conv1D: ΔW_m = s · (B A)ᵀ)
    embedding: ΔE = s · (B A)ᵀ ( ``lora_embedding_A``: r × vocab, ``lora_embedding_B``: dim × r)
    ``lora_bias``: Δb_m = s · b_B

r and α per module follow ``rank_pattern`` / ``alpha_pattern`` with PEFT's rule (the first pattern
key that matches the end of the module name at a dot boundary), else ``r`` / ``lora_alpha``. The
product is computed in float32 and returned in the adapter's dtype, as PEFT's ``merge_and_unload``
does, so base + ΔW is what PEFT would have merged. A full copy of a targeted embedding that PEFT
saves beside the matrices (``…base_layer.weight``) is folded in as its difference to the base.

Errors (MergelineError, one line naming the folder, file, key or module): a missing folder or file,
a pickle-only adapter, unreadable JSON, an adapter that is not LoRA or is DoRA, or that uses a
feature that changes the weights beyond B A (``modules_to_save``, ``layer_replication``,
``target_parameters``, trainable tokens, aLoRA), a key this fold does not know, a conv LoRA, a rank
that disagrees with its pattern, and, against a base (:meth:`LoraAdapter.check_against`), a target
module the base lacks or whose shape differs.
"""

from __future__ import annotations

import json
import math
import os
import re
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

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
# Config keys that, when set, make the adapter more than B A on existing weights.
_UNSUPPORTED = ("modules_to_save", "layer_replication", "target_parameters", "trainable_token_indices",
                "alora_invocation_tokens")
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


def pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """PEFT's ``rank_pattern``/``alpha_pattern`` lookup: first key matching the end of ``module``."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return default


def fold(a: torch.Tensor, b: torch.Tensor, scale: float, transpose: bool = False,
         dtype: torch.dtype | None = None) -> torch.Tensor:
    """s · B A (``transpose``: s · (B A)ᵀ), computed in float32, returned in ``dtype`` (default ``b``'s).

    a: (r, in), b: (out, r) -> (out, in), or (in, out) transposed.
    """
    delta = b.float() @ a.float()
    if transpose:
        delta = delta.T
    return (delta * scale).to(dtype or b.dtype)


def _read_config(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise MergelineError(f"adapter {folder}: no such folder")
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        raise MergelineError(f"adapter {folder}: no {ADAPTER_CONFIG} (not a PEFT adapter folder)")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        raise MergelineError(f"{path}: unreadable JSON") from None
    if not isinstance(config, dict):
        raise MergelineError(f"{path}: expected a JSON object")
    kind = config.get("peft_type")
    if kind != "LORA":
        raise MergelineError(f"{path}: peft_type {kind!r} is not supported (only LoRA adapters fold into task vectors)")
    if config.get("use_dora"):
        raise MergelineError(f"{path}: DoRA adapters (use_dora: true) are not supported: their update is not B·A")
    for key in _UNSUPPORTED:
        if config.get(key):
            raise MergelineError(f"{path}: {key} is set; only plain LoRA matrices can be folded")
    return config


class LoraAdapter:
    """A PEFT LoRA adapter folder: ``modules`` by base tensor name (``<module>.weight``), and
    :meth:`delta` for each. The adapter's tensors are small and read once into memory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.config = _read_config(self.path)
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
        self.fan_in_fan_out = bool(self.config.get("fan_in_fan_out"))
        self.modules = self._modules()
        if not self.modules:
            raise MergelineError(f"{weights}: holds no LoRA matrices")

    @property
    def base_model_name_or_path(self) -> str | None:
        return self.config.get("base_model_name_or_path")

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
        if b.shape[1] != rank:
            raise MergelineError(f"{where}: lora_A has rank {rank} but lora_B has {b.shape[1]} columns")
        configured = int(pattern_value(self.config.get("rank_pattern") or {}, entry.module, self.config.get("r", rank)))
        if configured != rank:
            raise MergelineError(f"{where}: rank {rank} in the weights but r={configured} in {ADAPTER_CONFIG}")
        alpha = float(pattern_value(self.config.get("alpha_pattern") or {}, entry.module,
                                    self.config.get("lora_alpha", rank)))
        entry.rank = rank
        entry.scale = alpha / math.sqrt(rank) if self.config.get("use_rslora") else alpha / rank

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
        that tensor adds its difference to it."""
        bias = self._bias_entry(name)
        if bias is not None:
            b_bias = self.tensors[bias.bias_key]  # type: ignore[index]
            return (b_bias.float() * bias.scale).to(b_bias.dtype)
        entry = self.modules[name]
        a, b = self.tensors[entry.a_key], self.tensors[entry.b_key]
        transpose = entry.kind == "embedding" or self.fan_in_fan_out
        delta = fold(a, b, entry.scale, transpose, self.delta_dtype(name))
        if entry.copy_key is not None and base is not None:
            saved = self.tensors[entry.copy_key]
            delta = (delta.float() + (saved.float() - base.float())).to(delta.dtype)
        return delta

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
            return weight + adapter.delta(name, weight).to(weight.dtype) if name in changed else weight

        with atomic_dir(out_dir, kind="checkpoint") as tmp:
            write_streaming(tmp / "model.safetensors", specs, produce, metadata={"format": "pt"})
            copy_model_files(Path(base_dir), tmp)
    return {"adapter_sha256": sha256_path(adapter_dir), "lora_tensors": len(changed)}
