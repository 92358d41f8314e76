"""The floor a merge is compared with: reading the inputs and writing one output (used by merge_speed.py).

    .venv/bin/python benchmarks/_rw_baseline.py read FILE...
    .venv/bin/python benchmarks/_rw_baseline.py copy --device cpu --out DIR BASE_DIR MODEL_DIR...

``read``: reads the raw bytes of every file once, in 64 MiB chunks into one reused buffer, and prints
``{"bytes": N, "seconds": S}``, S timed around the reads alone (no interpreter start). N / S is the
bound "read the input bytes once" (no parsing, no copies).

``copy``: the plain read+write of a merge's bytes with no arithmetic. For every tensor of the base it
loads that tensor from every model with safetensors (moving it to ``--device``, as a merge would),
keeps the base's copy, and writes the kept tensors with the base's shard layout. Memory is bounded by
one output shard (1 GB by default), which ``save_file`` needs whole.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from contextlib import ExitStack
from pathlib import Path

_CHUNK = 64 << 20


def read_files(files: list[Path]) -> int:
    """Read every byte of ``files`` once; return the number of bytes read."""
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    total = 0
    for file in files:
        with open(file, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return total


def _shards(folder: Path) -> dict[str, list[str]]:
    """File name -> tensor names of one HF folder (single file or index)."""
    index = folder / "model.safetensors.index.json"
    if not index.exists():
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            return {"model.safetensors": list(f.keys())}
    by_file: dict[str, list[str]] = {}
    for name, file in json.loads(index.read_text())["weight_map"].items():
        by_file.setdefault(file, []).append(name)
    return by_file


def tensor_locations(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file that holds it, in one HF folder."""
    return {name: folder / file for file, names in _shards(folder).items() for name in names}


def copy_models(base: Path, models: list[Path], out: Path, device: str) -> None:
    """Read every tensor of base + models (to ``device``) once and write the base's tensors to ``out``."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    where = [tensor_locations(m) for m in models]
    for file, names in _shards(base).items():
        # Handles live for one output shard: a safetensors handle maps its file, and every page it
        # touched would otherwise count in this process's RSS until the end.
        with ExitStack() as stack:
            handles: dict[Path, object] = {}

            def tensor(path: Path, name: str) -> torch.Tensor:
                # One handle per file and shard: safe_open parses the header, not worth paying per tensor.
                if path not in handles:
                    handles[path] = stack.enter_context(safe_open(str(path), framework="pt"))
                return handles[path].get_tensor(name).to(device)

            kept = {}
            for name in names:
                kept[name] = tensor(base / file, name)
                for locations in where:
                    tensor(locations[name], name)
        save_file({k: v.cpu() for k, v in kept.items()}, str(out / file), metadata={"format": "pt"})
        del kept
    for extra in ("config.json", "model.safetensors.index.json"):
        if (base / extra).exists():
            shutil.copy(base / extra, out / extra)
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    read = sub.add_parser("read")
    read.add_argument("files", nargs="+", type=Path)
    copy = sub.add_parser("copy")
    copy.add_argument("--device", default="cpu")
    copy.add_argument("--out", type=Path, required=True)
    copy.add_argument("base", type=Path)
    copy.add_argument("models", nargs="*", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "read":
        start = time.perf_counter()
        nbytes = read_files(args.files)
        print(json.dumps({"bytes": nbytes, "seconds": time.perf_counter() - start}))
    else:
        copy_models(args.base, args.models, args.out, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
