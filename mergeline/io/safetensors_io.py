"""Streaming safetensors I/O: a lazy checkpoint reader and a sharded writer that never buffers a shard.

``CheckpointReader`` opens a Hugging Face model folder (``model.safetensors`` or a sharded
``model.safetensors.index.json``), a single ``.safetensors`` file, or a task-vector folder
(``task_vector.safetensors`` + ``task_vector.json``, see docs/design.md). Only the headers are read at
open time, so a reader costs kilobytes. Files are memory-mapped: ``view`` is a zero-copy tensor over the
page cache (the engine converts it straight into a reused compute buffer, one pass over the bytes) and
``get`` returns an owned copy. Pickle checkpoints
(``pytorch_model.bin``, ``*.pt``, ...) are refused and never unpickled: loading a pickle runs code.

``ShardedWriter`` (``mergeline.io.shard_writer``, re-exported here) writes shards streaming.

Errors (all :class:`MergelineError`, one line naming the file): missing path, pickle-only checkpoint,
truncated or corrupt safetensors (header length beyond the file, bad JSON, offsets outside the data),
an index naming a missing shard or a tensor its shard lacks, a malformed task-vector folder.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from mergeline.errors import MergelineError
from mergeline.io.safetensors_format import (
    DTYPES, INDEX_FILE, SINGLE_FILE, TensorSpec, _parse_header, read_header,
)
from mergeline.io.shard_writer import DEFAULT_SHARD_BYTES, ShardedWriter

__all__ = [
    "CheckpointReader", "ShardedWriter", "TensorSpec", "DTYPES", "read_header", "copy_model_files",
    "parse_size", "DEFAULT_SHARD_BYTES",
]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
TASK_VECTOR_FILE = "task_vector.safetensors"
TASK_VECTOR_META = "task_vector.json"
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
        if not p.is_dir():
            raise MergelineError(f"{p}: not a regular file or folder (a device or pipe); expected a model")
        for name in (TASK_VECTOR_META, INDEX_FILE, SINGLE_FILE):
            if (p / name).exists() and not (p / name).is_file():
                raise MergelineError(f"{p / name}: not a regular file")
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
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            assert isinstance(weight_map, dict)
        except (OSError, ValueError, KeyError, TypeError, AssertionError, RecursionError):
            raise MergelineError(f"{index}: unreadable safetensors index (no weight_map)") from None
        shards: dict[str, list[str]] = {}
        for name, shard in weight_map.items():
            # A shard is a file beside the index: "../x" or "/etc/passwd" would read outside the model.
            if not isinstance(shard, str) or Path(shard).name != shard or shard in (".", ".."):
                raise MergelineError(f"{index}: tensor {name!r} names shard {shard!r}, which is not a file in this folder")
            shards.setdefault(shard, []).append(name)
        result = []
        for shard, names in shards.items():
            file = index.parent / shard
            if not file.is_file() or not file.name.endswith(".safetensors"):
                raise MergelineError(f"{index}: names shard {shard!r}, which is missing or not a .safetensors file")
            result.append((file, names))
        return result

    def _task_vector(self, folder: Path) -> list[tuple[Path, list[str] | None]]:
        meta_path = folder / TASK_VECTOR_META
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
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

    def stored_files(self) -> list[Path]:
        """The safetensors files behind this reader, in storage order (none for tensors in memory)."""
        return list(dict.fromkeys(self._files.values()))

    def file(self, name: str) -> Path:
        """The safetensors file holding ``name`` (for error messages)."""
        self.spec(name)
        return self._files[name]

    def computes(self, name: str) -> bool:
        """True when ``name`` is computed as it is read (``mergeline.merge.lora_reader``), not stored bytes."""
        return False

    def byte_range(self, name: str, rows: tuple[int, int] | None = None) -> tuple[Path, int, int]:
        """(file, offset, length) of the stored bytes of ``name``, or of its rows ``rows``: what a
        positioned read (no mapping) needs."""
        spec, file, offset = self.spec(name), self._files[name], self._offsets[name]
        if rows is None:
            return file, offset, spec.nbytes
        row_bytes = spec.nbytes // max(1, spec.shape[0]) if spec.shape else spec.nbytes
        return file, offset + rows[0] * row_bytes, (rows[1] - rows[0]) * row_bytes

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
            try:
                config = json.loads(source.read_text(encoding="utf-8"))
                assert isinstance(config, dict)
            except (ValueError, AssertionError, RecursionError):
                raise MergelineError(f"{source}: not a JSON object; cannot set its dtype for out_dtype") from None
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
