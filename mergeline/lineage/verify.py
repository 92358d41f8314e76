"""Re-hash every artifact a lineage names and report each one that is altered or gone.

Where each artifact is looked for:
- registered weight files: the model version's folder in the MLflow artifact store;
- base model, datasets, checkpoints, task vectors, importance files: the recorded path, else the DVC
  cache or a local DVC remote by md5 (``mergeline.lineage.locate``). A copy that exists but differs is a
  ``mismatch`` even when DVC holds a good one: the workspace copy is what a user would load;
- the params file: its recorded path (git-tracked, not in DVC);
- ``lineage.json`` itself, through the registry's anchors (``mergeline.tracking.anchors``): its
  canonical sha256 against the ``mergeline.lineage_sha256`` tag, every other tag recomputed from it,
  the weights digest tag, and the version's source run. A missing tag fails like a changed one.

This module reads files only; the registry's side (anchors, the registered folder) is
:func:`mergeline.tracking.registry.verify_lineage`, so checking artifacts never imports MLflow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mergeline.io.hashing import sha256_dir, sha256_file
from mergeline.lineage.record import Artifact, Lineage
from mergeline.lineage.locate import find_in_dvc, folder_manifest, recorded_path


@dataclass(frozen=True)
class Problem:
    """One file that does not match its lineage: ``file`` names it, ``detail`` says where/what."""

    file: str
    status: Literal["mismatch", "missing"]
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.status}: {self.file}" + (f" ({self.detail})" if self.detail else "")


def _check_bytes(name: str, path: Path, expected: str, where: str = "") -> Problem | None:
    actual = sha256_file(path)
    if actual == expected:
        return None
    suffix = f" in {where}" if where else ""
    return Problem(name, "mismatch", f"sha256 {actual[:12]}…{suffix}, lineage says {expected[:12]}…")


def _check_file(name: str, local: Path, expected: str, md5: str | None, root: Path) -> Problem | None:
    if local.is_file():
        return _check_bytes(name, local, expected)
    found = find_in_dvc(md5, root)
    if found is None:
        return Problem(name, "missing", "not at its path" + (", nor in DVC cache/remote" if md5 else ", no DVC md5 recorded"))
    label, entry = found
    return _check_bytes(name, entry, expected, f"{label} {entry}")


def check_artifact(artifact: Artifact, root: str | os.PathLike[str] = ".") -> list[Problem]:
    """Problems of one file or folder artifact (per file for folders whose files are known)."""
    root = Path(root)
    local = recorded_path(artifact.path, root)
    is_folder = artifact.files is not None or (artifact.dvc_md5 or "").endswith(".dir") or local.is_dir()
    if not is_folder:
        problem = _check_file(artifact.path, local, artifact.sha256, artifact.dvc_md5, root)
        return [problem] if problem else []
    if local.is_dir() and artifact.files is None:
        # Files unknown: the folder hash is all we can compare.
        actual = sha256_dir(local)
        if actual == artifact.sha256:
            return []
        return [Problem(artifact.path, "mismatch", f"folder sha256 {actual[:12]}…, lineage says {artifact.sha256[:12]}…")]
    if artifact.files is None:
        # Gone from the workspace and only DVC's .dir manifest lists the files: they must all be there.
        manifest = folder_manifest(artifact, root)
        if not manifest:
            return [Problem(artifact.path, "missing", "not at its path, nor its manifest in DVC cache/remote")]
        return [Problem(f"{artifact.path}/{rel}", "missing", "not in DVC cache/remote")
                for rel, md5 in manifest.items() if find_in_dvc(md5, root) is None]
    problems = []
    for rel, entry in sorted(artifact.files.items()):
        name = f"{artifact.path.rstrip('/')}/{rel}"
        problem = _check_file(name, local / rel, entry.sha256, entry.md5, root)
        if problem:
            problems.append(problem)
    return problems


def stored_weight_problems(lineage: Lineage, model_version, model_dir: Path) -> list[Problem]:  # type: ignore[no-untyped-def]
    """The registered folder holds exactly the weight files the lineage lists, each with its sha256."""
    problems: list[Problem] = []
    for rel, expected in sorted(lineage.weights.items()):
        path = model_dir / rel
        if not path.is_file():
            problems.append(Problem(str(path), "missing", f"registered weight file of {model_version.name} v{model_version.version}"))
        elif (problem := _check_bytes(str(path), path, expected)) is not None:
            problems.append(problem)
    unlisted = sorted(p.name for p in model_dir.glob("*.safetensors") if p.name not in lineage.weights)
    problems.extend(Problem(str(model_dir / name), "mismatch", "registered weight file that lineage.json does not list")
                    for name in unlisted)
    return problems


def artifact_problems(lineage: Lineage, root: str | os.PathLike[str] = ".") -> list[Problem]:
    """Every mismatch or missing file among the artifacts and the params file ``lineage`` names.

    ``root``: where relative artifact paths start and whose DVC cache/remotes are searched. The
    registered weights and the registry's anchors are checked by
    :func:`mergeline.tracking.registry.verify_lineage`, which adds these.
    """
    problems: list[Problem] = []
    for _label, artifact in lineage.artifacts():
        problems.extend(check_artifact(artifact, root))
    params = lineage.params
    if params.path and params.sha256:
        problem = _check_file(params.path, recorded_path(params.path, root), params.sha256, None, Path(root))
        if problem:
            problems.append(problem)
    return problems
