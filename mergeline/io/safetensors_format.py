"""The safetensors container format: dtype codes, tensor specs, and a header parser that checks the
header against the file size (so truncated or corrupt files fail at open, naming the file).

Layout: 8-byte little-endian header length N, N bytes of JSON ``{name: {dtype, shape, data_offsets}}``
(+ optional ``__metadata__``), then the data; offsets are relative to the end of the header.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from mergeline.errors import MergelineError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_CODES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_MAX_HEADER = 100 * 2**20  # safetensors' own limit; anything larger is a corrupt length field


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one stored tensor (what a header says, before any data is read)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _looks_like_pickle(path: Path) -> bool:
    with open(path, "rb") as handle:
        magic = handle.read(4)
    return magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"  # torch zip archive / raw pickle


def read_header(path: Path) -> dict[str, TensorSpec]:
    """Parse and check one safetensors header against the file size; return its tensors in file order."""
    return {name: spec for name, (spec, _) in _parse_header(path).items()}


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise ValueError(f"duplicate key {duplicate!r}")
    return dict(pairs)


def _count(value: object) -> int:
    """A JSON number that must be a non-negative integer (not a bool, not 2.5): a dimension or offset."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(value)
    return value


def _load_header(path: Path, raw: bytes) -> dict:
    """The header JSON: UTF-8, a JSON object, no duplicate keys, string metadata (as safetensors says)."""
    try:
        text = raw.decode("utf-8")
        if not text.startswith("{"):
            raise MergelineError(f"{path}: corrupt safetensors header (does not start with '{{')")
        header = json.loads(text, object_pairs_hook=_unique_keys)
    except UnicodeDecodeError:
        raise MergelineError(f"{path}: corrupt safetensors header (not UTF-8)") from None
    except json.JSONDecodeError:
        raise MergelineError(f"{path}: corrupt safetensors header (not valid JSON)") from None
    except RecursionError:
        raise MergelineError(f"{path}: corrupt safetensors header (nested too deeply)") from None
    except ValueError as exc:
        raise MergelineError(f"{path}: corrupt safetensors header ({exc})") from None
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise MergelineError(f"{path}: corrupt safetensors header (__metadata__ must map strings to strings)")
    return header


def _read_header_json(path: Path) -> tuple[dict, int, int]:
    """The header JSON of ``path``, its length and the file's size (length checked against both)."""
    size = path.stat().st_size
    if size < 8:
        raise MergelineError(f"{path}: truncated or corrupt safetensors file ({size} bytes)")
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if header_len > min(size - 8, _MAX_HEADER):
            if _looks_like_pickle(path):
                raise MergelineError(f"{path}: is a pickle checkpoint, not safetensors; refusing to unpickle it")
            raise MergelineError(
                f"{path}: truncated or corrupt safetensors file (header of {header_len} bytes, file of {size})"
            )
        return _load_header(path, handle.read(header_len)), header_len, size


def read_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` strings of one safetensors file's header (empty when it has none)."""
    return dict(_read_header_json(path)[0].get("__metadata__", {}))


def _parse_header(path: Path) -> dict[str, tuple[TensorSpec, int]]:
    """Checked header of ``path``: name → (spec, absolute byte offset of its data), in file order.

    Refused as the safetensors library refuses them: a header length beyond the file or 100 MiB; a
    header that is not a UTF-8 JSON object (or repeats a key); an unknown dtype; a shape or offset
    that is not a non-negative integer; byte ranges that overlap, leave gaps, do not match
    shape × dtype size, or end before or after the data.
    """
    header, header_len, size = _read_header_json(path)
    data_len = size - 8 - header_len
    specs: list[tuple[int, int, TensorSpec]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = DTYPES[entry["dtype"]]
            shape = tuple(_count(d) for d in entry["shape"])
            start, end = (_count(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise MergelineError(f"{path}: corrupt safetensors header entry for tensor {name!r}") from None
        spec = TensorSpec(name, shape, dtype)
        if end > data_len:
            raise MergelineError(
                f"{path}: truncated safetensors file (tensor {name!r} ends at byte {end}, data holds {data_len})"
            )
        if end < start or end - start != spec.nbytes:
            raise MergelineError(
                f"{path}: corrupt safetensors header (bad offsets of tensor {name!r}: {end - start} bytes "
                f"for {spec.nbytes} of shape {list(shape)} {entry['dtype']})"
            )
        specs.append((start, end, spec))
    specs.sort(key=lambda s: (s[0], s[1]))
    position = 0
    for start, end, spec in specs:
        if start != position:
            what = "overlaps the tensor before it" if start < position else "leaves a gap before it"
            raise MergelineError(f"{path}: corrupt safetensors header (tensor {spec.name!r} {what})")
        position = end
    if position != data_len:
        raise MergelineError(f"{path}: corrupt safetensors file ({data_len - position} unexpected trailing bytes)")
    return {spec.name: (spec, 8 + header_len + start) for start, _, spec in specs}
