"""``mergeline report EXPERIMENT --out DIR``: tables and plots over the experiment's pipeline runs.

Reads MLflow (the store ``mergeline run`` wrote; ``--tracking-uri`` or ``MLFLOW_TRACKING_URI``):
every finished ``mergeline run`` of the experiment, grouped by the params that differ between runs
(seeds aside), per method the test scores' mean ± sample standard deviation over a group's runs,
per negation and analogy setting its choices, and paired comparisons on the same test examples
(``mergeline/pipeline/sweep_report.py``, ``mergeline/pipeline/claims.py``). Writes ``report.md``, ``report.json`` and a validation
sweep plot per group to ``--out`` (a new folder, or a previous report with ``--overwrite``) and
prints the markdown.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="tables and plots over an experiment's pipeline runs (MLflow)",
                                   description="Tables (mean ± sd over seeds, one per grid point) and validation "
                                               "sweep plots over every finished `mergeline run` of an experiment.")
    parser.add_argument("experiment", help="the MLflow experiment (params `experiment:`)")
    parser.add_argument("--out", required=True, type=Path, help="folder for report.md, report.json and the plots")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous report in --out")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mergeline.io.atomic import atomic_dir, check_output_dir
    from mergeline.pipeline.sweep_report import write_report
    from mergeline.tracking.pipeline_runs import pipeline_runs

    check_output_dir(args.out, kind="report", overwrite=args.overwrite)
    runs, variants = pipeline_runs(args.experiment, args.tracking_uri)  # none: one line, exit 2
    with atomic_dir(args.out, kind="report", overwrite=args.overwrite) as tmp:
        text = write_report(args.experiment, runs, variants, tmp)
    sys.stdout.write(text + "\n")
    return 0
