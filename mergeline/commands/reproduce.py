"""``mergeline reproduce NAME[@VERSION|@ALIAS] --out DIR``: rebuild a registered model from its lineage.

The merge config recorded in ``lineage.json`` is run again with the same base model, task vectors and
importance files: each input path the config names is checked against its lineage hashes and, when
it is gone from the workspace, rebuilt from the DVC cache or a local DVC remote. The rebuilt weight
files must match bit for bit both the sha256 that ``lineage.json`` records and the weight files the
registry actually stores; each difference is one line naming the file and which of the two differs.
The lineage itself must hold against the registry's anchors (tags, weights digest, source run:
``mergeline.tracking.anchors``), else the rebuild proves nothing and the command exits 1.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from mergeline.commands.lineage import SPEC_HELP, add_store_arguments, open_version, version_label
from mergeline.io.owned_temps import remove_abandoned, temp_dir


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce", help="rebuild a registered model from its lineage and compare weights bit for bit",
        description="Re-run the recorded merge (inputs from the workspace or DVC) into DIR and check every "
                    "weight file's sha256 against the registered version. Exit 0 identical, 1 different or "
                    "an input missing/altered (or the merge ran on CUDA and this machine has none), 2 unknown model.")
    parser.add_argument("model", metavar="NAME[@VERSION|@ALIAS]", help=SPEC_HELP)
    parser.add_argument("--out", required=True, help="folder for the rebuilt model: new or empty (written atomically)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out when it is a previous merged model of mergeline holding only the files "
                             "its marker (.mergeline-output) lists (never any other folder)")
    parser.add_argument("--device", default=None,
                        help="compute device: cpu or cuda[:N] (default: the kind the lineage records, else cpu; "
                             "sorts and random masks at ties follow the device, so another kind may differ)")
    add_store_arguments(parser)


def rebuild_device(requested: str | None, recorded: str | None, cuda_available: bool) -> tuple[str, str | None]:
    """(device to rebuild on, or a refusal): ``--device`` if given, else the kind the lineage records (cpu
    when it records none). Sorts at ties and random masks follow the device (``mergeline.methods._sparsify``),
    so a CUDA merge is rebuilt on CUDA unless the user asks for the CPU."""
    device = requested or recorded or "cpu"
    if requested is None and device == "cuda" and not cuda_available:
        return device, ("was merged on CUDA and this machine has none; pass --device cpu to rebuild on the "
                        "CPU (its sorts at ties and random masks may keep other entries)")
    return device, None


def _resolve_inputs(config: Any, index: dict[Path, Any], root: Path, scratch: Path, problems: list[str]) -> Any:
    """``config`` with every string naming a lineage artifact replaced by a verified local path."""
    from mergeline.lineage.locate import materialize, recorded_path
    from mergeline.lineage.verify import check_artifact

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
    from mergeline.merge.config import MergeConfig
    from mergeline.io.atomic import check_output_dir
    from mergeline.lineage.locate import recorded_path
    from mergeline.merge.engine import run_merge
    from mergeline.tracking.registry import files_uri, local_path

    version, lineage, root = open_version(args)
    if lineage is None:
        return 1
    from mergeline.tracking.anchors import anchor_problems

    label = version_label(version)
    import torch

    device, refusal = rebuild_device(args.device, lineage.merge.device, torch.cuda.is_available())
    if refusal:
        print(f"reproduce: {label} {refusal}", file=sys.stderr)
        return 1
    # A rewritten lineage could rebuild its own rewritten weights "bit for bit": check the registry first.
    anchors = [str(p) for p in anchor_problems(lineage, version)]
    index = {recorded_path(a.path, root).resolve(): a for _, a in lineage.artifacts()}
    # Every lineage artifact is an input, and the registered copy of the model must survive too.
    registered = local_path(files_uri(version))
    out = check_output_dir(args.out, [*index, *([registered] if registered else [])], kind="merge",
                           overwrite=args.overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(out.parent)
    scratch = temp_dir(out.with_name(f"{out.name}-inputs"))
    try:
        problems: list[str] = []
        config = _resolve_inputs(lineage.merge.config, index, root, scratch, problems)
        for path in _required_inputs(config):
            if not recorded_path(path, root).exists():
                problems.append(f"missing: {path} (merge input not in the lineage and not on disk)")
        if problems:
            for line in [*anchors, *problems]:
                print(line, file=sys.stderr)
            print(f"reproduce: cannot rebuild {label}: {len(problems)} input(s) missing or altered", file=sys.stderr)
            return 1
        result = run_merge(MergeConfig.model_validate(config), out, device=device, overwrite=args.overwrite,
                           progress=lambda line: print(line, flush=True))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return _report(result.out_dir, lineage, version, label, anchors)


def _sha(path: Path) -> str | None:
    from mergeline.io.hashing import sha256_file

    return sha256_file(path) if path.is_file() else None


def _short(sha: str | None) -> str:
    return f"{sha[:12]}…" if sha else "no such file"


def weight_differences(out_dir: Path, recorded: dict[str, str], stored_dir: Path) -> list[str]:
    """One line per weight file where the rebuild differs from lineage.json's record or from the stored file."""
    names = set(recorded) | {p.name for p in out_dir.glob("*.safetensors")} | {p.name for p in stored_dir.glob("*.safetensors")}
    bad = []
    for name in sorted(names):
        rebuilt, stored = _sha(out_dir / name), _sha(stored_dir / name)
        if rebuilt is None:
            bad.append(f"missing: {out_dir / name} (not rebuilt; lineage.json records {_short(recorded.get(name))}, "
                       f"the registered artifact stores {_short(stored)})")
            continue
        if rebuilt != recorded.get(name):
            bad.append(f"mismatch: {out_dir / name} sha256 {_short(rebuilt)}, lineage.json records "
                       f"{_short(recorded.get(name))}" + ("" if name in recorded else " (rebuilt but not registered)"))
        if rebuilt != stored:
            bad.append(f"mismatch: {out_dir / name} sha256 {_short(rebuilt)}, the registered artifact stores "
                       f"{_short(stored)} at {stored_dir / name}")
    return bad


def _report(out_dir: Path, lineage: Any, version: Any, label: str, anchors: list[str]) -> int:
    from mergeline.tracking.registry import model_artifact_dir

    bad = weight_differences(out_dir, lineage.weights, model_artifact_dir(version))
    for line in [*anchors, *bad]:
        print(line, file=sys.stderr)
    if bad:
        print(f"reproduce: rebuilt weights differ from {label} ({len(bad)} difference(s))", file=sys.stderr)
    if anchors:
        print(f"reproduce: the lineage of {label} cannot be trusted: {len(anchors)} anchor(s) missing or changed",
              file=sys.stderr)
    if bad or anchors:
        return 1
    print(f"reproduce: {len(lineage.weights)} weight file(s) of {label} rebuilt bit for bit in {out_dir}, equal to "
          "the registered artifact and to its lineage")
    return 0
