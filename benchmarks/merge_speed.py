"""Merge speed and memory: mergeline against mergekit and against a plain read+write of the same bytes.

    .venv/bin/python benchmarks/merge_speed.py --params 0.9e9 --finetunes 4 --dtype bfloat16 --device cpu

Builds (or reuses, in ``--workdir``) a base and ``--finetunes`` synthetic Llama-shaped fine-tunes per
size, then times in its own process, per device and method: ``mergeline merge``, ``mergekit-yaml`` on the
same config (the methods mergekit has), the read+write baseline and the read bound (``_child.py``). Prints
one markdown table, one row per size × device × method (also written to ``--table-out`` after every
measurement); the columns and how to read them: benchmarks/README.md. Times are the best of ``--repeat``
runs on a warm page cache. Exit status 1 if any run failed or a comparison found a mismatch in
names/shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import LlamaConfig

from _synthetic_models import ModelSet, build_model_set, llama_shape, model_files, num_params
from mergeline.env import OFFLINE_DEFAULTS
from mergeline.io.safetensors_io import CheckpointReader

GB = 1e9
# label -> merge_method; the methods mergekit 0.1.5 has are also run there
METHODS = {"TA": "task_arithmetic", "TIES": "ties", "DELLA": "della", "MODEL_STOCK": "model_stock",
           "LINEAR": "linear", "TSV": "tsv", "ISO_C": "iso_c", "ISO_CTS": "iso_cts",
           "CONSENSUS_TA": "consensus_ta", "CONSENSUS_TIES": "consensus_ties"}
IN_MERGEKIT = {"task_arithmetic", "ties", "della", "model_stock", "linear"}
TOOLS = ("mergeline", "mergekit", "baseline")
TIMED = {"mergeline": "mergeline.merge.engine:run_merge", "mergekit": "mergekit.scripts.run_yaml:run_merge"}
CHILD = Path(__file__).resolve().parent / "_child.py"


@dataclass
class Measured:
    """One timed run. ``error`` holds the tail of the log when the command failed."""

    seconds: float  # the whole command, interpreter start and imports included, as a user sees it
    max_rss: int  # bytes, the tool's own peak RSS as _child.py reports it at exit
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


@dataclass
class MethodResult:
    in_mergekit: bool = True
    mergeline: Measured | None = None
    mergekit: Measured | None = None
    comparison: Comparison | None = None


@dataclass
class DeviceResult:
    baseline: Measured | None = None
    methods: dict[str, MethodResult] = field(default_factory=dict)


@dataclass
class SizeResult:
    models: ModelSet
    input_bytes: int
    read: Measured | None = None
    devices: dict[str, DeviceResult] = field(default_factory=dict)


def _ok(m: Measured | None) -> bool:
    return m is not None and not m.error


def _num(x: float, places: int = 1) -> str:
    """``places`` decimals, or two significant digits below 10^(1 − places): seconds to one decimal (a
    tiny merge is not "0.0"), ratios to two (never a bare "0.00")."""
    return f"{x:.{places}f}" if x >= 10.0 ** (1 - places) else f"{x:.2g}"


def _secs(m: Measured | None) -> str:
    if m is None or m.error:
        return "-" if m is None else "failed"
    return _num(m.seconds) + ("" if m.inner_seconds is None else f" ({_num(m.inner_seconds)})")


def _gb(value: int | None) -> str:
    return "-" if value is None else f"{value / GB:.2f}"


def _pair(a: Measured | None, b: Measured | None) -> str:
    """a's seconds / b's, "whole (merge alone)"; "-" where either is missing or failed."""
    if not (_ok(a) and _ok(b)) or not b.seconds:  # type: ignore[union-attr]
        return "-"
    whole = _num(a.seconds / b.seconds, 2)  # type: ignore[union-attr]
    if a.inner_seconds is None or not b.inner_seconds:  # type: ignore[union-attr]
        return whole
    return f"{whole} ({_num(a.inner_seconds / b.inner_seconds, 2)})"  # type: ignore[union-attr]


def size_label(models: ModelSet) -> str:
    s = models.shape
    return f"{num_params(s) / 1e9:.3g}B ({s.hidden_size}x{s.num_hidden_layers}) {models.dtype}"


def report(results: list[SizeResult], args: argparse.Namespace) -> str:
    """What has been measured so far: the markdown table, one row per (size, device, method), then a
    line per size on the read bound."""
    title = (f"merge_speed: {args.finetunes} fine-tunes + base, Llama-shaped, device {','.join(args.devices)}, "
             f"TIES/DELLA density {args.density}, best of {args.repeat}")
    cuda = any(d.startswith("cuda") for d in args.devices)
    head = ["size", "device", "method", "mergeline s (merge alone)", "mergekit s (merge alone)", "ml/mk time",
            "ml/TA time", "read+write s", "ml fraction of read bound", "ml peak RSS GB", "mk peak RSS GB"]
    if cuda:
        head += ["ml peak CUDA GB", "mk peak CUDA GB"]
    head.append("ml vs mk: max abs diff (elements differing)")
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: list[str] = []
    for r in results:
        size = size_label(r.models)
        for device, where in r.devices.items():
            ta = where.methods.get("TA")
            for label, m in where.methods.items():
                ml, mk = m.mergeline, m.mergekit
                row = [size, device, label, _secs(ml), _secs(mk) if m.in_mergekit else "(none)", _pair(ml, mk),
                       _pair(ml, ta.mergeline) if ta else "-", _secs(where.baseline), _pair(r.read, ml),
                       _gb(ml and ml.max_rss), _gb(mk and mk.max_rss)]
                if cuda:
                    row += [_gb(ml and ml.cuda_peak), _gb(mk and mk.cuda_peak)]
                row.append("-" if m.comparison is None else m.comparison.summary())
                lines.append("| " + " | ".join(row) + " |")
        if _ok(r.read):
            notes.append(f"{size}: {len(r.models.all_models)} models, {r.input_bytes / GB:.2f} GB of inputs; "
                         f"reading them once took {r.read.seconds:.2f} s "  # type: ignore[union-attr]
                         f"({r.input_bytes / GB / r.read.seconds:.2f} GB/s)")  # type: ignore[union-attr]
    return "\n".join(lines + [""] + notes) + "\n"


def merge_config(models: ModelSet, method: str, density: float) -> dict:
    """A mergekit-schema config both tools read. Compute in float32, write the inputs' dtype.

    Task-arithmetic family: weight 1/N per model (TIES and DELLA: ``density``); linear: weight 1/N per
    fine-tune, no base; Model Stock and the methods mergekit lacks: no per-model parameters (their
    defaults: weight 1, λ 1)."""
    weight = round(1.0 / len(models.finetunes), 6)
    entries = []
    for ft in models.finetunes:
        params: dict[str, float] = {}
        if method in ("task_arithmetic", "ties", "della", "linear"):
            params["weight"] = weight
        if method in ("ties", "della"):
            params["density"] = density
        entries.append({"model": str(ft), **({"parameters": params} if params else {})})
    base = {} if method == "linear" else {"base_model": str(models.base)}
    return {"merge_method": method, **base, "models": entries, "dtype": "float32", "out_dtype": models.dtype}


def read_bound(files: list[Path]) -> Measured:
    """One thread reading every byte of ``files`` once (also how the page cache is warmed), timed around
    the reads alone: its whole time and its "merge alone" are the same, so mergeline's share of the
    bound is a plain ratio."""
    view = memoryview(bytearray(64 << 20))  # one reused 64 MiB buffer
    start = time.perf_counter()
    for file in files:
        with open(file, "rb", buffering=0) as f:
            while f.readinto(view):
                pass
    seconds = time.perf_counter() - start
    return Measured(seconds, 0, inner_seconds=seconds)


def parse_size(text: str) -> float | LlamaConfig:
    """``0.9e9`` (parameters) or ``512x8`` (hidden size x layers, vocabulary 32,000)."""
    shaped = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    return llama_shape(int(shaped[1]), int(shaped[2])) if shaped else float(text)


class Bench:
    """Runs the tools on one model set; every output lands under ``workdir/out``."""

    def __init__(self, args: argparse.Namespace, flush=lambda bench: None) -> None:
        self.args = args
        self.workdir: Path = args.workdir.resolve()
        self.failed = False
        self.results: list[SizeResult] = []
        self._flush = flush  # called after every measurement, so a killed run still leaves its table

    def measure(self, what: str, run: Callable[[], Measured], out: Path | None = None) -> Measured:
        """The fastest of ``--repeat`` runs (each from no output ``out``, as a user's would start)."""
        print(what, flush=True)
        runs = []
        for _ in range(self.args.repeat):
            if out is not None:
                shutil.rmtree(out, ignore_errors=True)
            runs.append(run())
        result = best_of(runs)
        if result.error:
            self.failed = True
            print(f"  failed: {result.error}", file=sys.stderr)
        inner = "" if result.inner_seconds is None else f" ({result.inner_seconds:.1f} timed inside)"
        rss = f", peak RSS {result.max_rss / GB:.2f} GB" if result.max_rss else ""
        print(f"  {result.seconds:.1f} s{inner}{rss}", flush=True)
        self._flush(self)
        return result

    def run_size(self, size: float | LlamaConfig) -> None:
        """The model set of ``size`` (built once, cached in the workdir), read once so every run sees a
        warm page cache; then the read bound and every device."""
        a = self.args
        shape = size if isinstance(size, LlamaConfig) else None
        params = float(num_params(shape)) if shape else float(size)  # type: ignore[arg-type]
        tag = (f"h{shape.hidden_size}x{shape.num_hidden_layers}" if shape else f"{params / 1e9:.3g}B") \
            + f"-{a.dtype}-{a.finetunes}ft"
        models = build_model_set(self.workdir / "models" / tag, params, a.finetunes, a.dtype,
                                 shard_bytes=int(GB), device=a.devices[0], shape=shape)  # 1 GB shards
        files = [f for m in models.all_models for f in model_files(m)]
        print(f"[{tag}] warming the page cache ({sum(f.stat().st_size for f in files) / GB:.2f} GB)")
        read_bound(files)
        out, logs = self.workdir / "out", self.workdir / "logs" / tag
        logs.mkdir(parents=True, exist_ok=True)  # every tool writes its config and log here
        result = SizeResult(models, sum(f.stat().st_size for f in files))
        self.results.append(result)
        if "baseline" in a.tools:
            result.read = self.measure(f"[{tag}] read bound", lambda: read_bound(files))
        for device in a.devices:
            where = result.devices[device] = DeviceResult()
            if "baseline" in a.tools:
                copy = ["copy", device, str(out / "baseline"), *map(str, models.all_models)]
                where.baseline = self.measure(f"[{tag} {device}] read+write baseline", lambda: run_child(
                    copy, logs / f"baseline-{device}.log"), out / "baseline")
                shutil.rmtree(out / "baseline", ignore_errors=True)
            for label in a.methods:
                where.methods[label] = self.run_method(models, METHODS[label], device, out, logs,
                                                       f"[{tag} {device}] {label}")

    def run_method(self, models: ModelSet, method: str, device: str, out: Path, logs: Path,
                   tag: str) -> MethodResult:
        """One method through each tool of ``--tools`` that has it (``mergeline merge``, ``mergekit-yaml``),
        on one config; then the two outputs compared, tensor by tensor."""
        a = self.args
        config = logs / f"{method}.yaml"
        config.write_text(yaml.safe_dump(merge_config(models, method, a.density), sort_keys=False))
        res = MethodResult(in_mergekit=method in IN_MERGEKIT)
        ml_out, mk_out = out / f"mergeline-{method}", out / f"mergekit-{method}"
        # each tool's console entry point, run by ``_child.py tool`` with its run_merge timed inside
        commands = {
            "mergeline": (ml_out, ["mergeline.cli:main", "merge", str(config), "--out", str(ml_out),
                                   "--device", device]),
            "mergekit": (mk_out, ["mergekit.scripts.run_yaml:main", str(config), str(mk_out), "--no-copy-tokenizer",
                                  "--quiet", *(["--cuda"] if device.startswith("cuda") else [])]),
        }
        for tool, (where, argv) in commands.items():
            if tool in a.tools and (tool == "mergeline" or res.in_mergekit):
                child = ["tool", TIMED[tool], *argv]
                log = logs / f"{tool}-{method}-{device}.log"
                setattr(res, tool, self.measure(f"{tag}: {tool}", lambda: run_child(child, log), where))
        if res.mergeline and res.mergekit and not (res.mergeline.error or res.mergekit.error):
            res.comparison = compare_models(ml_out, mk_out)
            print(f"  mergeline vs mergekit: {res.comparison.summary()} over {res.comparison.tensors} tensors")
            if res.comparison.problems:
                self.failed = True
                print("  mismatch: " + "; ".join(res.comparison.problems[:5]), file=sys.stderr)
            self._flush(self)
        if not a.keep_outputs:
            shutil.rmtree(ml_out, ignore_errors=True)
            shutil.rmtree(mk_out, ignore_errors=True)
        return res


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=float, default=0.9e9, help="parameters per model (e.g. 0.9e9)")
    p.add_argument("--sizes", help="comma-separated sizes to run instead of --params: parameter counts "
                                   "(0.1e9) or hidden x layers (512x8)")
    p.add_argument("--finetunes", type=int, default=4, help="fine-tuned models merged onto the base")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="dtype of the stored models (the merge computes in float32 and writes this dtype)")
    p.add_argument("--device", default="cpu", help="where both tools compute: cpu, cuda, or both (cpu,cuda)")
    p.add_argument("--methods", default="TA,TIES", help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of " + ",".join(TOOLS))
    p.add_argument("--density", type=float, default=0.5, help="TIES and DELLA density (fraction of each delta kept)")
    p.add_argument("--repeat", type=int, default=1, help="runs per measurement; the fastest is reported")
    p.add_argument("--workdir", type=Path, default=Path("bench_out/merge_speed"), help="cache and outputs")
    p.add_argument("--table-out", type=Path, help="also write the table here (default WORKDIR/table.md)")
    p.add_argument("--keep-outputs", action="store_true", help="keep the merged models for inspection")
    args = p.parse_args(argv)
    args.methods = [m.strip().upper() for m in args.methods.split(",") if m.strip()]
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    args.devices = [d.strip() for d in args.device.split(",") if d.strip()]
    bad = [m for m in args.methods if m not in METHODS] + [t for t in args.tools if t not in TOOLS]
    if bad:
        p.error(f"unknown method/tool: {', '.join(bad)}")
    try:
        args.sizes = [parse_size(s) for s in args.sizes.split(",")] if args.sizes else [args.params]
    except ValueError:
        p.error(f"--sizes: {args.sizes!r}: give parameter counts (0.1e9) or hidden x layers (512x8)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    table_out = args.table_out or args.workdir / "table.md"
    table_out.parent.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, flush=lambda b: table_out.write_text(report(b.results, b.args)))
    for size in args.sizes:
        bench.run_size(size)
    text = report(bench.results, args)
    table_out.write_text(text)
    print("\n" + text)
    return 1 if bench.failed else 0


if __name__ == "__main__":
    sys.exit(main())
