"""Writing a model's weights as Hugging Face safetensors shards, streaming each tensor to its place.

``ShardedWriter`` is given the list of tensors (name, shape, dtype) up front, so it knows every shard's
header before the first byte of data and can write each tensor straight to its place in the shard
file: memory is bounded by the tensor being written, not by the shard size. It hashes (sha256) every
file while writing it, so nothing is read back.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import torch

from mergeline.errors import MergelineError
from mergeline.io.safetensors_format import DTYPE_CODES, INDEX_FILE, SINGLE_FILE, TensorSpec

DEFAULT_SHARD_BYTES = 2 * 10**9

_PARALLEL_HASH_BYTES = 1 << 22
_HASHER: ThreadPoolExecutor | None = None


def _hash_thread() -> ThreadPoolExecutor:
    global _HASHER
    if _HASHER is None:
        _HASHER = ThreadPoolExecutor(1, thread_name_prefix="mergeline-hash")
    return _HASHER


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
        if data.nbytes >= _PARALLEL_HASH_BYTES:
            # Hashing (~1.5 GB/s) and writing each release the GIL: side by side, a block costs the
            # slower of the two instead of their sum.
            hashed = _hash_thread().submit(self._digest.update, data)
            self._handle.write(memoryview(data))
            hashed.result()
        else:
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


