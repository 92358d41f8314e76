"""Checks that run before any heavy work: a bad experiment fails in seconds with one line (exit 2).

Covers what params validation cannot see: output folders that would overlap the project, task names
against the dataset builders, user data files (missing, empty, not UTF-8, a missing field, a label
outside the choices, test examples that are training examples; repeated examples print ``warning:``
lines) and lm-eval tasks (unknown, or their data not available offline), dataset files already on
disk (empty or malformed), whether the base model can be found and configured, and the checkpoints
and adapters tasks are given as (``mergeline.given_models``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from mergeline.errors import MergelineError
from mergeline.io.outputs import MARKER, enclosing
from mergeline.params import ExperimentParams


def preflight(params: ExperimentParams, root: Path) -> None:
    from mergeline.data import available_tasks, load_records

    _check_output_roots(params, root)
    _check_method_options(params)
    known = set(available_tasks())
    for entry in params.task_entries:
        if entry.kind == "builtin" and entry.name not in known:
            raise MergelineError(f"tasks: unknown task {entry.name!r}; known: {', '.join(sorted(known))} "
                                 "(or declare it with data: or lm_eval:)")
    if params.control not in known:
        raise MergelineError(f"control: unknown task {params.control!r}; known: {', '.join(sorted(known))}")
    _check_declared_tasks(params, root)
    data_dir = root / params.data_dir
    for task in [*params.task_names, params.control]:
        for split_file in sorted((data_dir / task).glob("*.jsonl")):
            load_records(split_file)  # raises MergelineError naming the file and line
    _check_base_model(params.base_model, root)
    from mergeline.given_models import check_given_models

    check_given_models(params.task_entries, params.base_model, root, params.work_dir,
                       params.lora.target_modules if params.lora.enabled else None)


# Folders no output belongs in: the kernel's (writes there are refused or change the system; only
# /dev/shm is a file system for files) and those of git and DVC (an output there corrupts the
# repository or its cache).
KERNEL_FOLDERS = (Path("/proc"), Path("/sys"), Path("/dev"))
SHARED_MEMORY = Path("/dev/shm")
TOOL_FOLDERS = (".git", ".dvc")


def _check_output_roots(params: ExperimentParams, root: Path) -> None:
    """``work_dir`` and ``data_dir`` hold stage outputs: each needs a folder of its own, never the
    project folder or one above it (stage outputs then replace only previous mergeline outputs),
    nor one under /proc, /sys or /dev, nor one inside a ``.git`` or ``.dvc`` folder."""
    top = root.resolve()
    for key in ("work_dir", "data_dir"):
        value = getattr(params, key)
        folder = root / value
        where = folder.resolve()
        if where == top or top.is_relative_to(where):
            raise MergelineError(f"{key} {value!r}: is the project folder or holds it; give the outputs a folder of their own")
        if any(where.is_relative_to(kernel) for kernel in KERNEL_FOLDERS) and not where.is_relative_to(SHARED_MEMORY):
            raise MergelineError(f"{key} {value!r}: {where} is a kernel folder, not a place for outputs")
        if tool := next((part for part in where.parts if part in TOOL_FOLDERS), None):
            raise MergelineError(f"{key} {value!r}: {where} is inside a {tool} folder (the tool's own data); "
                                 "give the outputs a folder of their own")
        if folder.exists() and not folder.is_dir():
            raise MergelineError(f"{key} {value!r}: {folder} exists and is not a folder")
        output = folder if (folder / MARKER).is_file() else enclosing(folder, MARKER)
        if output is not None:
            raise MergelineError(f"{key} {value!r}: {output} is an output mergeline wrote (a model, task vector...); "
                                 "give the stage outputs a folder of their own")


def _check_method_options(params: ExperimentParams) -> None:
    """A sweep's ``options`` become merge parameters: an unknown one fails now, not at the merge stage."""
    from mergeline.merge.config import check_parameter_keys
    from mergeline.methods import pipeline_method

    for name, sweep in params.merge.methods.items():
        method = pipeline_method(name)[0]
        check_parameter_keys(method, sweep.options, f"merge.methods.{name}.options")
        check_parameter_keys(method, sweep.grid, f"merge.methods.{name}.grid")


def _check_declared_tasks(params: ExperimentParams, root: Path) -> None:
    """Read and convert every user file and lm-eval task now: a bad row fails before any heavy work."""
    from mergeline.data.lm_eval_source import lm_eval_task_splits
    from mergeline.data.user import user_task_splits

    for entry in params.task_entries:
        if entry.kind == "file":
            user_task_splits(entry, root, warn=_warn)
        elif entry.kind == "lm_eval":
            lm_eval_task_splits(entry, root)


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


def _check_base_model(spec: str, root: Path) -> None:
    from mergeline.assets import MINILM, SMOLLM2

    if spec in (SMOLLM2, MINILM):
        return
    path = root / spec
    if path.exists() or spec.startswith((".", "/")):
        if not (path / "config.json").is_file():
            raise MergelineError(f"base_model {spec!r}: no config.json in {path} (not a Hugging Face model folder)")
        return
    # A hub id: with the hub offline it must already be in the local cache.
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(spec)
    except Exception as exc:  # noqa: BLE001 - any failure means the base cannot load
        raise MergelineError(f"base_model {spec!r} does not load offline ({exc.__class__.__name__})") from None
