"""``mergeline stage NAME [--params params.yaml]``: one stage, as ``dvc.yaml`` calls it.

A stage is the experiment flow run up to that stage; earlier stages are Prefect cache hits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

STAGE_NAMES = ("prepare-data", "import-base", "fine-tune", "extract-vector", "compute-importance", "merge",
               "evaluate", "register")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("stage", help="run one pipeline stage (what dvc.yaml calls)")
    parser.add_argument("name", choices=STAGE_NAMES)
    parser.add_argument("--params", default="params.yaml", help="experiment params YAML (DVC's params file)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mergeline.commands._pipeline_env import configure_pipeline_env
    from mergeline.commands._supervise import become_worker, is_worker, supervise
    from mergeline.params import load_params
    from mergeline.stages.preflight import preflight

    root = Path.cwd()
    if not is_worker():
        preflight(load_params(args.params, args.overrides), root)  # bad input: one line here, no worker
        return supervise(args.argv, root)
    become_worker()
    configure_pipeline_env(root)
    from flows.pipeline import pipeline

    pipeline(params_file=args.params, overrides=args.overrides, root=str(root), until=args.name)
    return 0
