"""Content hashes (sha256) of files and folders, used for caching and lineage."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(folder: str | os.PathLike[str]) -> dict[str, str]:
    """sha256 of every file under ``folder``, keyed by POSIX relative path (hidden files skipped)."""
    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


def sha256_dir(folder: str | os.PathLike[str]) -> str:
    """One hash for a folder: sha256 over the sorted (relative path, file hash) pairs."""
    digest = hashlib.sha256()
    for rel, file_hash in file_hashes(folder).items():
        digest.update(f"{rel}\0{file_hash}\n".encode())
    return digest.hexdigest()


def sha256_path(path: str | os.PathLike[str]) -> str:
    path = Path(path)
    return sha256_dir(path) if path.is_dir() else sha256_file(path)
