"""Run one tool in its own process and measure it; compare two merged models; time the merge engine's
loader and sha256 in this process (used by merge_speed.py).

Wall-clock time covers the whole command (interpreter start and imports included), as a user sees it.
Peak host memory is the tool's own max RSS, taken by the small launcher ``_child.py launch`` (why a
launcher: see there).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch

from mergeline.env import OFFLINE_DEFAULTS
from mergeline.io.prefetch import Fetched, TensorPrefetcher
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


def offline_env() -> dict[str, str]:
    """The children's environment: no hub access, ever; output unbuffered, so a log ends where a run died."""
    return {**os.environ, **OFFLINE_DEFAULTS, "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run_measured(cmd: list[str], log: Path) -> Measured:
    """Run ``cmd`` with stdout+stderr to ``log`` through ``_child.py launch``; return its wall time and max RSS."""
    log.parent.mkdir(parents=True, exist_ok=True)
    result_file = log.with_suffix(".run.json")
    result_file.unlink(missing_ok=True)
    with open(log, "w") as out:
        subprocess.run([sys.executable, "-S", str(CHILD), "launch", str(result_file), *cmd],
                       stdout=out, stderr=subprocess.STDOUT, env=offline_env(), check=False)
    if not result_file.exists():
        return Measured(0.0, 0, error=f"launcher failed, see {log}")
    result = json.loads(result_file.read_text())
    measured = Measured(result["seconds"], result["max_rss"])
    if result["returncode"] != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        measured.error = f"exit {result['returncode']}: " + "\n".join(tail)
    return measured


def run_entry_point(entry: str, args: list[str], log: Path, timed: str | None = None) -> Measured:
    """Run a console-script entry point (``module:function``) through ``_child.py tool``, with CUDA peak, and
    the time spent in the function ``timed`` (``module:function``) as ``inner_seconds``."""
    peak_file = log.with_suffix(".peak.json")
    peak_file.unlink(missing_ok=True)
    timing = ["--time", timed] if timed else []
    measured = run_measured([sys.executable, str(CHILD), "tool", str(peak_file), *timing, entry, *args], log)
    if peak_file.exists():
        peak = json.loads(peak_file.read_text())
        measured.cuda_peak = peak.get("cuda_max_allocated")
        measured.inner_seconds = peak.get("timed_seconds")
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


def loader_seconds(readers: list[CheckpointReader], device: torch.device, threads: int, piece_bytes: int,
                   window: int) -> float:
    """Seconds for :class:`TensorPrefetcher` to fetch every tensor of ``readers`` to ``device``, with at
    most ``window`` bytes in flight (as the engine keeps it, so host memory stays bounded)."""
    with TensorPrefetcher(device, threads, piece_bytes) as load:
        start = time.perf_counter()
        pending: deque[Fetched] = deque()
        in_flight = 0
        for reader in readers:
            for name in reader.names():
                pending.append(load.fetch(reader, name))
                in_flight += pending[-1].nbytes
                while in_flight > window:
                    done = pending.popleft()
                    load.wait(done)
                    in_flight -= done.nbytes
        while pending:
            load.wait(pending.popleft())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start


def sha256_seconds(nbytes: int) -> float:
    """Seconds for sha256 of ``nbytes`` random bytes on one core."""
    data = os.urandom(nbytes)
    start = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    return time.perf_counter() - start
