"""Merge speed and memory: mergeline against mergekit and against a plain read+write of the same bytes.

    .venv/bin/python benchmarks/merge_speed.py --params 0.9e9 --finetunes 4 --dtype bfloat16 --device cpu

Builds a base and N fine-tunes of a Llama-shaped model of about ``--params`` parameters offline
(random weights, small independent per-model deltas, sharded safetensors; cached in ``--workdir``),
then, in one run, for Task Arithmetic and TIES (and, with ``--methods``, DELLA and Model Stock) times
each tool in its own process:
  - mergeline:  ``mergeline merge CONFIG --out DIR --device D``
  - mergekit:   ``mergekit-yaml CONFIG DIR [--cuda]`` (the same CONFIG; local absolute paths, offline)
  - read+write: ``_rw_baseline.py copy``: read every input tensor once, write one model (no arithmetic)
and the bound "read the input bytes once" (``_rw_baseline.py read``). It prints one markdown table
(also written to ``--table-out``) with wall time, peak RSS (and peak CUDA memory on ``--device cuda``),
the ratios mergeline/mergekit and mergeline/read+write, mergeline's fraction of the read bound, and
the max |mergeline - mergekit| over every output tensor (DELLA samples its masks from different RNG
streams in the two tools, so its outputs differ by design). With non-float32 inputs it also runs a small
float32 set through both tools' Task Arithmetic, where the outputs must be equal.
Times are the best of ``--repeat`` runs; inputs are read once beforehand so every run sees a warm
page cache. Exit status 1 if any run failed or a comparison found a mismatch in names/shapes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from _measure import Comparison, Measured, best_of, compare_models, run_entry_point, run_measured
from _rw_baseline import read_files
from _synthetic_models import ModelSet, build_model_set, model_files

HERE = Path(__file__).resolve().parent
GB = 1e9
METHODS = {"TA": "task_arithmetic", "TIES": "ties", "DELLA": "della", "MODEL_STOCK": "model_stock"}
TOOLS = ("mergeline", "mergekit", "baseline")


def merge_config(models: ModelSet, method: str, density: float) -> dict:
    """A mergekit-schema config both tools read. Compute in float32, write the inputs' dtype."""
    weight = round(1.0 / len(models.finetunes), 6)
    entries = []
    for ft in models.finetunes:
        # model_stock takes no per-model parameters (its ratio comes from the models' angles)
        params: dict[str, float] = {} if method == "model_stock" else {"weight": weight}
        if method in ("ties", "della"):
            params["density"] = density
        entries.append({"model": str(ft), **({"parameters": params} if params else {})})
    return {"merge_method": method, "base_model": str(models.base), "models": entries,
            "dtype": "float32", "out_dtype": models.dtype}


@dataclass
class MethodResult:
    mergeline: Measured | None = None
    mergekit: Measured | None = None
    comparison: Comparison | None = None


@dataclass
class SizeResult:
    models: ModelSet
    input_bytes: int
    read: Measured | None = None
    baseline: Measured | None = None
    methods: dict[str, MethodResult] = field(default_factory=dict)


def _read_timed(cmd: list[str], log: Path) -> Measured:
    """The read bound's run, timed by the child around the reads alone (no interpreter start)."""
    measured = run_measured(cmd, log)
    if not measured.error:
        measured.seconds = json.loads(log.read_text().strip().splitlines()[-1])["seconds"]
    return measured


class Bench:
    """Runs the tools on one model set; every output lands under ``workdir/out``."""

    def __init__(self, args: argparse.Namespace, flush=lambda bench: None) -> None:
        self.args = args
        self.workdir: Path = args.workdir.resolve()
        self.failed = False
        self.results: list[SizeResult] = []
        self.check: str | None = None
        self._flush = flush  # called after every measurement, so a killed run still leaves its table

    def _step(self, what: str, run) -> Measured:
        print(what, flush=True)
        measured = run()
        print(f"  {_secs(measured)} s, peak RSS {_gb(measured.max_rss)} GB", flush=True)
        self._flush(self)
        return measured

    def _repeat(self, run, out: Path | None = None) -> Measured:
        runs = []
        for _ in range(self.args.repeat):
            if out is not None:  # every run starts from no output, as a user's would
                shutil.rmtree(out, ignore_errors=True)
            runs.append(run())
        result = best_of(runs)
        if result.error:
            self.failed = True
            print(f"  failed: {result.error}", file=sys.stderr)
        return result

    def mergeline(self, config: Path, out: Path, log: Path) -> Measured:
        args = ["merge", str(config), "--out", str(out), "--device", self.args.device]

        def run() -> Measured:
            measured = run_entry_point("mergeline.cli:main", args, log)
            report = out / "merge_report.json"
            if report.exists():  # run_merge's own time: the merge without interpreter start and imports
                measured.inner_seconds = json.loads(report.read_text()).get("seconds")
            return measured

        return self._repeat(run, out)

    def mergekit(self, config: Path, out: Path, log: Path) -> Measured:
        args = [str(config), str(out), "--no-copy-tokenizer", "--quiet", *self.args.mergekit_arg]
        if self.args.device.startswith("cuda"):
            args.append("--cuda")
        return self._repeat(lambda: run_entry_point("mergekit.scripts.run_yaml:main", args, log), out)

    def run_size(self, params: float) -> SizeResult:
        a = self.args
        tag = f"{params / 1e9:.3g}B-{a.dtype}-{a.finetunes}ft"
        models = build_model_set(self.workdir / "models" / tag, params, a.finetunes, a.dtype,
                                 shard_bytes=int(a.shard_gb * GB), device=a.device)
        files = [f for m in models.all_models for f in model_files(m)]
        out, logs = self.workdir / "out", self.workdir / "logs" / tag
        logs.mkdir(parents=True, exist_ok=True)  # every tool writes its config and log here
        print(f"[{tag}] warming the page cache ({sum(f.stat().st_size for f in files) / GB:.2f} GB)")
        result = SizeResult(models, read_files(files))
        self.results.append(result)
        if "baseline" in a.tools:
            read_cmd = [sys.executable, str(HERE / "_rw_baseline.py"), "read", *map(str, files)]
            result.read = self._step(f"[{tag}] read bound", lambda: self._repeat(
                lambda: _read_timed(read_cmd, logs / "read.log")))
            copy_cmd = [sys.executable, str(HERE / "_rw_baseline.py"), "copy", "--device", a.device,
                        "--out", str(out / "baseline"), *map(str, models.all_models)]
            result.baseline = self._step(f"[{tag}] read+write baseline", lambda: self._repeat(
                lambda: run_measured(copy_cmd, logs / "baseline.log"), out / "baseline"))
            shutil.rmtree(out / "baseline", ignore_errors=True)
        for label in a.methods:
            method = METHODS[label]
            config = logs / f"{method}.yaml"
            config.write_text(yaml.safe_dump(merge_config(models, method, a.density), sort_keys=False))
            res = result.methods[label] = MethodResult()
            ml_out, mk_out = out / f"mergeline-{method}", out / f"mergekit-{method}"
            if "mergeline" in a.tools:
                res.mergeline = self._step(f"[{tag}] {label}: mergeline", lambda: self.mergeline(
                    config, ml_out, logs / f"mergeline-{method}.log"))
            if "mergekit" in a.tools:
                res.mergekit = self._step(f"[{tag}] {label}: mergekit", lambda: self.mergekit(
                    config, mk_out, logs / f"mergekit-{method}.log"))
            if res.mergeline and res.mergekit and not (res.mergeline.error or res.mergekit.error):
                res.comparison = compare_models(ml_out, mk_out)
                print(f"  mergeline vs mergekit: {res.comparison.summary()}")
                if res.comparison.problems:
                    self.failed = True
                    print("  mismatch: " + "; ".join(res.comparison.problems[:5]), file=sys.stderr)
                self._flush(self)
            if not a.keep_outputs:
                shutil.rmtree(ml_out, ignore_errors=True)
                shutil.rmtree(mk_out, ignore_errors=True)
        return result

    def exactness_check(self) -> str | None:
        """Task Arithmetic on a small float32 set through both tools: the outputs must be equal."""
        a = self.args
        if a.dtype == "float32" or "TA" not in a.methods or not {"mergeline", "mergekit"} <= set(a.tools):
            return None
        models = build_model_set(self.workdir / "models" / "check-float32", a.check_params, 2, "float32")
        logs, out = self.workdir / "logs" / "check", self.workdir / "out"
        config = logs / "task_arithmetic.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump(merge_config(models, "task_arithmetic", a.density)))
        ml = self.mergeline(config, out / "check-mergeline", logs / "mergeline.log")
        mk = self.mergekit(config, out / "check-mergekit", logs / "mergekit.log")
        if ml.error or mk.error:
            return "TA exactness check (float32 inputs): a run failed, see logs/check"
        cmp = compare_models(out / "check-mergeline", out / "check-mergekit")
        for d in ("check-mergeline", "check-mergekit"):
            shutil.rmtree(out / d, ignore_errors=True)
        self.failed |= bool(cmp.problems)
        return (f"TA exactness check (float32 inputs, {models.shape.num_params() / 1e9:.3g}B, 2 fine-tunes): "
                f"mergeline vs mergekit: {cmp.summary()} over {cmp.tensors} tensors"
                + (f"; problems: {cmp.problems[:3]}" if cmp.problems else ""))


def _secs(m: Measured | None) -> str:
    if m is None or m.error:
        return "-" if m is None else "failed"
    return f"{m.seconds:.1f}" + ("" if m.inner_seconds is None else f" ({m.inner_seconds:.1f})")


def _gb(value: int | None) -> str:
    return "-" if value is None else f"{value / GB:.2f}"


def _ratio(a: Measured | None, b: Measured | None) -> float | None:
    if a is None or b is None or a.error or b.error:
        return None
    return a.seconds / b.seconds


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def render(results: list[SizeResult], args: argparse.Namespace) -> list[str]:
    """The markdown table, one row per (size, method), then the read bound and target lines."""
    cuda = args.device.startswith("cuda")
    head = ["size", "method", "mergeline s (in engine)", "mergekit s", "read+write s", "ml/mk time", "ml/rw time",
            "ml peak RSS GB", "mk peak RSS GB", "rw peak RSS GB"]
    if cuda:
        head += ["ml peak CUDA GB", "mk peak CUDA GB", "read bound GB/s", "ml fraction of bound (in engine)"]
    head.append("ml vs mk: max abs diff (elements differing)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: list[str] = []
    for r in results:
        size = f"{r.models.shape.num_params() / 1e9:.3g}B {r.models.dtype}"
        for label, m in r.methods.items():
            ml, mk, rw = m.mergeline, m.mergekit, r.baseline
            row = [size, label, _secs(ml), _secs(mk), _secs(rw), _fmt(_ratio(ml, mk)), _fmt(_ratio(ml, rw)),
                   _gb(ml and ml.max_rss), _gb(mk and mk.max_rss), _gb(rw and rw.max_rss)]
            if cuda:
                bound = None if r.read is None or r.read.error else r.input_bytes / r.read.seconds
                frac = _fmt(_ratio(r.read, ml))  # read time / mergeline time = ml throughput / bound
                if frac != "-" and ml.inner_seconds:
                    frac += f" ({r.read.seconds / ml.inner_seconds:.2f})"
                row += [_gb(ml and ml.cuda_peak), _gb(mk and mk.cuda_peak),
                        "-" if bound is None else f"{bound / GB:.1f}", frac]
            row.append("-" if m.comparison is None else m.comparison.summary())
            lines.append("| " + " | ".join(row) + " |")
        if r.read is not None and not r.read.error:
            notes.append(f"{size}: {len(r.models.all_models)} models, {r.input_bytes / GB:.2f} GB of inputs; "
                         f"reading them once took {r.read.seconds:.2f} s "
                         f"({r.input_bytes / GB / r.read.seconds:.2f} GB/s)")
    return lines + [""] + notes


def target_lines(results: list[SizeResult], args: argparse.Namespace) -> list[str]:
    """Issue 2 (CPU) and issue 5 (CUDA) targets, checked on the largest size."""
    r = results[-1]
    out = []

    def check(name: str, value: float | None, ok) -> None:
        if value is not None:
            out.append(f"- {name}: {value:.2f} {'PASS' if ok(value) else 'MISS'}")

    ta, ties = r.methods.get("TA"), r.methods.get("TIES")
    if args.device.startswith("cuda"):
        for label, m in r.methods.items():
            check(f"{label} mergeline fraction of read bound >= 0.7", _ratio(r.read, m.mergeline),
                  lambda v: v >= 0.7)
            check(f"{label} mergeline/mergekit time < 1", _ratio(m.mergeline, m.mergekit), lambda v: v < 1)
    else:
        if ta:
            check("TA mergeline/mergekit time <= 0.6", _ratio(ta.mergeline, ta.mergekit), lambda v: v <= 0.6)
        if ties:
            check("TIES mergeline/mergekit time <= 0.15", _ratio(ties.mergeline, ties.mergekit),
                  lambda v: v <= 0.15)
        for label, m in r.methods.items():
            if m.mergeline and not m.mergeline.error:
                check(f"{label} mergeline peak RSS GB <= 1.5", m.mergeline.max_rss / GB, lambda v: v <= 1.5)
    return [f"Targets at {r.models.shape.num_params() / 1e9:.3g}B:"] + out if out else []


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=float, default=0.9e9, help="parameters per model (e.g. 0.9e9)")
    p.add_argument("--sizes", help="comma-separated sizes to run instead of --params, e.g. 0.1e9,0.9e9")
    p.add_argument("--finetunes", type=int, default=4, help="fine-tuned models merged onto the base")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="dtype of the stored models (the merge computes in float32 and writes this dtype)")
    p.add_argument("--device", default="cpu", help="cpu or cuda: where both tools compute")
    p.add_argument("--methods", default="TA,TIES", help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of " + ",".join(TOOLS))
    p.add_argument("--density", type=float, default=0.5, help="TIES and DELLA density (fraction of each delta kept)")
    p.add_argument("--repeat", type=int, default=1, help="runs per measurement; the fastest is reported")
    p.add_argument("--shard-gb", type=float, default=1.0, help="max safetensors shard size of the inputs")
    p.add_argument("--check-params", type=float, default=0.02e9, help="size of the float32 exactness check")
    p.add_argument("--workdir", type=Path, default=Path("bench_out/merge_speed"), help="cache and outputs")
    p.add_argument("--table-out", type=Path, help="also write the table here (default WORKDIR/table.md)")
    p.add_argument("--keep-outputs", action="store_true", help="keep the merged models for inspection")
    p.add_argument("--mergekit-arg", action="append", default=[], help="extra mergekit-yaml argument")
    args = p.parse_args(argv)
    args.methods = [m.strip().upper() for m in args.methods.split(",") if m.strip()]
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    bad = [m for m in args.methods if m not in METHODS] + [t for t in args.tools if t not in TOOLS]
    if bad:
        p.error(f"unknown method/tool: {', '.join(bad)}")
    args.sizes = [float(s) for s in args.sizes.split(",")] if args.sizes else [args.params]
    return args


def report(bench: Bench) -> str:
    """The whole markdown report of what has been measured so far."""
    args = bench.args
    title = (f"merge_speed: {args.finetunes} fine-tunes + base, Llama-shaped, device {args.device}, "
             f"TIES density {args.density}, best of {args.repeat}")
    lines = [f"### {title}", "", *render(bench.results, args)]
    lines += [bench.check] if bench.check else []
    targets = target_lines(bench.results, args) if bench.results else []
    lines += ["", *targets] if targets else []
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    table_out = args.table_out or args.workdir / "table.md"
    table_out.parent.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, flush=lambda b: table_out.write_text(report(b)))
    for size in args.sizes:
        bench.run_size(size)
    bench.check = bench.exactness_check()
    text = report(bench)
    table_out.write_text(text)
    print("\n" + text)
    return 1 if bench.failed else 0


if __name__ == "__main__":
    sys.exit(main())
