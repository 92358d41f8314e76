"""``mergeline run [--params FILE] [--set key=value ...]``: the whole pipeline, then the results table."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="run the whole pipeline (default: the embedded SmolLM2 demo)",
        description="Fine-tune, extract task vectors, compute importance, merge, evaluate with lm-eval and "
                    "register the best variant in the MLflow Model Registry.")
    parser.add_argument("--params", default="params/default.yaml", help="experiment params YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, e.g. --set merge.lambda=0.5 (repeatable)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mergeline.commands._pipeline_env import configure_pipeline_env
    from mergeline.params import load_params

    root = Path.cwd()
    # Validate before Prefect/MLflow start (seconds, not minutes, to a one-line error).
    params = load_params(args.params, args.overrides)
    from mergeline.stages.preflight import preflight

    preflight(params, root)
    configure_pipeline_env(root)
    from flows.pipeline import pipeline

    pipeline(params_file=args.params, overrides=args.overrides, root=str(root))
    return 0
