"""``mergeline stage NAME [--params params.yaml]``: one stage, as ``dvc.yaml`` calls it.

A stage is the experiment flow run up to that stage; earlier stages are Prefect cache hits. The
stages are the stage table's (``mergeline/pipeline/table.py``), in its order.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from mergeline.pipeline.table import STAGE_NAMES

if TYPE_CHECKING:
    from mergeline.params import ExperimentParams


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("stage", help="run one pipeline stage (what dvc.yaml calls)")
    parser.add_argument("name", choices=STAGE_NAMES)
    parser.add_argument("--params", default="params.yaml", help="experiment params YAML (DVC's params file)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.set_defaults(func=run)


def check_dvc_deps(params: ExperimentParams, root: Path, dvc_file: str = "dvc.yaml") -> None:
    """Every user input must be a dep (itself or a folder above it) of the stage that reads it, or DVC
    would not rerun the pipeline when it changes: data files of prepare-data, given checkpoints and
    adapters of fine-tune. dvc.yaml cannot list them from params (DVC has no list templating)."""
    from mergeline.data.tasks import source_files
    from mergeline.errors import MergelineError
    from mergeline.io.safe_read import load_yaml_file

    path = root / dvc_file
    if not path.is_file():
        return
    stages = (load_yaml_file(path, "DVC pipeline") or {}).get("stages") or {}
    for entry in params.task_entries:
        given = [root / p for p in (entry.checkpoint, entry.adapter) if p]
        for stage, what, files in (("prepare-data", "data", source_files(entry, root)),
                                   ("fine-tune", "model", given)):
            deps = [(root / d).resolve() for d in (stages.get(stage) or {}).get("deps", []) if isinstance(d, str)]
            for file in files:
                resolved = file.resolve()
                if not any(resolved == d or resolved.is_relative_to(d) for d in deps):
                    raise MergelineError(f"{dvc_file}: stage {stage} does not depend on {file} ({what} of task "
                                         f"'{entry.name}'); add it, or its folder, to the stage's deps")


def run(args: argparse.Namespace) -> int:
    from mergeline.env import configure_pipeline_env
    from mergeline.commands._supervise import become_worker, is_worker, supervise
    from mergeline.params import load_params
    from mergeline.stages.preflight import preflight

    root = Path.cwd()
    if not is_worker():
        params = load_params(args.params, args.overrides)
        preflight(params, root)  # bad input: one line here, no worker
        check_dvc_deps(params, root)
        return supervise(args.argv, root, root / params.work_dir, root / params.data_dir)
    become_worker()
    configure_pipeline_env(root)
    from flows.pipeline import pipeline

    pipeline(params_file=args.params, overrides=args.overrides, root=str(root), until=args.name)
    return 0
