"""``mergeline run [--params FILE] [--set key=value ...]``: the whole pipeline, then the results table.

One run per project folder, work folder and data folder (a second one exits 2); Ctrl-C/SIGTERM stop it within
seconds, leaving no process and no RUNNING MLflow run: ``mergeline/commands/_supervise.py``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="run the whole pipeline (default: the embedded SmolLM2 demo)",
        description="Fine-tune, extract task vectors, compute importance, merge, evaluate with lm-eval and "
                    "register the best variant in the MLflow Model Registry.")
    parser.add_argument("--params", default="params/default.yaml", help="experiment params YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, e.g. --set merge.lambda=0.5 (repeatable)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default=None,
                        help="where the stages run (params `device`; auto = cuda when available)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="independent stage calls run at once (default: MERGELINE_MAX_WORKERS, else up to 4; "
                             "1: one after the other)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mergeline.env import configure_pipeline_env
    from mergeline.commands._supervise import become_worker, is_worker, supervise
    from mergeline.params import load_params

    from mergeline.env import WORKERS_ENV, max_workers

    root = Path.cwd()
    overrides = [*args.overrides, *([f"device={args.device}"] if args.device else [])]
    if args.workers is not None:
        os.environ[WORKERS_ENV] = str(args.workers)
    max_workers()  # a bad --workers or MERGELINE_MAX_WORKERS: exit 2 before anything starts
    if not is_worker():
        # Validate before Prefect/MLflow start (seconds, not minutes, to a one-line error), in this
        # process: bad input never takes the folder's lock nor starts the worker.
        params = load_params(args.params, overrides)
        from mergeline.stages.preflight import preflight

        preflight(params, root)
        from mergeline.stages.common import resolve_device

        resolve_device(params.device)  # --device cuda without a GPU: exit 2 before Prefect starts
        from flows.pool import pool_from_env

        pool_from_env()  # a pool without a Prefect server: exit 2 before the work folder is locked or made
        return supervise(args.argv, root, root / params.work_dir, root / params.data_dir)
    become_worker()
    configure_pipeline_env(root)
    from flows.pool import pool_from_env

    pool_from_env()  # MERGELINE_WORK_POOL without a Prefect server: exit 2 before anything starts
    from flows.pipeline import pipeline

    summary = pipeline(params_file=args.params, overrides=overrides, root=str(root))
    print(summary["table"])
    for entry in summary["registered"].values():
        print(entry["message"])
    return 0
