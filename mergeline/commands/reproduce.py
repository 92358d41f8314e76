"""``mergeline reproduce NAME[@VERSION|@ALIAS] --out DIR``: rebuild a registered model from its lineage.

The merge config recorded in ``lineage.json`` is run again with the same base model, task vectors and
importance files: each input path the config names is checked against its lineage hashes and, when
it is gone from the workspace, rebuilt from the DVC cache or a local DVC remote. The rebuilt weight
files must match the registered sha256 bit for bit; a difference exits 1 naming each file.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from mergeline.commands.lineage import SPEC_HELP, add_store_arguments, open_version, version_label


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce", help="rebuild a registered model from its lineage and compare weights bit for bit",
        description="Re-run the recorded merge (inputs from the workspace or DVC) into DIR and check every "
                    "weight file's sha256 against the registered version. Exit 0 identical, 1 different or "
                    "an input missing/altered, 2 unknown model.")
    parser.add_argument("model", metavar="NAME[@VERSION|@ALIAS]", help=SPEC_HELP)
    parser.add_argument("--out", required=True, help="folder for the rebuilt model: new or empty (written atomically)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out when it holds a previous mergeline output (never any other folder)")
    parser.add_argument("--device", default="cpu", help="compute device: cpu (default) or cuda[:N]")
    add_store_arguments(parser)


def _resolve_inputs(config: Any, index: dict[Path, Any], root: Path, scratch: Path, problems: list[str]) -> Any:
    """``config`` with every string naming a lineage artifact replaced by a verified local path."""
    from mergeline.lineage_locate import materialize, recorded_path
    from mergeline.verify import check_artifact

    if isinstance(config, dict):
        return {k: _resolve_inputs(v, index, root, scratch, problems) for k, v in config.items()}
    if isinstance(config, list):
        return [_resolve_inputs(v, index, root, scratch, problems) for v in config]
    if not isinstance(config, str) or not config:
        return config
    artifact = index.get(recorded_path(config, root).resolve())
    if artifact is None:
        # An input outside the lineage (or any other string): relative paths start at the root, as in the run.
        return str(recorded_path(config, root)) if recorded_path(config, root).exists() else config
    found = check_artifact(artifact, root)
    if found:
        problems.extend(str(p) for p in found)
        return config
    return str(materialize(artifact, root, scratch / f"input-{len(list(scratch.iterdir()))}").resolve())


def _required_inputs(config: dict[str, Any]) -> list[str]:
    return [p for p in [config.get("base_model"), *(m.get("model") for m in config.get("models", []))] if p]


def run(args: argparse.Namespace) -> int:
    from mergeline.config import MergeConfig
    from mergeline.io.atomic import check_output_dir
    from mergeline.lineage_locate import recorded_path
    from mergeline.merge import run_merge
    from mergeline.tracking.registry import _local_path

    version, lineage, root = open_version(args)
    if lineage is None:
        return 1
    label = version_label(version)
    index = {recorded_path(a.path, root).resolve(): a for _, a in lineage.artifacts()}
    # Every lineage artifact is an input, and the registered copy of the model must survive too.
    registered = _local_path(version.source)
    out = check_output_dir(args.out, [*index, *([registered] if registered else [])], overwrite=args.overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".reproduce-inputs-", dir=out.parent))
    try:
        problems: list[str] = []
        config = _resolve_inputs(lineage.merge.config, index, root, scratch, problems)
        for path in _required_inputs(config):
            if not recorded_path(path, root).exists():
                problems.append(f"missing: {path} (merge input not in the lineage and not on disk)")
        if problems:
            for line in problems:
                print(line, file=sys.stderr)
            print(f"reproduce: cannot rebuild {label}: {len(problems)} input(s) missing or altered", file=sys.stderr)
            return 1
        result = run_merge(MergeConfig.model_validate(config), out, device=args.device, overwrite=args.overwrite,
                           progress=lambda line: print(line, flush=True))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return _compare(result.out_dir, lineage.weights, label)


def _compare(out_dir: Path, expected: dict[str, str], label: str) -> int:
    from mergeline.io.hashing import sha256_file

    bad = []
    for name, sha in sorted(expected.items()):
        path = out_dir / name
        if not path.is_file():
            bad.append(f"missing: {path} (registered {sha[:12]}…)")
        elif (got := sha256_file(path)) != sha:
            bad.append(f"mismatch: {path} sha256 {got[:12]}…, registered {sha[:12]}…")
    extra = sorted(p.name for p in out_dir.glob("*.safetensors") if p.name not in expected)
    bad += [f"mismatch: {out_dir / name} rebuilt but not registered" for name in extra]
    if bad:
        for line in bad:
            print(line, file=sys.stderr)
        print(f"reproduce: rebuilt weights differ from {label} ({len(bad)} file(s))", file=sys.stderr)
        return 1
    print(f"reproduce: {len(expected)} weight file(s) of {label} rebuilt bit for bit in {out_dir}")
    return 0
