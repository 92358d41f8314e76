"""Find the bytes of a lineage artifact: at its recorded path, else in a DVC cache or local DVC remote.

DVC 3 stores a file under ``<cache or remote>/files/md5/<first 2 hex>/<other 30 hex>`` by the md5 of
its bytes, and a folder as a ``<md5>.dir`` JSON manifest (``[{"md5", "relpath"}, ...]``) plus one
entry per file. Reading that layout directly (no ``dvc`` import) keeps ``--verify`` fast and works
when the workspace copy was removed; only ``mergeline/versioning.py`` drives DVC itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from mergeline.lineage.record import Artifact

_SECTION = re.compile(r"^\[\s*'?(?P<name>[^'\]]+)'?\s*\]$")


def find_repo_root(start: str | os.PathLike[str] = ".") -> Path:
    """The nearest ancestor of ``start`` holding ``.dvc`` (else ``.git``, else ``start`` itself)."""
    start = Path(start).resolve()
    for marker in (".dvc", ".git"):
        for folder in (start, *start.parents):
            if (folder / marker).is_dir():
                return folder
    return start


def _read_dvc_config(path: Path) -> dict[str, dict[str, str]]:
    # DVC's config is configobj INI with indented keys, which configparser reads as continuations.
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    if not path.is_file():
        return sections
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        match = _SECTION.match(line)
        if match:
            current = sections.setdefault(match["name"].strip(), {})
        elif current is not None and "=" in line:
            key, value = line.split("=", 1)
            current[key.strip()] = value.strip()
    return sections


def dvc_stores(root: str | os.PathLike[str] = ".") -> list[tuple[str, Path]]:
    """``(label, folder)`` for the DVC cache and every local-directory remote of the repo at ``root``."""
    root = find_repo_root(root)
    dvc_dir = root / ".dvc"
    config: dict[str, dict[str, str]] = {}
    for name in ("config", "config.local"):
        for section, values in _read_dvc_config(dvc_dir / name).items():
            config.setdefault(section, {}).update(values)
    cache_dir = config.get("cache", {}).get("dir")
    # Relative paths in DVC's config are relative to the .dvc folder that holds the config.
    stores = [("DVC cache", (dvc_dir / cache_dir).resolve() if cache_dir else dvc_dir / "cache")]
    for section, values in config.items():
        url = values.get("url", "")
        if section.startswith("remote ") and url and ("://" not in url or url.startswith("file://")):
            local = Path(url.removeprefix("file://"))
            remote = section[len("remote "):].strip("'\" ")
            stores.append((f"DVC remote {remote}", local if local.is_absolute() else (dvc_dir / local).resolve()))
    return stores


def _cache_entry(store: Path, md5: str) -> Path | None:
    for candidate in (store / "files" / "md5" / md5[:2] / md5[2:], store / md5[:2] / md5[2:]):
        if candidate.is_file():
            return candidate
    return None


def find_in_dvc(md5: str | None, root: str | os.PathLike[str] = ".") -> tuple[str, Path] | None:
    """The first DVC store entry for ``md5``, as ``(store label, path)``."""
    if not md5:
        return None
    for label, store in dvc_stores(root):
        entry = _cache_entry(store, md5)
        if entry is not None:
            return label, entry
    return None


def recorded_path(artifact_path: str, root: str | os.PathLike[str] = ".") -> Path:
    p = Path(artifact_path)
    return p if p.is_absolute() else Path(root) / p


def folder_manifest(artifact: Artifact, root: str | os.PathLike[str] = ".") -> dict[str, str | None]:
    """relpath -> md5 (None where unknown) for a folder artifact: from ``files``, else DVC's .dir manifest."""
    if artifact.files is not None:
        return {rel: entry.md5 for rel, entry in artifact.files.items()}
    found = find_in_dvc(artifact.dvc_md5, root) if artifact.dvc_md5 and artifact.dvc_md5.endswith(".dir") else None
    if found is None:
        return {}
    return {item["relpath"]: item["md5"] for item in json.loads(found[1].read_text())}


def materialize(artifact: Artifact, root: str | os.PathLike[str], dest: Path) -> Path:
    """A local path holding ``artifact``: the recorded one if present, else a copy at ``dest`` from DVC.

    Raises FileNotFoundError naming the missing file when neither has it. Hashes are not checked here
    (``mergeline.lineage.verify`` does that).
    """
    local = recorded_path(artifact.path, root)
    if local.exists():
        return local
    manifest = folder_manifest(artifact, root)
    if not manifest:
        found = find_in_dvc(artifact.dvc_md5, root)
        if found is None:
            raise FileNotFoundError(f"{artifact.path}: not at its path and not in any DVC cache or remote")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(found[1], dest)
        return dest
    for rel, md5 in manifest.items():
        found = find_in_dvc(md5, root)
        if found is None:
            raise FileNotFoundError(f"{artifact.path}/{rel}: not at its path and not in any DVC cache or remote")
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(found[1], target)
    return dest
