"""Run one tool in its own process and measure it; compare two merged models (used by merge_speed.py).

Wall-clock time covers the whole command (interpreter start and imports included), as a user sees it.
Peak host memory is the tool's own peak RSS, which ``_child.py`` reports at exit (why not the parent's
``ru_maxrss`` of the child: see there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mergeline.env import OFFLINE_DEFAULTS
from mergeline.io.safetensors_io import CheckpointReader

CHILD = Path(__file__).resolve().parent / "_child.py"


@dataclass
class Measured:
    """One timed run. ``error`` holds the tail of the log when the command failed."""

    seconds: float
    max_rss: int  # bytes
    cuda_peak: int | None = None  # bytes, torch.cuda.max_memory_allocated in the child
    inner_seconds: float | None = None  # the tool's own timing of its work (no start-up), if it reports one
    error: str | None = None


def run_child(args: list[str], log: Path) -> Measured:
    """``_child.py`` with ``args``, stdout+stderr to ``log``: its wall time, and the peak memory (and the
    inner time, if any) it wrote at exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    peak_file = log.with_suffix(".peak.json")
    peak_file.unlink(missing_ok=True)
    # no hub access, ever; output unbuffered, so a log ends where a run died
    env = {**os.environ, **OFFLINE_DEFAULTS, "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run([sys.executable, str(CHILD), str(peak_file), *args], stdout=out,
                              stderr=subprocess.STDOUT, env=env, check=False).returncode
    peak = json.loads(peak_file.read_text()) if peak_file.exists() else {}
    measured = Measured(time.perf_counter() - start, peak.get("max_rss", 0), peak.get("cuda_max_allocated"),
                        peak.get("timed_seconds"))
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        measured.error = f"exit {code}: " + "\n".join(tail)
    return measured


def best_of(runs: list[Measured]) -> Measured:
    """The fastest successful run (the least disturbed by the other jobs on a shared machine)."""
    ok = [r for r in runs if r.error is None]
    return min(ok, key=lambda r: r.seconds) if ok else runs[-1]


@dataclass
class Comparison:
    max_abs_diff: float
    tensors: int
    differing: int  # elements that are not bit-equal
    elements: int
    problems: list[str]  # missing/extra names, shape or dtype mismatches

    def summary(self) -> str:
        """``0`` when bit-equal, else ``max |diff| (differing of all elements)``."""
        if not self.differing:
            return "0"
        return f"{self.max_abs_diff:.2g} ({self.differing} of {self.elements / 1e6:.3g}M)"


def compare_models(a: Path, b: Path) -> Comparison:
    """Max |a - b| over every tensor both HF folders hold (in float32), and what does not match."""
    with CheckpointReader(a) as ra, CheckpointReader(b) as rb:
        problems = [f"only in {a.name}: {n}" for n in sorted(set(ra.names()) - set(rb.names()))]
        problems += [f"only in {b.name}: {n}" for n in sorted(set(rb.names()) - set(ra.names()))]
        worst = 0.0
        count = differing = elements = 0
        for name in sorted(set(ra.names()) & set(rb.names())):
            ta, tb = ra.get(name), rb.get(name)
            if ta.shape != tb.shape or ta.dtype != tb.dtype:
                problems.append(f"{name}: {tuple(ta.shape)} {ta.dtype} vs {tuple(tb.shape)} {tb.dtype}")
                continue
            if ta.numel():
                worst = max(worst, (ta.float() - tb.float()).abs().max().item())
            differing += int((ta != tb).sum())
            elements += ta.numel()
            count += 1
    return Comparison(worst, count, differing, elements, problems)
