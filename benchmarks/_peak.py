"""Run a console-script entry point and record its peak CUDA memory (used by merge_speed.py).

    .venv/bin/python benchmarks/_peak.py PEAK.json mergekit.scripts.run_yaml:main CONFIG.yaml OUT --cuda

Runs ``module:function`` in this process with the remaining arguments as ``sys.argv[1:]``, so the
tool is measured in its own process as if started from its console script. At exit (also on
``sys.exit``, which click-based CLIs always call) it writes ``{"cuda_max_allocated": bytes,
"cuda_max_reserved": bytes}`` to PEAK.json when the tool used CUDA, and ``{}`` otherwise.
Peak host memory is not measured here: the parent reads the child's max RSS from ``os.wait4``.
"""

from __future__ import annotations

import atexit
import importlib
import json
import sys


def _write_peak(path: str) -> None:
    peak: dict[str, int] = {}
    torch = sys.modules.get("torch")
    # Only query CUDA if the tool initialised it: initialising it here would distort nothing but
    # costs seconds and fails on machines without a driver.
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        peak = {"cuda_max_allocated": int(torch.cuda.max_memory_allocated()),
                "cuda_max_reserved": int(torch.cuda.max_memory_reserved())}
    with open(path, "w") as f:
        json.dump(peak, f)


def main() -> None:
    peak_file, entry, *args = sys.argv[1:]
    module_name, func_name = entry.split(":")
    atexit.register(_write_peak, peak_file)
    sys.argv = [module_name.rsplit(".", 1)[-1], *args]
    func = getattr(importlib.import_module(module_name), func_name)
    result = func()
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
