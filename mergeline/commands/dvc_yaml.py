"""``mergeline dvc-yaml [--params params.yaml]``: print the ``dvc.yaml`` the stage table implies.

``mergeline dvc-yaml > dvc.yaml`` after editing the table (``mergeline/pipeline/table.py``) or the
params file's ``work_dir``/``data_dir``; a test fails when the committed ``dvc.yaml`` differs.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("dvc-yaml", help="print the dvc.yaml the pipeline's stage table implies",
                                   description="Print dvc.yaml: one stage per pipeline stage, with its command, "
                                               "deps, params and outs, all derived from the stage table.")
    parser.add_argument("--params", default="params.yaml",
                        help="DVC's params file: the keys it writes and its work_dir/data_dir")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mergeline.io.safe_read import load_yaml_file
    from mergeline.params import load_params
    from mergeline.pipeline.dvc_yaml import dvc_yaml

    params = load_params(args.params)  # bad params: one line, exit 2
    sys.stdout.write(dvc_yaml(params, load_yaml_file(args.params, "params file")))
    return 0
