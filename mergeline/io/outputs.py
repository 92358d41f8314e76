"""Which folders mergeline may replace or write into: its own outputs only, proven by its marker.

Every output folder mergeline writes (``mergeline.io.atomic.atomic_dir``) ends with a marker file,
``.mergeline-output``: the kind of output and every file and folder mergeline wrote in it. A folder
may be replaced only when it holds that marker, the kind is the one about to be written, and the
folder holds nothing the marker does not list, so a replace never deletes a file mergeline did not
write. File names prove nothing (a user's folder may hold its own ``meta.json`` or
``finetune.json``), and a folder written before the marker listed its files cannot be told from a
user's folder that copied one: both are refused, and the user deletes them. The marker depends on
the output's file names only, so equal inputs still give byte-equal folders.

A pipeline's work folder (``work_dir``) carries ``.mergeline-work`` at its root: the file the run
using it holds locked (``mergeline.runlock``). ``merge --out``, ``reproduce --out`` and ``extract-lora
--out`` may not write into a work folder, nor into any mergeline output (a task vector, a checkpoint...).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

MARKER = ".mergeline-output"
WORK_MARKER = ".mergeline-work"
# A marker lists file names: far below this even for a sharded model; anything larger is not ours.
_MARKER_LIMIT = 4 << 20

OutputKind = Literal["dataset", "base", "checkpoint", "task-vector", "importance", "merge", "adapter", "report"]
KIND_NAMES: dict[str, str] = {
    "dataset": "task dataset", "base": "imported base model", "checkpoint": "fine-tuned checkpoint",
    "task-vector": "task vector", "importance": "importance file", "merge": "merged model",
    "adapter": "LoRA adapter", "report": "report",
}


def _entries(folder: Path) -> Iterator[str]:
    """Every file and folder under ``folder`` as a relative POSIX path (folders end in ``/``), the
    marker left out; links are listed, never followed."""
    for current, folders, files in os.walk(folder):
        rel = Path(current).relative_to(folder)
        for name in folders:
            yield (rel / name).as_posix() + "/"
        for name in files:
            if not (name == MARKER and rel == Path(".")):
                yield (rel / name).as_posix()


def write_marker(folder: Path, kind: OutputKind) -> None:
    """Mark ``folder`` (complete, not yet renamed into place) as a mergeline output of ``kind``."""
    record = {"files": sorted(_entries(folder)), "kind": kind, "written_by": "mergeline"}
    (folder / MARKER).write_text(json.dumps(record, sort_keys=True) + "\n", encoding="utf-8")


def _read_marker(folder: Path) -> dict | None:
    marker = folder / MARKER
    try:
        if marker.is_symlink() or not marker.is_file() or marker.stat().st_size > _MARKER_LIMIT:
            return None
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("written_by") != "mergeline":
        return None
    files = record.get("files")
    return record if isinstance(files, list) and all(isinstance(f, str) for f in files) else None


def enclosing(path: Path, marker: str) -> Path | None:
    """The nearest folder above ``path`` (``path`` itself excluded) holding ``marker``, if any."""
    for parent in Path(path).resolve().parents:
        if (parent / marker).is_file():
            return parent
    return None


def work_folder_of(path: Path) -> Path | None:
    """The mergeline work folder that ``path`` is or lies in, if any."""
    return path if (Path(path) / WORK_MARKER).is_file() else enclosing(path, WORK_MARKER)


def _not_own_output(target: Path, kind: OutputKind) -> str | None:
    """Why the non-empty folder ``target`` is not a previous mergeline output of ``kind`` (None: it is)."""
    record = _read_marker(target)
    if record is None:
        if (target / MARKER).exists():
            return (f"{target / MARKER}: damaged, or written by an older mergeline (no file list); refusing to "
                    f"replace {target}: delete it yourself if nothing in it is yours")
        return (f"{target}: not a mergeline output (no {MARKER}); refusing to replace it (a folder an older "
                "mergeline wrote has none either: delete it yourself)")
    found = record.get("kind")
    if found != kind:
        what = KIND_NAMES.get(found, "mergeline output") if isinstance(found, str) else "mergeline output"
        return f"{target}: holds a {what} that mergeline wrote, not a {KIND_NAMES[kind]}; refusing to replace it"
    listed = set(record["files"])
    for entry in _entries(target):
        if entry not in listed:
            return (f"{target}: holds {entry}, which mergeline did not write; refusing to replace the folder "
                    "(move it out, or delete the folder yourself)")
    return None


def replace_problem(target: Path, kind: OutputKind, overwrite: bool, flag: str | None = None) -> str | None:
    """Why writing an output of ``kind`` at ``target`` would destroy or alter something that is not a
    previous mergeline output of that kind (None: it may be written). The one place that decides.

    Refused: a symbolic link; a place inside another mergeline output; a file; a registered model's
    artifact folder; a non-empty folder unless ``overwrite`` (``flag`` names the option in the message),
    and then unless it is a previous output of ``kind`` holding only what mergeline wrote there.
    """
    if target.is_symlink():
        return f"{target}: is a symbolic link; give the folder itself as the output"
    outer = enclosing(target, MARKER)
    if outer is not None:
        return f"{target}: is inside {outer}, an output mergeline wrote; writing there would change it"
    if not target.exists():
        return None
    if not target.is_dir():
        return f"{target}: exists and is not a folder; refusing to replace it"
    if not any(target.iterdir()):
        return None
    if (target / "lineage.json").is_file():
        # A registered version's artifact folder (a copy of an output, marker included): the registry's.
        return f"{target}: holds a registered model's lineage.json; refusing to replace it"
    if not overwrite:
        hint = f"; pass {flag} to replace a previous mergeline output" if flag else ""
        return f"{target}: output folder exists and is not empty{hint}"
    return _not_own_output(target, kind)


__all__ = ["KIND_NAMES", "MARKER", "WORK_MARKER", "OutputKind", "enclosing", "replace_problem", "work_folder_of",
           "write_marker"]
