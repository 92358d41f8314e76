"""Write outputs to a temporary path beside the target and rename when complete, never over user data.

A crash or a bad input therefore never leaves a half-written output at the target path, and no
temporary folder survives a failure (an exception in the body, in the swap, Ctrl-C, or SIGTERM/SIGHUP,
which the CLI turns into an exit through this cleanup). What ``kill -9`` leaves behind, the next
atomic write in the same folder removes (:mod:`mergeline.io.owned_temps`: the temporaries' names
prove their writer is gone).

An output folder mergeline writes carries a marker file, ``.mergeline-output``. An existing target is
replaced only when it is empty or is such an output (or a mergeline output written before the marker
existed, recognised by its stamp files); any other folder, or a file, is refused with a one-line
:class:`MergelineError`. :func:`check_output_dir` adds the checks that need to know the inputs: an
output equal to, inside, or holding an input, or the current folder, is refused before any work.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mergeline.errors import MergelineError
from mergeline.io.owned_temps import remove_abandoned, temp_dir, temp_file

MARKER = ".mergeline-output"
# Constant content: an output's bytes must depend on its inputs only (DVC and lineage hash them).
MARKER_TEXT = '{"written_by": "mergeline"}\n'
# Files that mark the outputs of mergeline versions before the marker: merge, task vector,
# imported base, fine-tuned checkpoint (a task's dataset folder: meta.json beside its JSONL splits).
LEGACY_STAMPS = ("merge_report.json", "task_vector.json", ".mergeline_import.json", "finetune.json")


def is_mergeline_output(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    if any((folder / name).is_file() for name in (MARKER, *LEGACY_STAMPS)):
        return True
    return (folder / "meta.json").is_file() and any(folder.glob("*.jsonl"))


def _check_replaceable(target: Path, overwrite: bool, flag: str | None) -> None:
    """Refuse ``target`` when writing it would destroy something that is not a mergeline output."""
    if target.is_symlink():
        raise MergelineError(f"{target}: is a symbolic link; give the folder itself as the output")
    if not target.exists():
        return
    if not target.is_dir():
        raise MergelineError(f"{target}: exists and is not a folder; refusing to replace it")
    if not any(target.iterdir()):
        return
    if (target / "lineage.json").is_file():
        # A registered version's artifact folder (a copy of an output, marker included): the registry's.
        raise MergelineError(f"{target}: holds a registered model's lineage.json; refusing to replace it")
    if not overwrite:
        hint = f"; pass {flag} to replace a previous mergeline output" if flag else ""
        raise MergelineError(f"{target}: output folder exists and is not empty{hint}")
    if not is_mergeline_output(target):
        raise MergelineError(
            f"{target}: exists and is not a mergeline output (no {MARKER}); refusing to replace it"
        )


def check_output_dir(target: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]] = (),
                     overwrite: bool = False, flag: str | None = "--overwrite") -> Path:
    """Refuse an output folder that would destroy user data, before any work starts.

    Refused: the current folder or one holding it; a folder equal to, inside, or holding one of
    ``inputs`` (model folders, weight files, configs); an existing file; an existing non-empty folder
    unless ``overwrite`` (and then only a previous mergeline output); a place that cannot be written.
    """
    target = Path(target)
    if target.is_symlink():
        raise MergelineError(f"{target}: is a symbolic link; give the folder itself as the output")
    where = target.resolve()
    cwd = Path.cwd().resolve()
    if cwd == where or cwd.is_relative_to(where):
        raise MergelineError(f"{target}: is the current folder or holds it; choose a new output folder")
    for item in inputs:
        source = Path(item).resolve()
        if where == source or where.is_relative_to(source) or source.is_relative_to(where):
            raise MergelineError(
                f"{target}: is, is inside or holds the input {item}; choose another output folder"
            )
    _check_replaceable(target, overwrite, flag)
    parent = where.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise MergelineError(f"{target}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MergelineError(f"{target}: cannot write in {parent} (permission denied)")
    return target


def _remove_created(created: list[Path]) -> None:
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty: something else lives there now


@contextmanager
def atomic_dir(target: str | os.PathLike[str], overwrite: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``target``; on success it replaces ``target``.

    ``target`` may be replaced only when it is absent, empty or a previous mergeline output (and, for
    a non-empty one, ``overwrite``); checked before the body runs and again before the swap. On any
    exception the temporary directory (and any parent folder made for it) is removed and ``target``
    is left as it was.
    """
    target = Path(os.path.abspath(target))  # "." has no name to put a sibling beside
    _check_replaceable(target, overwrite, None)
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]  # deepest first
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned(target.parent)
        _check_replaceable(target, overwrite, None)  # an abandoned swap may have put a previous output back
        tmp = temp_dir(target)
        yield tmp
        (tmp / MARKER).write_text(MARKER_TEXT)
        _check_replaceable(target, overwrite, None)  # the body took time: look again
        if target.exists():
            # Move the old output aside first so the rename below is a single atomic step.
            old = temp_dir(target, "old")
            try:
                os.replace(target, old)
            except BaseException:
                old.rmdir()
                raise
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        raise


@contextmanager
def atomic_file(target: str | os.PathLike[str], mode: str = "w") -> Iterator:
    """Open a temporary file beside ``target`` for writing; rename it over ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(target.parent)
    tmp_name = temp_file(target)
    try:
        with open(tmp_name, mode) as handle:
            yield handle
        os.replace(tmp_name, target)
    except BaseException:
        tmp_name.unlink(missing_ok=True)
        raise
