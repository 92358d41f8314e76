"""Streaming safetensors I/O: a lazy checkpoint reader and a sharded writer that never buffers a shard.

``CheckpointReader`` opens a Hugging Face model folder (``model.safetensors`` or a sharded
``model.safetensors.index.json``), a single ``.safetensors`` file, or a task-vector folder
(``task_vector.safetensors`` + ``task_vector.json``, see docs/design.md). Only the headers are read at
open time, so a reader costs kilobytes. Files are memory-mapped: ``view`` is a zero-copy tensor over the
page cache (the engine converts it straight into a reused compute buffer, one pass over the bytes) and
``get`` returns an owned copy. Pickle checkpoints
(``pytorch_model.bin``, ``*.pt``, ...) are refused and never unpickled: loading a pickle runs code.

``ShardedWriter`` is given the list of tensors (name, shape, dtype) up front, so it knows every shard's
header before the first byte of data and can write each tensor straight to its place in the shard
file: memory is bounded by the tensor being written, not by the shard size.

Errors (all :class:`MergelineError`, one line naming the file): missing path, pickle-only checkpoint,
truncated or corrupt safetensors (header length beyond the file, bad JSON, offsets outside the data),
an index naming a missing shard or a tensor its shard lacks, a malformed task-vector folder.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import shutil
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch

from mergeline.errors import MergelineError
from mergeline.io.safetensors_format import DTYPE_CODES, DTYPES, TensorSpec, _parse_header, read_header

__all__ = [
    "CheckpointReader", "ShardedWriter", "TensorSpec", "DTYPES", "read_header", "copy_model_files",
    "parse_size", "DEFAULT_SHARD_BYTES",
]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TASK_VECTOR_FILE = "task_vector.safetensors"
TASK_VECTOR_META = "task_vector.json"
DEFAULT_SHARD_BYTES = 2 * 10**9
# Files of the base model folder that a merged model needs besides its weights.
MODEL_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
    "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "chat_template.jinja",
    "chat_template.json", "preprocessor_config.json",
)


def _refuse_pickle(path: Path) -> None:
    raise MergelineError(
        f"{path}: pickle checkpoints are refused (unpickling runs arbitrary code); "
        "convert it to safetensors first"
    )


class CheckpointReader:
    """Lazy, per-tensor access to a safetensors checkpoint (model folder, file or task-vector folder).

    ``names()`` lists tensors in storage order; ``get`` reads one tensor and keeps no reference to it,
    so a reader never holds tensor data itself.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.is_task_vector = False
        self.task_vector_meta: dict[str, Any] | None = None
        self._specs: dict[str, TensorSpec] = {}
        self._files: dict[str, Path] = {}
        self._offsets: dict[str, int] = {}
        self._maps: dict[Path, mmap.mmap] = {}
        for file, expected in self._locate():
            entries = _parse_header(file)
            for name in expected or ():
                if name not in entries:
                    raise MergelineError(f"{file}: index lists tensor {name!r} but the shard does not hold it")
            for name, (spec, offset) in entries.items():
                if name in self._specs:
                    raise MergelineError(f"{file}: tensor {name!r} also stored in {self._files[name]}")
                self._specs[name] = spec
                self._files[name] = file
                self._offsets[name] = offset

    @property
    def model_dir(self) -> Path | None:
        """The folder holding config/tokenizer files (None for a bare .safetensors file)."""
        return self.path if self.path.is_dir() else None

    def _locate(self) -> list[tuple[Path, list[str] | None]]:
        """Safetensors files of this checkpoint, each with the tensor names an index promises (or None)."""
        p = self.path
        if not p.exists():
            raise MergelineError(f"{p}: no such file or folder")
        if p.is_file():
            if p.name.endswith(".safetensors"):
                return [(p, None)]
            if p.name.endswith(".safetensors.index.json"):
                return self._from_index(p)
            if p.suffix in PICKLE_SUFFIXES:
                _refuse_pickle(p)
            raise MergelineError(f"{p}: not a safetensors file")
        if (p / TASK_VECTOR_META).exists():
            return self._task_vector(p)
        if (p / INDEX_FILE).exists():
            return self._from_index(p / INDEX_FILE)
        if (p / SINGLE_FILE).exists():
            return [(p / SINGLE_FILE, None)]
        pickles = sorted(f.name for f in p.iterdir() if f.suffix in PICKLE_SUFFIXES)
        if pickles:
            _refuse_pickle(p / pickles[0])
        raise MergelineError(f"{p}: no {SINGLE_FILE}, {INDEX_FILE} or {TASK_VECTOR_META} in this folder")

    def _from_index(self, index: Path) -> list[tuple[Path, list[str] | None]]:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            assert isinstance(weight_map, dict)
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            raise MergelineError(f"{index}: unreadable safetensors index (no weight_map)") from None
        shards: dict[str, list[str]] = {}
        for name, shard in weight_map.items():
            shards.setdefault(str(shard), []).append(name)
        result = []
        for shard, names in shards.items():
            file = index.parent / shard
            if not file.is_file():
                raise MergelineError(f"{index}: names shard {shard!r}, which is missing")
            result.append((file, names))
        return result

    def _task_vector(self, folder: Path) -> list[tuple[Path, list[str] | None]]:
        meta_path = folder / TASK_VECTOR_META
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            raise MergelineError(f"{meta_path}: unreadable task-vector metadata") from None
        if not isinstance(meta, dict) or meta.get("kind") != "task_vector":
            raise MergelineError(f"{meta_path}: not task-vector metadata (expected \"kind\": \"task_vector\")")
        if not (folder / TASK_VECTOR_FILE).is_file():
            raise MergelineError(f"{folder}: task-vector folder without {TASK_VECTOR_FILE}")
        self.is_task_vector = True
        self.task_vector_meta = meta
        return [(folder / TASK_VECTOR_FILE, None)]

    def names(self) -> list[str]:
        return list(self._specs)

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def spec(self, name: str) -> TensorSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise MergelineError(f"{self.path}: has no tensor {name!r}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self.spec(name).shape

    def dtype(self, name: str) -> torch.dtype:
        return self.spec(name).dtype

    def file(self, name: str) -> Path:
        """The safetensors file holding ``name`` (for error messages)."""
        self.spec(name)
        return self._files[name]

    def view(self, name: str) -> torch.Tensor:
        """Zero-copy CPU tensor over the mapped file: read it, never write it, drop it with the reader."""
        spec, file = self.spec(name), self._files[name]
        if spec.nbytes == 0:
            return torch.empty(spec.shape, dtype=spec.dtype)
        mapped = self._maps.get(file)
        if mapped is None:
            with open(file, "rb") as handle:
                # ACCESS_COPY: a private mapping, so torch gets a writable buffer and the file is never touched.
                mapped = self._maps[file] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        count = spec.nbytes // spec.dtype.itemsize
        return torch.frombuffer(mapped, dtype=spec.dtype, count=count, offset=self._offsets[name]).view(spec.shape)

    def release(self, name: str, rows: tuple[int, int] | None = None) -> None:
        """Drop the mapped pages of ``name`` (or of its rows ``rows``) from this process (they stay in
        the page cache).

        Touched pages of a mapping count in the process's resident memory; without this a merge would
        look as large as all its inputs. A later ``view`` simply maps them again. With ``rows``, only
        the pages wholly inside those rows are dropped (another thread may be reading the rows beside).
        """
        mapped = self._maps.get(self._files.get(name))  # type: ignore[arg-type]
        if mapped is None or not hasattr(mapped, "madvise"):
            return
        spec, offset = self._specs[name], self._offsets[name]
        page = mmap.PAGESIZE
        if rows is None:
            start, end = offset - offset % page, min(len(mapped), offset + spec.nbytes)
        else:
            row_bytes = spec.nbytes // max(1, spec.shape[0]) if spec.shape else spec.nbytes
            first, last = offset + rows[0] * row_bytes, offset + rows[1] * row_bytes
            start, end = -(-first // page) * page, min(len(mapped), last - last % page)
        if end > start:
            mapped.madvise(mmap.MADV_DONTNEED, start, end - start)

    def get(self, name: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        """Read one tensor into memory it owns, optionally cast to ``dtype`` and moved to ``device``."""
        tensor = self.view(name).to(device=device, dtype=dtype, copy=True)
        self.release(name)
        return tensor

    def close(self) -> None:
        self._maps.clear()  # a mapping is released when the last tensor viewing it is gone

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ShardedWriter:
    """Write tensors into HF-layout shards, streaming each tensor to its final offset.

    ``specs`` fixes every tensor's name, shape and dtype (and so the shard layout) up front; tensors
    must then be added in that order. Shards are filled greedily up to ``max_shard_bytes`` (a tensor
    larger than that gets a shard of its own). One shard is written as ``model.safetensors``; more as
    ``model-0000i-of-0000N.safetensors`` plus ``model.safetensors.index.json``. ``close`` returns the
    sha256 of each weight file, computed while writing (no second read).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        specs: Sequence[TensorSpec],
        max_shard_bytes: int = DEFAULT_SHARD_BYTES,
        metadata: dict[str, str] | None = None,
    ) -> None:
        if max_shard_bytes <= 0:
            raise MergelineError(f"shard size must be positive, got {max_shard_bytes}")
        self.out_dir = Path(out_dir)
        self._metadata = {"format": "pt", **(metadata or {})}
        groups: list[list[TensorSpec]] = [[]]
        size = 0
        for spec in specs:
            if groups[-1] and size + spec.nbytes > max_shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append(spec)
            size += spec.nbytes
        n = len(groups)
        self.files = [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self._groups = groups
        self._order = [(shard, spec) for shard, group in enumerate(groups) for spec in group]
        self._next = 0
        self._handle: BinaryIO | None = None
        self._digest: Any = None
        self._hashes: dict[str, str] = {}
        self._written = 0
        self.total_bytes = sum(spec.nbytes for spec in specs)

    def _open_shard(self, shard: int) -> None:
        self._finish_shard()
        header: dict[str, Any] = {"__metadata__": self._metadata}
        offset = 0
        for spec in self._groups[shard]:
            header[spec.name] = {
                "dtype": DTYPE_CODES[spec.dtype], "shape": list(spec.shape),
                "data_offsets": [offset, offset + spec.nbytes],
            }
            offset += spec.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as safetensors does
        prefix = struct.pack("<Q", len(raw)) + raw
        self._handle = open(self.out_dir / self.files[shard], "wb")
        self._digest = hashlib.sha256(prefix)
        self._handle.write(prefix)

    def _finish_shard(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._hashes[Path(self._handle.name).name] = self._digest.hexdigest()
            self._handle = None

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Write the next tensor of the plan (same name, shape and dtype as its spec)."""
        spec = self._order[self._next][1] if self._next < len(self._order) else None
        if spec is not None and tuple(tensor.shape) != spec.shape:
            raise RuntimeError(f"ShardedWriter: {name!r} has shape {tuple(tensor.shape)}, planned {spec.shape}")
        self.add_blocks(name, [tensor])

    def add_blocks(self, name: str, blocks: Iterable[torch.Tensor]) -> None:
        """Write the next tensor of the plan as consecutive row blocks (their concatenation is the tensor)."""
        self.begin(name)
        for block in blocks:
            self.write(block)
        self.end()

    def begin(self, name: str) -> None:
        """Start the next tensor of the plan; its bytes follow through :meth:`write`, then :meth:`end`."""
        if self._next >= len(self._order):
            raise RuntimeError(f"ShardedWriter: {name!r} added after the last planned tensor")
        shard, spec = self._order[self._next]
        if name != spec.name:
            raise RuntimeError(f"ShardedWriter: expected {spec.name}, got {name}")
        if self._handle is None or (self._next > 0 and self._order[self._next - 1][0] != shard):
            self._open_shard(shard)
        self._written = 0

    def write(self, block: torch.Tensor) -> None:
        """The next row block of the tensor begun last (a CPU tensor of its planned dtype)."""
        spec = self._order[self._next][1]
        if block.dtype != spec.dtype or tuple(block.shape[1:]) != spec.shape[1:]:
            raise RuntimeError(f"ShardedWriter: block of {spec.name} is {tuple(block.shape)} {block.dtype}, "
                               f"planned {spec.shape} {spec.dtype}")
        assert self._handle is not None
        data = block.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        self._digest.update(data)
        self._handle.write(memoryview(data))
        self._written += data.nbytes

    def end(self) -> None:
        spec = self._order[self._next][1]
        if self._written != spec.nbytes:
            raise RuntimeError(f"ShardedWriter: {spec.name} got {self._written} bytes, planned {spec.nbytes}")
        self._next += 1

    def close(self) -> dict[str, str]:
        """Finish the last shard, write the index when sharded; return {weight file: sha256}."""
        if self._next != len(self._order):
            missing = self._order[self._next][1].name
            self.abort()
            raise RuntimeError(f"ShardedWriter closed before tensor {missing!r} was written")
        if not self._order:
            self._open_shard(0)  # an empty model still gets a valid (empty) safetensors file
        self._finish_shard()
        if len(self.files) > 1:
            weight_map = {spec.name: self.files[shard] for shard, spec in self._order}
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        return dict(self._hashes)

    def abort(self) -> None:
        """Close the open file without finishing (the caller's atomic_dir removes the folder)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def copy_model_files(src: Path, dst: Path, dtype_name: str | None = None) -> list[str]:
    """Copy the base's config, generation config and tokenizer files (not weights) into ``dst``.

    When ``dtype_name`` is given, ``config.json``'s dtype entry (``dtype`` or ``torch_dtype``) is set
    to it so loaders pick the dtype the weights were written in.
    """
    copied = []
    for name in MODEL_FILES:
        source = src / name
        if not source.is_file():
            continue
        if name == "config.json" and dtype_name:
            config = json.loads(source.read_text())
            for key in ("dtype", "torch_dtype"):
                if key in config:
                    config[key] = dtype_name
            (dst / name).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        else:
            shutil.copyfile(source, dst / name)
        copied.append(name)
    return copied


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """'1GB' → 10**9, '512MiB' → 512·2**20, '1000' → 1000 bytes."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if not match:
        raise MergelineError(f"bad size {text!r} (expected e.g. 500MB, 2GB, 1GiB)")
    unit = (match.group(2) or "b").lower().rstrip("b") or "b"
    power = "bkmgt".index(unit[0])
    base = 1024 if unit.endswith("i") else 1000
    return int(float(match.group(1)) * base**power)
