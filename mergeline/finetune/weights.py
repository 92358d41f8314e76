"""Tensor-by-tensor access to safetensors weights, through the plain ``safetensors`` API.

Used by task-vector extraction and the importance diagnostics, which must stream: memory stays
bounded by a few tensors, never a whole model. A *weights path* is any of

- a ``.safetensors`` file;
- a task-vector folder (``task_vector.safetensors``);
- a Hugging Face model folder (``model.safetensors`` or shards listed in
  ``model.safetensors.index.json``).

The writer streams too: the header is computed from shapes first, then each tensor is produced,
written and dropped.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from mergeline.errors import MergelineError
from mergeline.io.owned_temps import remove_abandoned, temp_file
from mergeline.io.safetensors_format import DTYPE_CODES as _DTYPE_CODES

TASK_VECTOR_FILE = "task_vector.safetensors"
_INDEX_FILE = "model.safetensors.index.json"



def weight_files(path: str | os.PathLike[str]) -> dict[str, Path]:
    """Map every tensor name under ``path`` (file, task-vector folder or model folder) to its file."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif (path / TASK_VECTOR_FILE).is_file():
        files = [path / TASK_VECTOR_FILE]
    elif (path / _INDEX_FILE).is_file():
        try:
            weight_map = json.loads((path / _INDEX_FILE).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise MergelineError(f"{path / _INDEX_FILE}: not a valid safetensors index ({exc})") from exc
        return {name: path / fname for name, fname in weight_map.items()}
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        raise MergelineError(f"{path}: no safetensors weights (model.safetensors, index or {TASK_VECTOR_FILE})")
    mapping: dict[str, Path] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                mapping.update({name: file for name in handle.keys()})
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise MergelineError(f"{file}: cannot read safetensors header ({exc})") from exc
    return mapping


class TensorReader:
    """Read single tensors from a weights path, keeping each file open once (close with ``close``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.files = weight_files(path)
        self._handles: dict[Path, object] = {}

    def keys(self) -> list[str]:
        return sorted(self.files)

    def _handle(self, name: str):
        file = self.files[name]
        if file not in self._handles:
            self._handles[file] = safe_open(str(file), framework="pt")
        return self._handles[file]

    def get(self, name: str) -> torch.Tensor:
        return self._handle(name).get_tensor(name)

    def shape(self, name: str) -> list[int]:
        return list(self._handle(name).get_slice(name).get_shape())

    def dtype_code(self, name: str) -> str:
        return self._handle(name).get_slice(name).get_dtype()

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_float_code(code: str) -> bool:
    """True for safetensors float dtype codes (F64/F32/F16/BF16/F8_*)."""
    return code.startswith("F") or code == "BF16"


def iter_tensors(path: str | os.PathLike[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` in name order, one tensor in memory at a time."""
    with TensorReader(path) as reader:
        for name in reader.keys():
            yield name, reader.get(name)


def write_streaming(
    target: str | os.PathLike[str],
    specs: list[tuple[str, list[int], torch.dtype]],
    produce: Callable[[str], torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a safetensors file whose tensors are produced one at a time by ``produce(name)``.

    ``specs`` fixes name, shape and dtype up front so the header (which precedes the data) can be
    written before any tensor exists. Not atomic by itself: write into an ``atomic_dir``.
    """
    header: dict[str, object] = {}
    offset = 0
    for name, shape, dtype in specs:
        if dtype not in _DTYPE_CODES:
            raise MergelineError(f"tensor {name}: dtype {dtype} cannot be written")
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _DTYPE_CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns the data section to 8 bytes
    with open(target, "wb") as out:
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        for name, shape, dtype in specs:
            tensor = produce(name)
            if list(tensor.shape) != list(shape) or tensor.dtype != dtype:
                raise MergelineError(f"tensor {name}: produced {tuple(tensor.shape)}/{tensor.dtype}, expected {tuple(shape)}/{dtype}")
            # Through uint8 so bfloat16 (which numpy lacks) serialises the same way as other dtypes.
            out.write(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def save_tensors(
    tensors: dict[str, torch.Tensor], target: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> Path:
    """Write ``tensors`` to one safetensors file atomically (temporary name, then rename)."""
    target = Path(target)
    specs = [(name, list(t.shape), t.dtype) for name, t in sorted(tensors.items())]
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(target.parent)
    tmp = temp_file(target)
    try:
        write_streaming(tmp, specs, lambda name: tensors[name], metadata)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Every tensor of a weights path (file or folder) into memory; for small artifacts like masks."""
    return dict(iter_tensors(path))
