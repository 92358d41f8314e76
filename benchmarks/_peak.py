"""Run a console-script entry point and record its peak CUDA memory (used by merge_speed.py).

    .venv/bin/python benchmarks/_peak.py PEAK.json [--time MODULE:FUNC] mergekit.scripts.run_yaml:main CONFIG.yaml OUT --cuda

Runs ``module:function`` in this process with the remaining arguments as ``sys.argv[1:]``, so the
tool is measured in its own process as if started from its console script. At exit (also on
``sys.exit``, which click-based CLIs always call) it writes ``{"cuda_max_allocated": bytes,
"cuda_max_reserved": bytes}`` to PEAK.json when the tool used CUDA, and ``{}`` otherwise.
``--time MODULE:FUNC`` replaces that function (after the entry point's module is imported) by one
that times its calls, and adds ``"timed_seconds"``: the tool's own work without interpreter start,
imports and exit (``mergekit.scripts.run_yaml:run_merge``, ``mergeline.merge.engine:run_merge``).
Peak host memory is not measured here: the parent reads the child's max RSS from ``os.wait4``.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import json
import sys
import time

_timed: dict[str, float] = {}


def _time_calls(target: str) -> None:
    """Replace ``module:function`` by a wrapper that adds each call's wall time to ``_timed``."""
    module_name, name = target.split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, name)

    @functools.wraps(original)
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            _timed["timed_seconds"] = _timed.get("timed_seconds", 0.0) + time.perf_counter() - start

    setattr(module, name, timed)


def _write_peak(path: str) -> None:
    peak: dict[str, float] = dict(_timed)
    torch = sys.modules.get("torch")
    # Only query CUDA if the tool initialised it: initialising it here would distort nothing but
    # costs seconds and fails on machines without a driver.
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        peak.update(cuda_max_allocated=int(torch.cuda.max_memory_allocated()),
                    cuda_max_reserved=int(torch.cuda.max_memory_reserved()))
    with open(path, "w") as f:
        json.dump(peak, f)


def main() -> None:
    peak_file, *rest = sys.argv[1:]
    target = None
    if rest[0] == "--time":
        target, *rest = rest[1:]
    entry, *args = rest
    module_name, func_name = entry.split(":")
    atexit.register(_write_peak, peak_file)
    sys.argv = [module_name.rsplit(".", 1)[-1], *args]
    func = getattr(importlib.import_module(module_name), func_name)
    if target is not None:
        _time_calls(target)
    result = func()
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
