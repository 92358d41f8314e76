"""``mergeline lineage NAME[@VERSION|@ALIAS] [--format text|json|mermaid] [--verify]``.

Prints the provenance of a registered model version from its ``lineage.json``. ``--verify`` re-hashes
every artifact the lineage names and exits 1 naming each mismatched or missing file on stderr.
Exit codes: 0 ok; 1 a mismatch or missing artifact; 2 unknown model, version or alias.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SPEC_HELP = "registered model: NAME (latest version), NAME@VERSION or NAME@ALIAS (e.g. mergeline-demo@champion)"


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with ``reproduce``: where the registry and the artifacts are."""
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite mlflow.db in the working directory)")
    parser.add_argument("--root", default=None,
                        help="folder that relative artifact paths start from and whose DVC cache/remotes are "
                             "searched (default: the work folder of the run that registered the version when it "
                             "still exists, else the DVC or git repo holding the working directory)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lineage", help="show (and verify) the provenance of a registered model",
        description="Print the lineage of a registered model version: base model, datasets, fine-tunes, task "
                    "vectors, importance, merge coefficients, evaluation, code commit, dvc.lock, Prefect and "
                    "MLflow run ids. Exit 0 ok, 1 mismatch/missing artifact (--verify), 2 unknown model.")
    parser.add_argument("model", metavar="NAME[@VERSION|@ALIAS]", help=SPEC_HELP)
    parser.add_argument("--format", choices=("text", "json", "mermaid"), default="text", help="output format")
    parser.add_argument("--verify", action="store_true",
                        help="re-hash every artifact (MLflow store, workspace, DVC cache or remote); exit 1 on any problem")
    add_store_arguments(parser)


def version_label(version) -> str:  # type: ignore[no-untyped-def]
    aliases = "".join(f" @{a}" for a in sorted(version.aliases or []))
    return f"{version.name} v{version.version}{aliases}"


def open_version(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """(model version, lineage, root) for ``args.model``; MergelineError when unknown (exit 2).

    Returns None for the lineage when ``lineage.json`` is gone (printed as missing on stderr).
    """
    from mergeline.errors import MergelineError
    from mergeline.lineage.locate import find_repo_root
    from mergeline.tracking.anchors import WORK_DIR_TAG
    from mergeline.tracking.mlflow_setup import use_store
    from mergeline.tracking.registry import load_lineage, resolve_version

    use_store(args.tracking_uri, must_exist=True)
    if args.root is not None and not Path(args.root).is_dir():
        raise MergelineError(f"--root {args.root}: not a folder")
    version = resolve_version(args.model)
    root = find_repo_root(args.root or ".")
    recorded = (version.tags or {}).get(WORK_DIR_TAG)
    if args.root is None and recorded and Path(recorded).is_dir() and Path(recorded).resolve() != root:
        # Folders sharing one tracking store register versions of the same model: each version's
        # artifacts are where its own run wrote them, whichever folder asks.
        root = Path(recorded).resolve()
        print(f"note: reading the artifacts of {version_label(version)} from the work folder of the run that "
              f"registered it, {root} (--root chooses another)", file=sys.stderr)
    try:
        return version, load_lineage(version), root
    except FileNotFoundError as exc:
        print(f"missing: {exc}", file=sys.stderr)
        return version, None, root


def run(args: argparse.Namespace) -> int:
    from mergeline.lineage.render import render_json, render_mermaid, render_text
    from mergeline.tracking.registry import verify_lineage

    version, lineage, root = open_version(args)
    if lineage is None:
        return 1
    label = version_label(version)
    if args.format == "json":
        sys.stdout.write(render_json(lineage))
    elif args.format == "mermaid":
        sys.stdout.write(render_mermaid(lineage, registered=label))
    else:
        sys.stdout.write(render_text(lineage, registered=label))
    if not args.verify:
        return 0
    problems = verify_lineage(lineage, version, root)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"verify: {len(problems)} problem(s) in the lineage of {label}", file=sys.stderr)
        return 1
    print(f"verify: every artifact of {label} matches its lineage", file=sys.stderr)
    return 0
