"""Helpers that producers (the pipeline's register stage) use to fill a :class:`~mergeline.lineage.record.Lineage`.

They hash what is on disk now, so call them on the finished outputs of each stage.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any, TypeVar

from mergeline.errors import MergelineError
from mergeline.io.hashing import sha256_file
from mergeline.io.safe_read import load_yaml_file
from mergeline.lineage.record import Artifact, CodeInfo, DvcInfo, FileHash, ParamsInfo

_CHUNK = 1 << 20
A = TypeVar("A", bound=Artifact)


def md5_file(path: str | os.PathLike[str]) -> str:
    """md5 of the bytes: DVC 3 keys its cache by this (``files/md5/<2>/<30>``)."""
    return file_digests(path)[1]


@functools.lru_cache(maxsize=4096)
def _digests(path: str, size: int, mtime_ns: int) -> tuple[str, str]:
    # One read for both digests; keyed by size and mtime so a rewritten file is hashed again.
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def file_digests(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(sha256, md5) of a file, cached per process: registering several variants re-describes the
    same base model and vectors, which would otherwise be read again for each."""
    st = os.stat(path)
    return _digests(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def folder_files(folder: Path) -> dict[str, FileHash]:
    """Per-file sha256 + md5 under ``folder`` (hidden files skipped, like ``sha256_dir``)."""
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts):
            sha, md5 = file_digests(p)
            files[p.relative_to(folder).as_posix()] = FileHash(sha256=sha, md5=md5)
    return files


def folder_sha256(files: dict[str, FileHash]) -> str:
    """``mergeline.io.hashing.sha256_dir`` computed from known file hashes (same formula; a test pins it)."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(f"{rel}\0{files[rel].sha256}\n".encode())
    return digest.hexdigest()


def describe(
    path: str | os.PathLike[str], cls: type[A] = Artifact, dvc_md5: str | None = None,
    root: str | os.PathLike[str] | None = None, **extra: Any,
) -> A:
    """An artifact record for ``path`` as it is now (``cls`` e.g. ImportanceArtifact with ``kind=``).

    ``path`` is recorded as given; a relative one is read under ``root`` (default: the working directory),
    which is how verify resolves it later.
    """
    p = Path(root) / path if root is not None and not Path(path).is_absolute() else Path(path)
    if p.is_dir():
        files = folder_files(p)
        return cls(path=str(path), sha256=folder_sha256(files), dvc_md5=dvc_md5, files=files, **extra)
    if p.is_file():
        sha, md5 = file_digests(p)
        return cls(path=str(path), sha256=sha, dvc_md5=dvc_md5 or md5, **extra)
    raise MergelineError(f"{p}: cannot record lineage of a missing file or folder")


def weight_files(model_dir: str | os.PathLike[str]) -> dict[str, str]:
    """sha256 of the files that carry the weights: ``*.safetensors`` and the shard index."""
    folder = Path(model_dir)
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and (
        p.suffix == ".safetensors" or p.name.endswith(".safetensors.index.json")))
    return {name: sha256_file(folder / name) for name in names}


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_info(root: str | os.PathLike[str] = ".") -> CodeInfo:
    """The git commit of ``root`` and whether tracked files differ from it (untracked files ignored)."""
    root = Path(root)
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return CodeInfo(git_commit=commit, dirty=bool(status))


def dvc_info(root: str | os.PathLike[str] = ".") -> DvcInfo:
    lock = Path(root) / "dvc.lock"
    return DvcInfo(lock_sha256=sha256_file(lock) if lock.is_file() else None)


def params_info(path: str | os.PathLike[str], resolved: dict[str, Any] | None = None,
                root: str | os.PathLike[str] | None = None) -> ParamsInfo:
    """The params file's hash and its resolved values (the file's YAML unless ``resolved`` is given).

    Under ``root`` the path is recorded relative to it, so a lineage stays valid in another checkout.
    """
    p = Path(path)
    if resolved is None:
        resolved = load_yaml_file(p, "params file") or {}
    shown = p
    if root is not None and p.resolve().is_relative_to(top := Path(root).resolve()):
        shown = p.resolve().relative_to(top)
    return ParamsInfo(path=str(shown), sha256=sha256_file(p), resolved=resolved)
