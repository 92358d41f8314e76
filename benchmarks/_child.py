"""What ``merge_speed.py`` runs in its child processes, one subcommand each.

    python benchmarks/_child.py PEAK.json tool TIMED_MODULE:FUNC ENTRY_MODULE:FUNC [ARG...]
    python benchmarks/_child.py PEAK.json copy DEVICE OUT_DIR BASE_DIR MODEL_DIR...

Every subcommand writes at exit (also on ``sys.exit``, which click-based CLIs always call) to PEAK.json
``"max_rss"``, the process's peak resident memory (``VmHWM``: the memory mapped since this interpreter
started, so not the GBs the benchmark held when it started it, which a child's ``ru_maxrss`` would count),
``"cuda_max_allocated"`` when the process used CUDA, and for ``tool`` ``"timed_seconds"``, the time
spent in TIMED_MODULE:FUNC (the merge alone). What each subcommand runs: benchmarks/README.md
(``merge_speed.py``, step 2).
"""

from __future__ import annotations

import atexit
import functools
import importlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

_timed: dict[str, float] = {}


def _time_calls(target: str) -> None:
    """Replace ``module:function`` by a wrapper that adds each call's wall time to ``_timed``."""
    module_name, name = target.split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, name)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            _timed["timed_seconds"] = _timed.get("timed_seconds", 0.0) + time.perf_counter() - start

    setattr(module, name, timed)


def _write_peak(path: str) -> None:
    status = Path("/proc/self/status").read_text()
    peak: dict[str, float] = {**_timed, "max_rss": int(status.split("VmHWM:")[1].split()[0]) * 1024}
    torch = sys.modules.get("torch")
    # Only query CUDA if the tool initialised it: initialising it here costs seconds and fails on
    # machines without a driver.
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        peak["cuda_max_allocated"] = int(torch.cuda.max_memory_allocated())
    Path(path).write_text(json.dumps(peak))


def tool(timed: str, entry: str, *args: str) -> int:
    module_name, func_name = entry.split(":")
    sys.argv = [module_name.rsplit(".", 1)[-1], *args]
    func = getattr(importlib.import_module(module_name), func_name)
    _time_calls(timed)
    result = func()
    return result if isinstance(result, int) else 0


def copy_models(base: Path, models: list[Path], out: Path, device: str) -> None:
    """Read every tensor of base + models (to ``device``) once and write the base's tensors to ``out``,
    one output shard at a time, in the base's shard layout."""
    # imported here, not at the top: a ``tool`` process loads only what it measures
    import torch
    from safetensors.torch import save_file

    from mergeline.io.safetensors_io import CheckpointReader

    out.mkdir(parents=True, exist_ok=True)
    readers = [CheckpointReader(m) for m in (base, *models)]
    by_file: dict[Path, list[str]] = {}
    for name in readers[0].names():
        by_file.setdefault(readers[0].file(name), []).append(name)
    for file, names in by_file.items():
        # ``get`` copies a tensor and drops its mapped pages, so RSS holds one output shard
        kept = {}
        for name in names:
            loaded = [reader.get(name, device=device) for reader in readers]  # every input, once
            kept[name] = loaded[0]
        save_file({k: v.cpu() for k, v in kept.items()}, str(out / file.name), metadata={"format": "pt"})
        del kept
    for extra in ("config.json", "model.safetensors.index.json"):
        if (base / extra).exists():
            shutil.copy(base / extra, out / extra)
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str]) -> int:
    peak_file, command, *args = argv
    atexit.register(_write_peak, peak_file)
    if command == "tool":
        return tool(*args)
    device, out, base, *models = args  # copy DEVICE OUT BASE MODEL...
    copy_models(Path(base), [Path(m) for m in models], Path(out), device)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
