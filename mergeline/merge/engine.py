"""The streaming merge engine: read tensor by tensor, merge with a registered method, write shards.

Usage: ``run_merge(load_merge_config("merge.yaml"), Path("out"), device="cpu", progress=print)``.

Memory is bounded by a few tensors (the base's, one per model, the method's workspace and the result),
never by model size: readers are lazy (:class:`CheckpointReader`), the writer streams each tensor to its
place in its shard (:class:`ShardedWriter`). Methods with global statistics get their statistics passes
(each re-reads the inputs) before the merge pass.

The tensor loop (row blocks on the CPU, whole prefetched tensors on CUDA, the writer and hash
threads, the NaN/Inf checks) is :class:`mergeline.merge.loop.Engine`.

Per tensor (the reference names are the base's; the first input's for a method without base):
- non-float tensors (position ids, counters) are copied from the base;
- ``kind == "delta"``: model i gives δ_i = θ_i − θ_base (a task-vector folder gives δ_i directly), the
  method returns Δ, and θ = θ_base + Δ; ``kind == "weights"``: the method gets the weights (a task
  vector becomes θ_base + τ) and returns θ;
- everything is computed in ``dtype`` (float32 by default) on ``device`` and written in ``out_dtype``
  (default: the base tensor's own dtype).
Tied embeddings stored twice with identical data in the base and in every model (lm_head = embed) are
merged once, counted once by statistics passes, and written under both names.

``slices:`` (``mergeline.merge.slices``): each output tensor belongs to a group of inputs (the ``models:``
list, or one output slice) whose readers present the sources under output names (layer ``a + i`` of
a source is output layer ``o + i``); the loop above is unchanged, tensor by tensor. With a
``tokenizer_source`` the vocabulary-indexed tensors (embeddings, LM head) are read whole, re-indexed to
the output tokenizer (``mergeline.merge.tokenizer``) and handed to the method as already-read inputs.

Bad input (MergelineError, checked before anything is written where possible; the output folder is
written through ``atomic_dir`` so a failure leaves nothing): missing/corrupt/pickle checkpoints, a
tensor of the base missing from a model, a shape or dtype-kind mismatch (naming tensor and model; for
delta methods an embedding/LM head with more rows than the base is cut to the base's rows, as mergekit's
task-arithmetic family did), NaN/Inf in an input (naming tensor and file), a merged tensor that
overflows to NaN/Inf (naming it), bad parameters, CUDA asked for but not available; an output folder
that is, is inside or holds an input, or holds anything but a previous mergeline output
(``check_output_dir``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergeline.errors import MergelineError
from mergeline.io.atomic import atomic_dir, check_output_dir
from mergeline.io.safetensors_io import DEFAULT_SHARD_BYTES, ShardedWriter
from mergeline.merge.checks import checked
from mergeline.merge.config import input_paths
from mergeline.merge.inputs import PlanItem
from mergeline.merge.loop import Engine, Progress
from mergeline.merge.outputs import write_model_files
from mergeline.merge.support import build_report, dtype_name, resolve_device, resolved_config
from mergeline.methods import MergeMethod

__all__ = ["Engine", "MergeResult", "Progress", "prepare", "run_merge"]


@dataclass
class MergeResult:
    """Where the merge went, what the method reported, and the sha256 of every weight file."""

    out_dir: Path
    report: dict[str, Any]
    weight_sha256: dict[str, str]



def prepare(engine: Engine) -> tuple[MergeMethod, list[PlanItem]]:
    """Plan, build the method, run its statistics passes: everything before the first output tensor.
    Call inside ``engine.stack``."""
    config = engine.config
    items = engine.plan()
    first = next((it for it in items if it.floating), None)
    if first is None:
        raise MergelineError(f"{engine.ref.path}: has no floating-point tensor to merge")
    method = engine.method_cls(first.params, first.model_params)
    if config.slices and method.statistics_passes():
        raise MergelineError(f"slices: merge_method {config.merge_method!r} (with these parameters) needs "
                             "whole-model statistics; not supported with slices (use models:)")
    engine.use(method)
    engine.progress(
        f"{config.merge_method}: {len(items)} tensors, {len(config.all_models())} model(s), "
        f"{engine.compute} on {engine.device}"
    )
    # Methods that draw from torch's global RNG stay reproducible, and the caller's RNG is untouched.
    rng = torch.random.fork_rng(devices=[engine.device] if engine.device.type == "cuda" else [])
    engine.stack.enter_context(rng)
    torch.manual_seed(config.seed)
    engine.statistics(method, items)
    return method, items


def run_merge(
    config: MergeConfig,
    out_dir: str | Path,
    device: str = "cpu",
    progress: Progress | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = True,
) -> MergeResult:
    """Merge per ``config`` into the model folder ``out_dir`` (HF layout + merge.yaml + merge_report.json).

    ``out_dir`` must not be, be inside or hold an input, and an existing non-empty ``out_dir`` is
    replaced only when ``overwrite`` and it is a previous merge output holding only what mergeline
    wrote there (``check_output_dir``). A place inside a work folder is allowed here (the pipeline's
    merge stage writes there); the ``merge`` and ``reproduce`` commands refuse it before calling this.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    config, ignored = checked(config)
    check_output_dir(out_dir, input_paths(config), kind="merge", overwrite=overwrite, flag=None, work_folder_ok=True)
    engine = Engine(config, resolve_device(device), progress)
    with engine.stack:
        method, items = prepare(engine)
        with atomic_dir(out_dir, kind="merge", overwrite=overwrite) as tmp:
            writer = ShardedWriter(tmp, [it.out for it in items], max_shard_bytes)
            try:
                engine.write_all(method, items, writer)
                hashes = writer.close()
            except BaseException:
                writer.abort()
                raise
            copied = write_model_files(config, engine.ref.model_dir, tmp, dtype_name(engine.out_dtype), engine.vocab)
            report = build_report(config, engine, method, items, hashes, copied, time.perf_counter() - start)
            if ignored:
                report["ignored_parameters"] = ignored
            (tmp / "merge.yaml").write_text(resolved_config(config).to_yaml())
            (tmp / "merge_report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    engine.progress(f"wrote {len(hashes)} weight file(s) to {out_dir} in {report['seconds']:.1f} s")
    return MergeResult(out_dir=out_dir, report=report, weight_sha256=hashes)
